package server_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kuberelay/kuberelay/internal/eventually"
	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/server"
)

// TestUpstreamChecks: a round connects to every endpoint of every upstream as a
// delivery would, and reports per endpoint: reachable with the login taken, the login
// refused with the server's reply (and no password in it), unreachable. No mail is
// sent. A fixed password shows at the next round, after a reload.
func TestUpstreamChecks(t *testing.T) {
	const user, pass = "relay", "right-Pa55word"
	secure := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, Users: map[string]string{user: pass}})
	up := startCapture(t)
	down := downAddr(t)
	upstreams := func(password string) (string, map[string][]byte) {
		secrets := testSecrets(t, "one")
		secrets["upstream/ca.crt"] = secure.CA.CertPEM
		secrets["upstream/username"] = []byte(user)
		secrets["upstream/password"] = []byte(password)
		host, port, _ := strings.Cut(secure.Addr, ":")
		dhost, dport, _ := strings.Cut(down, ":")
		return baseConfig(up.Addr(), `- name: secure
  endpoints: [{host: "`+host+`", port: `+port+`}, {host: "`+dhost+`", port: `+dport+`}]
  tls: {mode: STARTTLS, caFile: upstream/ca.crt}
  auth: {usernameFile: upstream/username, passwordFile: upstream/password}
  timeouts: {connect: 5s}
`), secrets
	}
	cfg, secrets := upstreams("wrong-" + pass)
	e := startRelay(t, cfg, secrets)
	hs := httptest.NewServer(e.srv.ChecksHandler())
	defer hs.Close()

	round := func() *server.UpstreamChecks {
		t.Helper()
		// Rounds do not start back to back: ask until one does.
		eventually.Require(t, wait, func() string {
			resp, err := http.Post(hs.URL+"/upstreams/check", "", nil)
			if err != nil {
				return err.Error()
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return "POST /upstreams/check: " + resp.Status
			}
			return ""
		})
		var last *server.UpstreamChecks
		eventually.Require(t, wait, func() string {
			r, err := http.Get(hs.URL + "/upstreams/check")
			if err != nil {
				return err.Error()
			}
			defer r.Body.Close()
			last = nil
			if err := json.NewDecoder(r.Body).Decode(&last); err != nil || last == nil || last.FinishedAt == nil {
				return "the round has not finished"
			}
			return ""
		})
		return last
	}
	r := round()
	hash, _ := e.srv.Current()
	if r.ConfigHash != hash || len(r.Upstreams) != 2 {
		t.Fatalf("round %+v, want both upstreams of %s", r, hash)
	}
	main := r.Upstreams["main"]
	if len(main) != 1 || !main[0].Reachable || main[0].AuthAccepted != nil || main[0].Error != "" {
		t.Errorf("main (no AUTH): %+v", main)
	}
	sec := r.Upstreams["secure"]
	if len(sec) != 2 || !sec[0].Reachable || sec[0].AuthAccepted == nil || *sec[0].AuthAccepted || !strings.Contains(sec[0].Error, "535") {
		t.Errorf("secure's first endpoint with a wrong password: %+v, want reachable, login refused with the server's 535", sec)
	}
	if strings.Contains(sec[0].Error, pass) {
		t.Errorf("the result holds the password: %s", sec[0].Error)
	}
	if len(sec) == 2 && (sec[1].Reachable || sec[1].AuthAccepted != nil || !strings.Contains(sec[1].Error, "connecting")) {
		t.Errorf("secure's second endpoint (nothing listens): %+v", sec[1])
	}
	if n := len(secure.Messages()) + len(up.Messages()); n != 0 {
		t.Errorf("checks delivered %d messages", n)
	}

	// A round of one upstream checks only that one.
	eventually.Require(t, wait, func() string {
		resp, err := http.Post(hs.URL+"/upstreams/check?upstream=main", "", nil)
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return resp.Status
		}
		return ""
	})
	eventually.Require(t, wait, func() string {
		if c := e.srv.Checks(); c == nil || c.FinishedAt == nil {
			return "the round has not finished"
		}
		return ""
	})
	if c := e.srv.Checks(); len(c.Upstreams) != 1 || c.Upstreams["main"] == nil {
		t.Errorf("a round of main checked %v", c.Upstreams)
	}

	// The password fixed: the next round, on the new configuration, logs in.
	cfg, secrets = upstreams(pass)
	e.publish(cfg, secrets)
	r = round()
	if sec := r.Upstreams["secure"]; sec[0].AuthAccepted == nil || !*sec[0].AuthAccepted || sec[0].Error != "" {
		t.Errorf("after the fix: %+v", sec[0])
	}
	if h, _ := e.srv.Current(); r.ConfigHash != h || h == hash {
		t.Errorf("the round ran on %s, want the new configuration %s", r.ConfigHash, h)
	}
}
