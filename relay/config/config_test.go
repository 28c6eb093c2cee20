package config

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"

	"golang.org/x/crypto/bcrypt"

	"github.com/kuberelay/kuberelay/internal/testcerts"
)

const validYAML = `apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayConfig
hostname: relay.example.com
listeners:
- name: smtp
  address: ":2525"
  tls: None
- name: submission
  address: ":2587"
  requireAuth: true
tls:
  certFile: tls.crt
  keyFile: tls.key
allowedNetworks: ["10.0.0.0/8", "192.168.1.7"]
users:
- username: app
  passwordHashFile: users/app
  allowedSenders: ["noreply@example.com", "example.org"]
domains:
- domain: Example.COM
  allowedSenders: ["noreply", "alerts-*"]
  dkim:
    selector: s1
    privateKeyFile: dkim/example.com
- domain: example.org
  upstream: backup
defaultUpstream: ses
upstreams:
- name: ses
  endpoints:
  - host: email-smtp.eu-west-1.amazonaws.com
  auth:
    usernameFile: upstreams/ses/username
    passwordFile: upstreams/ses/password
- name: backup
  endpoints: [{host: 10.1.2.3, port: 25}]
  tls: {mode: None}
`

func TestParseDefaultsValidate(t *testing.T) {
	c, err := Parse([]byte(validYAML))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	if c.Listeners[1].TLS != TLSStartTLS {
		t.Errorf("listener tls default = %q, want STARTTLS", c.Listeners[1].TLS)
	}
	if c.Domains[0].Domain != "example.com" {
		t.Errorf("domain not lowercased: %q", c.Domains[0].Domain)
	}
	if got := c.Upstreams[0].Endpoints[0].Port; got != 587 {
		t.Errorf("STARTTLS endpoint port default = %d, want 587", got)
	}
	if c.Upstreams[0].Auth.Mechanism != "PLAIN" || c.NullSender != NullSenderReject {
		t.Errorf("defaults not applied: %+v %q", c.Upstreams[0].Auth, c.NullSender)
	}
	if c.Limits.MaxMessageBytes != DefaultMaxMessageBytes || c.Limits.CommandTimeout.Duration != DefaultCommandTimeout {
		t.Errorf("limit defaults not applied: %+v", c.Limits)
	}
	// Marshal is the inverse of Parse.
	out, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(out)
	if err != nil {
		t.Fatalf("re-parsing marshalled config: %v\n%s", err, out)
	}
	c2.SetDefaults()
	out2, _ := Marshal(c2)
	if string(out) != string(out2) {
		t.Errorf("round trip changed the config:\n%s\n---\n%s", out, out2)
	}
}

