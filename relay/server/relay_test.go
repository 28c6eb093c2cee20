package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	kdkim "github.com/kuberelay/kuberelay/relay/dkim"
)

func message(subject string) string {
	return "From: noreply@example.com\r\nTo: someone@example.net\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@example.com>\r\n\r\nHello.\r\n"
}

// sendRaw runs one transaction on an open raw conversation and returns the final code.
func (s *smtpConn) transaction(from, to, body string) int {
	s.t.Helper()
	s.cmd("MAIL FROM:<"+from+">", 250)
	s.cmd("RCPT TO:<"+to+">", 250)
	s.cmd("DATA", 354)
	s.send(body + ".\r\n")
	code, text, err := s.reply()
	if err != nil {
		s.t.Fatalf("reply to final dot: %v %s", err, text)
	}
	return code
}

func TestSwaksPlainFromAllowedNetwork(t *testing.T) {
	swaks := testpeers.RequireCommand(t, "swaks", "swaks")
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	out, err := exec.Command(swaks, "--server", e.addr("plain"), "--ehlo", "client.test",
		"--from", "noreply@example.com", "--to", "someone@example.net", "--header", "Subject: via swaks").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	msgs := up.Wait(1, wait)
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.From != "noreply@example.com" || len(m.To) != 1 || m.To[0] != "someone@example.net" {
		t.Errorf("envelope: %q -> %q", m.From, m.To)
	}
	data := string(m.Data)
	if !strings.HasPrefix(data, "Received: from client.test ([127.0.0.1])\r\n\tby relay.test with ESMTP id ") {
		t.Errorf("no Received header first:\n%s", data)
	}
	if !strings.Contains(data, "Subject: via swaks") {
		t.Errorf("message body lost:\n%s", data)
	}
	if got := testutil.ToFloat64(e.metrics.Messages.WithLabelValues("relayed", "", "main")); got != 1 {
		t.Errorf("relayed metric = %v, want 1", got)
	}
}

func TestSwaksStartTLSAuth(t *testing.T) {
	swaks := testpeers.RequireSwaksTLS(t)
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	run := func(mech, password string) (string, error) {
		out, err := exec.Command(swaks, "--server", e.addr("submission"), "-tls",
			"--auth", mech, "--auth-user", testUser, "--auth-password", password,
			"--from", "noreply@example.com", "--to", "someone@example.net").CombinedOutput()
		return string(out), err
	}
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		if out, err := run(mech, testPassword); err != nil {
			t.Fatalf("swaks AUTH %s: %v\n%s", mech, err, out)
		}
	}
	const wrong = "wrong-password-9c1e"
	out, err := run("PLAIN", wrong)
	if err == nil || !strings.Contains(out, "535 5.7.8") {
		t.Fatalf("wrong password: want 535, got err=%v\n%s", err, out)
	}
	for _, secret := range []string{testPassword, wrong} {
		if strings.Contains(e.logs.String(), secret) {
			t.Fatalf("a password appears in the logs:\n%s", e.logs.String())
		}
	}
	if !strings.Contains(e.logs.String(), "authentication failed") {
		t.Fatalf("failed AUTH not logged:\n%s", e.logs.String())
	}
	if n := len(up.Wait(2, wait)); n != 2 {
		t.Fatalf("upstream got %d messages, want 2", n)
	}
	if got := testutil.ToFloat64(e.metrics.AuthFailures.WithLabelValues("submission")); got != 1 {
		t.Errorf("auth failure metric = %v, want 1", got)
	}
	if msg := string(up.Messages()[0].Data); !strings.Contains(msg, "with ESMTPSA id") {
		t.Errorf("Received header does not say ESMTPSA:\n%s", msg)
	}
}

