// Command check is the workload hack/cluster starts to check its one-node
// cluster: a pod that runs to completion, and an HTTP server behind a Service
// reached by its ClusterIP from the host. It also sends one test mail, for
// end-to-end checks of a relay from inside the cluster.
//
//	check -version             # print the version and exit 0
//	check -listen :8080        # serve "ok <hostname>\n" on every path until SIGTERM
//	check -get URL -timeout 20s  # GET URL until it answers 200 (retrying refused connections), print the body
//	check -smtp HOST:PORT [-starttls] [-auth USER:PASS] -from A -to B[,C] [-subject S] [-timeout 20s]
//	                           # send one message; exit 0 on the final 250, 1 when the server
//	                           # refuses (its reply printed as "smtp-reply: CODE STAGE MESSAGE"),
//	                           # 3 on any other failure. With -starttls it prints the server
//	                           # certificate's SHA-256 as "tls-cert-sha256: HEX" (not verified).
//	check -url-env NAME [-smtp HOST:PORT] -from A -to B[,C] [-subject S]
//	                           # the same, to the server, credentials and STARTTLS of the URL
//	                           # smtp://USER:PASS@HOST:PORT in environment variable NAME (as a
//	                           # RelayClient's Secret holds it); -smtp overrides the address
//	check -smtp HOST:PORT -load N [-concurrency C] [-per-session M] [-interval D] [-retries R] -id-prefix P
//	      [-starttls] [-auth USER:PASS] -from A -to B[,C] [-timeout 5m]
//	                           # send N messages, each with Subject P-000000.. and a Message-ID of
//	                           # the same id, over C concurrent sessions (each reused for M
//	                           # messages, D apart). A message is retried after a 4xx reply or a
//	                           # connection error (up to R times, default 60, 200 ms apart, within -timeout),
//	                           # never after its 250. Prints one line "load-summary: JSON" and
//	                           # exits 0 when every message got its 250, 1 when any was given up
//	                           # or refused with 5xx.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

