package server_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// dialFrom connects to addr from the loopback address local (Linux routes all of
// 127.0.0.0/8 to lo), so one test can be many clients.
func dialFrom(t *testing.T, local, addr string) *smtpConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &smtpConn{t: t, conn: c, r: bufio.NewReader(c)}
}

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
	if c, err := net.DialTimeout("tcp", e.addr("smtps"), 5*time.Second); err == nil {
		defer c.Close()
		// Implicit TLS gets no plain-text 421: the connection is closed.
		if !(&smtpConn{t: t, conn: c, r: bufio.NewReader(c)}).closed() {
			t.Fatal("third connection to smtps (maxConnections 2) not closed")
		}
	}
	if got := testutil.ToFloat64(e.metrics.ConnectionsRefused.WithLabelValues("smtps", "listener-limit")); got != 1 {
		t.Fatalf("listener-limit refusals: %v, want 1", got)
	}

	// The flood: 10 addresses, 9 connections each, to the plain listener.
	greeted, refused := map[int]int{}, map[string]int{}
	for a := 0; a < 10; a++ {
		for i := 0; i < 9; i++ {
			c := dialFrom(t, fmt.Sprintf("127.0.0.%d", 10+a), e.addr("plain"))
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