func TestParseRefusesUnknownField(t *testing.T) {
	_, err := Parse([]byte(strings.Replace(validYAML, "hostname:", "hostnme:", 1)))
	if err == nil || !strings.Contains(err.Error(), `unknown field "hostnme"`) {
		t.Fatalf("want an unknown field error naming hostnme, got %v", err)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	cases := []struct {
		name   string
		edit   func(*Config)
		wantIn string
	}{
		{"version", func(c *Config) { c.APIVersion = "v2" }, "apiVersion: must be"},
		{"no listeners", func(c *Config) { c.Listeners = nil }, "listeners: at least one"},
		{"duplicate listener name", func(c *Config) { c.Listeners[1].Name = "smtp" }, `listeners[1].name: "smtp" is used`},
		{"duplicate address", func(c *Config) { c.Listeners[1].Address = ":2525" }, `listeners[1].address: port 2525 is used`},
		{"bad address", func(c *Config) { c.Listeners[0].Address = "2525" }, "listeners[0].address"},
		{"bad tls mode", func(c *Config) { c.Listeners[0].TLS = "SSL" }, `listeners[0].tls: "SSL" is not one of`},
		{"auth without tls", func(c *Config) { c.Listeners[0].RequireAuth = true }, "listeners[0].requireAuth: AUTH is only offered over TLS"},
		{"tls listener without cert", func(c *Config) { c.TLS = nil }, "tls: a listener uses STARTTLS"},
		{"open relay v4", func(c *Config) { c.AllowedNetworks = []string{"0.0.0.0/0"} }, "allowedNetworks[0]: \"0.0.0.0/0\" allows every address"},
		{"open relay v6", func(c *Config) { c.AllowedNetworks = []string{"::/0"} }, "would make an open relay"},
		{"bad cidr", func(c *Config) { c.AllowedNetworks = []string{"10.0.0.0/33"} }, "allowedNetworks[0]"},
		{"user without hash", func(c *Config) { c.Users[0].PasswordHashFile = "" }, "users[0].passwordHashFile: is required"},
		{"escaping path", func(c *Config) { c.Users[0].PasswordHashFile = "../etc/shadow" }, "users[0].passwordHashFile"},
		{"absolute path", func(c *Config) { c.TLS.KeyFile = "/etc/key" }, "tls.keyFile: \"/etc/key\" must be relative"},
		{"bad user sender", func(c *Config) { c.Users[0].AllowedSenders = []string{"not an address"} }, "users[0].allowedSenders[0]"},
		{"bad domain", func(c *Config) { c.Domains[0].Domain = "exa mple" }, `domains[0].domain: "exa mple" is not a domain`},
		{"single label domain", func(c *Config) { c.Domains[0].Domain = "localhost" }, "domains[0].domain"},
		{"duplicate domain", func(c *Config) { c.Domains[1].Domain = "example.com" }, `domains[1].domain: "example.com" is listed twice`},
		{"unknown upstream", func(c *Config) { c.Domains[1].Upstream = "nope" }, `domains[1].upstream: "nope" names no upstream`},
		{"no route", func(c *Config) { c.DefaultUpstream = "" }, "domains[0].upstream: is empty and there is no defaultUpstream"},
		{"bad local part", func(c *Config) { c.Domains[0].AllowedSenders = []string{"a b"} }, "domains[0].allowedSenders[0]"},
		{"dkim headers without From", func(c *Config) { c.Domains[0].DKIM.Headers = []string{"Subject"} }, "domains[0].dkim.headers: must include From"},
		{"bad selector", func(c *Config) { c.Domains[0].DKIM.Selector = "s 1" }, "domains[0].dkim.selector"},
		{"no endpoints", func(c *Config) { c.Upstreams[0].Endpoints = nil }, "upstreams[0].endpoints: at least one"},
		{"endpoint without host", func(c *Config) { c.Upstreams[0].Endpoints[0].Host = "" }, "upstreams[0].endpoints[0].host"},
		{"impossible port", func(c *Config) { c.Upstreams[0].Endpoints[0].Port = 70000 }, "upstreams[0].endpoints[0].port: 70000"},
		{"auth in clear text", func(c *Config) { c.Upstreams[0].TLS.Mode = TLSNone }, "upstreams[0].auth: would send the password in clear text"},
		{"unknown upstream tls", func(c *Config) { c.Upstreams[0].TLS.Mode = "TLS" }, `upstreams[0].tls.mode: "TLS" is not one of`},
		{"bad mechanism", func(c *Config) { c.Upstreams[0].Auth.Mechanism = "CRAM-MD5" }, "upstreams[0].auth.mechanism"},
		{"XOAUTH2 without oauth2", func(c *Config) { c.Upstreams[0].Auth.Mechanism = "XOAUTH2" }, "upstreams[0].auth.oauth2: is required"},
		{"oauth2 with a password mechanism", func(c *Config) { oauth(c); c.Upstreams[0].Auth.Mechanism = "PLAIN" }, "upstreams[0].auth.mechanism: PLAIN sends a password"},
		{"oauth2 with a password", func(c *Config) { oauth(c); c.Upstreams[0].Auth.PasswordFile = "p" }, "upstreams[0].auth.passwordFile: is not used with oauth2"},
		{"oauth2 token URL over http", func(c *Config) { oauth(c); c.Upstreams[0].Auth.OAuth2.TokenURL = "http://login.example/token" }, "upstreams[0].auth.oauth2.tokenURL: \"http://login.example/token\" must be https"},
		{"oauth2 without a client secret", func(c *Config) { oauth(c); c.Upstreams[0].Auth.OAuth2.ClientSecretFile = "" }, "upstreams[0].auth.oauth2.clientSecretFile"},
		{"oauth2 scope with a space", func(c *Config) { oauth(c); c.Upstreams[0].Auth.OAuth2.Scopes = []string{"a b"} }, "upstreams[0].auth.oauth2.scopes[0]"},
		{"duplicate upstream", func(c *Config) { c.Upstreams[1].Name = "ses" }, `upstreams[1].name: "ses" is used`},
		{"bad default upstream", func(c *Config) { c.DefaultUpstream = "x" }, `defaultUpstream: "x" names no upstream`},
		{"null sender without route", func(c *Config) { c.NullSender = NullSenderAllow; c.DefaultUpstream = ""; c.Domains[0].Upstream = "ses" }, "nullSender: Allow needs defaultUpstream"},
		{"tiny line length", func(c *Config) { c.Limits.MaxLineLength = 100 }, "limits.maxLineLength: 100"},
		{"zero recipients", func(c *Config) { c.Limits.MaxRecipients = -1 }, "limits.maxRecipients"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(validYAML))
			if err != nil {
				t.Fatal(err)
			}
			c.SetDefaults()
			tc.edit(c)
			err = c.Validate()
			if err == nil {
				t.Fatalf("invalid config accepted")
			}
			if !strings.Contains(err.Error(), tc.wantIn) {
				t.Fatalf("error %q does not contain %q", err, tc.wantIn)
			}
		})
	}
}

