package server_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"

	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// smugglingEndings are the end-of-data look-alikes of the SMTP smuggling research
// (a second message hidden behind a fake end of data that another SMTP implementation
// might honour), each followed by a smuggled transaction.
var smugglingEndings = map[string]string{
	"CRLF dot CR":         "\r\n.\r",
	"CRLF dot CR CRLF":    "\r\n.\r\r\n",
	"CRLF dot dot CR":     "\r\n..\r",
	"LF dot LF":           "\n.\n",
	"LF dot CRLF":         "\n.\r\n",
	"CRLF dot LF":         "\r\n.\n",
	"CR dot CR":           "\r.\r",
	"CR dot CRLF":         "\r.\r\n",
	"CR dot LF":           "\r.\n",
	"LF dot CR":           "\n.\r",
	"CRLF dot NUL CRLF":   "\r\n.\x00\r\n",
	"CRLF NUL dot CRLF":   "\r\n\x00.\r\n",
	"CRLF dot CR NUL LF":  "\r\n.\r\x00\n",
	"CR NUL LF dot CRLF":  "\r\x00\n.\r\n",
	"CRLF dot space CRLF": "\r\n. \r\n",
	"bare LF in headers":  "\nX-Smuggled: yes\r\n\r\n",
	"NUL":                 "\x00",
}

// TestSmugglingEndingsRefused sends each ending inside a message on every kind of
// listener. A message holding one is refused with 550 5.5.2 and nothing of it reaches
// the upstream; the session stays usable, and the clean message sent next reaches
// Postfix's smtp-sink byte for byte. Endings that are plain text to SMTP (". " on a
// line of its own) are delivered as they were sent.
func TestSmugglingEndingsRefused(t *testing.T) {
	sink := testpeers.StartSink(t)
	e := startRelay(t, baseConfig(sink.Addr, ""), testSecrets(t, "one"))
	smuggled := "MAIL FROM:<noreply@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
	for _, kind := range listenerKinds {
		t.Run(kind.name, func(t *testing.T) {
			for name, ending := range smugglingEndings {
				c := kind.open(t, e)
				subject := strings.ReplaceAll(kind.name+" "+name, " ", "-")
				body := "Subject: " + subject + "\r\n\r\nfirst" + ending + smuggled
				c.cmd("MAIL FROM:<noreply@example.com>", 250)
				c.cmd("RCPT TO:<x@example.net>", 250)
				c.cmd("DATA", 354)
				c.send(body + ".\r\n")
				code, text, err := c.reply()
				if err != nil {
					t.Fatalf("%s: reply to the final dot: %v", name, err)
				}
				// Only CRLF, no NUL: valid text, whatever it looks like.
				rest := strings.ReplaceAll(ending, "\r\n", "")
				if !strings.ContainsAny(rest, "\r\n\x00") {
					// Valid text (". " is not the end of data): relayed whole, the smuggled
					// lines as lines of this one message.
					if code != 250 {
						t.Fatalf("%s: valid text refused: %d %s", name, code, text)
					}
					m := sinkMessage(t, sink, subject)
					if !strings.Contains(m.Content, "Subject: smuggled\n") {
						t.Errorf("%s: relayed message lacks its own text:\n%q", name, m.Content)
					}
					continue
				}
				if code != 550 || !strings.HasPrefix(text, "5.5.2 ") {
					t.Errorf("%s: got %d %s, want 550 5.5.2", name, code, text)
					continue
				}
				// The same session then relays a clean message, exactly as sent.
				clean := fmt.Sprintf("Subject: clean-%s\r\n\r\nline one\r\n..dot line\r\nend\r\n", subject)
				c.cmd("MAIL FROM:<noreply@example.com>", 250)
				c.cmd("RCPT TO:<x@example.net>", 250)
				c.cmd("DATA", 354)
				c.send(clean + ".\r\n")
				c.expect(250)
				m := sinkMessage(t, sink, "clean-"+subject)
				// smtp-sink stores lines with "\n" and dot-decoded; the relay adds its
				// Received header first.
				want := strings.ReplaceAll(strings.Replace(clean, "..dot", ".dot", 1), "\r\n", "\n")
				if !strings.HasSuffix(m.Content, "\n"+want) && !strings.HasSuffix(m.Content+"\n", "\n"+want) {
					t.Errorf("%s: the clean message reached smtp-sink as\n%q\nwant it to end with\n%q", name, m.Content, want)
				}
			}
		})
	}
	for _, m := range sink.Messages(t) {
		if strings.Contains(m.Content, "Subject: smuggled") && !strings.Contains(m.Content, "first") {
			t.Errorf("a smuggled message reached the upstream on its own:\n%q", m.Content)
		}
		for _, r := range m.RcptTo {
			if strings.Contains(r, "victim") {
				t.Errorf("the smuggled recipient reached the upstream: %s", r)
			}
		}
	}
}