func TestAuthOnlyAfterTLS(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	c := dialRaw(t, e.addr("submission"))
	ehlo := c.cmd("EHLO client.test", 250)
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("before TLS EHLO must offer STARTTLS and not AUTH:\n%s", ehlo)
	}
	// RFC 4954 section 6: 538 when the mechanism needs an encrypted connection.
	c.cmd("AUTH PLAIN "+plainIR(testUser, testPassword), 538)
	c.cmd("MAIL FROM:<noreply@example.com>", 530)
	c.startTLS(e.clientTLS)
	ehlo = c.cmd("EHLO client.test", 250)
	if !strings.Contains(ehlo, "AUTH PLAIN LOGIN") || strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("after TLS EHLO must offer AUTH and not STARTTLS:\n%s", ehlo)
	}
	c.cmd("AUTH PLAIN "+plainIR(testUser, testPassword), 235)
	if code := c.transaction("noreply@example.com", "a@example.net", message("tls")); code != 250 {
		t.Fatalf("authenticated message: got %d", code)
	}
	// A plain listener offers neither STARTTLS nor AUTH.
	p := dialRaw(t, e.addr("plain"))
	if ehlo := p.cmd("EHLO client.test", 250); strings.Contains(ehlo, "AUTH") || strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("plain listener offers TLS or AUTH:\n%s", ehlo)
	}
}

func plainIR(user, pass string) string {
	return b64("\x00" + user + "\x00" + pass)
}

func TestImplicitTLS(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	c, err := smtp.DialTLS(e.addr("smtps"), e.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Errorf("implicit TLS listener offers STARTTLS")
	}
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("alerts-db@example.com", []string{"x@example.net"}, strings.NewReader(message("implicit"))); err != nil {
		t.Fatal(err)
	}
	if n := len(up.Wait(1, wait)); n != 1 {
		t.Fatalf("upstream got %d messages", n)
	}
}

func TestPythonSmtplib(t *testing.T) {
	py := testpeers.RequireCommand(t, "python3", "python3")
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	certFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(certFile, e.secrets["tls.crt"], 0o644); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(e.addr("submission"), ":")
	script := fmt.Sprintf(`
import smtplib, ssl, sys
from email.message import EmailMessage
ctx = ssl.create_default_context(cafile=%q)
ctx.check_hostname = False
m = EmailMessage()
m["From"] = "noreply@example.com"; m["To"] = "py@example.net"; m["Subject"] = "from python"
m.set_content("Hello from smtplib.\n")
with smtplib.SMTP(%q, %s, timeout=10) as s:
    s.ehlo("python.test")
    s.starttls(context=ctx)
    s.ehlo("python.test")
    s.login(%q, %q)
    s.send_message(m)
    try:
        s.sendmail("someone@evil.test", ["x@example.net"], "Subject: x\r\n\r\nx\r\n")
        sys.exit("sender outside the relay domains was accepted")
    except smtplib.SMTPSenderRefused as e:
        print("refused", e.smtp_code)
`, certFile, host, port, testUser, testPassword)
	out, err := exec.Command(py, "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "refused 550") {
		t.Fatalf("want the foreign sender refused with 550, got %s", out)
	}
	msgs := up.Wait(1, wait)
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Hello from smtplib.") {
		t.Fatalf("upstream got %d messages", len(msgs))
	}
}

func TestClosedByDefault(t *testing.T) {
	up := startCapture(t)
	cfg := strings.Replace(baseConfig(up.Addr(), ""), "allowedNetworks: [127.0.0.1/32]\n", "", 1)
	e := startRelay(t, cfg, testSecrets(t, "one"))
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	text := c.cmd("MAIL FROM:<noreply@example.com>", 550)
	if !strings.Contains(text, "5.7.1") {
		t.Errorf("relay denied reply: %s", text)
	}
	// RFC 5321 section 4.1.4: RCPT without a MAIL that was accepted is out of sequence.
	c.cmd("RCPT TO:<x@example.net>", 503)
	if len(up.Messages()) != 0 {
		t.Fatal("a message got through a closed relay")
	}
}

func TestSenderPolicy(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	for _, from := range []string{"noreply@evil.test", "ceo@example.com", "", "noreply@sub.example.com"} {
		text := c.cmd("MAIL FROM:<"+from+">", 550)
		if strings.Contains(text, from) && from != "" {
			t.Errorf("rejection echoes the sender: %s", text)
		}
		c.cmd("RSET", 250)
	}
	for _, from := range []string{"NoReply@Example.COM", "alerts-db@example.com", "anyone@example.org"} {
		c.cmd("MAIL FROM:<"+from+">", 250)
		c.cmd("RSET", 250)
	}

	// An authenticated user may only use its allowed senders (here: example.com).
	s := dialRaw(t, e.addr("submission"))
	s.cmd("EHLO client.test", 250)
	s.startTLS(e.clientTLS)
	s.cmd("EHLO client.test", 250)
	s.cmd("AUTH PLAIN "+plainIR(testUser, testPassword), 235)
	s.cmd("MAIL FROM:<anyone@example.org>", 550)
	s.cmd("MAIL FROM:<noreply@example.com>", 250)
}

