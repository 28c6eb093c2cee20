package server_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuberelay/kuberelay/relay/capture"
)

// captureAPI is the capture sink's HTTP API of a relay under test.
type captureAPI struct {
	t   *testing.T
	url string
}

func serveCapture(t *testing.T, e *relayEnv) *captureAPI {
	hs := httptest.NewServer(e.srv.CaptureHandler("relay-test-0"))
	t.Cleanup(hs.Close)
	return &captureAPI{t: t, url: hs.URL + "/capture/api/messages"}
}

// call does one request and decodes a JSON reply into v (if not nil); it returns the
// status code.
func (c *captureAPI) call(method, path string, v any) int {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.url+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			c.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

func (c *captureAPI) list(q string) capture.Listing {
	var l capture.Listing
	if code := c.call("GET", "?q="+q, &l); code != 200 {
		c.t.Fatalf("list: %d", code)
	}
	return l
}

func TestCapture(t *testing.T) {
	up := startCapture(t)
	secrets := testSecrets(t, "one")
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	// example.org's mail and the user's are captured; example.com's plain mail is not.
	cfg := signExampleCom(baseConfig(up.Addr(), "capture: {maxMessages: 3}\n"), secrets, key)
	cfg = strings.Replace(cfg, "- domain: example.org\n", "- domain: example.org\n  capture: true\n", 1)
	cfg = strings.Replace(cfg, "  allowedSenders: [example.com]\n", "  allowedSenders: [example.com]\n  capture: true\n", 1)
	e := startRelay(t, cfg, secrets)
	api := serveCapture(t, e)

	p := dialRaw(t, e.addr("plain"))
	p.cmd("EHLO client.test", 250)
	body := "From: news@example.org\r\nTo: a@example.net\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n" +
		"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello caf=C3=A9.\r\n" +
		"--b1\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>caf\xc3\xa9</b><script>alert(1)</script></p>\r\n--b1--\r\n"
	if code := p.transaction("news@example.org", "a@example.net", body); code != 250 {
		t.Fatalf("captured domain: %d", code)
	}
	if code := p.transaction("noreply@example.com", "b@example.net", message("relayed")); code != 250 {
		t.Fatalf("relayed domain: %d", code)
	}
	if msgs := up.Wait(1, wait); len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Subject: relayed") {
		t.Fatalf("upstream got %d messages, want only the one not captured", len(msgs))
	}
	// The user's mail is captured whatever its domain, and signed as it would be sent.
	c, code, text := authOn(t, e, "submission", "127.0.0.1", testPassword)
	if code != 235 {
		t.Fatalf("AUTH: %d %s", code, text)
	}
	if code := c.transaction("noreply@example.com", "c@example.net", message("from the user")); code != 250 {
		t.Fatalf("captured user: %d", code)
	}

	l := api.list("")
	if l.Messages != 2 || len(l.Items) != 2 || l.MaxMessages != 3 || l.Pod != "relay-test-0" {
		t.Fatalf("listing %+v, want 2 messages of at most 3 on relay-test-0", l)
	}
	newest, oldest := l.Items[0], l.Items[1]
	if oldest.Subject != "café" || oldest.From != "<news@example.org>" && oldest.From != "news@example.org" || len(oldest.To) != 1 {
		t.Fatalf("first captured: %+v", oldest)
	}
	if newest.User != testUser || newest.Subject != "from the user" {
		t.Fatalf("the user's message: %+v", newest)
	}
	if got := api.list("CAF"); len(got.Items) != 1 || got.Items[0].ID != oldest.ID {
		t.Fatalf("q=CAF found %d messages, want the first", len(got.Items))
	}

	var d capture.Detail
	if code := api.call("GET", "/"+oldest.ID, &d); code != 200 {
		t.Fatalf("detail: %d", code)
	}
	if d.Text != "Hello café." || !strings.Contains(d.HTML, "<b>café</b>") || d.ParseError != "" {
		t.Fatalf("decoded text %q, html %q, error %q", d.Text, d.HTML, d.ParseError)
	}
	if d.Headers[0].Name != "Received" {
		t.Fatalf("first header %q, want the relay's Received", d.Headers[0].Name)
	}
	var signed capture.Detail
	api.call("GET", "/"+newest.ID, &signed)
	if !hasHeader(signed.Headers, "DKIM-Signature") {
		t.Fatal("the user's example.com message was not DKIM-signed as relayed mail is")
	}

	// The raw message downloads as an .eml file, exactly as stored.
	resp, err := http.Get(api.url + "/" + oldest.ID + "/raw")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Type") != "message/rfc822" || !strings.Contains(resp.Header.Get("Content-Disposition"), oldest.ID+".eml") ||
		!strings.HasPrefix(string(raw), "Received: from client.test") || !strings.HasSuffix(string(raw), "--b1--\r\n") {
		t.Fatalf("raw: %s %s\n%s", resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"), raw)
	}

	// The cap: a third and fourth message drop the oldest.
	for _, s := range []string{"third", "fourth"} {
		if code := p.transaction("news@example.org", "a@example.net", "Subject: "+s+"\r\n\r\nx\r\n"); code != 250 {
			t.Fatalf("%s: %d", s, code)
		}
	}
	l = api.list("")
	if len(l.Items) != 3 || l.Items[0].Subject != "fourth" || l.Items[2].ID != newest.ID {
		t.Fatalf("after 4 captured with a cap of 3: %+v", l.Items)
	}
	if got := testutil.ToFloat64(e.metrics.CaptureEvicted); got != 1 {
		t.Fatalf("kuberelay_capture_evicted_total %v, want 1", got)
	}
	if code := api.call("GET", "/"+oldest.ID, nil); code != 404 {
		t.Fatalf("the dropped message: %d, want 404", code)
	}

	// Delete one, then all.
	if code := api.call("DELETE", "/"+newest.ID, nil); code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if code := api.call("DELETE", "/"+newest.ID, nil); code != 404 {
		t.Fatalf("delete again: %d, want 404", code)
	}
	var del struct{ Deleted int }
	if api.call("DELETE", "", &del); del.Deleted != 2 || len(api.list("").Items) != 0 {
		t.Fatalf("delete all: %d deleted, %d left", del.Deleted, len(api.list("").Items))
	}
	if len(up.Messages()) != 1 {
		t.Fatalf("the upstream got %d messages; captured mail must never reach it", len(up.Messages()))
	}

	// Capture off by a reload: the domain's mail goes to the upstream again (sessions
	// keep the configuration they started with: a new one).
	e.publish(strings.Replace(strings.Replace(cfg, "  capture: true\n", "", -1), "capture: {maxMessages: 3}\n", "", 1), secrets)
	p = dialRaw(t, e.addr("plain"))
	p.cmd("EHLO client.test", 250)
	if code := p.transaction("news@example.org", "a@example.net", "Subject: after\r\n\r\nx\r\n"); code != 250 {
		t.Fatalf("after capture was turned off: %d", code)
	}
	if msgs := up.Wait(2, wait); len(msgs) != 2 || len(api.list("").Items) != 0 {
		t.Fatalf("after capture was turned off: %d at the upstream, %d captured", len(msgs), len(api.list("").Items))
	}
}

// TestCaptureAllWithoutUpstream: with everything captured, a relay whose upstream is
// down still answers 250 and never dials it.
func TestCaptureAllWithoutUpstream(t *testing.T) {
	up := startCapture(t)
	addr := up.Addr()
	up.Close()
	e := startRelay(t, baseConfig(addr, "capture: {all: true}\n"), testSecrets(t, "one"))
	api := serveCapture(t, e)
	p := dialRaw(t, e.addr("plain"))
	p.cmd("EHLO client.test", 250)
	for _, from := range []string{"noreply@example.com", "x@example.org"} {
		if code := p.transaction(from, "a@example.net", message("all")); code != 250 {
			t.Fatalf("%s: %d", from, code)
		}
	}
	if n := len(api.list("").Items); n != 2 {
		t.Fatalf("%d captured, want 2", n)
	}
}

func TestCaptureUI(t *testing.T) {
	e := startRelay(t, baseConfig("127.0.0.1:1", "capture: {all: true}\n"), testSecrets(t, "one"))
	hs := httptest.NewServer(e.srv.CaptureHandler("relay-test-0"))
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/capture/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if resp.StatusCode != 200 || !strings.Contains(string(page), "kuberelay capture") || !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("UI: %d, CSP %q", resp.StatusCode, csp)
	}
	for _, f := range []string{"app.js", "app.css"} {
		if r, err := http.Get(hs.URL + "/capture/" + f); err != nil || r.StatusCode != 200 {
			t.Fatalf("%s: %v %v", f, err, r)
		}
	}
}

