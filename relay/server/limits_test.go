package server_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// TestConnectionFloodLeavesSubmissionServing floods the open listener from many
// addresses that may not relay, as a scan or an attack would, and checks that each
// address is held to its own limit, a listener to its own, and that authenticated
// clients on submission are still served and can send while the flood holds.
func TestConnectionFloodLeavesSubmissionServing(t *testing.T) {
	up := startCapture(t)
	cfg := strings.Replace(baseConfig(up.Addr(), `limits:
  maxConnections: 60
  maxConnectionsPerClient: 8
  reservedAuthConnections: 10
`), "- {name: smtps, address: \"127.0.0.1:0\", tls: Implicit}",
		"- {name: smtps, address: \"127.0.0.1:0\", tls: Implicit, maxConnections: 2}", 1)
	e := startRelay(t, cfg, testSecrets(t, "one"))

	// A listener's own limit: smtps takes two (held through the flood, they count
	// towards the share of listeners that do not require AUTH).
	for i := 0; i < 2; i++ {
		dialTLSRaw(t, e.addr("smtps"), e.clientTLS)
	}
	if got := testutil.ToFloat64(e.metrics.ConnectionsRefused.WithLabelValues("smtps", "listener-limit")); got != 0 {
		t.Fatalf("listener-limit refusals before the limit: %v", got)
	}
	// Implicit TLS gets no plain-text 421: the connection is closed.
	if !connect(t, e.addr("smtps"), "", nil).closed() {
		t.Fatal("third connection to smtps (maxConnections 2) not closed")
	}
	if got := testutil.ToFloat64(e.metrics.ConnectionsRefused.WithLabelValues("smtps", "listener-limit")); got != 1 {
		t.Fatalf("listener-limit refusals: %v, want 1", got)
	}

	// The flood: 10 addresses, 9 connections each, to the plain listener.
	greeted, refused := map[int]int{}, map[string]int{}
	for a := 0; a < 10; a++ {
		for i := 0; i < 9; i++ {
			c := connect(t, e.addr("plain"), fmt.Sprintf("127.0.0.%d", 10+a), nil)
			code, text, err := c.reply()
			if err != nil {
				t.Fatalf("flood connection %d from address %d: %v", i, a, err)
			}
			switch {
			case code == 220:
				greeted[a]++
			case code == 421 && strings.Contains(text, "from your address"):
				refused["client"]++
			case code == 421 && strings.Contains(text, "Too many connections"):
				refused["total"]++
			default:
				t.Fatalf("flood connection: %d %s", code, text)
			}
		}
	}
	total := 0
	for a, n := range greeted {
		if n > 8 {
			t.Errorf("address %d holds %d connections, over maxConnectionsPerClient 8", a, n)
		}
		total += n
	}
	// 60 in all, of which 10 are kept for listeners that require AUTH and 2 are
	// smtps's.
	if total != 48 || refused["total"] != 90-48-refused["client"] {
		t.Errorf("flood: %d connections held, refused %v; want 48 held", total, refused)
	}
	if got := testutil.ToFloat64(e.metrics.ConnectionsRefused.WithLabelValues("plain", "client-limit")); got != float64(refused["client"]) || got == 0 {
		t.Errorf("client-limit refusals counted %v, seen %d", got, refused["client"])
	}

	// While the flood holds, an authenticated client sends mail on submission.
	sub := dialRaw(t, e.addr("submission"))
	sub.cmd("EHLO client.test", 250)
	sub.startTLS(e.clientTLS)
	sub.cmd("EHLO client.test", 250)
	sub.cmd("AUTH PLAIN "+plainIR(testUser, testPassword), 235)
	if code := sub.transaction("noreply@example.com", "x@example.net", message("during-flood")); code != 250 {
		t.Fatalf("mail on submission during the flood: %d", code)
	}

}