func TestPlaintextPipelinedAfterSTARTTLSIgnored(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	c := dialRaw(t, e.addr("smtp"))
	c.cmd("EHLO client.test", 250)
	// The injected commands arrive in the same packet as STARTTLS, before the handshake
	// (CVE-2011-0411); they must be discarded, not run inside the TLS session.
	c.send("STARTTLS\r\nEHLO injected\r\nMAIL FROM:<noreply@example.com>\r\n")
	c.expect(220)
	tc := tls.Client(c.conn, e.clientTLS)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.conn, c.r = tc, newReader(tc)
	// If the injected EHLO had been processed, this NOOP's reply would not be the next.
	c.send("NOOP\r\n")
	if text := c.expect(250); strings.Contains(text, "Hello") {
		t.Fatalf("a pipelined plaintext command was processed after STARTTLS: %q", text)
	}
	// MAIL without a fresh EHLO is refused: the session was reset by STARTTLS.
	c.cmd("MAIL FROM:<noreply@example.com>", 503)
}

func TestLimits(t *testing.T) {
	up := startCapture(t)
	cfg := baseConfig(up.Addr(), `limits:
  maxMessageBytes: 2048
  maxRecipients: 2
  maxErrors: 3
  maxConnections: 8
  commandTimeout: 300ms
  dataTimeout: 300ms
`)
	e := startRelay(t, cfg, testSecrets(t, "one"))

	t.Run("message size", func(t *testing.T) {
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		c.cmd("MAIL FROM:<noreply@example.com> SIZE=4096", 552)
		big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 64)
		if code := c.transaction("noreply@example.com", "x@example.net", big); code != 552 {
			t.Fatalf("oversized message: got %d, want 552", code)
		}
	})
	t.Run("recipients", func(t *testing.T) {
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		c.cmd("MAIL FROM:<noreply@example.com>", 250)
		c.cmd("RCPT TO:<a@example.net>", 250)
		c.cmd("RCPT TO:<b@example.net>", 250)
		c.cmd("RCPT TO:<c@example.net>", 452)
	})
	t.Run("line length", func(t *testing.T) {
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		c.cmd("NOOP "+strings.Repeat("x", 2100), 500)
		if !c.closed() {
			t.Fatal("connection not closed after an overlong line")
		}
	})
	// In message data a too-long line is permanent (5xx), or the client would retry
	// the same message for days; nothing reaches the upstream.
	t.Run("line length in data", func(t *testing.T) {
		before := len(up.Messages())
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		c.cmd("MAIL FROM:<noreply@example.com>", 250)
		c.cmd("RCPT TO:<a@example.net>", 250)
		c.cmd("DATA", 354)
		c.send("Subject: long\r\n\r\n" + strings.Repeat("y", 2100) + "\r\n.\r\n")
		if text := c.expect(500); !strings.HasPrefix(text, "5.5.2 Line too long in message data") {
			t.Fatalf("overlong data line: %q", text)
		}
		if !c.closed() {
			t.Fatal("connection not closed after an overlong line in data")
		}
		if n := len(up.Messages()); n != before {
			t.Fatalf("upstream got %d messages, want %d", n, before)
		}
	})
	t.Run("errors", func(t *testing.T) {
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		c.cmd("MAIL FROM:<x@evil.test>", 550)
		c.cmd("MAIL FROM:<x@evil.test>", 550)
		c.cmd("MAIL FROM:<x@evil.test>", 421)
		if !c.closed() {
			t.Fatal("connection not closed after too many errors")
		}
	})
	t.Run("command timeout", func(t *testing.T) {
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		c.expect(421)
		if !c.closed() {
			t.Fatal("connection not closed after the command timeout")
		}
	})
	t.Run("data timeout", func(t *testing.T) {
		before := len(up.Messages())
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		c.cmd("MAIL FROM:<noreply@example.com>", 250)
		c.cmd("RCPT TO:<a@example.net>", 250)
		c.cmd("DATA", 354)
		c.send("Subject: stalled\r\n\r\nfirst line\r\n")
		c.expect(421)
		// The rest of the body, sent late, must never be read as commands.
		_, _ = c.conn.Write([]byte("\r\n.\r\nMAIL FROM:<noreply@example.com>\r\n"))
		if !c.closed() {
			t.Fatal("connection not closed after the data timeout")
		}
		if n := len(up.Messages()); n != before {
			t.Fatal("a message whose data timed out reached the upstream")
		}
	})
	t.Run("connections", func(t *testing.T) {
		// Earlier subtests' connections may still be closing on the server side.
		if !testpeers.Eventually(func() bool {
			return testutil.ToFloat64(e.metrics.ConnectionsOpen.WithLabelValues("plain")) == 0
		}) {
			t.Fatal("connections of earlier subtests never closed")
		}
		// maxConnections 8 keeps one (reservedAuthConnections' default, a tenth, at
		// least one) for the listeners that require AUTH: the plain listener takes 7.
		var held []*smtpConn
		for i := 0; i < 7; i++ {
			c := dialRaw(t, e.addr("plain"))
			c.cmd("EHLO client.test", 250)
			held = append(held, c)
		}
		if text := refusedAt(t, e.addr("plain")); !strings.Contains(text, "Too many connections") {
			t.Fatalf("over the limit: %s", text)
		}
		if got := testutil.ToFloat64(e.metrics.ConnectionsRefused.WithLabelValues("plain", "limit")); got != 1 {
			t.Errorf("refused metric = %v", got)
		}
		// The open listeners are full, submission still serves.
		sub := dialRaw(t, e.addr("submission"))
		sub.cmd("EHLO client.test", 250)
		held = append(held, sub)
		if text := refusedAt(t, e.addr("submission")); !strings.Contains(text, "Too many connections") {
			t.Fatalf("over the total limit: %s", text)
		}
		for _, h := range held {
			h.cmd("QUIT", 221)
		}
	})
}

