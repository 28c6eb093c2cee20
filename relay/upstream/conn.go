package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/internal/crlf"
)

// quitTimeout bounds the polite QUIT sent before closing a connection, so retiring a
// connection to an unresponsive upstream does not hold anything up for long.
const quitTimeout = 5 * time.Second

// writeBufferSize is how much a connection holds before it writes: commands sent
// together (MAIL with the first RCPT) and the body of a message with its final dot
// leave in one write, and a full buffer is one TLS record.
const writeBufferSize = 16 << 10

// maxReplyBytes bounds what is read for one reply, so an upstream cannot make the relay
// hold an endless line or an endless multi-line reply.
const maxReplyBytes = 64 << 10

// conn is one SMTP client connection to one endpoint, spoken over net/textproto.
// Commands are buffered and leave when a reply is awaited, which is all RFC 2920
// pipelining needs: the replies are then read in the order the commands were sent.
type conn struct {
	p    *Pool
	ep   int
	addr string
	// token and tokenErr are the access token obtained before connecting (OAuth 2.0),
	// so a slow token endpoint does not spend the connect timeout.
	token    string
	tokenErr error
	// raw is the TCP connection under any TLS layer: deadlines and forced closes act on
	// it, which also works while a TLS read or write is blocked.
	raw  net.Conn
	lim  *replyLimit
	text *textproto.Reader
	w    *bufio.Writer
	// ext holds the EHLO keywords (upper case) and their parameters.
	ext map[string]string

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

// replyLimit is what the reply reader reads through: it fails once more than n bytes
// were read since the last reset.
type replyLimit struct {
	r io.Reader
	n int
}

var errReplyTooLong = errors.New("upstream reply too long")

func (l *replyLimit) Read(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, errReplyTooLong
	}
	if len(b) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	l.n -= n
	return n, err
}

