package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/internal/crlf"
)

// quitTimeout bounds the polite QUIT sent before closing a connection, so retiring a
// connection to an unresponsive upstream does not hold anything up for long.
const quitTimeout = 5 * time.Second

// conn is one SMTP connection to one endpoint.
type conn struct {
	p    *Pool
	ep   int
	addr string
	// raw is the TCP connection under any TLS layer: deadlines and forced closes act on
	// it, which also works while a TLS read or write is blocked.
	raw net.Conn
	c   *smtp.Client
	// wire is what the SMTP client writes to; message bodies are written to it directly.
	wire *coalescingConn

	messages  int       // MAIL transactions started on this connection
	idleSince time.Time // when it was put back into the pool
	reused    bool      // taken from the pool rather than freshly dialled
	// pipelining: the upstream offers PIPELINING (RFC 2920), so MAIL FROM is sent with
	// the first RCPT TO, saving a round trip per message.
	pipelining bool
	broken     bool // must not be used again: I/O error, 421, timeout, mid-DATA abort
	// ended is set when the reply to the final dot closed the transaction: the server
	// has already cleared its state (RFC 5321 section 4.1.1.4), so no RSET is needed
	// before the next MAIL. Other transactions (aborted before or during DATA) are
	// RSET (section 4.1.1.5) before the connection is reused.
	ended bool

	// watched is the context whose end closes raw while a transaction uses the
	// connection; stopWatch undoes that. One registration serves every command of a
	// transaction, instead of one per command; the pool undoes it on release.
	watched   context.Context
	stopWatch func() bool
}

// watch makes the end of ctx close the connection, which unblocks any read or write.
func (cn *conn) watch(ctx context.Context) {
	if cn.stopWatch != nil && cn.watched == ctx {
		return
	}
	cn.unwatch()
	cn.watched = ctx
	raw := cn.raw
	cn.stopWatch = context.AfterFunc(ctx, func() { raw.Close() })
}

// unwatch undoes watch, before the connection goes back to the pool or away. If the
// context already ended, the connection is (being) closed: it is marked broken.
func (cn *conn) unwatch() {
	if cn.stopWatch == nil {
		return
	}
	if !cn.stopWatch() {
		cn.broken = true
	}
	cn.stopWatch, cn.watched = nil, nil
}

// dial opens, secures, greets and authenticates a new connection to endpoint ep, all
// within the connect timeout.
func (p *Pool) dial(ctx context.Context, ep int) (*conn, *Error) {
	addr := p.addrs[ep]
	cctx, cancel := context.WithTimeout(ctx, p.u.Timeouts.Connect.Duration)
	defer cancel()
	raw, err := p.dialFn(cctx, "tcp", addr)
	if err != nil {
		return nil, &Error{Endpoint: addr, Err: fmt.Errorf("connecting: %w", err)}
	}
	// go-smtp sets and clears per-command deadlines itself, so the connect phase as a
	// whole is bounded by closing the connection when cctx ends.
	stop := context.AfterFunc(cctx, func() { raw.Close() })
	cn := &conn{p: p, ep: ep, addr: addr, raw: raw}
	e := cn.setup(cctx)
	if !stop() {
		raw.Close()
		cause := cctx.Err()
		if ctx.Err() == nil {
			cause = fmt.Errorf("connect timeout of %s exceeded: %w", p.u.Timeouts.Connect.Duration, cause)
		}
		return nil, &Error{Endpoint: addr, Err: fmt.Errorf("connecting: %w", cause)}
	}
	if e != nil {
		raw.Close()
		return nil, e
	}
	p.log.V(1).Info("connected to upstream", "upstream", p.u.Name, "endpoint", addr, "tls", p.u.TLS.Mode)
	return cn, nil
}