// signExampleCom makes cfg sign example.com's mail with key, as selector s1, and adds
// the key to secrets.
func signExampleCom(cfg string, secrets map[string][]byte, key crypto.Signer) string {
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	secrets["dkim/example.com.key"] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return strings.Replace(cfg, "  allowedSenders: [noreply, \"alerts-*\"]\n",
		"  allowedSenders: [noreply, \"alerts-*\"]\n  dkim: {selector: s1, privateKeyFile: dkim/example.com.key}\n", 1)
}

func TestDKIMSigned(t *testing.T) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"rsa": rsaKey, "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			up := startCapture(t)
			secrets := testSecrets(t, "one")
			cfg := signExampleCom(baseConfig(up.Addr(), "nullSender: Allow\n"), secrets, key)
			e := startRelay(t, cfg, secrets)
			c := dialRaw(t, e.addr("plain"))
			c.cmd("EHLO client.test", 250)
			// Larger than the spool's memory part, so the file path is used too.
			body := message("signed") + strings.Repeat("line of text to sign\r\n", 200)
			if code := c.transaction("noreply@example.com", "x@example.net", body); code != 250 {
				t.Fatalf("got %d", code)
			}
			msgs := up.Wait(1, wait)
			if len(msgs) != 1 {
				t.Fatal("not delivered")
			}
			txt, err := kdkim.TXTRecord(key)
			if err != nil {
				t.Fatal(err)
			}
			verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msgs[0].Data), &dkim.VerifyOptions{
				LookupTXT: func(domain string) ([]string, error) {
					if domain != "s1._domainkey.example.com" {
						return nil, fmt.Errorf("unexpected lookup %s", domain)
					}
					return []string{txt}, nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "example.com" {
				t.Fatalf("DKIM verification: %+v\n%s", verifs, msgs[0].Data)
			}
			// A bounce (null sender) right after it, in the same session, is not signed
			// with the previous sender's key.
			if code := c.transaction("", "x@example.net", message("bounce")); code != 250 {
				t.Fatalf("null sender: got %d", code)
			}
			if m := up.Wait(2, wait); len(m) != 2 || strings.Contains(string(m[1].Data), "DKIM-Signature") {
				t.Fatalf("null-sender message signed or missing:\n%s", m[len(m)-1].Data)
			}
			// Mail from a domain without a key is not signed.
			if code := c.transaction("x@example.org", "x@example.net", message("unsigned")); code != 250 {
				t.Fatalf("got %d", code)
			}
			if m := up.Wait(3, wait); len(m) != 3 || strings.Contains(string(m[2].Data), "DKIM-Signature") {
				t.Fatalf("example.org message signed or missing")
			}
		})
	}
}

