package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kuberelay/kuberelay/internal/eventually"
	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// TestOAuth2Upstream relays through an upstream that takes XOAUTH2 logins with
// tokens from a local client credentials endpoint: clients get 250 and the token
// endpoint one request for all their messages; with the token endpoint refusing the
// client, they get a 4xx (never a 250), and an upstream check says AuthAccepted false
// naming the token endpoint's answer.
func TestOAuth2Upstream(t *testing.T) {
	var requests atomic.Int64
	var refuse atomic.Bool
	te := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if r.ParseForm() != nil || r.Form.Get("client_secret") != "s3cret" || refuse.Load() {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"invalid_client"}`)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("tok-%d", n), "token_type": "Bearer", "expires_in": 3600})
	}))
	defer te.Close()
	smarthost := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, Bearer: func(user, token string) error {
		if user != "relay@corp.example" || !strings.HasPrefix(token, "tok-") {
			return fmt.Errorf("bad token")
		}
		return nil
	}})
	secrets := testSecrets(t, "one")
	secrets["m365/ca.crt"] = smarthost.CA.CertPEM
	secrets["m365/username"] = []byte("relay@corp.example")
	secrets["m365/client-id"] = []byte("app-id")
	secrets["m365/client-secret"] = []byte("s3cret")
	host, port, _ := strings.Cut(smarthost.Addr, ":")
	cfg := baseConfig("127.0.0.1:1", `- name: m365
  endpoints: [{host: "`+host+`", port: `+port+`}]
  tls: {mode: STARTTLS, caFile: m365/ca.crt}
  auth:
    usernameFile: m365/username
    oauth2: {tokenURL: "`+te.URL+`/token", clientIDFile: m365/client-id, clientSecretFile: m365/client-secret, scopes: [https://outlook.office365.com/.default]}
`)
	cfg = strings.Replace(cfg, "- domain: example.org\n", "- domain: example.org\n  upstream: m365\n", 1)
	e := startRelay(t, cfg, secrets)

	p := dialRaw(t, e.addr("plain"))
	p.cmd("EHLO client.test", 250)
	for i := range 20 {
		if code := p.transaction("news@example.org", "a@example.net", message(fmt.Sprintf("oauth-%d", i))); code != 250 {
			t.Fatalf("message %d: %d", i, code)
		}
	}
	if n := requests.Load(); n != 1 || len(smarthost.Messages()) != 20 {
		t.Fatalf("%d token requests, %d messages delivered; want 1 and 20", n, len(smarthost.Messages()))
	}

	// The token endpoint refuses the client: a new connection cannot log in.
	refuse.Store(true)
	smarthost.DropConnections()
	e2 := startRelay(t, cfg, secrets) // a fresh pool: no token cached
	p2 := dialRaw(t, e2.addr("plain"))
	p2.cmd("EHLO client.test", 250)
	p2.cmd("MAIL FROM:<news@example.org>", 250)
	p2.send("RCPT TO:<a@example.net>\r\n")
	if code, text, _ := p2.reply(); code/100 != 4 {
		t.Fatalf("with the token endpoint refusing: %d %s, want a 4xx", code, text)
	}
	if !strings.Contains(e2.logs.String(), "token endpoint 127.0.0.1") || strings.Contains(e2.logs.String(), "s3cret") {
		t.Errorf("the log should name the token endpoint's answer and never the secret:\n%s", e2.logs.String())
	}
	e2.srv.StartChecks()
	eventually.Require(t, wait, func() string {
		if c := e2.srv.Checks(); c == nil || c.FinishedAt == nil {
			return "the round has not finished"
		}
		return ""
	})
	if r := e2.srv.Checks().Upstreams["m365"][0]; r.AuthAccepted == nil || *r.AuthAccepted || !strings.Contains(r.Error, "answered 401 invalid_client") {
		t.Fatalf("the check with the token endpoint refusing: %+v", r)
	}
	if len(smarthost.Messages()) != 20 {
		t.Fatalf("%d messages at the smarthost, want the first 20 only", len(smarthost.Messages()))
	}
}