// setup runs TLS, EHLO and AUTH on a fresh connection.
func (cn *conn) setup(ctx context.Context) *Error {
	p := cn.p
	host := p.u.Endpoints[cn.ep].Host
	var nc net.Conn
	switch p.u.TLS.Mode {
	case config.TLSImplicit:
		tc := tls.Client(cn.raw, p.tlsConfig(host))
		if err := tc.HandshakeContext(ctx); err != nil {
			return &Error{Endpoint: cn.addr, Err: fmt.Errorf("TLS handshake: %w", err)}
		}
		nc = tc
	case config.TLSNone:
		nc = cn.raw
	default: // STARTTLS, the default mode
		if e := cn.startTLS(); e != nil {
			return e
		}
		tc := tls.Client(cn.raw, p.tlsConfig(host))
		if err := tc.HandshakeContext(ctx); err != nil {
			return &Error{Endpoint: cn.addr, Err: fmt.Errorf("TLS handshake after STARTTLS: %w", err)}
		}
		// go-smtp starts every client by reading a greeting, but a session resumed
		// after STARTTLS has none: hand it a synthetic one.
		nc = &greetedConn{Conn: tc, pending: []byte("220 resumed after STARTTLS\r\n")}
	}
	cn.wire = &coalescingConn{Conn: nc, addr: cn.addr}
	cn.c = smtp.NewClient(cn.wire)
	cn.c.CommandTimeout = p.u.Timeouts.Command.Duration
	cn.c.SubmissionTimeout = p.u.Timeouts.Data.Duration
	if err := cn.c.Hello(p.opts.LocalName); err != nil {
		return cn.setupError("greeting/EHLO", err)
	}
	cn.pipelining, _ = cn.c.Extension("PIPELINING")
	if p.creds != nil {
		return cn.auth()
	}
	return nil
}

// startTLS speaks the plain-text part of a STARTTLS session (greeting, EHLO, STARTTLS)
// itself: go-smtp's own STARTTLS helper would greet with "localhost" instead of the
// relay's name.
func (cn *conn) startTLS() *Error {
	cmdTimeout := cn.p.u.Timeouts.Command.Duration
	br := bufio.NewReader(cn.raw)
	tr := textproto.NewReader(br)
	step := func(cmd string, expect int) (string, *Error) {
		cn.raw.SetDeadline(time.Now().Add(cmdTimeout))
		if cmd != "" {
			if _, err := io.WriteString(cn.raw, cmd+"\r\n"); err != nil {
				return "", &Error{Endpoint: cn.addr, Err: fmt.Errorf("sending %s: %w", strings.Fields(cmd)[0], err)}
			}
		}
		_, msg, err := tr.ReadResponse(expect)
		if err != nil {
			var te *textproto.Error
			if errors.As(err, &te) {
				return "", textprotoReplyError(cn.addr, te)
			}
			what := "greeting"
			if cmd != "" {
				what = "reply to " + strings.Fields(cmd)[0]
			}
			return "", &Error{Endpoint: cn.addr, Err: fmt.Errorf("reading %s: %w", what, err)}
		}
		return msg, nil
	}
	if _, e := step("", 220); e != nil {
		return e
	}
	ehlo, e := step("EHLO "+cn.p.opts.LocalName, 250)
	if e != nil {
		return e
	}
	offered := false
	for i, line := range strings.Split(ehlo, "\n") {
		if f := strings.Fields(line); i > 0 && len(f) > 0 && strings.EqualFold(f[0], "STARTTLS") {
			offered = true
		}
	}
	if !offered {
		return &Error{Endpoint: cn.addr, Err: errors.New("upstream does not offer STARTTLS, which this upstream's TLS mode requires; refusing to continue in plain text")}
	}
	if _, e := step("STARTTLS", 220); e != nil {
		return e
	}
	// Anything already buffered arrived before TLS and could be injected by a man in
	// the middle (the reverse of CVE-2011-0411): refuse it.
	if br.Buffered() > 0 {
		return &Error{Endpoint: cn.addr, Err: errors.New("upstream sent data after its reply to STARTTLS")}
	}
	cn.raw.SetDeadline(time.Time{})
	return nil
}

// auth authenticates with the configured mechanism; the password never appears in
// errors or logs.
func (cn *conn) auth() *Error {
	p := cn.p
	if p.u.TLS.Mode == config.TLSNone {
		return &Error{Endpoint: cn.addr, Err: errors.New("refusing to send credentials without TLS (tls.mode is None)")}
	}
	mech := "PLAIN"
	if p.u.Auth != nil && p.u.Auth.Mechanism != "" {
		mech = strings.ToUpper(p.u.Auth.Mechanism)
	}
	if !cn.c.SupportsAuth(mech) {
		_, offered := cn.c.Extension("AUTH")
		if offered == "" {
			offered = "none"
		}
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("upstream does not offer AUTH %s (it offers: %s)", mech, sanitize(offered))}
	}
	var sc sasl.Client
	switch mech {
	case "LOGIN":
		sc = sasl.NewLoginClient(p.creds.Username, p.creds.Password)
	case "PLAIN":
		sc = sasl.NewPlainClient("", p.creds.Username, p.creds.Password)
	default:
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("unsupported AUTH mechanism %q: use PLAIN or LOGIN", mech)}
	}
	if err := cn.c.Auth(sc); err != nil {
		// Code stays 0: a refused login is the relay's problem, not a verdict on the
		// message, and must never turn into a 5xx for the client.
		e := &Error{Endpoint: cn.addr}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			e.Message = sanitize(se.Message)
			e.Err = fmt.Errorf("AUTH %s as %q refused with %d", mech, sanitize(p.creds.Username), se.Code)
		} else {
			e.Err = fmt.Errorf("AUTH %s as %q: %w", mech, sanitize(p.creds.Username), err)
		}
		return e
	}
	return nil
}