// use makes nc (the TCP connection or the TLS layer over it) the one commands and
// replies travel on.
func (cn *conn) use(nc net.Conn) {
	cn.lim = &replyLimit{r: nc}
	cn.text = textproto.NewReader(bufio.NewReader(cn.lim))
	cn.w = bufio.NewWriterSize(nc, writeBufferSize)
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
	cn := &conn{p: p, ep: ep, addr: addr}
	if p.tokens != nil && p.creds != nil {
		// Within its own HTTP timeout, before the connect timeout starts.
		cn.token, cn.tokenErr = p.tokens.token()
	}
	cctx, cancel := context.WithTimeout(ctx, p.u.Timeouts.Connect.Duration)
	defer cancel()
	raw, err := p.dialFn(cctx, "tcp", addr)
	if err != nil {
		return nil, &Error{Endpoint: addr, Err: fmt.Errorf("connecting: %w", err)}
	}
	// Each exchange sets its own deadline; the connect phase as a whole is bounded by
	// closing the connection when cctx ends.
	stop := context.AfterFunc(cctx, func() { raw.Close() })
	cn.raw = raw
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

// setup runs TLS, the greeting, EHLO and AUTH on a fresh connection.
func (cn *conn) setup(ctx context.Context) *Error {
	p := cn.p
	host := p.u.Endpoints[cn.ep].Host
	switch p.u.TLS.Mode {
	case config.TLSImplicit:
		tc := tls.Client(cn.raw, p.tlsConfig(host))
		if err := tc.HandshakeContext(ctx); err != nil {
			return &Error{Endpoint: cn.addr, Err: fmt.Errorf("TLS handshake: %w", err)}
		}
		cn.use(tc)
		if e := cn.greet(); e != nil {
			return e
		}
	case config.TLSNone:
		cn.use(cn.raw)
		if e := cn.greet(); e != nil {
			return e
		}
	default: // STARTTLS, the default mode
		cn.use(cn.raw)
		if e := cn.greet(); e != nil {
			return e
		}
		if _, ok := cn.ext["STARTTLS"]; !ok {
			return &Error{Endpoint: cn.addr, Err: errors.New("upstream does not offer STARTTLS, which this upstream's TLS mode requires; refusing to continue in plain text")}
		}
		if e := cn.setupStep("STARTTLS", 220, "STARTTLS"); e != nil {
			return e
		}
		// Anything already read past the reply arrived before TLS and could be
		// injected by a man in the middle (the reverse of CVE-2011-0411): refuse it.
		if cn.text.R.Buffered() > 0 {
			return &Error{Endpoint: cn.addr, Err: errors.New("upstream sent data after its reply to STARTTLS")}
		}
		tc := tls.Client(cn.raw, p.tlsConfig(host))
		if err := tc.HandshakeContext(ctx); err != nil {
			return &Error{Endpoint: cn.addr, Err: fmt.Errorf("TLS handshake after STARTTLS: %w", err)}
		}
		// RFC 3207 section 4.2: what was learnt before TLS is forgotten and the
		// session starts again with EHLO, without a greeting.
		cn.use(tc)
		if e := cn.ehlo(); e != nil {
			return e
		}
	}
	if p.creds != nil {
		if e := cn.auth(); e != nil {
			e.auth = true
			return e
		}
	}
	return nil
}

// greet reads the greeting and says EHLO.
func (cn *conn) greet() *Error {
	if e := cn.setupStep("", 220, "greeting"); e != nil {
		return e
	}
	return cn.ehlo()
}

// ehlo says EHLO and learns the extensions the upstream offers.
func (cn *conn) ehlo() *Error {
	cn.sendLine("EHLO ", cn.p.opts.LocalName)
	msg, r, err := cn.exchange(250, time.Now().Add(cn.p.u.Timeouts.Command.Duration))
	cn.ext = map[string]string{}
	cn.pipelining = false
	if err == nil && r != nil && r.Code/100 == 5 {
		// An old server without EHLO: HELO, and no extensions (RFC 5321 section 3.2).
		cn.sendLine("HELO ", cn.p.opts.LocalName)
		_, e := cn.setupReply(250, "HELO")
		return e
	}
	if err != nil || r != nil {
		return cn.setupError("EHLO", r, err)
	}
	for i, line := range strings.Split(msg, "\n") {
		if i == 0 {
			continue // the server's name and greeting text
		}
		kw, param, _ := strings.Cut(strings.TrimSpace(line), " ")
		if kw != "" {
			cn.ext[strings.ToUpper(kw)] = param
		}
	}
	_, cn.pipelining = cn.ext["PIPELINING"]
	return nil
}

// setupStep sends cmd (none for the greeting) and reads its reply, which must have
// code expect.
func (cn *conn) setupStep(cmd string, expect int, stage string) *Error {
	if cmd != "" {
		cn.sendLine(cmd, "")
	}
	_, e := cn.setupReply(expect, stage)
	return e
}

// setupReply reads a reply while connecting; anything but expect is a setupError.
func (cn *conn) setupReply(expect int, stage string) (string, *Error) {
	msg, r, err := cn.exchange(expect, time.Now().Add(cn.p.u.Timeouts.Command.Duration))
	if err != nil || r != nil {
		return "", cn.setupError(stage, r, err)
	}
	return msg, nil
}

// setupError is the *Error for a failed step of connecting: a refusal r keeps its reply
// code only when it is a 4xx, since a failed endpoint must never produce a permanent
// verdict on the message; err is a failure of the connection.
func (cn *conn) setupError(stage string, r *Error, err error) *Error {
	switch {
	case err != nil:
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("%s: %w", stage, err)}
	case r.Temporary():
		return r
	default:
		return &Error{Endpoint: cn.addr, Message: r.Message, Err: fmt.Errorf("%s refused with %d", stage, r.Code)}
	}
}

