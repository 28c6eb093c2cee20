package server_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// listenerKinds open a session that is ready for MAIL on each kind of listener: plain
// from an allowed network, STARTTLS from an allowed network, STARTTLS submission with
// AUTH, and implicit TLS.
var listenerKinds = []struct {
	name string
	open func(t *testing.T, e *relayEnv) *smtpConn
}{
	{"plain", func(t *testing.T, e *relayEnv) *smtpConn {
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		return c
	}},
	{"starttls", func(t *testing.T, e *relayEnv) *smtpConn {
		c := dialRaw(t, e.addr("smtp"))
		c.cmd("EHLO client.test", 250)
		c.startTLS(e.clientTLS)
		c.cmd("EHLO client.test", 250)
		return c
	}},
	{"submission", func(t *testing.T, e *relayEnv) *smtpConn {
		c := dialRaw(t, e.addr("submission"))
		c.cmd("EHLO client.test", 250)
		c.startTLS(e.clientTLS)
		c.cmd("EHLO client.test", 250)
		c.cmd("AUTH PLAIN "+plainIR(testUser, testPassword), 235)
		return c
	}},
	{"implicit", func(t *testing.T, e *relayEnv) *smtpConn {
		c := dialTLSRaw(t, e.addr("smtps"), e.clientTLS)
		c.cmd("EHLO client.test", 250)
		return c
	}},
}

// TestPathsReachUpstreamAsQuoted sends mailboxes with quotes, spaces, '>', '@', NUL,
// control and 8-bit characters on every kind of listener, and checks the reply and,
// byte for byte, the path that Postfix's smtp-sink received: what the client quoted is
// quoted again (RFC 5321 section 4.1.2), so no text of the client's becomes another
// address or an ESMTP parameter upstream, and what cannot be sent safely is refused.
func TestPathsReachUpstreamAsQuoted(t *testing.T) {
	sink := testpeers.StartSink(t)
	cfg := strings.Replace(baseConfig(sink.Addr, ""), "allowedSenders: [example.com]", "allowedSenders: [example.com, example.org]", 1)
	e := startRelay(t, cfg, testSecrets(t, "one"))

	cases := []struct {
		name     string
		from, to string // the raw argument after MAIL FROM: and RCPT TO:
		code     int    // the reply to the command under test (MAIL, or RCPT when from is "")
		enhanced string // its enhanced code
		upstream string // the path smtp-sink must receive for that command
	}{
		{name: "quoted sender with parameters inside", from: `<"ceo@gmail.com> SMTPUTF8 X="@example.org>`,
			code: 250, upstream: `<"ceo@gmail.com> SMTPUTF8 X="@example.org>`},
		{name: "quoted sender with a space", from: `<"a b"@example.org>`, code: 250, upstream: `<"a b"@example.org>`},
		{name: "quoted sender with '>'", from: `<"a>b"@example.org>`, code: 250, upstream: `<"a>b"@example.org>`},
		{name: "quoted sender with a quoted pair", from: `<"a\"b\\c"@example.org>`, code: 250, upstream: `<"a\"b\\c"@example.org>`},
		{name: "needlessly quoted sender", from: `<"noreply"@example.org>`, code: 250, upstream: `<noreply@example.org>`},
		{name: "sender with NUL", from: "<a\x00b@example.org>", code: 501, enhanced: "5.1.7"},
		{name: "quoted sender with NUL", from: "<\"a\x00b\"@example.org>", code: 501, enhanced: "5.1.7"},
		{name: "sender with a control character", from: "<a\x01b@example.org>", code: 501, enhanced: "5.1.7"},
		{name: "quoted sender with DEL", from: "<\"a\x7f\"@example.org>", code: 501, enhanced: "5.1.7"},
		{name: "sender domain with NUL", from: "<a@example.org\x00.evil.test>", code: 501, enhanced: "5.1.7"},
		{name: "8-bit sender without SMTPUTF8", from: "<jörg@example.org>", code: 553, enhanced: "5.6.7"},
		{name: "sender local part over 64 octets", from: "<" + strings.Repeat("a", 65) + "@example.org>", code: 501, enhanced: "5.1.7"},
		{name: "quoted recipient holding an address", to: `<"b@y.test"@example.net>`, code: 250, upstream: `<"b@y.test"@example.net>`},
		{name: "quoted recipient with a space", to: `<"x y"@example.net>`, code: 250, upstream: `<"x y"@example.net>`},
		{name: "quoted recipient with parameters inside", to: `<"x> NOTIFY=NEVER ORCPT=rfc822;a"@example.net>`,
			code: 250, upstream: `<"x> NOTIFY=NEVER ORCPT=rfc822;a"@example.net>`},
		{name: "recipient with NUL", to: "<a\x00@example.net>", code: 501, enhanced: "5.1.3"},
		{name: "recipient with a control character", to: "<\"a\x1b\"@example.net>", code: 501, enhanced: "5.1.3"},
		{name: "8-bit recipient without SMTPUTF8", to: "<jörg@example.net>", code: 553, enhanced: "5.6.7"},
		{name: "recipient local part over 64 octets", to: "<" + strings.Repeat("b", 65) + "@example.net>", code: 501, enhanced: "5.1.3"},
		{name: "recipient with a bad domain", to: "<a@exa_mple.net>", code: 501, enhanced: "5.1.3"},
	}
	for _, kind := range listenerKinds {
		t.Run(kind.name, func(t *testing.T) {
			for i, tc := range cases {
				// A session per case: refusals count towards the session's error limit.
				c := kind.open(t, e)
				subject := fmt.Sprintf("%s-%d", kind.name, i)
				from, to := tc.from, tc.to
				if from == "" {
					from = "<noreply@example.org>"
					c.cmd("MAIL FROM:"+from, 250)
				} else if !expectReply(t, c, "MAIL FROM:"+from, tc.code, tc.enhanced, tc.name) {
					continue
				}
				if to == "" {
					to = "<someone@example.net>"
					c.cmd("RCPT TO:"+to, 250)
				} else if !expectReply(t, c, "RCPT TO:"+to, tc.code, tc.enhanced, tc.name) {
					continue
				}
				c.cmd("DATA", 354)
				c.send("Subject: " + subject + "\r\n\r\nbody\r\n.\r\n")
				c.expect(250)

				m := sinkMessage(t, sink, subject)
				if tc.to == "" {
					if got := pathOf(m.MailFrom); got != tc.upstream {
						t.Errorf("%s: upstream got MAIL FROM:%s, want the path %s", tc.name, m.MailFrom, tc.upstream)
					}
				} else if len(m.RcptTo) != 1 || m.RcptTo[0] != tc.upstream {
					t.Errorf("%s: upstream got RCPT TO:%q, want exactly %s", tc.name, m.RcptTo, tc.upstream)
				}
			}
		})
	}
}