// FuzzDataPath sends arbitrary message data through a relay and checks what the
// upstream received whenever the relay answered 250: only CRLF line endings, no NUL,
// so nothing the client wrote can look like the end of data, or split a message, to
// any SMTP implementation further on.
func FuzzDataPath(f *testing.F) {
	up := startCapture(f)
	// The relay logs from its own goroutines, which must not reach f.Log while the
	// fuzz target runs.
	e := startRelayLog(f, baseConfig(up.Addr(), ""), testSecrets(f, "one"), funcr.New(func(string, string) {}, funcr.Options{}))
	for _, ending := range smugglingEndings {
		f.Add([]byte("Subject: seed\r\n\r\nfirst" + ending + "second\r\n"))
	}
	f.Add([]byte("Subject: seed\r\n\r\n..stuffed\r\n.\r\x00\r\n"))
	f.Add([]byte("Subject: seed\r\n\r\nfirst\r\n.\rsecond\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// The client's own end of data, or a line over the limit, ends the test case
		// early for reasons that are not the relay's.
		if bytes.Contains(data, []byte("\r\n.\r\n")) || bytes.HasPrefix(data, []byte(".\r\n")) || len(data) > 1900 {
			return
		}
		if !bytes.HasSuffix(data, []byte("\r\n")) {
			data = append(data, '\r', '\n')
		}
		c := dialRaw(t, e.addr("plain"))
		c.cmd("EHLO client.test", 250)
		before := len(up.Messages())
		c.cmd("MAIL FROM:<noreply@example.com>", 250)
		c.cmd("RCPT TO:<x@example.net>", 250)
		c.cmd("DATA", 354)
		c.send(string(data) + ".\r\n")
		code, text, err := c.reply()
		if err != nil || code != 250 {
			return // refused, timed out or closed: nothing to check upstream
		}
		msgs := up.Wait(before+1, wait)
		if len(msgs) <= before {
			t.Fatalf("250 %s but nothing reached the upstream", text)
		}
		got := msgs[len(msgs)-1].Data
		if i := bytes.IndexByte(got, 0); i >= 0 {
			t.Fatalf("NUL at %d upstream for input %q", i, data)
		}
		for i, b := range got {
			if b == '\r' && (i+1 >= len(got) || got[i+1] != '\n') || b == '\n' && (i == 0 || got[i-1] != '\r') {
				t.Fatalf("bare CR or LF at %d upstream for input %q:\n%q", i, data, got)
			}
		}
	})
}

// TestEndAfterBareCR: "\r\r\n.\r\n" holds a real CRLF "." CRLF, so the message ends
// there on every listener kind: it is refused for its bare CR, nothing reaches the
// upstream, and the client's next command is answered at once, not taken for data.
func TestEndAfterBareCR(t *testing.T) {
	sink := testpeers.StartSink(t)
	e := startRelay(t, baseConfig(sink.Addr, ""), testSecrets(t, "one"))
	for _, kind := range listenerKinds {
		t.Run(kind.name, func(t *testing.T) {
			c := kind.open(t, e)
			c.cmd("MAIL FROM:<noreply@example.com>", 250)
			c.cmd("RCPT TO:<x@example.net>", 250)
			c.cmd("DATA", 354)
			c.send("Subject: cr-cr-" + kind.name + "\r\n\r\nfirst\r\r\n.\r\n")
			if text := c.expect(550); !strings.HasPrefix(text, "5.5.2 ") {
				t.Fatalf("got 550 %s, want 5.5.2", text)
			}
			c.cmd("NOOP", 250)
		})
	}
	for _, m := range sink.Messages(t) {
		if strings.Contains(m.Content, "cr-cr-") {
			t.Errorf("a message with a bare CR reached the upstream:\n%q", m.Content)
		}
	}
}