func TestReloadWhileSessionInFlight(t *testing.T) {
	up := startCapture(t)
	cfg := baseConfig(up.Addr(), "")
	e := startRelay(t, cfg, testSecrets(t, "one"))
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	c.cmd("MAIL FROM:<noreply@example.com>", 250)
	c.cmd("RCPT TO:<x@example.net>", 250)

	// Swap in a configuration that no longer relays for example.com.
	newCfg := strings.Replace(cfg, "- domain: example.com\n  allowedSenders: [noreply, \"alerts-*\"]\n", "", 1)
	if newCfg == cfg {
		t.Fatal("test config edit did not apply")
	}
	e.publish(newCfg, nil)

	// The session in flight finishes on the configuration it started with.
	c.cmd("DATA", 354)
	c.send(message("inflight") + ".\r\n")
	c.expect(250)
	if n := len(up.Wait(1, wait)); n != 1 {
		t.Fatalf("in-flight message not delivered")
	}
	// New sessions use the new configuration.
	n := dialRaw(t, e.addr("plain"))
	n.cmd("EHLO client.test", 250)
	n.cmd("MAIL FROM:<noreply@example.com>", 550)
	n.cmd("MAIL FROM:<x@example.org>", 250)

	// A bad configuration is refused and the last good one stays.
	good, _ := e.srv.Current()
	if err := writeConfig(e, "apiVersion: relay.kuberelay.io/v1alpha1\nkind: RelayConfig\nlisteners: []\n"); err != nil {
		t.Fatal(err)
	}
	if !testpeers.Eventually(func() bool { return e.watcher.Status().LastError != nil }) {
		t.Fatal("bad configuration never reported")
	}
	if h, _ := e.srv.Current(); h != good {
		t.Fatal("a bad configuration replaced the good one")
	}
	if got := testutil.ToFloat64(e.metrics.ConfigReloads.WithLabelValues("failure")); got < 1 {
		t.Errorf("failed reload not counted")
	}
	m := dialRaw(t, e.addr("plain"))
	m.cmd("EHLO client.test", 250)
	if code := m.transaction("x@example.org", "y@example.net", message("after-bad")); code != 250 {
		t.Fatalf("relay broken by a bad config: %d", code)
	}
}

