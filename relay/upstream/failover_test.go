package upstream_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// TestStageFaults drives a message through two smtp-sinks, A then B, where A injects one
// fault (smtp-sink -r: 4xx, -f: 5xx, -q: disconnect, -Q: 421, -w/-W: slow reply against
// a short timeout) at one stage of the conversation. It checks the result and which sink
// got the message: B only when A could not take it, and never both.
func TestStageFaults(t *testing.T) {
	t.Parallel()
	// Slow replies come 3 s late against a 1 s timeout: generous both ways, so a loaded
	// machine neither misses the timeout nor trips it on the healthy endpoint.
	short := config.Duration{Duration: time.Second}
	type tc struct {
		name string
		args []string
		// timeouts shortens a timeout for the slow-reply cases.
		timeouts func(*config.UpstreamTimeouts)
		// single: A is the upstream's only endpoint.
		single bool
		// at is the sink that must hold the message: "A", "B", or "" for none.
		at string
		// code and temporary are the error wanted when at is "".
		code      int
		temporary bool
		// afterDot: A saw the whole message, so whether it kept it is A's business.
		afterDot bool
	}
	cases := []tc{
		// Greeting: any failure makes A unusable.
		{name: "connect 4xx", args: []string{"-r", "CONNECT"}, at: "B"},
		{name: "connect 5xx", args: []string{"-f", "CONNECT"}, at: "B"},
		{name: "connect disconnect", args: []string{"-q", "CONNECT"}, at: "B"},
		{name: "connect 421", args: []string{"-Q", "CONNECT"}, at: "B"},
		{name: "connect slow", args: []string{"-W", "CONNECT:3"}, timeouts: func(to *config.UpstreamTimeouts) { to.Connect = short }, at: "B"},

		{name: "EHLO 4xx", args: []string{"-r", "EHLO"}, at: "B"},
		// A 5xx to EHLO makes go-smtp fall back to HELO (RFC 5321 4.1.4), which works.
		{name: "EHLO 5xx falls back to HELO", args: []string{"-f", "EHLO"}, at: "A"},
		{name: "EHLO disconnect", args: []string{"-q", "EHLO"}, at: "B"},
		{name: "EHLO 421", args: []string{"-Q", "EHLO"}, at: "B"},
		{name: "EHLO slow", args: []string{"-W", "EHLO:3"}, timeouts: func(to *config.UpstreamTimeouts) { to.Command = short }, at: "B"},

		{name: "MAIL 4xx", args: []string{"-r", "MAIL"}, at: "B"},
		{name: "MAIL 5xx is permanent", args: []string{"-f", "MAIL"}, code: 500},
		{name: "MAIL disconnect", args: []string{"-q", "MAIL"}, at: "B"},
		{name: "MAIL 421", args: []string{"-Q", "MAIL"}, at: "B"},
		// smtp-sink answers a pipelined RCPT before a delayed MAIL (out of order), so
		// the slow-MAIL cases turn PIPELINING off (-p) to get MAIL sent on its own.
		{name: "MAIL slow", args: []string{"-p", "-W", "MAIL:3"}, timeouts: func(to *config.UpstreamTimeouts) { to.Command = short }, at: "B"},

		// A recipient's own verdict is passed on, not failed over.
		{name: "RCPT 4xx is the recipient's", args: []string{"-r", "RCPT"}, code: 450, temporary: true},
		{name: "RCPT 5xx is the recipient's", args: []string{"-f", "RCPT"}, code: 500},
		{name: "RCPT disconnect", args: []string{"-q", "RCPT"}, at: "B"},
		{name: "RCPT 421", args: []string{"-Q", "RCPT"}, at: "B"},
		{name: "RCPT slow", args: []string{"-W", "RCPT:3"}, timeouts: func(to *config.UpstreamTimeouts) { to.Command = short }, at: "B"},

		// Before 354 nothing can have been delivered: MAIL and RCPTs are replayed on B.
		{name: "DATA 4xx", args: []string{"-r", "DATA"}, at: "B"},
		{name: "DATA 5xx is permanent", args: []string{"-f", "DATA"}, code: 500},
		{name: "DATA disconnect", args: []string{"-q", "DATA"}, at: "B"},
		{name: "DATA 421", args: []string{"-Q", "DATA"}, at: "B"},
		{name: "DATA slow", args: []string{"-w", "3"}, timeouts: func(to *config.UpstreamTimeouts) { to.Command = short }, at: "B"},

		// After the final dot A may have the message: never fail over.
		{name: "dot 4xx", args: []string{"-r", "."}, code: 450, temporary: true, afterDot: true},
		{name: "dot 5xx", args: []string{"-f", "."}, code: 500, afterDot: true},
		{name: "dot disconnect", args: []string{"-q", "."}, code: 0, temporary: true, afterDot: true},
		{name: "dot 421", args: []string{"-Q", "."}, code: 421, temporary: true, afterDot: true},
		{name: "dot slow", args: []string{"-W", ".:3"}, timeouts: func(to *config.UpstreamTimeouts) { to.Data = short }, code: 0, temporary: true, afterDot: true},

		// When every endpoint fails the result is temporary, even after a 5xx greeting.
		{name: "only endpoint connect 5xx", args: []string{"-f", "CONNECT"}, single: true, code: 0, temporary: true},
		{name: "only endpoint EHLO 421", args: []string{"-Q", "EHLO"}, single: true, code: 421, temporary: true},
		{name: "only endpoint MAIL 4xx", args: []string{"-r", "MAIL"}, single: true, code: 450, temporary: true},
		{name: "only endpoint RCPT disconnect", args: []string{"-q", "RCPT"}, single: true, code: 0, temporary: true},
		{name: "only endpoint DATA 4xx", args: []string{"-r", "DATA"}, single: true, code: 450, temporary: true},
		{name: "only endpoint MAIL slow", args: []string{"-p", "-W", "MAIL:3"}, timeouts: func(to *config.UpstreamTimeouts) { to.Command = short }, single: true, code: 0, temporary: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a := testpeers.StartSink(t, c.args...)
			b := testpeers.StartSink(t)
			addrs := []string{a.Addr, b.Addr}
			if c.single {
				addrs = addrs[:1]
			}
			u := testUpstream(t, config.TLSNone, addrs...)
			if c.timeouts != nil {
				c.timeouts(&u.Timeouts)
			}
			p := upstream.New(u, nil, nil, upstream.Options{LocalName: "relay.test"})
			o := send(ctxFor(t), p, c.name, "r1@example.net", "r2@example.net")
			// Closing the pool ends every session, so the sinks' dumps are final.
			p.Close()
			t.Log(describe(o))

			switch c.at {
			case "A", "B":
				if o.err != nil || slices.ContainsFunc(o.rcptErrs, func(e error) bool { return e != nil }) {
					t.Fatalf("want delivery to %s, got %s", c.at, describe(o))
				}
				if o.reply == "" {
					t.Errorf("empty reply to the final dot")
				}
			default:
				if o.err == nil {
					t.Fatalf("want an error, got %s", describe(o))
				}
				e := asError(t, o.err)
				if e.Code != c.code || e.Temporary() != c.temporary {
					t.Fatalf("error %v: code %d temporary %v, want code %d temporary %v", e, e.Code, e.Temporary(), c.code, c.temporary)
				}
			}

			if c.timeouts == nil {
				// Let A finish with the session, so an aborted transaction's dump is gone.
				// A slow A would only finish after its delay; the marker cannot be in its
				// dump anyway, as the body never reached it.
				a.WaitSessions(t, 1)
			}
			wantA, wantB := 0, 0
			switch c.at {
			case "A":
				wantA = 1
			case "B":
				wantB = 1
			}
			if n := countMarker(t, b, c.name); n != wantB {
				t.Errorf("B holds %d copies, want %d (%s)", n, wantB, describe(o))
			}
			if !c.afterDot {
				if n := countMarker(t, a, c.name); n != wantA {
					t.Errorf("A holds %d copies, want %d (%s)", n, wantA, describe(o))
				}
			}
			if c.at != "" {
				want := map[string]string{"A": a.Addr, "B": b.Addr}[c.at]
				if o.endpoint != want {
					t.Errorf("Endpoint() = %q, want %q", o.endpoint, want)
				}
				sink := map[string]*testpeers.Sink{"A": a, "B": b}[c.at]
				m := sink.Messages(t)[0]
				if !slices.Equal(m.RcptTo, []string{"<r1@example.net>", "<r2@example.net>"}) {
					t.Errorf("recipients at %s = %q, want both", c.at, m.RcptTo)
				}
			}
		})
	}
}

