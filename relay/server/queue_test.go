package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/emersion/go-smtp"

	"github.com/kuberelay/kuberelay/internal/eventually"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/relay/queue"
)

// queueConfig is baseConfig in Queue mode over spool, with retries 100 ms apart so a
// test sees several attempts.
func queueConfig(upstream, spool, extra string) string {
	return baseConfig(upstream, fmt.Sprintf(`delivery:
  mode: Queue
  queue:
    dir: %s
    retry: {first: 100ms, backoff: 1, maxInterval: 100ms}
%s`, spool, extra))
}

// downAddr is a 127.0.0.1 address nothing listens on (until a test starts a server
// there).
func downAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// sendQueued sends one message over the plain listener and returns the reply to its
// final dot.
func sendQueued(t *testing.T, e *relayEnv, subject string, rcpts ...string) (int, string) {
	t.Helper()
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	c.cmd("MAIL FROM:<noreply@example.com>", 250)
	for _, r := range rcpts {
		c.cmd("RCPT TO:<"+r+">", 250)
	}
	c.cmd("DATA", 354)
	c.send("Subject: " + subject + "\r\n\r\nbody of " + subject + "\r\n.\r\n")
	code, text, err := c.reply()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd("QUIT", 221)
	return code, text
}

// spooled returns the IDs of the messages on disk in spool.
func spooled(t *testing.T, spool string) []string {
	t.Helper()
	envs, err := queue.Inspect(spool)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range envs {
		ids = append(ids, e.ID)
	}
	return ids
}

func bySubject(msgs []mailcapture.Message) map[string][]mailcapture.Message {
	out := map[string][]mailcapture.Message{}
	for _, m := range msgs {
		// The message's own Subject, in its header section (a notification quotes
		// another's further down).
		for _, line := range strings.Split(string(m.Data), "\r\n") {
			if line == "" {
				break
			}
			if s, ok := strings.CutPrefix(line, "Subject: "); ok {
				out[s] = append(out[s], m)
				break
			}
		}
	}
	return out
}

// With the upstream down, every message is answered 250 from the queue; when it comes
// back, each is delivered exactly once, as sent, and the spool is left empty.
func TestQueueDeliversAfterOutage(t *testing.T) {
	up := downAddr(t)
	spool := t.TempDir()
	e := startRelay(t, queueConfig(up, spool, ""), testSecrets(t, "one"))
	const n = 5
	for i := range n {
		if code, text := sendQueued(t, e, fmt.Sprintf("outage-%d", i), "x@example.net"); code != 250 {
			t.Fatalf("message %d: %d %s, want 250 from the queue", i, code, text)
		}
	}
	// The relay's own count: reading the spool while the deliverer rewrites records
	// (each failed attempt) may catch a record half written.
	if got := e.srv.QueueStatus().Messages; got != n {
		t.Fatalf("%d messages in the queue, want %d", got, n)
	}
	capture, err := mailcapture.Start(up, mailcapture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })
	eventually.Require(t, wait, func() string {
		if got := len(capture.Messages()); got < n {
			return fmt.Sprintf("%d of %d messages delivered", got, n)
		}
		if files := spooled(t, spool); len(files) != 0 {
			return fmt.Sprintf("spool still holds %v", files)
		}
		return ""
	})
	for i := range n {
		subject := fmt.Sprintf("outage-%d", i)
		got := bySubject(capture.Messages())[subject]
		if len(got) != 1 {
			t.Fatalf("%s delivered %d times, want once", subject, len(got))
		}
		if got[0].From != "noreply@example.com" || !slices.Equal(got[0].To, []string{"x@example.net"}) ||
			!strings.HasSuffix(string(got[0].Data), "\r\n\r\nbody of "+subject+"\r\n") {
			t.Errorf("%s arrived as %+v", subject, got[0])
		}
	}
}

