package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// MailOptions are what the client asked for in its MAIL command that is passed on.
type MailOptions struct {
	// Body is the client's BODY parameter (RFC 6152: "7BIT" or "8BITMIME"); "" when it
	// gave none, and then none is sent upstream either.
	Body string
}

// RcptOptions are the RCPT parameters passed on. There are none yet: the relay offers
// its clients no RCPT extension (DSN is not offered).
type RcptOptions struct{}

// Tx is one message on its way to an upstream. Its methods serialise, but a Tx is meant
// to be driven by one goroutine: Begin, Rcpt..., Data, Close.
type Tx struct {
	p        *Pool
	from     string
	mailOpts *MailOptions

	mu       sync.Mutex
	permit   bool   // holds one of the pool's permits (released by Close)
	cn       *conn  // connection with MAIL FROM (and the accepted RCPTs) sent
	next     int    // endpoint to try next; those before it could not take the message
	last     *Error // why the previous endpoint could not take the message
	rcpts    []rcpt // recipients accepted so far, replayed on failover
	endpoint string // endpoint of the last connection used
	err      error  // terminal: every later call returns it
	midData  bool   // the body is being streamed: the connection cannot be reused
	dataUsed bool   // Data was called
	closed   bool

	// The verdict on the recipient that open sent together with MAIL FROM.
	firstSent bool
	firstErr  *Error
	firstOK   bool
}

// bodyBuffers recycles the buffers message bodies are copied through, which would
// otherwise be a 32 KiB allocation per message.
var bodyBuffers = sync.Pool{New: func() any {
	b := make([]byte, 32*1024)
	return &b
}}

type rcpt struct {
	to string
}

// Open connects (or takes a pooled connection) and sends MAIL FROM now, so a refused
// sender can be reported at once. Rcpt calls it implicitly.
func (tx *Tx) Open(ctx context.Context) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.closed {
		return &Error{Err: ErrTxDone}
	}
	return tx.ensure(ctx, nil)
}

// Rcpt forwards one RCPT TO and returns the upstream's verdict on that recipient: nil
// when accepted, otherwise an *Error to pass on to the client. A failure of the
// transaction as a whole (no endpoint could take the message, sender refused) is also
// returned as an *Error, and every later call returns it too.
func (tx *Tx) Rcpt(ctx context.Context, to string, _ *RcptOptions) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.closed || tx.dataUsed {
		return &Error{Err: ErrTxDone}
	}
	if !validAddress(to) {
		return &Error{Err: fmt.Errorf("invalid recipient address %q", sanitize(to))}
	}
	r := &rcpt{to: to}
	for {
		if err := tx.ensure(ctx, r); err != nil {
			return err
		}
		var e *Error
		ok := true
		if tx.firstSent {
			// A fresh connection took this recipient along with MAIL FROM.
			e, ok = tx.firstErr, tx.firstOK
			tx.firstSent, tx.firstErr = false, nil
		} else {
			e, ok = tx.cn.rcpt(ctx, to)
		}
		if e == nil {
			tx.rcpts = append(tx.rcpts, *r)
			return nil
		}
		if ctx.Err() != nil {
			return tx.fail(e)
		}
		if ok {
			// This recipient's own result (4xx or 5xx): passed on, no failover.
			return e
		}
		// 421 or a lost connection: this endpoint cannot take the message. The next
		// one gets MAIL FROM and the recipients accepted so far, then this one again.
		tx.failEndpoint(e)
	}
}

// Data sends DATA and streams r, which holds the message already dot-decoded with CRLF
// line endings, dot-encoded to the upstream, then waits for the reply to the final dot
// and returns its text. If reading r fails, the connection is closed without the final
// dot, so the upstream never delivers a partial message, and the error returned wraps
// the reader's error. Data may be called once per transaction.
func (tx *Tx) Data(ctx context.Context, r io.Reader) (string, error) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.closed || tx.dataUsed {
		return "", &Error{Err: ErrTxDone}
	}
	if tx.err != nil {
		return "", tx.err
	}
	tx.dataUsed = true
	if len(tx.rcpts) == 0 {
		return "", tx.fail(&Error{Endpoint: tx.endpoint, Err: ErrNoRecipients})
	}
	for {
		if err := tx.ensure(ctx, nil); err != nil {
			return "", err
		}
		tx.cn.sendLine("DATA", "")
		e, ok := tx.cn.await(ctx, "DATA", 3)
		if e == nil {
			break
		}
		if ctx.Err() != nil {
			return "", tx.fail(e)
		}
		if ok && e.Code >= 500 {
			// A permanent refusal of the message; the connection itself is fine.
			return "", tx.fail(e)
		}
		// 4xx, 421 or a lost connection before the upstream accepted DATA: nothing can
		// have been delivered yet, so the next endpoint may take the message.
		tx.failEndpoint(e)
	}
	return tx.stream(ctx, r)
}