const version = "kuberelay-cluster-check 1"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	listen := flag.String("listen", "", "serve HTTP on this address")
	get := flag.String("get", "", "GET this URL until it answers 200")
	timeout := flag.Duration("timeout", 20*time.Second, "how long -get and -smtp retry refused connections")
	smtpAddr := flag.String("smtp", "", "send one message to this SMTP server (HOST:PORT)")
	urlEnv := flag.String("url-env", "", "send one message to the smtp:// URL in this environment variable (STARTTLS and AUTH from it)")
	starttls := flag.Bool("starttls", false, "with -smtp: STARTTLS before anything else")
	auth := flag.String("auth", "", "with -smtp: AUTH PLAIN as USER:PASS")
	from := flag.String("from", "", "with -smtp: envelope sender and From")
	to := flag.String("to", "", "with -smtp: recipients, comma-separated")
	subject := flag.String("subject", "kuberelay check", "with -smtp: the Subject")
	load := flag.Int("load", 0, "with -smtp: send this many messages, retrying 4xx replies and connection errors")
	concurrency := flag.Int("concurrency", 4, "with -load: concurrent SMTP sessions")
	interval := flag.Duration("interval", 0, "with -load: pause of each session between two messages")
	perConn := flag.Int("per-session", 10, "with -load: messages per session before it reconnects")
	idPrefix := flag.String("id-prefix", "load", "with -load: the prefix of each message's id (Subject and Message-ID)")
	retries := flag.Int("retries", loadRetries, "with -load: how many times a message is retried after a 4xx or a connection error (0: sent once)")
	flag.Parse()
	if *urlEnv != "" {
		u, err := url.Parse(os.Getenv(*urlEnv))
		if err != nil || u.Scheme != "smtp" || u.User == nil || u.Host == "" {
			fmt.Fprintf(os.Stderr, "check: -url-env %s: want smtp://USER:PASS@HOST:PORT, got an unusable URL (%v)\n", *urlEnv, err)
			os.Exit(2)
		}
		pass, _ := u.User.Password()
		// -smtp, when given too, says where to connect (a cluster without DNS).
		if *smtpAddr == "" {
			*smtpAddr = u.Host
		}
		*starttls, *auth = true, u.User.Username()+":"+pass
	}
	switch {
	case *showVersion:
		fmt.Println(version)
	case *listen != "":
		if err := serve(*listen); err != nil {
			fmt.Fprintln(os.Stderr, "check:", err)
			os.Exit(1)
		}
	case *smtpAddr != "" && *load > 0:
		os.Exit(runLoad(loadConfig{addr: *smtpAddr, starttls: *starttls, auth: *auth, from: *from, to: strings.Split(*to, ","),
			n: *load, concurrency: *concurrency, perConn: *perConn, interval: *interval, prefix: *idPrefix, timeout: *timeout, retries: *retries}))
	case *smtpAddr != "":
		os.Exit(sendMail(*smtpAddr, *starttls, *auth, *from, strings.Split(*to, ","), *subject, *timeout))
	case *get != "":
		if err := fetch(*get, *timeout); err != nil {
			fmt.Fprintln(os.Stderr, "check:", err)
			os.Exit(1)
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func serve(addr string) error {
	host, _ := os.Hostname()
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok %s\n", host)
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	fmt.Fprintln(os.Stderr, "check: serving on", addr)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

// fetch retries: the first connection to a brand-new Service can be refused
// until kube-proxy has written its rules.
func fetch(url string, timeout time.Duration) error {
	client := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(timeout)
	var last error
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		resp, err := client.Get(url)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				fmt.Printf("%s", body)
				return nil
			}
			err = fmt.Errorf("status %s, read error %v", resp.Status, rerr)
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("GET %s: no answer within %s: %v", url, timeout, last)
}

// sendMail sends one message and returns the exit code: 0 sent, 1 refused by the
// server, 3 any other failure.
func sendMail(addr string, starttls bool, auth, from string, to []string, subject string, timeout time.Duration) int {
	stage := "connect"
	fail := func(err error) int {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			fmt.Printf("smtp-reply: %d %s %s\n", se.Code, stage, se.Message)
			fmt.Fprintf(os.Stderr, "check: %s refused: %d %s\n", stage, se.Code, se.Message)
			return 1
		}
		fmt.Fprintf(os.Stderr, "check: %s: %v\n", stage, err)
		return 3
	}
	var conn net.Conn
	deadline := time.Now().Add(timeout)
	for {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 3*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fail(err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	var c *smtp.Client
	if starttls {
		stage = "starttls"
		host, _, _ := net.SplitHostPort(addr)
		// The relay's certificate is only printed: the caller compares it.
		var err error
		c, err = smtp.NewClientStartTLS(conn, &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec
		if err != nil {
			conn.Close()
			return fail(err)
		}
		// EHLO again, over TLS: this runs the handshake.
		if err := c.Hello("check.kuberelay.local"); err != nil {
			c.Close()
			return fail(err)
		}
		if st, ok := c.TLSConnectionState(); ok && len(st.PeerCertificates) > 0 {
			fmt.Printf("tls-cert-sha256: %x\n", sha256.Sum256(st.PeerCertificates[0].Raw))
		}
	} else {
		c = smtp.NewClient(conn)
		stage = "ehlo"
		if err := c.Hello("check.kuberelay.local"); err != nil {
			c.Close()
			return fail(err)
		}
	}
	defer c.Close()
	if auth != "" {
		stage = "auth"
		user, pass, _ := strings.Cut(auth, ":")
		if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
			return fail(err)
		}
	}
	stage = "mail"
	if err := c.Mail(from, nil); err != nil {
		return fail(err)
	}
	stage = "rcpt"
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return fail(err)
		}
	}
	stage = "data"
	w, err := c.Data()
	if err != nil {
		return fail(err)
	}
	host, _ := os.Hostname()
	msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%d.%s@check.kuberelay.local>\r\n\r\nSent by %s.\r\n",
		from, strings.Join(to, ">, <"), subject, time.Now().Format(time.RFC1123Z), time.Now().UnixNano(), host, host)
	if _, err := io.WriteString(w, msg); err != nil {
		return fail(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return fail(err)
	}
	fmt.Printf("smtp-reply: 250 data %s\n", resp.StatusText)
	stage = "quit"
	_ = c.Quit()
	return 0
}

// --- load ------------------------------------------------------------------------

const (
	loadRetries     = 60
	loadRetryPause  = 200 * time.Millisecond
	loadOpTimeout   = 30 * time.Second
	loadSampleLimit = 20
)

type loadConfig struct {
	addr, auth, from, prefix string
	to                       []string
	starttls                 bool
	n, concurrency, perConn  int
	interval, timeout        time.Duration
	retries                  int
}

// loadSummary is printed as JSON on the line "load-summary: ".
type loadSummary struct {
	Messages    int      `json:"messages"`
	Concurrency int      `json:"concurrency"`
	Accepted    []string `json:"accepted"`          // ids answered 250, each once
	GivenUp     []string `json:"givenUp"`           // ids never answered 250 within the retries or the timeout
	Refused     []string `json:"refused"`           // ids answered 5xx (not retried)
	Replies4xx  int      `json:"replies4xx"`        // 4xx replies seen, at any stage
	ConnErrors  int      `json:"connErrors"`        // connection or protocol errors seen
	Retries     int      `json:"retries"`           // attempts after a message's first
	Connections int      `json:"connections"`       // sessions opened
	Sample4xx   []string `json:"sample4xx"`         // distinct 4xx replies (stage code text)
	SampleErrs  []string `json:"sampleErrors"`      // distinct connection errors
	Sample5xx   []string `json:"sample5xx"`         // distinct 5xx replies
	DurationMS  int64    `json:"durationMs"`        // from the first attempt to the last reply
	Unknown     []string `json:"unknown,omitempty"` // ids whose DATA reply was lost after the body was sent
}

type loadState struct {
	mu   sync.Mutex
	sum  loadSummary
	seen map[string]bool
}

func (s *loadState) note(list *[]string, v string) {
	if s.seen[v] || len(*list) >= loadSampleLimit {
		return
	}
	s.seen[v] = true
	*list = append(*list, v)
}

// loadSession is one SMTP session, reused for several messages.
type loadSession struct {
	conn net.Conn
	c    *smtp.Client
	sent int
}

func (l *loadSession) close() {
	if l.c != nil {
		_ = l.c.Close()
	}
	l.c, l.conn, l.sent = nil, nil, 0
}

func runLoad(cfg loadConfig) int {
	cfg.concurrency, cfg.perConn = max(cfg.concurrency, 1), max(cfg.perConn, 1)
	st := &loadState{seen: map[string]bool{}}
	st.sum.Messages, st.sum.Concurrency = cfg.n, cfg.concurrency
	host, _ := os.Hostname()
	ids := make(chan string, cfg.n)
	for i := 0; i < cfg.n; i++ {
		ids <- fmt.Sprintf("%s-%06d", cfg.prefix, i)
	}
	close(ids)
	start := time.Now()
	deadline := start.Add(cfg.timeout)
	var wg sync.WaitGroup
	for w := 0; w < cfg.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s loadSession
			defer s.close()
			for id := range ids {
				loadOne(cfg, st, &s, id, host, deadline)
				if cfg.interval > 0 {
					time.Sleep(cfg.interval)
				}
			}
		}()
	}
	wg.Wait()
	st.sum.DurationMS = time.Since(start).Milliseconds()
	for _, l := range []*[]string{&st.sum.Accepted, &st.sum.GivenUp, &st.sum.Refused, &st.sum.Sample4xx, &st.sum.SampleErrs, &st.sum.Sample5xx} {
		if *l == nil {
			*l = []string{}
		}
	}
	// Both on stdout, in this order: kubectl exec interleaves stderr with stdout.
	fmt.Printf("check: load: %d accepted, %d given up, %d refused, %d 4xx, %d errors, %d retries in %s\n",
		len(st.sum.Accepted), len(st.sum.GivenUp), len(st.sum.Refused), st.sum.Replies4xx, st.sum.ConnErrors, st.sum.Retries,
		time.Duration(st.sum.DurationMS)*time.Millisecond)
	b, _ := json.Marshal(st.sum)
	fmt.Printf("load-summary: %s\n", b)
	if len(st.sum.GivenUp) > 0 || len(st.sum.Refused) > 0 {
		return 1
	}
	return 0
}