// An upstream 4xx for one recipient retries only that recipient; a 5xx for another
// fails it and is not retried; the rest are delivered in the first attempt.
func TestQueuePerRecipientResults(t *testing.T) {
	var mu sync.Mutex
	refusedOnce := false
	capture, err := mailcapture.Start("127.0.0.1:0", mailcapture.Options{Rcpt: func(to string) error {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case to == "later@example.net" && !refusedOnce:
			refusedOnce = true
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy"}
		case to == "gone@example.net":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })
	spool := t.TempDir()
	e := startRelay(t, queueConfig(capture.Addr(), spool, ""), testSecrets(t, "one"))
	if code, text := sendQueued(t, e, "per-rcpt", "now@example.net", "later@example.net", "gone@example.net", "also@example.net"); code != 250 {
		t.Fatalf("%d %s, want 250", code, text)
	}
	eventually.Require(t, wait, func() string {
		if files := spooled(t, spool); len(files) != 0 {
			return fmt.Sprintf("spool still holds %v", files)
		}
		return ""
	})
	got := bySubject(capture.Messages())["per-rcpt"]
	if len(got) != 2 || !slices.Equal(got[0].To, []string{"now@example.net", "also@example.net"}) || !slices.Equal(got[1].To, []string{"later@example.net"}) {
		var to [][]string
		for _, m := range got {
			to = append(to, m.To)
		}
		t.Fatalf("deliveries went to %v, want [now also] then [later] alone", to)
	}
	for _, c := range []struct {
		outcome, reason string
		want            float64
	}{{"delivered", "", 4}, {"deferred", "4xx", 1}, {"failed", "5xx", 1}} { // delivered: three recipients and the notification
		if got := testutil.ToFloat64(e.metrics.QueueDeliveries.WithLabelValues(c.outcome, c.reason, "main")); got != c.want {
			t.Errorf("deliveries_total{outcome=%q,reason=%q} = %v, want %v", c.outcome, c.reason, got, c.want)
		}
	}
	if !strings.Contains(e.logs.String(), `"recipient failed"`) || !strings.Contains(e.logs.String(), "gone@example.net") {
		t.Errorf("the refused recipient was not logged as failed:\n%s", e.logs.String())
	}
	// The sender is told, from the null sender, with the upstream's reply and the
	// original header section (RFC 3464).
	var notice *mailcapture.Message
	eventually.Require(t, wait, func() string {
		for _, m := range bySubject(capture.Messages())["Undelivered Mail Returned to Sender"] {
			notice = &m
			return ""
		}
		return "no delivery status notification reached the upstream"
	})
	body := string(notice.Data)
	if notice.From != "" || !slices.Equal(notice.To, []string{"noreply@example.com"}) {
		t.Errorf("notification envelope from %q to %v, want <> to the sender", notice.From, notice.To)
	}
	for _, want := range []string{"report-type=delivery-status", "Content-Type: message/delivery-status",
		"Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n",
		"Diagnostic-Code: smtp; upstream", "no such user", "Content-Type: text/rfc822-headers", "Subject: per-rcpt\r\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("notification lacks %q:\n%s", want, body)
		}
	}
	for _, delivered := range []string{"Final-Recipient: rfc822; now@", "Final-Recipient: rfc822; later@", "body of per-rcpt"} {
		if strings.Contains(body, delivered) {
			t.Errorf("notification holds %q", delivered)
		}
	}
}

// A full queue answers 452 4.3.1; nothing is dropped.
func TestQueueFull(t *testing.T) {
	spool := t.TempDir()
	e := startRelay(t, queueConfig(downAddr(t), spool, "    maxMessages: 1\n"), testSecrets(t, "one"))
	if code, text := sendQueued(t, e, "fills", "x@example.net"); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	if text := c.cmd("MAIL FROM:<noreply@example.com>", 452); !strings.HasPrefix(text, "4.3.1 ") {
		t.Fatalf("full queue answered 452 %s, want 4.3.1", text)
	}
}

// A spool that cannot be written answers 451 after the data, never 250, and keeps
// nothing of the message.
func TestQueueWriteError(t *testing.T) {
	spool := t.TempDir()
	e := startRelay(t, queueConfig(downAddr(t), spool, ""), testSecrets(t, "one"))
	// The log directory becomes a file: the relay cannot create its first segment.
	log := filepath.Join(spool, "log")
	if err := os.RemoveAll(log); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, text := sendQueued(t, e, "unwritable", "x@example.net")
	if code != 451 || !strings.HasPrefix(text, "4.3.0 ") {
		t.Fatalf("unwritable spool answered %d %s, want 451 4.3.0", code, text)
	}
	if st := e.srv.QueueStatus(); st.Messages != 0 {
		t.Fatalf("the refused message is counted as queued: %+v", st)
	}
}

// Messages queued by one relay process are delivered by the next one on the same
// spool.
func TestQueueSurvivesRestart(t *testing.T) {
	up := downAddr(t)
	spool := t.TempDir()
	secrets := testSecrets(t, "one")
	e := startRelay(t, queueConfig(up, spool, ""), secrets)
	if code, text := sendQueued(t, e, "restart", "x@example.net"); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	capture, err := mailcapture.Start(up, mailcapture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })
	startRelay(t, queueConfig(up, spool, ""), secrets)
	eventually.Require(t, wait, func() string {
		if n := len(bySubject(capture.Messages())["restart"]); n != 1 {
			return fmt.Sprintf("delivered %d times after the restart", n)
		}
		return ""
	})
}