// stream sends the body after 354 and reads the reply to the final dot, all within the
// data timeout.
func (tx *Tx) stream(ctx context.Context, r io.Reader) (string, error) {
	cn := tx.cn
	tx.midData = true
	deadline := time.Now().Add(tx.p.u.Timeouts.Data.Duration)
	cn.raw.SetDeadline(deadline)
	cn.watch(ctx)
	abort := func(e *Error) (string, error) {
		// Closing without the final dot: the upstream discards what it got.
		cn.broken = true
		cn.raw.Close()
		return "", tx.fail(e)
	}
	lr := &lineEndingReader{r: r}
	// The body is dot-stuffed in chunks into the connection's buffer, which writes
	// whenever it fills and last with the final dot.
	ds := &dotStuffer{w: cn.w, bol: true}
	bp := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(bp)
	buf := *bp
	for {
		n, rerr := lr.Read(buf)
		if n > 0 {
			if _, werr := ds.Write(buf[:n]); werr != nil {
				if ctx.Err() != nil {
					werr = ctx.Err()
				}
				return abort(&Error{Endpoint: cn.addr, Err: fmt.Errorf("sending the message: %w", werr)})
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return abort(&Error{Endpoint: cn.addr, Err: fmt.Errorf("reading the message: %w", rerr)})
		}
	}
	if err := ds.end(); err != nil {
		return abort(&Error{Endpoint: cn.addr, Err: fmt.Errorf("sending the message: %w", err)})
	}
	text, reply, err := cn.exchange(2, deadline)
	if ctx.Err() != nil {
		cn.broken = true
		return "", tx.fail(&Error{Endpoint: cn.addr, Err: fmt.Errorf("after the final dot: %w", ctx.Err())})
	}
	if err != nil {
		// The final dot was (maybe) sent: no failover, or the message could arrive
		// twice. The connection is unusable.
		cn.broken = true
		return "", tx.fail(&Error{Endpoint: cn.addr, Err: fmt.Errorf("reply to the final dot: %w", err)})
	}
	// Whatever the verdict, the transaction is over on the upstream's side.
	tx.midData = false
	cn.ended = true
	if reply != nil {
		if reply.Code == 421 {
			cn.broken = true
		}
		return "", tx.fail(reply)
	}
	return sanitize(text), nil
}

// Close ends the transaction. Its connection goes back to the pool after a successful
// RSET, or is closed when broken, mid-DATA, past maxMessagesPerConnection or when the
// pool is closed. Close may be called more than once.
func (tx *Tx) Close() {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.closed {
		return
	}
	tx.closed = true
	if tx.err == nil {
		tx.err = &Error{Err: ErrTxDone}
	}
	if !tx.permit {
		return
	}
	cn := tx.cn
	tx.cn = nil
	tx.permit = false
	if cn != nil && tx.midData {
		cn.broken = true
	}
	tx.p.release(cn)
}

// Failed returns the error that ended the transaction as a whole (no endpoint could
// take the message, the sender was refused, the message failed), or nil while it can
// go on: a recipient refused on its own does not end it.
func (tx *Tx) Failed() error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.err
}

// Endpoint returns the "host:port" of the endpoint the transaction last used, "" if it
// never reached one.
func (tx *Tx) Endpoint() string {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.endpoint
}

// fail makes e the transaction's final result.
func (tx *Tx) fail(e *Error) error {
	if tx.err == nil {
		tx.err = e
	}
	return tx.err
}

// failEndpoint gives up on the current endpoint (its connection is dropped, the permit
// kept) and moves on to the next one.
func (tx *Tx) failEndpoint(e *Error) {
	if tx.cn != nil {
		tx.p.drop(tx.cn)
		tx.cn = nil
	}
	tx.logFailover(e)
	tx.last = e
	tx.next++
}

func (tx *Tx) logFailover(e *Error) {
	tx.p.log.Info("upstream endpoint cannot take the message", "upstream", tx.p.u.Name,
		"endpoint", e.Endpoint, "error", e.Error(), "endpointsLeft", len(tx.p.addrs)-tx.next-1)
}

// ensure makes sure the transaction has a connection with MAIL FROM and every accepted
// recipient sent, trying endpoints in order from tx.next. A new connection also takes
// first, when not nil, and leaves its verdict in tx.firstSent/firstErr/firstOK.
func (tx *Tx) ensure(ctx context.Context, first *rcpt) error {
	if tx.err != nil {
		return tx.err
	}
	if tx.cn != nil {
		return nil
	}
	for tx.next < len(tx.p.addrs) {
		e, failover := tx.open(ctx, tx.next, first)
		if e == nil {
			return nil
		}
		if ctx.Err() != nil || !failover {
			return tx.fail(e)
		}
		tx.logFailover(e)
		tx.last = e
		tx.next++
	}
	return tx.fail(tx.exhausted())
}

