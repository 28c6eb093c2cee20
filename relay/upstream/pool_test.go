package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// TestPoolReusesConnection sends two messages one after the other over one connection,
// with RSET in between.
func TestPoolReusesConnection(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	var d dialCounter
	p := newPool(t, testUpstream(t, config.TLSNone, s.Addr), upstream.Options{Dial: d.dial})
	ctx := ctxFor(t)
	for i := range 2 {
		if o := send(ctx, p, fmt.Sprint("reuse-", i), "r@example.net"); o.err != nil {
			t.Fatalf("message %d: %s", i, describe(o))
		}
		if st := p.Stats(); st.Idle != 1 || st.InUse != 0 {
			t.Fatalf("after message %d: stats %+v, want one idle connection", i, st)
		}
	}
	if n := d.n.Load(); n != 1 {
		t.Fatalf("%d connections opened for two messages, want 1", n)
	}
	if n := len(s.Messages(t)); n != 2 {
		t.Fatalf("sink holds %d messages, want 2", n)
	}
	// Closing the pool QUITs the idle connection.
	p.Close()
	if c := s.WaitSessions(t, 1); c.Quits != 1 || c.Messages != 2 {
		t.Fatalf("sink counters %+v, want one session with 2 messages ended by QUIT", c)
	}
}

// TestPoolConnectionOutlivesContext shows that a pooled connection is not tied to the
// context of the transaction that last used it: that context ending (the client's
// session closing) leaves the connection to the next transaction.
func TestPoolConnectionOutlivesContext(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	var d dialCounter
	p := newPool(t, testUpstream(t, config.TLSNone, s.Addr), upstream.Options{Dial: d.dial})
	first, cancel := context.WithCancel(ctxFor(t))
	if o := send(first, p, "first", "r@example.net"); o.err != nil {
		t.Fatalf("first message: %s", describe(o))
	}
	cancel()
	if o := send(ctxFor(t), p, "second", "r@example.net"); o.err != nil {
		t.Fatalf("second message, after the first one's context ended: %s", describe(o))
	}
	if n := d.n.Load(); n != 1 {
		t.Fatalf("%d connections opened, want 1: the pooled one was closed with the first context", n)
	}
	if n := len(s.Messages(t)); n != 2 {
		t.Fatalf("sink holds %d messages, want 2", n)
	}
}

// TestPoolMaxMessagesPerConnection retires a connection after its message budget.
func TestPoolMaxMessagesPerConnection(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	var d dialCounter
	u := testUpstream(t, config.TLSNone, s.Addr)
	u.MaxMessagesPerConnection = 2
	p := newPool(t, u, upstream.Options{Dial: d.dial})
	ctx := ctxFor(t)
	for i := range 3 {
		if o := send(ctx, p, fmt.Sprint("budget-", i), "r@example.net"); o.err != nil {
			t.Fatalf("message %d: %s", i, describe(o))
		}
	}
	if n := d.n.Load(); n != 2 {
		t.Fatalf("%d connections opened for 3 messages at 2 per connection, want 2", n)
	}
	// The first connection was ended with QUIT when its budget was spent.
	if c := s.WaitSessions(t, 1); c.Quits != 1 {
		t.Fatalf("sink counters %+v, want a QUIT", c)
	}
}

// TestPoolIdleTimeout closes a connection left idle for the idle timeout.
func TestPoolIdleTimeout(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	var d dialCounter
	u := testUpstream(t, config.TLSNone, s.Addr)
	u.Timeouts.Idle.Duration = 100 * time.Millisecond
	p := newPool(t, u, upstream.Options{Dial: d.dial})
	ctx := ctxFor(t)
	if o := send(ctx, p, "idle-1", "r@example.net"); o.err != nil {
		t.Fatal(describe(o))
	}
	if !testpeers.Eventually(func() bool { return p.Stats().Idle == 0 }) {
		t.Fatalf("idle connection not closed: %+v", p.Stats())
	}
	if c := s.WaitSessions(t, 1); c.Quits != 1 {
		t.Fatalf("sink counters %+v, want the idle connection ended by QUIT", c)
	}
	if o := send(ctx, p, "idle-2", "r@example.net"); o.err != nil {
		t.Fatal(describe(o))
	}
	if n := d.n.Load(); n != 2 {
		t.Fatalf("%d connections opened, want 2", n)
	}
}

// TestPoolDeadIdleConnection: the upstream drops the pooled connection; the next message
// notices at MAIL FROM, reconnects to the same endpoint and does not fail over.
func TestPoolDeadIdleConnection(t *testing.T) {
	t.Parallel()
	srv := testpeers.StartServer(t, testpeers.ServerOptions{})
	b := testpeers.StartSink(t)
	var d dialCounter
	p := newPool(t, testUpstream(t, config.TLSNone, srv.Addr, b.Addr), upstream.Options{Dial: d.dial})
	ctx := ctxFor(t)
	if o := send(ctx, p, "dead-1", "r@example.net"); o.err != nil {
		t.Fatal(describe(o))
	}
	srv.DropConnections()
	o := send(ctx, p, "dead-2", "r@example.net")
	if o.err != nil || o.endpoint != srv.Addr {
		t.Fatalf("want delivery to %s: %s", srv.Addr, describe(o))
	}
	if n := len(srv.Messages()); n != 2 {
		t.Fatalf("server holds %d messages, want 2", n)
	}
	if n := d.n.Load(); n != 2 {
		t.Fatalf("%d connections opened, want 2 (the dead one and its replacement)", n)
	}
	if n := len(b.Messages(t)); n != 0 {
		t.Fatalf("second endpoint got %d messages, want none", n)
	}
}