// A recipient still refused with 4xx when the message is older than maxAge fails, and
// the sender is told with status 5.4.7; a message from the null sender that fails is
// dropped without a notification (RFC 5321 section 4.5.5).
func TestQueueExpiryAndNullSender(t *testing.T) {
	capture, err := mailcapture.Start("127.0.0.1:0", mailcapture.Options{Rcpt: func(to string) error {
		switch to {
		case "busy@example.net":
			return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}
		case "gone@example.net":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })
	spool := t.TempDir()
	cfg := strings.Replace(queueConfig(capture.Addr(), spool, "    maxAge: 1s\n"), "defaultUpstream: main", "defaultUpstream: main\nnullSender: Allow", 1)
	e := startRelay(t, cfg, testSecrets(t, "one"))
	if code, text := sendQueued(t, e, "expires", "busy@example.net"); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	c.cmd("MAIL FROM:<>", 250)
	c.cmd("RCPT TO:<gone@example.net>", 250)
	c.cmd("DATA", 354)
	c.send("Subject: null-sender\r\n\r\nbounce of something\r\n.\r\n")
	c.expect(250)
	eventually.Require(t, wait, func() string {
		if files := spooled(t, spool); len(files) != 0 {
			return fmt.Sprintf("spool still holds %v", files)
		}
		if len(bySubject(capture.Messages())["Undelivered Mail Returned to Sender"]) == 0 {
			return "no notification for the expired message"
		}
		return ""
	})
	notices := bySubject(capture.Messages())["Undelivered Mail Returned to Sender"]
	if len(notices) != 1 {
		t.Fatalf("%d notifications, want one (none for the null sender's message)", len(notices))
	}
	body := string(notices[0].Data)
	for _, want := range []string{"Final-Recipient: rfc822; busy@example.net", "Status: 5.4.7", "Gave up after 1s", "mailbox full", "Subject: expires"} {
		if !strings.Contains(body, want) {
			t.Errorf("notification lacks %q:\n%s", want, body)
		}
	}
}

// The queue's HTTP operations list the messages (envelopes and states, no content),
// retry and delete them.
func TestQueueHTTP(t *testing.T) {
	spool := t.TempDir()
	cfg := strings.Replace(queueConfig(downAddr(t), spool, ""), "retry: {first: 100ms, backoff: 1, maxInterval: 100ms}", "retry: {first: 1h, maxInterval: 1h}", 1)
	e := startRelay(t, cfg, testSecrets(t, "one"))
	h := httptest.NewServer(e.srv.QueueHandler())
	defer h.Close()
	for _, s := range []string{"listed-one", "listed-two"} {
		if code, text := sendQueued(t, e, s, "x@example.net"); code != 250 {
			t.Fatalf("%d %s", code, text)
		}
	}
	var list struct {
		Messages int `json:"messages"`
		Items    []struct {
			ID         string `json:"id"`
			From       string `json:"from"`
			Recipients []struct {
				Address string `json:"address"`
				State   string `json:"state"`
			} `json:"recipients"`
		} `json:"items"`
	}
	get := func() string {
		resp, err := http.Get(h.URL + "/queue")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &list); err != nil {
			t.Fatalf("GET /queue: %v: %s", err, b)
		}
		return string(b)
	}
	// Both have had their first attempt (the upstream is down) and wait an hour: the
	// listing shows a message in flight as it was before the attempt.
	eventually.Require(t, wait, func() string {
		body := get()
		if list.Messages != 2 || len(list.Items) != 2 || strings.Count(body, `"attempts":1`) != 2 {
			return "listing: " + body
		}
		return ""
	})
	if body := get(); strings.Contains(body, "body of listed") || list.Items[0].From != "noreply@example.com" ||
		list.Items[0].Recipients[0].Address != "x@example.net" || list.Items[0].Recipients[0].State != "Pending" {
		t.Fatalf("listing: %s", body)
	}
	do := func(method, path string) int {
		req, _ := http.NewRequest(method, h.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	first, second := list.Items[0].ID, list.Items[1].ID
	if code := do("DELETE", "/queue/"+first); code != 200 {
		t.Fatalf("DELETE: %d", code)
	}
	if code := do("DELETE", "/queue/"+first); code != 404 {
		t.Fatalf("DELETE of a deleted message: %d, want 404", code)
	}
	if code := do("POST", "/queue/nosuchid/retry"); code != 404 {
		t.Fatalf("retry of an unknown message: %d, want 404", code)
	}
	if code := do("POST", "/queue/"+second+"/retry"); code != 200 {
		t.Fatalf("retry: %d", code)
	}
	// The retried message is attempted again at once (and deferred again).
	eventually.Require(t, wait, func() string {
		if body := get(); list.Messages != 1 || !strings.Contains(body, `"attempts":2`) {
			return "after the retry: " + body
		}
		return ""
	})
	if ids := spooled(t, spool); !slices.Equal(ids, []string{second}) {
		t.Fatalf("spool holds %v, want the remaining message %s alone", ids, second)
	}
}

// A draining relay takes no more mail (new connections and idle sessions get 421)
// and goes on delivering its queue, so a pod can be emptied before it is removed.
func TestQueueDrain(t *testing.T) {
	up := downAddr(t)
	spool := t.TempDir()
	e := startRelay(t, queueConfig(up, spool, ""), testSecrets(t, "one"))
	if code, text := sendQueued(t, e, "drained", "x@example.net"); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	idle := dialRaw(t, e.addr("plain"))
	idle.cmd("EHLO client.test", 250)
	h := httptest.NewServer(e.srv.QueueHandler())
	defer h.Close()
	resp, err := http.Post(h.URL+"/queue/drain", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"draining":true`) || !strings.Contains(string(b), `"messages":1`) {
		t.Fatalf("POST /queue/drain: %d %s", resp.StatusCode, b)
	}
	if text := idle.expect(421); !strings.HasPrefix(text, "4.3.2 ") {
		t.Fatalf("idle session got 421 %s", text)
	}
	if text := refusedAt(t, e.addr("plain")); !strings.HasPrefix(text, "4.3.2 ") {
		t.Fatalf("new connection got 421 %s", text)
	}
	capture, err := mailcapture.Start(up, mailcapture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capture.Close() })
	eventually.Require(t, wait, func() string {
		if len(bySubject(capture.Messages())["drained"]) != 1 || len(spooled(t, spool)) != 0 {
			return "the draining relay did not deliver its queue"
		}
		return ""
	})
}

// A queued copy changed on disk is never delivered, signed or not: the recipient
// fails as damaged, and the sender is told.
func TestQueueDamagedCopyNotDelivered(t *testing.T) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, signed := range []bool{false, true} {
		t.Run(fmt.Sprintf("dkim=%v", signed), func(t *testing.T) {
			up := downAddr(t)
			spool := t.TempDir()
			// One attempt, then none until asked: the record stays where it is.
			cfg := strings.Replace(queueConfig(up, spool, ""), "retry: {first: 100ms, backoff: 1, maxInterval: 100ms}", "retry: {first: 1h, maxInterval: 1h}", 1)
			secrets := testSecrets(t, "one")
			if signed {
				cfg = signExampleCom(cfg, secrets, edKey)
			}
			e := startRelay(t, cfg, secrets)
			if code, text := sendQueued(t, e, "damaged", "x@example.net"); code != 250 {
				t.Fatalf("%d %s", code, text)
			}
			// Until the first attempt's record is on disk.
			eventually.Require(t, wait, func() string {
				envs, err := queue.Inspect(spool)
				if err != nil || len(envs) != 1 || envs[0].Recipients[0].Attempts != 1 {
					return fmt.Sprintf("the first attempt is not recorded: %+v %v", envs, err)
				}
				return ""
			})
			segs, _ := filepath.Glob(filepath.Join(spool, "log", "*.seg"))
			if len(segs) != 1 {
				t.Fatalf("segments %v", segs)
			}
			b, err := os.ReadFile(segs[0])
			if err != nil {
				t.Fatal(err)
			}
			// The current record is the last one: the deferral wrote it.
			i := strings.LastIndex(string(b), "body of damaged")
			if i < 0 {
				t.Fatal("message not found in its segment")
			}
			f, err := os.OpenFile(segs[0], os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("B"), int64(i))
			f.Close()
			capture, err := mailcapture.Start(up, mailcapture.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { capture.Close() })
			h := httptest.NewServer(e.srv.QueueHandler())
			t.Cleanup(h.Close)
			eventually.Require(t, wait, func() string {
				// Asked until the message is back among those waiting.
				if resp, err := http.Post(h.URL+"/queue/retry", "", nil); err == nil {
					resp.Body.Close()
				}
				if got := testutil.ToFloat64(e.metrics.QueueDeliveries.WithLabelValues("failed", "damaged", "main")); got != 1 {
					return fmt.Sprintf("%v recipients failed as damaged, want 1", got)
				}
				if ids := spooled(t, spool); len(ids) != 0 {
					return fmt.Sprintf("spool still holds %v", ids)
				}
				return ""
			})
			for _, m := range capture.Messages() {
				if strings.Contains(string(m.Data), "Body of damaged") && !slices.Equal(m.To, []string{"noreply@example.com"}) {
					t.Fatalf("the damaged copy was delivered to %v", m.To)
				}
			}
		})
	}
}
