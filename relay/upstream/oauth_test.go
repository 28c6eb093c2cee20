package upstream_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

const (
	oauthClientID     = "relay-client-id"
	oauthClientSecret = "relay-client-s3cret"
	oauthScope        = "https://outlook.office365.com/.default"
	oauthMailbox      = "relay@corp.example"
)

// tokenEndpoint is a client credentials token endpoint (RFC 6749 section 4.4) that
// checks the client and hands out tokens tok-1, tok-2, ...
type tokenEndpoint struct {
	*httptest.Server
	requests  atomic.Int64
	expiresIn atomic.Int64 // seconds
	fail      atomic.Bool  // answer 401 invalid_client
}

func startTokenEndpoint(t *testing.T) *tokenEndpoint {
	te := &tokenEndpoint{}
	te.expiresIn.Store(3600)
	te.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := te.requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if err := r.ParseForm(); err != nil || r.Method != http.MethodPost || r.Form.Get("grant_type") != "client_credentials" ||
			r.Form.Get("client_id") != oauthClientID || r.Form.Get("client_secret") != oauthClientSecret ||
			r.Form.Get("scope") != oauthScope || te.fail.Load() {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}`)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("tok-%d", n), "token_type": "Bearer", "expires_in": te.expiresIn.Load()})
	}))
	t.Cleanup(te.Close)
	return te
}

// bearerServer is an SMTP server taking XOAUTH2 and OAUTHBEARER logins of the
// mailbox with tokens the endpoint issued and that are not revoked.
type bearerServer struct {
	*testpeers.Server
	mu      sync.Mutex
	revoked map[string]bool
	used    map[string]int
}

func startBearerServer(t *testing.T) *bearerServer {
	b := &bearerServer{revoked: map[string]bool{}, used: map[string]int{}}
	b.Server = testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, Bearer: func(user, token string) error {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.used[token]++
		if user != oauthMailbox || !strings.HasPrefix(token, "tok-") || b.revoked[token] {
			return errors.New("invalid token")
		}
		return nil
	}})
	return b
}

func oauthPool(t *testing.T, srv *bearerServer, te *tokenEndpoint, mech string, perConn int) *upstream.Pool {
	u := testUpstream(t, config.TLSStartTLS, srv.Addr)
	u.MaxMessagesPerConnection = perConn
	u.Auth = &config.UpstreamAuth{Mechanism: mech, OAuth2: &config.OAuth2{TokenURL: te.URL}}
	return tlsPool(t, u, srv.CA.Pool, &config.Credentials{Username: oauthMailbox,
		OAuth2: &config.OAuth2Client{TokenURL: te.URL + "/oauth2/v2.0/token", ClientID: oauthClientID, ClientSecret: oauthClientSecret, Scopes: []string{oauthScope}}})
}

// TestOAuth2 authenticates with tokens from the client credentials grant: one token
// request for 100 messages over ten connections; a token about to expire is
// replaced; a token the server refuses (revoked) fails the message with a 4xx and
// is replaced for the next; a token endpoint refusing the client is a 4xx naming
// the endpoint's reply, never the secret.
func TestOAuth2(t *testing.T) {
	for _, mech := range []string{"XOAUTH2", "OAUTHBEARER"} {
		t.Run(mech, func(t *testing.T) {
			t.Parallel()
			te := startTokenEndpoint(t)
			srv := startBearerServer(t)
			p := oauthPool(t, srv, te, mech, 10)
			ctx := ctxFor(t)
			for i := range 100 {
				if o := send(ctx, p, fmt.Sprintf("oauth-%d", i), "r@example.net"); o.err != nil {
					t.Fatalf("message %d: %s", i, describe(o))
				}
			}
			if n, conns := te.requests.Load(), srv.Accepted(); n != 1 || conns < 10 {
				t.Fatalf("%d token requests for 100 messages over %d connections, want 1 over at least 10", n, conns)
			}
			if msgs := srv.Messages(); len(msgs) != 100 || msgs[99].User != oauthMailbox {
				t.Fatalf("%d messages at the server", len(msgs))
			}

			// Tokens that expire within the refresh margin are replaced at each new
			// connection.
			te.expiresIn.Store(60)
			p.Close()
			p = oauthPool(t, srv, te, mech, 10)
			before := te.requests.Load()
			for i := range 30 {
				if o := send(ctx, p, fmt.Sprintf("short-%d", i), "r@example.net"); o.err != nil {
					t.Fatalf("short-lived token, message %d: %s", i, describe(o))
				}
			}
			if n := te.requests.Load() - before; n != 3 {
				t.Fatalf("%d token requests for 3 connections with tokens about to expire, want one each", n)
			}
			te.expiresIn.Store(3600)

			// A revoked token (the next one issued): the message gets a 4xx, never a
			// 250; the next message gets a new token.
			p.Close()
			p = oauthPool(t, srv, te, mech, 10)
			srv.mu.Lock()
			srv.revoked[fmt.Sprintf("tok-%d", te.requests.Load()+1)] = true
			srv.mu.Unlock()
			o := send(ctx, p, "revoked", "r@example.net")
			e := asError(t, o.err)
			if !e.Temporary() || e.Code/100 == 5 || !strings.Contains(e.Error(), "refused with ") {
				t.Fatalf("a revoked token: %v, want a temporary failure after the server refused it", o.err)
			}
			if o := send(ctx, p, "after-revoked", "r@example.net"); o.err != nil {
				t.Fatalf("the message after a revoked token: %s", describe(o))
			}
			if n := countSubject(srv.Messages(), "revoked"); n != 0 {
				t.Fatalf("the message refused with a revoked token reached the server %d times", n)
			}

			// The token endpoint refuses the client: 4xx, its reply named, no secret.
			te.fail.Store(true)
			p.Close()
			p = oauthPool(t, srv, te, mech, 10)
			o = send(ctx, p, "no-token", "r@example.net")
			e = asError(t, o.err)
			if !e.Temporary() || e.Code != 0 || !strings.Contains(e.Error(), "answered 401 invalid_client") {
				t.Fatalf("token endpoint refusing: %v", e)
			}
			if strings.Contains(e.Error(), oauthClientSecret) || strings.Contains(e.Error(), "tok-") {
				t.Fatalf("the error reveals a secret or a token: %v", e)
			}
		})
	}
}

func countSubject(msgs []testpeers.Message, subject string) int {
	n := 0
	for _, m := range msgs {
		if strings.Contains(string(m.Data), "Subject: "+subject+"\r\n") {
			n++
		}
	}
	return n
}

// TestOAuth2ClientCertificate: with a certificate instead of a secret, each token
// request carries a client assertion (RFC 7523) the endpoint verifies with the
// certificate: RS256 over the header naming the certificate's thumbprint and claims
// naming the client and the endpoint; no secret is sent.
func TestOAuth2ClientCertificate(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	var tokenURL string
	tokenURL, requests := checkingEndpoint(t, "tok-cert", func(r *http.Request) string { return checkAssertion(r, der, &key.PublicKey, tokenURL) })
	srv := startBearerServer(t)
	u := testUpstream(t, config.TLSStartTLS, srv.Addr)
	u.Auth = &config.UpstreamAuth{Mechanism: "XOAUTH2", OAuth2: &config.OAuth2{TokenURL: tokenURL}}
	p := tlsPool(t, u, srv.CA.Pool, &config.Credentials{Username: oauthMailbox,
		OAuth2: &config.OAuth2Client{TokenURL: tokenURL, ClientID: oauthClientID, ClientCertificate: der, ClientKey: key, Scopes: []string{oauthScope}}})
	for i := range 3 {
		if o := send(ctxFor(t), p, fmt.Sprintf("cert-%d", i), "r@example.net"); o.err != nil {
			t.Fatalf("message %d: %s", i, describe(o))
		}
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

// checkAssertion verifies a client credentials request with a client assertion as
// Microsoft Entra ID does; it returns what is wrong, or "".
func checkAssertion(r *http.Request, certDER []byte, pub *rsa.PublicKey, tokenURL string) string {
	if err := r.ParseForm(); err != nil {
		return err.Error()
	}
	f := r.Form
	switch {
	case f.Get("grant_type") != "client_credentials" || f.Get("client_id") != oauthClientID || f.Get("scope") != oauthScope:
		return "grant, client or scope"
	case f.Has("client_secret"):
		return "a secret was sent"
	case f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
		return "client_assertion_type"
	}
	parts := strings.Split(f.Get("client_assertion"), ".")
	if len(parts) != 3 {
		return "not a JWT"
	}
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
		return "bad signature"
	}
	var header, claims map[string]any
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil {
		return "header or claims"
	}
	thumb := sha1.Sum(certDER)
	now := float64(time.Now().Unix())
	switch {
	case header["alg"] != "RS256" || header["x5t"] != base64.RawURLEncoding.EncodeToString(thumb[:]):
		return fmt.Sprintf("header %v", header)
	case claims["aud"] != tokenURL || claims["iss"] != oauthClientID || claims["sub"] != oauthClientID || claims["jti"] == "":
		return fmt.Sprintf("claims %v", claims)
	case claims["exp"].(float64) <= now || claims["nbf"].(float64) > now+1:
		return "expired or not yet valid"
	}
	return ""
}

// TestOAuth2GoogleServiceAccount: with a Google service account key, tokens come
// from the JWT bearer grant (RFC 7523 section 2.1): an assertion signed by the
// account's key, issued by the account for the mailbox (domain-wide delegation),
// with the scope; the upstream takes the token with XOAUTH2.
func TestOAuth2GoogleServiceAccount(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	const email = "relay@project.iam.gserviceaccount.com"
	var tokenURL string
	tokenURL, requests := checkingEndpoint(t, "tok-google", func(r *http.Request) string {
		if r.ParseForm() != nil || r.Form.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
			return "grant_type"
		}
		parts := strings.Split(r.Form.Get("assertion"), ".")
		if len(parts) != 3 {
			return "not a JWT"
		}
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest[:], sig) != nil {
			return "bad signature"
		}
		var header, claims map[string]any
		hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
		cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
		if json.Unmarshal(hb, &header) != nil || json.Unmarshal(cb, &claims) != nil || header["kid"] != "key-1" {
			return fmt.Sprintf("header %v", header)
		}
		if claims["iss"] != email || claims["sub"] != oauthMailbox || claims["scope"] != "https://mail.google.com/" || claims["aud"] != tokenURL {
			return fmt.Sprintf("claims %v", claims)
		}
		return ""
	})
	saJSON, _ := json.Marshal(map[string]string{"type": "service_account", "client_email": email, "private_key_id": "key-1",
		"private_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), "token_uri": tokenURL})
	sa, err := config.ParseServiceAccount(saJSON)
	if err != nil {
		t.Fatal(err)
	}
	srv := startBearerServer(t)
	u := testUpstream(t, config.TLSStartTLS, srv.Addr)
	u.Auth = &config.UpstreamAuth{Mechanism: "XOAUTH2", OAuth2: &config.OAuth2{}}
	p := tlsPool(t, u, srv.CA.Pool, &config.Credentials{Username: oauthMailbox,
		OAuth2: &config.OAuth2Client{ServiceAccount: sa, Scopes: []string{"https://mail.google.com/"}}})
	for i := range 3 {
		if o := send(ctxFor(t), p, fmt.Sprintf("google-%d", i), "r@example.net"); o.err != nil {
			t.Fatalf("message %d: %s", i, describe(o))
		}
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
}

// checkingEndpoint is a token endpoint at the returned URL that hands out token to
// requests check finds nothing wrong with, and answers the others 400 with check's
// finding; requests counts them all.
func checkingEndpoint(t *testing.T, token string, check func(*http.Request) string) (string, *atomic.Int64) {
	requests := &atomic.Int64{}
	te := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if why := check(r); why != "" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"invalid_client","error_description":%q}`, why)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600}`, token)
	}))
	t.Cleanup(te.Close)
	return te.URL + "/token", requests
}