// auth authenticates with the configured mechanism (RFC 4954); the password never
// appears in errors or logs.
func (cn *conn) auth() *Error {
	p := cn.p
	if p.u.TLS.Mode == config.TLSNone {
		return &Error{Endpoint: cn.addr, Err: errors.New("refusing to send credentials without TLS (tls.mode is None)")}
	}
	mech := "PLAIN"
	if p.u.Auth != nil && p.u.Auth.Mechanism != "" {
		mech = strings.ToUpper(p.u.Auth.Mechanism)
	}
	offered, ok := cn.ext["AUTH"]
	if !ok || !hasWord(offered, mech) {
		if offered == "" {
			offered = "none"
		}
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("upstream does not offer AUTH %s (it offers: %s)", mech, sanitize(offered))}
	}
	var sc sasl.Client
	var token string
	switch mech {
	case "LOGIN":
		sc = sasl.NewLoginClient(p.creds.Username, p.creds.Password)
	case "PLAIN":
		sc = sasl.NewPlainClient("", p.creds.Username, p.creds.Password)
	case config.MechanismXOAuth2, config.MechanismOAuthBearer:
		if p.tokens == nil {
			return &Error{Endpoint: cn.addr, Err: fmt.Errorf("AUTH %s needs an OAuth 2.0 client (auth.oauth2)", mech)}
		}
		if token = cn.token; cn.tokenErr != nil {
			// Code 0: the client is told 4xx and retries; the token is not the message's fault.
			return &Error{Endpoint: cn.addr, Err: fmt.Errorf("AUTH %s: no access token: %w", mech, cn.tokenErr)}
		}
		host, port, _ := net.SplitHostPort(cn.addr)
		portN, _ := strconv.Atoi(port)
		sc = newOAuthClient(mech, p.creds.Username, token, host, portN)
	default:
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("unsupported AUTH mechanism %q: use PLAIN, LOGIN, XOAUTH2 or OAUTHBEARER", mech)}
	}
	user := sanitize(p.creds.Username)
	refused := func(err error) *Error {
		// Code stays 0: a refused login is the relay's problem, not a verdict on the
		// message, and must never turn into a 5xx for the client.
		return &Error{Endpoint: cn.addr, Err: fmt.Errorf("AUTH %s as %q: %w", mech, user, err)}
	}
	_, ir, err := sc.Start()
	if err != nil {
		return refused(err)
	}
	line := "AUTH " + mech
	switch {
	case len(ir) > 0:
		line += " " + base64.StdEncoding.EncodeToString(ir)
	case ir != nil:
		line += " =" // an empty initial response (RFC 4954 section 4)
	}
	cn.sendLine(line, "")
	deadline := time.Now().Add(p.u.Timeouts.Command.Duration)
	challenged := false
	for {
		msg, r, err := cn.exchange(3, deadline)
		if err != nil {
			return refused(err)
		}
		if r != nil {
			if r.Code/100 == 2 {
				return nil
			}
			if token != "" && (r.Code == 535 || challenged) {
				// Revoked or expired early (a 535, or the error challenge XOAUTH2 and
				// OAUTHBEARER servers send about the token): the next connection asks
				// for a new one. Other refusals (AUTH disabled, a 454) keep it.
				p.tokens.refused(token)
			}
			return &Error{Endpoint: cn.addr, Message: r.Message, Err: fmt.Errorf("AUTH %s as %q refused with %d", mech, user, r.Code)}
		}
		// After their initial response, XOAUTH2 and OAUTHBEARER servers challenge only
		// to report an error about the token.
		challenged = true
		challenge, err := base64.StdEncoding.DecodeString(strings.TrimSpace(msg))
		var resp []byte
		if err == nil {
			resp, err = sc.Next(challenge)
		}
		if err != nil {
			// Cancel the exchange (RFC 4954 section 4) and give up on this connection.
			cn.sendLine("*", "")
			_, _, _ = cn.exchange(5, deadline)
			return refused(err)
		}
		cn.sendLine(base64.StdEncoding.EncodeToString(resp), "")
	}
}

// hasWord reports whether the space-separated list holds w, ignoring case.
func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

