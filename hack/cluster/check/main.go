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
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
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
	starttls := flag.Bool("starttls", false, "with -smtp: STARTTLS before anything else")
	auth := flag.String("auth", "", "with -smtp: AUTH PLAIN as USER:PASS")
	from := flag.String("from", "", "with -smtp: envelope sender and From")
	to := flag.String("to", "", "with -smtp: recipients, comma-separated")
	subject := flag.String("subject", "kuberelay check", "with -smtp: the Subject")
	flag.Parse()
	switch {
	case *showVersion:
		fmt.Println(version)
	case *listen != "":
		if err := serve(*listen); err != nil {
			fmt.Fprintln(os.Stderr, "check:", err)
			os.Exit(1)
		}
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