// expectReply sends line and checks the reply; it reports whether the command was
// accepted.
func expectReply(t *testing.T, c *smtpConn, line string, code int, enhanced, name string) bool {
	t.Helper()
	c.send(line + "\r\n")
	got, text, err := c.reply()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if got != code || (enhanced != "" && !strings.HasPrefix(text, enhanced+" ")) {
		t.Fatalf("%s: %q got %d %s, want %d %s", name, line, got, text, code, enhanced)
	}
	return got == 250
}

// sinkMessage waits for the message with subject to reach smtp-sink.
func sinkMessage(t *testing.T, sink *testpeers.Sink, subject string) testpeers.SinkMessage {
	t.Helper()
	var found *testpeers.SinkMessage
	testpeers.Eventually(func() bool {
		for _, m := range sink.Messages(t) {
			if strings.Contains(m.Content, "Subject: "+subject+"\n") {
				found = &m
				return true
			}
		}
		return false
	})
	if found == nil {
		t.Fatalf("message %s never reached smtp-sink", subject)
	}
	return *found
}

// pathOf is the path of a MAIL FROM argument, without the ESMTP parameters after it:
// up to the first '>' outside a quoted string.
func pathOf(arg string) string {
	quoted := false
	for i := 0; i < len(arg); i++ {
		switch {
		case arg[i] == '\\' && quoted:
			i++
		case arg[i] == '"':
			quoted = !quoted
		case arg[i] == '>' && !quoted:
			return arg[:i+1]
		}
	}
	return arg
}

// TestBodyParameterPassedOn checks, on every kind of listener, that the upstream's MAIL
// FROM carries the client's BODY parameter (RFC 6152) exactly when the client gave one:
// a relay must not declare a body 8-bit that its client did not.
func TestBodyParameterPassedOn(t *testing.T) {
	sink := testpeers.StartSink(t) // offers 8BITMIME
	e := startRelay(t, baseConfig(sink.Addr, ""), testSecrets(t, "one"))
	for _, kind := range listenerKinds {
		t.Run(kind.name, func(t *testing.T) {
			for i, param := range []string{"", " BODY=8BITMIME", " BODY=7BIT"} {
				c := kind.open(t, e)
				subject := fmt.Sprintf("body-%s-%d", kind.name, i)
				c.cmd("MAIL FROM:<noreply@example.com>"+param, 250)
				c.cmd("RCPT TO:<someone@example.net>", 250)
				c.cmd("DATA", 354)
				c.send("Subject: " + subject + "\r\n\r\nbody\r\n.\r\n")
				c.expect(250)
				if got, want := sinkMessage(t, sink, subject).MailFrom, "<noreply@example.com>"+param; got != want {
					t.Errorf("client sent MAIL FROM:<noreply@example.com>%s; upstream got MAIL FROM:%s, want %s", param, got, want)
				}
			}
		})
	}
}