func hasHeader(hs []capture.Header, name string) bool {
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}

// TestCaptureInQueueMode: captured mail skips the queue, even a full one; the rest is
// queued as before.
func TestCaptureInQueueMode(t *testing.T) {
	spool := t.TempDir()
	cfg := queueConfig(downAddr(t), spool, "    maxMessages: 1\n")
	cfg = strings.Replace(cfg, "- domain: example.org\n", "- domain: example.org\n  capture: true\n", 1)
	e := startRelay(t, cfg, testSecrets(t, "one"))
	api := serveCapture(t, e)
	if code, text := sendQueued(t, e, "queued", "x@example.net"); code != 250 || e.srv.QueueStatus().Messages != 1 {
		t.Fatalf("queued: %d %s, %d queued", code, text, e.srv.QueueStatus().Messages)
	}
	// The queue is full now; captured mail does not need it.
	p := dialRaw(t, e.addr("plain"))
	p.cmd("EHLO client.test", 250)
	if code := p.transaction("news@example.org", "a@example.net", "Subject: captured\r\n\r\nx\r\n"); code != 250 {
		t.Fatalf("captured with a full queue: %d", code)
	}
	if l := api.list(""); len(l.Items) != 1 || l.Items[0].Subject != "captured" || e.srv.QueueStatus().Messages != 1 {
		t.Fatalf("%d captured, %d queued; want 1 and 1", len(l.Items), e.srv.QueueStatus().Messages)
	}
}