// TestReplayedRecipientRefused fails over after both recipients were accepted by A; B
// refuses them when they are replayed, so the message fails as a whole, temporarily, and
// nobody gets it.
func TestReplayedRecipientRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		bArg string
		code int
	}{
		{"4xx keeps its code", "-r", 450},
		{"5xx becomes local", "-f", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a := testpeers.StartSink(t, "-Q", "DATA")
			b := testpeers.StartSink(t, c.bArg, "RCPT")
			p := newPool(t, testUpstream(t, config.TLSNone, a.Addr, b.Addr), upstream.Options{})
			o := send(ctxFor(t), p, "replay", "r1@example.net", "r2@example.net")
			if o.rcptErrs[0] != nil || o.rcptErrs[1] != nil {
				t.Fatalf("recipients refused by A: %s", describe(o))
			}
			e := asError(t, o.err)
			if !e.Temporary() || e.Code != c.code {
				t.Fatalf("error %v: code %d, temporary %v; want temporary code %d", e, e.Code, e.Temporary(), c.code)
			}
			p.Close()
			// Both sessions must be over: A's aborted transaction leaves a dump until
			// its session ends (as in TestStageFaults).
			a.WaitSessions(t, 1)
			b.WaitSessions(t, 1)
			if n := len(a.Messages(t)) + len(b.Messages(t)); n != 0 {
				t.Fatalf("%d copies delivered, want none", n)
			}
		})
	}
}

// TestContextCancels shows that the caller's context bounds a transaction and does not
// count as an endpoint failure: nothing is tried on the next endpoint.
func TestContextCancels(t *testing.T) {
	t.Parallel()
	a := testpeers.StartSink(t, "-W", "RCPT:2")
	b := testpeers.StartSink(t)
	p := newPool(t, testUpstream(t, config.TLSNone, a.Addr, b.Addr), upstream.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	tx := p.Begin(ctx, "sender@example.com", nil)
	defer tx.Close()
	err := tx.Rcpt(ctx, "r@example.net", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Rcpt = %v, want the context's error", err)
	}
	if e := asError(t, err); !e.Temporary() {
		t.Fatalf("%v is not temporary", e)
	}
	// The transaction is over: later calls fail the same way without trying B.
	if err2 := tx.Rcpt(ctxFor(t), "r2@example.net", nil); !errors.Is(err2, context.DeadlineExceeded) {
		t.Fatalf("second Rcpt = %v", err2)
	}
	p.Close()
	if c := b.Counters(); c.Sessions > 1 {
		t.Fatalf("B saw %d sessions besides the probe, want none", c.Sessions-1)
	}
}