// sendLine buffers one command line, a+b; it leaves with the next reply awaited.
// Write errors stay in the buffer and are returned by that wait.
func (cn *conn) sendLine(a, b string) {
	cn.w.WriteString(a)
	cn.w.WriteString(b)
	cn.w.WriteString("\r\n")
}

// exchange flushes what is buffered and reads one reply, both before deadline. A reply
// whose code does not start with expect (a 2 for any 2xx, or a whole code) comes back
// as r; err is a failure of the connection itself (I/O, timeout, a malformed reply).
func (cn *conn) exchange(expect int, deadline time.Time) (msg string, r *Error, err error) {
	cn.raw.SetDeadline(deadline)
	if err := cn.w.Flush(); err != nil {
		return "", nil, err
	}
	cn.lim.n = maxReplyBytes
	_, msg, err = cn.text.ReadResponse(expect)
	var te *textproto.Error
	if errors.As(err, &te) {
		return "", parseReply(cn.addr, te.Code, te.Msg), nil
	}
	return msg, nil, err
}

// await reads the reply to a command already buffered, within the command timeout,
// closing the connection if ctx ends meanwhile. ok is false when the connection can no
// longer be used (it is then marked broken).
func (cn *conn) await(ctx context.Context, stage string, expect int) (e *Error, ok bool) {
	return cn.awaitBy(ctx, stage, expect, time.Now().Add(cn.p.u.Timeouts.Command.Duration))
}

func (cn *conn) awaitBy(ctx context.Context, stage string, expect int, deadline time.Time) (e *Error, ok bool) {
	cn.watch(ctx)
	_, r, err := cn.exchange(expect, deadline)
	switch {
	case ctx.Err() != nil:
		// The watch has closed the connection, or is about to.
		e, ok = &Error{Endpoint: cn.addr, Err: fmt.Errorf("%s: %w", stage, ctx.Err())}, false
	case err != nil:
		e, ok = &Error{Endpoint: cn.addr, Err: fmt.Errorf("%s: %w", stage, err)}, false
	case r != nil:
		// 421 means the upstream is closing the connection (RFC 5321 3.8).
		e, ok = r, r.Code != 421
	default:
		return nil, true
	}
	if !ok {
		cn.broken = true
	}
	return e, ok
}

// sendMail buffers MAIL FROM. The client's BODY parameter is passed on when the
// upstream offers 8BITMIME (RFC 6152), and none is added when the client gave none.
func (cn *conn) sendMail(from string, opts *MailOptions) {
	if opts != nil && opts.Body != "" {
		if _, ok := cn.ext["8BITMIME"]; ok {
			cn.w.WriteString("MAIL FROM:<")
			cn.w.WriteString(from)
			cn.sendLine("> BODY=", opts.Body)
			return
		}
	}
	cn.sendLine("MAIL FROM:<", from+">")
}

func (cn *conn) sendRcpt(to string) {
	cn.w.WriteString("RCPT TO:<")
	cn.sendLine(to, ">")
}

func (cn *conn) rcpt(ctx context.Context, to string) (*Error, bool) {
	cn.sendRcpt(to)
	return cn.await(ctx, "RCPT TO", 2)
}

// reset prepares a connection for its next transaction (RFC 5321 4.1.1.5).
func (cn *conn) reset() error {
	if cn.broken {
		return errors.New("connection is broken")
	}
	cn.sendLine("RSET", "")
	_, r, err := cn.exchange(2, time.Now().Add(cn.p.u.Timeouts.Command.Duration))
	if err == nil && r != nil {
		err = r
	}
	if err != nil {
		cn.broken = true
	}
	return err
}

// close ends the connection: politely with QUIT when it is still usable.
func (cn *conn) close() {
	if !cn.broken && cn.w != nil {
		cn.sendLine("QUIT", "")
		_, _, _ = cn.exchange(2, time.Now().Add(min(cn.p.u.Timeouts.Command.Duration, quitTimeout)))
	}
	cn.broken = true
	cn.raw.Close()
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
