package upstream_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// scriptedPeer is an SMTP server that checks how commands arrive: with pipelining
// it answers MAIL FROM only once RCPT TO is already in its buffer, so a client that
// waited for the MAIL reply first would stall; without pipelining it requires MAIL
// FROM to arrive alone. Its verdicts arrive on the returned channel, one per MAIL.
func scriptedPeer(t *testing.T, pipelining bool, mailReply string) (addr string, verdicts <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go servePeer(c, pipelining, mailReply, ch)
		}
	}()
	return ln.Addr().String(), ch
}

func servePeer(c net.Conn, pipelining bool, mailReply string, verdicts chan<- string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	say := func(s string) { _, _ = c.Write([]byte(s + "\r\n")) }
	say("220 peer ESMTP")
	inData := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if inData {
			if line == "." {
				inData = false
				say("250 2.0.0 queued")
			}
			continue
		}
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		switch {
		case verb == "EHLO":
			if pipelining {
				say("250-peer")
				say("250 PIPELINING")
			} else {
				say("250 peer")
			}
		case strings.HasPrefix(strings.ToUpper(line), "MAIL FROM:"):
			if pipelining {
				// The RCPT must already be on its way: wait for it (bounded by the
				// deadline) before answering MAIL.
				_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
				_, err := br.Peek(len("RCPT TO:"))
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				if err != nil {
					verdicts <- "MAIL FROM arrived without RCPT TO"
					return
				}
				verdicts <- "pipelined"
			} else if br.Buffered() > 0 {
				verdicts <- "a command was pipelined although PIPELINING was not offered"
				return
			} else {
				verdicts <- "alone"
			}
			say(mailReply)
		case strings.HasPrefix(strings.ToUpper(line), "RCPT TO:"):
			if !strings.HasPrefix(mailReply, "2") {
				say("503 5.5.1 need MAIL first")
			} else {
				say("250 2.1.5 ok")
			}
		case verb == "DATA":
			inData = true
			say("354 go ahead")
		case verb == "RSET":
			say("250 2.0.0 reset")
		case verb == "QUIT":
			say("221 bye")
			return
		default:
			say("502 5.5.2 not here")
		}
	}
}

func TestMailPipelinedWithFirstRecipient(t *testing.T) {
	addr, verdicts := scriptedPeer(t, true, "250 2.1.0 sender ok")
	p := newPool(t, testUpstream(t, config.TLSNone, addr), upstream.Options{})
	ctx := ctxFor(t)
	for i := range 3 {
		o := send(ctx, p, "pipelined", "a@example.net", "b@example.net")
		if o.err != nil || o.rcptErrs[0] != nil || o.rcptErrs[1] != nil {
			t.Fatalf("message %d: %s", i, describe(o))
		}
		if v := <-verdicts; v != "pipelined" {
			t.Fatalf("message %d: %s", i, v)
		}
	}
}

func TestMailAloneWithoutPipelining(t *testing.T) {
	addr, verdicts := scriptedPeer(t, false, "250 2.1.0 sender ok")
	p := newPool(t, testUpstream(t, config.TLSNone, addr), upstream.Options{})
	o := send(ctxFor(t), p, "alone", "a@example.net")
	if o.err != nil {
		t.Fatal(describe(o))
	}
	if v := <-verdicts; v != "alone" {
		t.Fatal(v)
	}
}

// A refused sender is reported from the MAIL reply, not from the 503 the upstream gives
// the recipient that travelled with it, and the connection stays in the pool.
func TestPipelinedMailRefused(t *testing.T) {
	addr, verdicts := scriptedPeer(t, true, "550 5.7.1 sender not allowed")
	var dc dialCounter
	p := newPool(t, testUpstream(t, config.TLSNone, addr), upstream.Options{Dial: dc.dial})
	ctx := ctxFor(t)
	for i := range 2 {
		o := send(ctx, p, "refused", "a@example.net")
		e := asError(t, o.err)
		if e.Code != 550 || !strings.Contains(e.Message, "sender not allowed") {
			t.Fatalf("message %d: got %d %q, want the 550 to MAIL FROM: %s", i, e.Code, e.Message, describe(o))
		}
		if v := <-verdicts; v != "pipelined" {
			t.Fatalf("message %d: %s", i, v)
		}
	}
	if n := dc.n.Load(); n != 1 {
		t.Fatalf("%d connections opened, want 1 (reused after RSET)", n)
	}
}

// The pipelined path delivers through Postfix's smtp-sink, which offers PIPELINING.
func TestPipelinedThroughSmtpSink(t *testing.T) {
	s := testpeers.StartSink(t)
	p := newPool(t, testUpstream(t, config.TLSNone, s.Addr), upstream.Options{})
	ctx := ctxFor(t)
	for range 3 {
		if o := send(ctx, p, "sink-pipelined", "a@example.net", "b@example.net"); o.err != nil {
			t.Fatal(describe(o))
		}
	}
	if !testpeers.Eventually(func() bool { return countMarker(t, s, "sink-pipelined") == 3 }) {
		t.Fatalf("smtp-sink has %d of the 3 messages", countMarker(t, s, "sink-pipelined"))
	}
}

// An upstream that never ends its reply line costs one bounded read, not unbounded
// memory: the endpoint fails as an unusable connection and the message is deferred.
func TestEndlessReplyBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	written := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		chunk := []byte(strings.Repeat("x", 4096))
		n := int64(0)
		if _, err := c.Write([]byte("220 ")); err == nil {
			for n < 64<<20 {
				m, err := c.Write(chunk)
				n += int64(m)
				if err != nil {
					break
				}
			}
		}
		written <- n
	}()
	p := newPool(t, testUpstream(t, config.TLSNone, ln.Addr().String()), upstream.Options{})
	o := send(ctxFor(t), p, "endless", "a@example.net")
	if e := asError(t, o.err); !e.Temporary() || !strings.Contains(e.Error(), "reply too long") {
		t.Fatalf("got %v, want a temporary error saying the reply was too long", e)
	}
	if n := <-written; n >= 64<<20 {
		t.Fatalf("the relay read all %d bytes of the endless reply", n)
	}
}