// loadOne sends one message until it is answered 250 (or 5xx), retrying 4xx replies
// and connection errors on a new session.
func loadOne(cfg loadConfig, st *loadState, s *loadSession, id, host string, deadline time.Time) {
	var bodySent bool
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			st.mu.Lock()
			st.sum.Retries++
			st.mu.Unlock()
		}
		stage, sent, err := loadAttempt(cfg, st, s, id, host)
		bodySent = bodySent || sent
		if err == nil {
			st.mu.Lock()
			st.sum.Accepted = append(st.sum.Accepted, id)
			if bodySent && attempt > 0 {
				// An earlier attempt may have been delivered although its reply was lost.
				st.sum.Unknown = append(st.sum.Unknown, id)
			}
			st.mu.Unlock()
			s.sent++
			if s.sent >= cfg.perConn {
				_ = s.c.Quit()
				s.close()
			}
			return
		}
		s.close()
		var se *smtp.SMTPError
		st.mu.Lock()
		switch {
		case errors.As(err, &se) && se.Code >= 500:
			st.note(&st.sum.Sample5xx, fmt.Sprintf("%s %d %s", stage, se.Code, se.Message))
			st.sum.Refused = append(st.sum.Refused, id)
			st.mu.Unlock()
			return
		case errors.As(err, &se):
			st.sum.Replies4xx++
			st.note(&st.sum.Sample4xx, fmt.Sprintf("%s %d %s", stage, se.Code, se.Message))
		default:
			st.sum.ConnErrors++
			st.note(&st.sum.SampleErrs, fmt.Sprintf("%s: %v", stage, err))
		}
		if attempt >= cfg.retries || time.Now().Add(loadRetryPause).After(deadline) {
			st.sum.GivenUp = append(st.sum.GivenUp, id)
			st.mu.Unlock()
			return
		}
		st.mu.Unlock()
		time.Sleep(loadRetryPause)
	}
}