// authOn opens a session from the address local on the listener kind (submission or
// smtp: STARTTLS; smtps: implicit TLS), sends AUTH PLAIN with password and returns the
// reply.
func authOn(t *testing.T, e *relayEnv, kind, local, password string) (*smtpConn, int, string) {
	t.Helper()
	var c *smtpConn
	if kind == "smtps" {
		c = connect(t, e.addr("smtps"), local, e.clientTLS)
		c.expect(220)
		c.cmd("EHLO client.test", 250)
	} else {
		c = connect(t, e.addr(kind), local, nil)
		c.expect(220)
		c.cmd("EHLO client.test", 250)
		c.startTLS(e.clientTLS)
		c.cmd("EHLO client.test", 250)
	}
	c.send("AUTH PLAIN " + plainIR(testUser, password) + "\r\n")
	code, text, err := c.reply()
	if err != nil {
		t.Fatalf("AUTH from %s on %s: %v", local, kind, err)
	}
	return c, code, text
}

// TestBruteForceAcrossConnections guesses passwords over many connections, one guess
// each, as a real attack does to dodge the per-session error limit: the client address
// is refused (421 4.7.0) once its budget is spent, even with the right password; other
// addresses still authenticate; a username whose budget is spent is locked out only
// briefly, and never for an address that authenticated as it before.
func TestBruteForceAcrossConnections(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), `limits:
  auth:
    maxFailuresPerClient: 4
    maxFailuresPerUser: 14
    failureWindow: 1h
    userLockout: 300ms
    failureDelay: 1ms
`), testSecrets(t, "one"))

	for i, kind := range []string{"submission", "smtp", "smtps"} {
		attacker := fmt.Sprintf("127.0.1.%d", i+1)
		for guess := 0; guess < 4; guess++ {
			if _, code, text := authOn(t, e, kind, attacker, fmt.Sprintf("guess-%d", guess)); code != 535 {
				t.Fatalf("%s: guess %d got %d %s, want 535", kind, guess, code, text)
			}
		}
		// The budget is spent: refused before the password is looked at, and closed.
		c, code, text := authOn(t, e, kind, attacker, testPassword)
		if code != 421 || !strings.HasPrefix(text, "4.7.0 Too many failed authentications") {
			t.Fatalf("%s: AUTH after the budget got %d %s, want 421 4.7.0", kind, code, text)
		}
		if !c.closed() {
			t.Fatalf("%s: connection open after the 421", kind)
		}
		// Another address is not held back by the attacker's failures.
		if _, code, text := authOn(t, e, kind, fmt.Sprintf("127.0.2.%d", i+1), testPassword); code != 235 {
			t.Fatalf("%s: a good client got %d %s", kind, code, text)
		}
	}
	if got := testutil.ToFloat64(e.metrics.AuthThrottled.WithLabelValues("submission", "client")); got != 1 {
		t.Errorf("client throttles on submission counted %v, want 1", got)
	}

	// 12 failures so far for the user; two more addresses spend the user's budget of 14.
	for i := 0; i < 2; i++ {
		if _, code, _ := authOn(t, e, "submission", fmt.Sprintf("127.0.3.%d", i+1), "wrong"); code != 535 {
			t.Fatalf("failure %d for the user: got %d", i, code)
		}
	}
	// A new address is locked out of the user for now ...
	if _, code, text := authOn(t, e, "submission", "127.0.4.1", testPassword); code != 421 {
		t.Fatalf("locked user from a new address: got %d %s, want 421", code, text)
	}
	if got := testutil.ToFloat64(e.metrics.AuthThrottled.WithLabelValues("submission", "user")); got != 1 {
		t.Errorf("user throttles counted %v, want 1", got)
	}
	// ... an address that authenticated as the user before is not ...
	if _, code, text := authOn(t, e, "submission", "127.0.2.1", testPassword); code != 235 {
		t.Fatalf("locked user from a known address: got %d %s, want 235", code, text)
	}
	// ... and the lockout ends by itself (userLockout 300ms): a refused attempt does not
	// extend it.
	ok := testpeers.Eventually(func() bool {
		_, code, _ := authOn(t, e, "submission", "127.0.4.1", testPassword)
		return code == 235
	})
	if !ok {
		t.Fatal("the user lockout never ended")
	}
}
