package server_test

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// TestThroughSmtpSink relays through Postfix's smtp-sink and checks what the client is
// told for each upstream fault: 4xx stays 4xx, 5xx is passed on, and a lost or refused
// upstream is never a 250.
func TestThroughSmtpSink(t *testing.T) {
	cases := []struct {
		name      string
		sinkArgs  []string
		rcptCode  int // the client's reply to RCPT
		finalCode int // the client's reply to the final dot (0: not reached)
	}{
		{"accepts", nil, 250, 250},
		// smtp-sink's soft rejection is 450, its hard one 500.
		{"soft-rejects RCPT", []string{"-r", "RCPT"}, 450, 0},
		{"hard-rejects RCPT", []string{"-f", "RCPT"}, 500, 0},
		{"soft-rejects after dot", []string{"-r", "."}, 250, 450},
		{"hard-rejects after dot", []string{"-f", "."}, 250, 500},
		{"421 after dot", []string{"-Q", "."}, 250, 451},
		{"disconnects after dot", []string{"-q", "."}, 250, 451},
		{"421 on MAIL", []string{"-Q", "MAIL"}, 451, 0},
		{"disconnects on RCPT", []string{"-q", "RCPT"}, 451, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sink := testpeers.StartSink(t, tc.sinkArgs...)
			e := startRelay(t, baseConfig(sink.Addr, ""), testSecrets(t, "one"))
			c := dialRaw(t, e.addr("plain"))
			c.cmd("EHLO client.test", 250)
			c.cmd("MAIL FROM:<noreply@example.com>", 250)
			c.send("RCPT TO:<x@example.net>\r\n")
			code, text, err := c.reply()
			if err != nil || code != tc.rcptCode {
				t.Fatalf("RCPT: got %d %s (%v), want %d", code, text, err, tc.rcptCode)
			}
			if tc.finalCode != 0 {
				c.cmd("DATA", 354)
				c.send(message("sink") + ".\r\n")
				code, text, err = c.reply()
				if err != nil || code != tc.finalCode {
					t.Fatalf("final dot: got %d %s (%v), want %d", code, text, err, tc.finalCode)
				}
				if code/100 != 2 && !strings.HasPrefix(text, "4") && !strings.HasPrefix(text, "5") {
					t.Errorf("reply without an enhanced status code: %q", text)
				}
			}
			if tc.finalCode == 250 {
				if got := len(testpeers.SinkMessages(t, sink.DumpDir)); got != 1 {
					t.Fatalf("sink holds %d messages, want 1", got)
				}
			}
		})
	}
}

func TestUpstreamDownIsTemporary(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	e := startRelay(t, baseConfig(addr, ""), testSecrets(t, "one"))
	c := dialRaw(t, e.addr("plain"))
	c.cmd("EHLO client.test", 250)
	c.cmd("MAIL FROM:<noreply@example.com>", 250)
	if text := c.cmd("RCPT TO:<x@example.net>", 451); !strings.Contains(text, "4.4.1") {
		t.Errorf("upstream down reply: %s", text)
	}
}

// TestSwaksThroughSmtpSink is the whole path with real software at both ends.
func TestSwaksThroughSmtpSink(t *testing.T) {
	swaks := testpeers.RequireSwaksTLS(t)
	sink := testpeers.StartSink(t)
	e := startRelay(t, baseConfig(sink.Addr, ""), testSecrets(t, "one"))
	out, err := exec.Command(swaks, "--server", e.addr("smtp"), "-tls", "--ehlo", "client.test",
		"--from", "noreply@example.com", "--to", "a@example.net,b@example.net").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	msgs := testpeers.SinkMessages(t, sink.DumpDir)
	if len(msgs) != 1 {
		t.Fatalf("sink holds %d messages, want exactly 1 (never one per recipient)", len(msgs))
	}
	if len(msgs[0].RcptTo) != 2 || !strings.Contains(msgs[0].Content, "by relay.test with ESMTPS id") {
		t.Fatalf("sink message: %+v", msgs[0])
	}
}