// loadAttempt sends the message once on s, opening a session first when it has none.
// It returns the stage reached, whether the body was sent and no reply came, and the error.
func loadAttempt(cfg loadConfig, st *loadState, s *loadSession, id, host string) (string, bool, error) {
	stage := "connect"
	if s.c == nil {
		conn, err := net.DialTimeout("tcp", cfg.addr, 3*time.Second)
		if err != nil {
			return stage, false, err
		}
		st.mu.Lock()
		st.sum.Connections++
		st.mu.Unlock()
		_ = conn.SetDeadline(time.Now().Add(loadOpTimeout))
		var c *smtp.Client
		if cfg.starttls {
			stage = "starttls"
			h, _, _ := net.SplitHostPort(cfg.addr)
			c, err = smtp.NewClientStartTLS(conn, &tls.Config{ServerName: h, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec
		} else {
			stage = "greeting"
			c = smtp.NewClient(conn)
		}
		if err != nil {
			conn.Close()
			return stage, false, err
		}
		s.conn, s.c = conn, c
		stage = "ehlo"
		if err := c.Hello("check.kuberelay.local"); err != nil {
			return stage, false, err
		}
		if cfg.auth != "" {
			stage = "auth"
			user, pass, _ := strings.Cut(cfg.auth, ":")
			if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
				return stage, false, err
			}
		}
	}
	_ = s.conn.SetDeadline(time.Now().Add(loadOpTimeout))
	stage = "mail"
	if err := s.c.Mail(cfg.from, nil); err != nil {
		return stage, false, err
	}
	stage = "rcpt"
	for _, r := range cfg.to {
		if err := s.c.Rcpt(r, nil); err != nil {
			return stage, false, err
		}
	}
	stage = "data"
	w, err := s.c.Data()
	if err != nil {
		return stage, false, err
	}
	msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@check.kuberelay.local>\r\n\r\nLoad message %s, sent by %s.\r\n",
		cfg.from, strings.Join(cfg.to, ">, <"), id, time.Now().Format(time.RFC1123Z), id, id, host)
	if _, err := io.WriteString(w, msg); err != nil {
		return stage, false, err
	}
	stage = "data-end"
	if _, err := w.CloseWithResponse(); err != nil {
		var se *smtp.SMTPError
		// Without a reply the server may have taken the message.
		return stage, !errors.As(err, &se), err
	}
	return stage, false, nil
}