func TestCertificateRenewalWithoutRestart(t *testing.T) {
	up := startCapture(t)
	cfg := baseConfig(up.Addr(), "")
	e := startRelay(t, cfg, testSecrets(t, "first"))
	serial := func() string {
		conn, err := tls.Dial("tcp", e.addr("smtps"), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := serial(); got != "first" {
		t.Fatalf("serving %q", got)
	}
	secrets := testSecrets(t, "renewed")
	e.publish(cfg, secrets)
	if got := serial(); got != "renewed" {
		t.Fatalf("after renewal serving %q", got)
	}
}

func TestConcurrentSessions(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	const clients, perClient = 20, 5
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := smtp.DialStartTLS(e.addr("smtp"), e.clientTLS)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for j := 0; j < perClient; j++ {
				if err := c.SendMail("noreply@example.com", []string{fmt.Sprintf("r%d-%d@example.net", i, j)},
					strings.NewReader(message(fmt.Sprintf("c%d-%d", i, j)))); err != nil {
					errs <- err
					return
				}
			}
			_ = c.Quit()
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(up.Wait(clients*perClient, wait)); n != clients*perClient {
		t.Fatalf("upstream got %d of %d messages", n, clients*perClient)
	}
}

func TestShutdownFinishesTransactions(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	idle := dialRaw(t, e.addr("plain"))
	idle.cmd("EHLO client.test", 250)
	// Replies to idle sessions after STARTTLS must come through the TLS layer, with
	// or without an EHLO after the handshake.
	idleTLS := dialRaw(t, e.addr("smtp"))
	idleTLS.cmd("EHLO client.test", 250)
	idleTLS.startTLS(e.clientTLS)
	idleTLS.cmd("EHLO client.test", 250)
	idleTLSNoEHLO := dialRaw(t, e.addr("smtp"))
	idleTLSNoEHLO.cmd("EHLO client.test", 250)
	idleTLSNoEHLO.startTLS(e.clientTLS)
	// NOOP: the server has finished its side of the handshake.
	idleTLSNoEHLO.cmd("NOOP", 250)
	busy := dialRaw(t, e.addr("plain"))
	busy.cmd("EHLO client.test", 250)
	busy.cmd("MAIL FROM:<noreply@example.com>", 250)
	busy.cmd("RCPT TO:<x@example.net>", 250)
	busy.cmd("DATA", 354)
	busy.send("Subject: during shutdown\r\n\r\n")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		done <- e.srv.Shutdown(ctx)
	}()
	// Idle sessions are told to go away, between two commands.
	for name, c := range map[string]*smtpConn{"plain": idle, "STARTTLS": idleTLS, "STARTTLS, no EHLO after it": idleTLSNoEHLO} {
		if code, text, err := c.reply(); code != 421 {
			t.Errorf("idle session (%s): got %d %q (%v), want 421", name, code, text, err)
		} else if !c.closed() {
			t.Errorf("idle session (%s) still open after its 421", name)
		}
	}
	// New connections are refused.
	if !testpeers.Eventually(func() bool {
		c, err := netDial(e.addr("plain"))
		if err != nil {
			return true
		}
		c.Close()
		return false
	}) {
		t.Fatal("still accepting connections during shutdown")
	}
	// The transaction in progress completes.
	busy.send("body\r\n.\r\n")
	busy.expect(250)
	busy.send("MAIL FROM:<noreply@example.com>\r\n")
	if text := busy.expect(421); !strings.Contains(text, "shutting down") {
		t.Errorf("session told %q after its transaction, want a shutdown reply", text)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if n := len(up.Wait(1, wait)); n != 1 {
		t.Fatal("in-flight message lost at shutdown")
	}
}

func TestReceivedHeaderDoesNotReflectClientText(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO evil;\tX-Injected:(yes)", 250)
	if code := c.transaction("noreply@example.com", "x@example.net", message("helo")); code != 250 {
		t.Fatal(code)
	}
	m := up.Wait(1, wait)
	if len(m) != 1 {
		t.Fatal("not delivered")
	}
	hdr := strings.SplitN(string(m[0].Data), "\r\n\t", 2)[0]
	if hdr != "Received: from evilX-Injected:yes ([127.0.0.1])" {
		t.Fatalf("Received header: %q", hdr)
	}
}

func TestNestedMailRefused(t *testing.T) {
	up := startCapture(t)
	e := startRelay(t, baseConfig(up.Addr(), ""), testSecrets(t, "one"))
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	c.cmd("MAIL FROM:<noreply@example.com>", 250)
	c.cmd("MAIL FROM:<noreply@example.com>", 503)
	c.cmd("RSET", 250)
	if code := c.transaction("noreply@example.com", "x@example.net", message("after-rset")); code != 250 {
		t.Fatalf("got %d", code)
	}
}

func TestListenerChangesWaitForRestart(t *testing.T) {
	up := startCapture(t)
	cfg := baseConfig(up.Addr(), "")
	e := startRelay(t, cfg, testSecrets(t, "one"))
	// A new configuration without the plain listener: the bound listener keeps serving,
	// with the new policy.
	newCfg := strings.Replace(cfg, "- {name: plain, address: \"127.0.0.1:0\", tls: None}\n", "", 1)
	newCfg = strings.Replace(newCfg, "- domain: example.org\n", "", 1)
	e.publish(newCfg, nil)
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	c.cmd("MAIL FROM:<x@example.org>", 550)
	if code := c.transaction("noreply@example.com", "x@example.net", message("kept")); code != 250 {
		t.Fatalf("got %d", code)
	}
}