// setupError reports a failure while greeting: any reply code is kept only when it is a
// 4xx, since a failed endpoint must never produce a permanent verdict on the message.
func (cn *conn) setupError(stage string, err error) *Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e := replyError(cn.addr, se.Code, se.EnhancedCode, se.Message)
		if e.Temporary() {
			return e
		}
		return &Error{Endpoint: cn.addr, Message: e.Message, Err: fmt.Errorf("%s refused with %d", stage, se.Code)}
	}
	return &Error{Endpoint: cn.addr, Err: fmt.Errorf("%s: %w", stage, err)}
}

// do runs one exchange, closing the connection if ctx ends meanwhile. ok is false when
// the connection can no longer be used.
func (cn *conn) do(ctx context.Context, stage string, f func() error) (e *Error, ok bool) {
	cn.watch(ctx)
	err := f()
	if ctx.Err() != nil {
		// The watch has closed the connection, or is about to.
		cn.broken = true
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("%s: %w", stage, ctx.Err())}, false
	}
	if err == nil {
		return nil, true
	}
	e, ok = cn.classify(stage, err)
	if !ok {
		cn.broken = true
	}
	return e, ok
}

// classify turns what a go-smtp call returned into an *Error and says whether the
// connection is still usable.
func (cn *conn) classify(stage string, err error) (*Error, bool) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		// 421 means the upstream is closing the connection (RFC 5321 3.8).
		return replyError(cn.addr, se.Code, se.EnhancedCode, se.Message), se.Code != 421
	}
	if isNetworkError(err) {
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("%s: %w", stage, err)}, false
	}
	// A local refusal by go-smtp (e.g. an option the upstream does not support): nothing
	// was sent, the connection is fine.
	return &Error{Endpoint: cn.addr, Err: fmt.Errorf("%s: %w", stage, err)}, true
}

func (cn *conn) mail(ctx context.Context, from string, opts *smtp.MailOptions) (*Error, bool) {
	return cn.do(ctx, "MAIL FROM", func() error { return cn.c.Mail(from, opts) })
}

func (cn *conn) rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) (*Error, bool) {
	return cn.do(ctx, "RCPT TO", func() error { return cn.c.Rcpt(to, opts) })
}

// reset prepares a connection for its next transaction (RFC 5321 4.1.1.5).
func (cn *conn) reset() error {
	if cn.broken {
		return errors.New("connection is broken")
	}
	if err := cn.c.Reset(); err != nil {
		cn.broken = true
		return err
	}
	// go-smtp forgets the EHLO after RSET; greeting again now keeps the next MAIL FROM
	// free to be pipelined and the extensions current.
	if err := cn.c.Hello(cn.p.opts.LocalName); err != nil {
		cn.broken = true
		return err
	}
	cn.pipelining, _ = cn.c.Extension("PIPELINING")
	return nil
}

// close ends the connection: politely with QUIT when it is still usable.
func (cn *conn) close() {
	if !cn.broken && cn.c != nil {
		cn.c.CommandTimeout = min(cn.p.u.Timeouts.Command.Duration, quitTimeout)
		_ = cn.c.Quit()
	}
	cn.broken = true
	cn.raw.Close()
}

