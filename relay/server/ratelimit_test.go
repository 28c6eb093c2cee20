package server_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuberelay/kuberelay/relay/server"
)

// startLimited starts a relay whose rate limits count on a clock that stands still
// until the test moves it, so windows never turn over under a test by chance.
func startLimited(t *testing.T, yaml string) (*relayEnv, func(time.Duration)) {
	t.Helper()
	now := time.Date(2026, 12, 3, 10, 0, 30, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	e := startRelayLog(t, yaml, testSecrets(t, "one"), logr.Logger{}, func(o *server.Options) { o.Now = clock })
	return e, func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
	}
}

// Each kind of limit refuses at its configured figure, counted: the user's messages
// per minute (451 4.7.1 at MAIL), the sender domain's recipients per minute (452 4.5.3
// at RCPT), the upstream's messages per hour, and the user's concurrent sessions (454
// 4.7.0 at AUTH); the next window lets mail through again.
func TestRateLimits(t *testing.T) {
	up := startCapture(t)
	cfg := baseConfig(up.Addr(), "")
	cfg = strings.Replace(cfg, "  allowedSenders: [example.com]\n", "  allowedSenders: [example.com]\n  rateLimits: {messagesPerMinute: 3, maxSessions: 2}\n", 1)
	cfg = strings.Replace(cfg, "- domain: example.org\n", "- domain: example.org\n  rateLimits: {recipientsPerMinute: 5}\n", 1)
	cfg = strings.Replace(cfg, "  timeouts: {acquire: 2s}\n", "  timeouts: {acquire: 2s}\n  rateLimits: {messagesPerHour: 10}\n", 1)
	e, advance := startLimited(t, cfg)

	// The user: three messages a minute, the fourth refused at MAIL.
	c, code, text := authOn(t, e, "submission", "127.0.0.1", testPassword)
	if code != 235 {
		t.Fatalf("AUTH: %d %s", code, text)
	}
	for i := range 3 {
		if code := c.transaction("noreply@example.com", "x@example.net", message("limited")); code != 250 {
			t.Fatalf("message %d of 3: %d", i+1, code)
		}
	}
	c.send("MAIL FROM:<noreply@example.com>\r\n")
	if code, text, _ := c.reply(); code != 451 || !strings.HasPrefix(text, "4.7.1 ") || !strings.Contains(text, "at most 3 messages per minute for user "+testUser) {
		t.Fatalf("4th message in the minute: %d %s, want 451 4.7.1 naming the limit", code, text)
	}
	// Sessions: two at once, the third refused at AUTH.
	c2, code, _ := authOn(t, e, "submission", "127.0.0.1", testPassword)
	if code != 235 {
		t.Fatalf("second session: %d", code)
	}
	_, code, text = authOn(t, e, "submission", "127.0.0.1", testPassword)
	if code != 454 || !strings.HasPrefix(text, "4.7.0 ") {
		t.Fatalf("third concurrent session: %d %s, want 454 4.7.0", code, text)
	}
	c2.cmd("QUIT", 221)
	advance(time.Minute)
	if code := c.transaction("noreply@example.com", "x@example.net", message("next minute")); code != 250 {
		t.Fatalf("the next minute's first message: %d", code)
	}

	// The domain: five recipients a minute, the sixth refused at RCPT; the message
	// goes to the five.
	p := dialRaw(t, e.addr("plain"))
	p.cmd("EHLO client.test", 250)
	p.cmd("MAIL FROM:<news@example.org>", 250)
	for i := range 5 {
		p.cmd("RCPT TO:<r"+string(rune('a'+i))+"@example.net>", 250)
	}
	p.send("RCPT TO:<rf@example.net>\r\n")
	if code, text, _ := p.reply(); code != 452 || !strings.HasPrefix(text, "4.5.3 ") {
		t.Fatalf("6th recipient in the minute: %d %s, want 452 4.5.3", code, text)
	}
	p.cmd("DATA", 354)
	p.send(message("five") + ".\r\n")
	p.expect(250)

	// The upstream: ten messages an hour in all, whoever sends them (five so far:
	// four from the user, one from the domain).
	advance(time.Minute)
	for i := range 5 {
		if code := p.transaction("news@example.org", "x@example.net", message("hour")); code != 250 {
			t.Fatalf("upstream message %d: %d", 6+i, code)
		}
	}
	p.send("MAIL FROM:<news@example.org>\r\n")
	if code, text, _ := p.reply(); code != 451 || !strings.Contains(text, "10 messages per hour for upstream main") {
		t.Fatalf("11th message in the hour through the upstream: %d %s", code, text)
	}
	for _, c := range []struct {
		kind, unit, window string
		want               float64
	}{{"user", "messages", "minute", 1}, {"user", "sessions", "", 1}, {"domain", "recipients", "minute", 1}, {"upstream", "messages", "hour", 1}} {
		if got := testutil.ToFloat64(e.metrics.RateLimited.WithLabelValues(c.kind, c.unit, c.window)); got != c.want {
			t.Errorf("rate_limited_total{%s,%s,%s} = %v, want %v", c.kind, c.unit, c.window, got, c.want)
		}
	}
	// What each key used of the current windows is exported (the upstream: 10 this hour).
	mfs, err := e.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "kuberelay_relay_rate_limit_used" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			used[l["kind"]+"/"+l["name"]+"/"+l["unit"]+"/"+l["window"]] = m.GetGauge().GetValue()
		}
	}
	if used["upstream/main/messages/hour"] != 10 || used["user/"+testUser+"/messages/hour"] != 4 || used["domain/example.org/recipients/hour"] != 10 {
		t.Errorf("kuberelay_relay_rate_limit_used: %v", used)
	}
	if got := len(up.Messages()); got != 10 {
		t.Errorf("%d messages reached the upstream, want 10", got)
	}
}