func secretsFS(t *testing.T) fstest.MapFS {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM, keyPEM := selfSigned(t)
	return fstest.MapFS{
		"tls.crt":                 {Data: certPEM},
		"tls.key":                 {Data: keyPEM},
		"users/app":               {Data: hash},
		"dkim/example.com":        {Data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
		"upstreams/ses/username":  {Data: []byte("AKIAEXAMPLE\n")},
		"upstreams/ses/password":  {Data: []byte("upstream-password")},
		"unreferenced/other-file": {Data: []byte("ignored")},
	}
}

func TestLoadBytes(t *testing.T) {
	fsys := secretsFS(t)
	l, err := LoadBytes([]byte(validYAML), fsys)
	if err != nil {
		t.Fatal(err)
	}
	if l.Certificate == nil || l.DKIMKeys["example.com"] == nil || len(l.PasswordHashes["app"]) == 0 {
		t.Fatalf("secrets not loaded: %+v", l)
	}
	if c := l.UpstreamCredentials["ses"]; c.Username != "AKIAEXAMPLE" || c.Password != "upstream-password" {
		t.Fatalf("credentials: got user %q", c.Username)
	}
	if s := l.UpstreamCredentials["ses"].String(); strings.Contains(s, "upstream-password") {
		t.Fatalf("credentials print their password: %s", s)
	}
	// The hash covers referenced files only, and changes when one of them changes.
	fsys["unreferenced/other-file"] = &fstest.MapFile{Data: []byte("changed")}
	l2, err := LoadBytes([]byte(validYAML), fsys)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Hash != l.Hash {
		t.Errorf("hash changed with an unreferenced file")
	}
	fsys["upstreams/ses/password"] = &fstest.MapFile{Data: []byte("rotated")}
	l3, err := LoadBytes([]byte(validYAML), fsys)
	if err != nil {
		t.Fatal(err)
	}
	if l3.Hash == l.Hash {
		t.Errorf("hash did not change with a referenced secret")
	}
}

func TestLoadRefusesBadSecrets(t *testing.T) {
	cases := []struct {
		name   string
		edit   func(fstest.MapFS)
		wantIn string
	}{
		{"missing secret file", func(f fstest.MapFS) { delete(f, "users/app") }, `users[0].passwordHashFile: secret file "users/app" does not exist`},
		{"not bcrypt", func(f fstest.MapFS) { f["users/app"] = &fstest.MapFile{Data: []byte("plaintext")} }, "users[0].passwordHashFile: users/app does not hold a bcrypt hash"},
		{"bad dkim key", func(f fstest.MapFS) { f["dkim/example.com"] = &fstest.MapFile{Data: []byte("junk")} }, "domains[0].dkim.privateKeyFile: dkim/example.com: not a PEM private key"},
		{"mismatched cert", func(f fstest.MapFS) { _, k := selfSigned(t); f["tls.key"] = &fstest.MapFile{Data: k} }, "tls: tls.crt and tls.key are not a matching"},
		{"empty password", func(f fstest.MapFS) { f["upstreams/ses/password"] = &fstest.MapFile{Data: []byte("\n")} }, "upstreams[0].auth.passwordFile: upstreams/ses/password is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fsys := secretsFS(t)
			tc.edit(fsys)
			_, err := LoadBytes([]byte(validYAML), fsys)
			if err == nil || !strings.Contains(err.Error(), tc.wantIn) {
				t.Fatalf("want error containing %q, got %v", tc.wantIn, err)
			}
			if strings.Contains(err.Error(), "upstream-password") {
				t.Fatalf("error leaks a secret: %v", err)
			}
		})
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := testcerts.SelfSigned("relay.example.com")
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

// WithDefaults fills a section's defaults without writing through what it shares
// with its caller, so a section can be checked on its own without copying it first.
func TestSectionDefaultsArePure(t *testing.T) {
	dkim := &DKIM{Selector: "s1", PrivateKeyFile: "k"}
	d := Domain{Domain: "Example.COM.", DKIM: dkim}
	got := d.WithDefaults()
	if got.Domain != "example.com" || len(got.DKIM.Headers) == 0 {
		t.Fatalf("domain defaults not applied: %+v", got)
	}
	if dkim.Headers != nil || d.Domain != "Example.COM." {
		t.Fatal("Domain.WithDefaults wrote through its receiver")
	}
	auth := &UpstreamAuth{UsernameFile: "u", PasswordFile: "p"}
	eps := []Endpoint{{Host: "mx.example.com"}}
	u := Upstream{Name: "mx", Endpoints: eps, Auth: auth}
	gu := u.WithDefaults()
	if gu.Auth.Mechanism != "PLAIN" || gu.Endpoints[0].Port != 587 || gu.Timeouts.Command.Duration != DefaultUpstreamCommandTimeout {
		t.Fatalf("upstream defaults not applied: %+v", gu)
	}
	if auth.Mechanism != "" || eps[0].Port != 0 {
		t.Fatal("Upstream.WithDefaults wrote through its receiver")
	}
	if err := gu.Validate(); err != nil {
		t.Fatalf("a defaulted upstream does not validate: %v", err)
	}
	if err := (User{Username: "app", PasswordHashFile: "/abs"}).Validate(); err == nil || !strings.HasPrefix(err.Error(), "passwordHashFile: ") {
		t.Fatalf("User.Validate names fields relative to the user, got %v", err)
	}
}

// oauth makes the first upstream authenticate with an OAuth 2.0 client.
func oauth(c *Config) {
	a := c.Upstreams[0].Auth
	a.Mechanism, a.PasswordFile = "XOAUTH2", ""
	a.OAuth2 = &OAuth2{TokenURL: "https://login.microsoftonline.com/tenant/oauth2/v2.0/token", ClientIDFile: "o/id", ClientSecretFile: "o/secret",
		Scopes: []string{"https://outlook.office365.com/.default"}}
}

// An OAuth 2.0 client is valid on its own (http is fine on a loopback address) and its
// secret never shows in the loaded credentials' text.
func TestOAuth2Valid(t *testing.T) {
	c, err := Parse([]byte(validYAML))
	if err != nil {
		t.Fatal(err)
	}
	oauth(c)
	c.Upstreams[0].Auth.Mechanism = ""
	c.SetDefaults()
	if err := c.Validate(); err != nil || c.Upstreams[0].Auth.Mechanism != "XOAUTH2" {
		t.Fatalf("%v, mechanism %q (want the XOAUTH2 default)", err, c.Upstreams[0].Auth.Mechanism)
	}
	c.Upstreams[0].Auth.OAuth2.TokenURL = "http://127.0.0.1:8080/token"
	if err := c.Validate(); err != nil {
		t.Fatalf("loopback http token URL refused: %v", err)
	}
	cr := Credentials{Username: "u", OAuth2: &OAuth2Client{TokenURL: "https://t", ClientID: "id", ClientSecret: "hunter2"}}
	if s := fmt.Sprintf("%v %+v %#v %v %#v", cr, cr, cr, cr.OAuth2, *cr.OAuth2); strings.Contains(s, "hunter2") {
		t.Fatalf("credentials print their secret: %s", s)
	}
}