// exhausted is the result when no endpoint could take the message: always temporary,
// keeping the last reply code only when it was a 4xx.
func (tx *Tx) exhausted() *Error {
	last := tx.last
	if last == nil {
		return &Error{Err: fmt.Errorf("upstream %q has no endpoints", tx.p.u.Name)}
	}
	e := &Error{Message: last.Message, Endpoint: last.Endpoint,
		Err: &exhaustedError{upstream: tx.p.u.Name, tried: len(tx.p.addrs), last: last}}
	if last.Code >= 400 && last.Code < 500 {
		e.Code, e.Enhanced = last.Code, last.Enhanced
	}
	return e
}

// open gets a connection to endpoint ep and sends MAIL FROM, the recipients accepted
// so far and then first, if not nil. failover says whether the next endpoint may be
// tried.
func (tx *Tx) open(ctx context.Context, ep int, first *rcpt) (e *Error, failover bool) {
	todo := tx.rcpts
	if first != nil {
		todo = append(todo[:len(todo):len(todo)], *first)
	}
	allowIdle := true
	for {
		cn, err := tx.p.acquire(ctx, ep, tx.permit, allowIdle)
		if err != nil {
			// Pool exhausted, pool closed or ctx done: no endpoint would do better.
			return &Error{Err: err}, false
		}
		tx.permit = true
		if cn == nil {
			var de *Error
			if cn, de = tx.p.dial(ctx, ep); de != nil {
				return de, true
			}
		}
		tx.endpoint = cn.addr
		// With PIPELINING, MAIL FROM leaves with the first RCPT TO, and their replies
		// are read in that order.
		pipelined := cn.pipelining && len(todo) > 0
		cn.sendMail(tx.from, tx.mailOpts)
		if pipelined {
			cn.sendRcpt(todo[0].to)
		}
		e, ok := cn.await(ctx, "MAIL FROM", 2)
		var re *Error
		rok := true
		if pipelined && ok {
			// After a refused MAIL the recipient's reply (a 503, most likely) says
			// nothing more, but it must still be read.
			re, rok = cn.await(ctx, "RCPT TO", 2)
			if !rok && e == nil {
				e, ok = re, false
			}
		}
		if e != nil {
			if cn.reused && (!ok || e.Code == 421) && ctx.Err() == nil {
				// A pooled connection that died while idle says nothing about the
				// endpoint: try a fresh one.
				tx.p.log.V(1).Info("pooled upstream connection is dead, reconnecting", "upstream", tx.p.u.Name, "endpoint", cn.addr, "error", e.Error())
				tx.p.drop(cn)
				allowIdle = false
				continue
			}
			if ok && e.Code >= 500 {
				// The sender is refused for good; keep the connection for RSET.
				tx.cn = cn
				cn.messages++
				return e, false
			}
			tx.p.drop(cn)
			return e, true
		}
		cn.messages++
		tx.cn = cn
		for i, r := range todo {
			if !pipelined || i > 0 {
				re, rok = cn.rcpt(ctx, r.to)
			}
			if first != nil && i == len(todo)-1 {
				// The new recipient's verdict is the caller's to act on.
				tx.firstSent, tx.firstErr, tx.firstOK = true, re, rok
				return nil, false
			}
			if re == nil {
				continue
			}
			if !rok {
				tx.p.drop(cn)
				tx.cn = nil
				return re, true
			}
			// A recipient the previous endpoint accepted is refused here: the
			// client was already told it is accepted, so the message can only be
			// tried again later as a whole.
			return &Error{Code: tempCode(re.Code), Enhanced: re.Enhanced, Message: re.Message, Endpoint: re.Endpoint,
				Err: errors.New("a recipient accepted before failover was refused by the next endpoint")}, false
		}
		return nil, false
	}
}

// tempCode keeps a 4xx code and turns anything else into 0 (local, temporary).
func tempCode(code int) int {
	if code >= 400 && code < 500 {
		return code
	}
	return 0
}

// exhaustedError explains an *Error returned after every endpoint failed; it unwraps to
// the last endpoint's *Error.
type exhaustedError struct {
	upstream string
	tried    int
	last     *Error
}

func (x *exhaustedError) Error() string {
	s := fmt.Sprintf("no endpoint of upstream %q could take the message (%d tried)", x.upstream, x.tried)
	if x.last.Err != nil {
		// The reply code and text are already in the outer error; the cause is not.
		s += ": " + x.last.Err.Error()
	}
	return s
}

func (x *exhaustedError) Unwrap() error { return x.last }