// greetedConn serves a fixed greeting before the real stream.
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(b []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(b, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(b)
}

// lineEndingReader fails on a CR or LF that is not part of a CRLF pair.
type lineEndingReader struct {
	r  io.Reader
	cr bool // the previous byte was CR
}

func (l *lineEndingReader) Read(b []byte) (int, error) {
	n, err := l.r.Read(b)
	ok, cr := crlf.Check(b[:n], l.cr)
	if !ok {
		return 0, ErrBareLineEnding
	}
	l.cr = cr
	if err == io.EOF && l.cr {
		return 0, ErrBareLineEnding
	}
	return n, err
}

// coalescingConn holds writes until the next read, so everything sent before waiting
// for a reply leaves in one write: the body of a message and its final dot, for
// instance, instead of a write per 4 KiB buffer of the SMTP library. Every reply is
// awaited with a read, so nothing waits longer than it would have.
//
// It can also defer one reply (RFC 2920 pipelining): the SMTP library is handed a
// stand-in "250" for the deferred command, which stays held with its successor, and
// the real reply is read off the wire, before the successor's, on the next read.
type coalescingConn struct {
	net.Conn
	addr string // the endpoint, for errors
	buf  []byte
	// mute discards writes until the next read: the SMTP library's own end-of-data
	// marker, when the body and its marker were already written directly.
	mute bool

	deferNext bool          // the next read gets the stand-in reply
	awaiting  bool          // the stand-in was handed out; the real reply is unread
	br        *bufio.Reader // reads through here once a reply has been deferred
	held      *Error        // the deferred reply when it was not a 2xx
	heldDone  bool          // the deferred reply was read
}

// coalesceLimit bounds the held bytes, and so the memory, per connection.
const coalesceLimit = 64 << 10

// standIn is what the SMTP library reads in place of a deferred reply.
var standIn = []byte("250 deferred\r\n")

func (c *coalescingConn) Write(b []byte) (int, error) {
	if c.mute {
		return len(b), nil
	}
	if len(c.buf)+len(b) > coalesceLimit {
		if err := c.flush(); err != nil {
			return 0, err
		}
		if len(b) > coalesceLimit {
			return c.Conn.Write(b)
		}
	}
	c.buf = append(c.buf, b...)
	return len(b), nil
}

func (c *coalescingConn) Read(b []byte) (int, error) {
	c.mute = false
	if c.deferNext && len(b) >= len(standIn) {
		c.deferNext, c.awaiting, c.heldDone, c.held = false, true, false, nil
		return copy(b, standIn), nil
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	if c.awaiting {
		c.awaiting = false
		_, _, err := textproto.NewReader(c.br).ReadResponse(2)
		var te *textproto.Error
		switch {
		case errors.As(err, &te):
			c.held = textprotoReplyError(c.addr, te)
		case err != nil:
			return 0, err
		}
		c.heldDone = true
	}
	if c.br != nil {
		return c.br.Read(b)
	}
	return c.Conn.Read(b)
}

// deferReply makes the reply to the next command wait for the one after it.
func (c *coalescingConn) deferReply() {
	if c.br == nil {
		c.br = bufio.NewReaderSize(c.Conn, 1024)
	}
	c.deferNext, c.heldDone = true, false
}

// deferred returns the deferred reply's verdict once the next command's reply has been
// read: got is false when it never arrived (or the SMTP library did not read the
// stand-in, which would misalign replies: the connection must then be dropped).
func (c *coalescingConn) deferred() (e *Error, got bool) {
	if c.deferNext || c.awaiting {
		c.deferNext, c.awaiting = false, false
		return nil, false
	}
	return c.held, c.heldDone
}

func (c *coalescingConn) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

func (c *coalescingConn) Close() error {
	_ = c.flush()
	return c.Conn.Close()
}

// dotStuffer writes message data with RFC 5321 section 4.5.2 transparency: a line that
// starts with "." gets another. It works on whole chunks, not byte by byte, and expects
// CRLF line endings (lineEndingReader has checked them).
type dotStuffer struct {
	w   io.Writer
	bol bool // the last byte written ended a line (or nothing was written yet)
}

var dotBytes = []byte(".")

func (d *dotStuffer) Write(p []byte) (int, error) {
	n := len(p)
	if n == 0 {
		return 0, nil
	}
	if d.bol && p[0] == '.' {
		if _, err := d.w.Write(dotBytes); err != nil {
			return 0, err
		}
	}
	for {
		i := bytes.Index(p, []byte("\n."))
		if i < 0 {
			break
		}
		if _, err := d.w.Write(p[:i+1]); err != nil {
			return 0, err
		}
		if _, err := d.w.Write(dotBytes); err != nil {
			return 0, err
		}
		p = p[i+1:]
	}
	if _, err := d.w.Write(p); err != nil {
		return 0, err
	}
	d.bol = p[len(p)-1] == '\n'
	return n, nil
}

// end writes the end-of-data marker, completing a last line that lacks its CRLF.
func (d *dotStuffer) end() error {
	marker := ".\r\n"
	if !d.bol {
		marker = "\r\n.\r\n"
	}
	_, err := io.WriteString(d.w, marker)
	return err
}