// TestPoolExhausted: with every connection in use, a transaction waits for the acquire
// timeout and then fails temporarily with ErrPoolExhausted; one waiting gets the
// connection as soon as it is released.
func TestPoolExhausted(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	var d dialCounter
	u := testUpstream(t, config.TLSNone, s.Addr)
	u.MaxConnections = 1
	u.Timeouts.Acquire.Duration = 200 * time.Millisecond
	p := newPool(t, u, upstream.Options{Dial: d.dial})
	ctx := ctxFor(t)

	holder := p.Begin(ctx, "a@example.com", nil)
	if err := holder.Rcpt(ctx, "r@example.net", nil); err != nil {
		t.Fatal(err)
	}
	tx := p.Begin(ctx, "b@example.com", nil)
	err := tx.Rcpt(ctx, "r@example.net", nil)
	tx.Close()
	if !errors.Is(err, upstream.ErrPoolExhausted) {
		t.Fatalf("Rcpt = %v, want ErrPoolExhausted", err)
	}
	if e := asError(t, err); !e.Temporary() || e.Code != 0 {
		t.Fatalf("%v: code %d temporary %v, want a temporary local error", e, e.Code, e.Temporary())
	}

	// Now one that waits long enough.
	u.Timeouts.Acquire.Duration = 20 * time.Second
	p2 := newPool(t, u, upstream.Options{Dial: d.dial})
	holder2 := p2.Begin(ctx, "a@example.com", nil)
	if err := holder2.Rcpt(ctx, "r@example.net", nil); err != nil {
		t.Fatal(err)
	}
	waited := make(chan outcome, 1)
	go func() { waited <- send(ctx, p2, "waiter", "r@example.net") }()
	if !testpeers.Eventually(func() bool { return p2.Stats().Waiting == 1 }) {
		t.Fatalf("transaction not waiting: %+v", p2.Stats())
	}
	holder2.Close()
	if o := <-waited; o.err != nil {
		t.Fatalf("waiting transaction: %s", describe(o))
	}
	holder.Close()
	if n := d.n.Load(); n != 2 {
		t.Fatalf("%d connections opened, want 2 (one per pool)", n)
	}
}

// TestPoolClose: idle connections are closed at once, in-use ones when released, and
// the closed pool refuses new transactions with a temporary error.
func TestPoolClose(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	p := newPool(t, testUpstream(t, config.TLSNone, s.Addr), upstream.Options{})
	ctx := ctxFor(t)
	if o := send(ctx, p, "close-1", "r@example.net"); o.err != nil {
		t.Fatal(describe(o))
	}
	busy := p.Begin(ctx, "a@example.com", nil)
	if err := busy.Rcpt(ctx, "r@example.net", nil); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Idle != 0 || st.InUse != 1 {
		t.Fatalf("stats %+v: the busy transaction should have taken the idle connection", st)
	}
	if o := send(ctx, p, "close-2", "r@example.net"); o.err != nil {
		t.Fatal(describe(o))
	}
	p.Close()
	if st := p.Stats(); st.Idle != 0 || st.InUse != 1 {
		t.Fatalf("stats after Close %+v, want only the busy connection", st)
	}
	// The busy transaction can still finish its message.
	if _, err := busy.Data(ctx, strings.NewReader(message("close-busy"))); err != nil {
		t.Fatal(err)
	}
	busy.Close()
	if st := p.Stats(); st != (upstream.Stats{}) {
		t.Fatalf("stats after release %+v, want nothing", st)
	}
	if c := s.WaitSessions(t, 2); c.Quits != 2 || c.Messages != 3 {
		t.Fatalf("sink counters %+v, want 2 sessions ended by QUIT and 3 messages", c)
	}
	err := send(ctx, p, "after-close", "r@example.net").err
	if !errors.Is(err, upstream.ErrPoolClosed) || !asError(t, err).Temporary() {
		t.Fatalf("after Close: %v, want a temporary ErrPoolClosed", err)
	}
}

// TestConcurrentTransactions runs many transactions at once through a small pool.
func TestConcurrentTransactions(t *testing.T) {
	t.Parallel()
	s := testpeers.StartSink(t)
	var d dialCounter
	u := testUpstream(t, config.TLSNone, s.Addr)
	u.MaxConnections = 4
	p := newPool(t, u, upstream.Options{Dial: d.dial})
	ctx := ctxFor(t)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			if o := send(ctx, p, fmt.Sprint("concurrent-", i), "r1@example.net", "r2@example.net"); o.err != nil {
				errs <- describe(o)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := d.n.Load(); got > 4 {
		t.Errorf("%d connections opened, want at most 4", got)
	}
	for i := range n {
		if c := countMarker(t, s, fmt.Sprint("concurrent-", i)); c != 1 {
			t.Errorf("message %d arrived %d times", i, c)
		}
	}
	if st := p.Stats(); st.InUse != 0 || st.Waiting != 0 || st.Idle > 4 {
		t.Errorf("stats at the end %+v", st)
	}
}
