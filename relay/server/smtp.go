package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/kuberelay/kuberelay/relay/address"
	"github.com/kuberelay/kuberelay/relay/config"
)

// smtpError is a reply that refuses a command: its code, enhanced status code (RFC
// 3463) and text. go-smtp's type is used as plain data, so the policy package's
// refusals need no conversion.
type smtpError = smtp.SMTPError

// enhancedCode is an RFC 3463 status code. The zero value stands for the reply code's
// class with ".0.0"; noEnhancedCode for none at all (a 220 or 354, say).
type enhancedCode = smtp.EnhancedCode

var noEnhancedCode = smtp.NoEnhancedCode

// Replies of the protocol itself. RFC 5321 section 4.2.4 has 500 for a command not
// recognised, 502 for one not implemented, 503 for a bad sequence and 501 and 555 for
// bad arguments.
var (
	errUnknownCommand = &smtpError{Code: 500, EnhancedCode: enhancedCode{5, 5, 2}, Message: "Command not recognized"}
	errLineTooLong    = &smtpError{Code: 500, EnhancedCode: enhancedCode{5, 5, 2}, Message: "Line too long (RFC 5321 section 4.5.3.1.4), closing connection"}
	errNotImplemented = &smtpError{Code: 502, EnhancedCode: enhancedCode{5, 5, 1}, Message: "Command not implemented"}
	errHelloFirst     = &smtpError{Code: 503, EnhancedCode: enhancedCode{5, 5, 1}, Message: "Send EHLO first"}
	errMailFirst      = &smtpError{Code: 503, EnhancedCode: enhancedCode{5, 5, 1}, Message: "MAIL first"}
	errNoRecipients   = &smtpError{Code: 554, EnhancedCode: enhancedCode{5, 5, 1}, Message: "No valid recipients"}
	errIdleTimeout    = &smtpError{Code: 421, EnhancedCode: enhancedCode{4, 4, 2}, Message: "Idle timeout, closing connection"}
	errInternal       = &smtpError{Code: 421, EnhancedCode: enhancedCode{4, 3, 0}, Message: "Internal error, closing connection"}
	errAuthFailed     = &smtpError{Code: 535, EnhancedCode: enhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthCancelled  = &smtpError{Code: 501, EnhancedCode: enhancedCode{5, 0, 0}, Message: "Authentication cancelled"}
	errAuthEncoding   = &smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 2}, Message: "Authentication response is not valid base64"}
	errAuthNeedsTLS   = &smtpError{Code: 538, EnhancedCode: enhancedCode{5, 7, 11}, Message: "Authentication needs TLS: send STARTTLS first"}
	errAuthMechanism  = &smtpError{Code: 504, EnhancedCode: enhancedCode{5, 5, 4}, Message: "Unsupported authentication mechanism: use PLAIN or LOGIN"}
	errAuthDone       = &smtpError{Code: 503, EnhancedCode: enhancedCode{5, 5, 1}, Message: "Already authenticated"}
	errAuthInTx       = &smtpError{Code: 503, EnhancedCode: enhancedCode{5, 5, 1}, Message: "AUTH is not allowed during a mail transaction"}
	errNoStartTLS     = &smtpError{Code: 502, EnhancedCode: enhancedCode{5, 5, 1}, Message: "STARTTLS is not offered on this listener"}
	errTLSActive      = &smtpError{Code: 503, EnhancedCode: enhancedCode{5, 5, 1}, Message: "TLS is already active"}
)

// conversation is the SMTP protocol (RFC 5321) on one client connection, with the
// extensions the relay offers: PIPELINING (RFC 2920), 8BITMIME (RFC 6152),
// ENHANCEDSTATUSCODES (RFC 2034), SIZE (RFC 1870), STARTTLS (RFC 3207), AUTH (RFC
// 4954) and LIMITS (RFC 9422). Replies are buffered while more commands are waiting,
// so a pipelined group is answered in one write.
type conversation struct {
	s    *session
	tc   *trackedConn
	nc   net.Conn // what the protocol travels on: tc, or the TLS layer over it
	br   *bufio.Reader
	bw   *bufio.Writer
	lim  config.Limits
	name string // the relay's host name

	hello bool // EHLO or HELO was accepted since the start (or since STARTTLS)
	esmtp bool
}

// use makes nc the connection the protocol travels on. After STARTTLS the buffers are
// reused: the reader's plain text is dropped (see startTLS), the writer is empty.
func (c *conversation) use(nc net.Conn) {
	c.nc = nc
	if c.br == nil {
		c.br, c.bw = bufio.NewReader(nc), bufio.NewWriter(nc)
		return
	}
	c.br.Reset(nc)
	c.bw.Reset(nc)
}

// serve speaks SMTP on tc until the client quits, the connection fails or the relay
// ends it. implicitTLS starts with the TLS handshake.
func (s *Server) serve(b *backend, tc *trackedConn, implicitTLS bool) {
	defer tc.Close()
	g := b.gen
	c := &conversation{tc: tc, lim: g.loaded.Config.Limits, name: g.hostname}
	c.use(tc)
	if implicitTLS {
		if !c.handshake() {
			return
		}
	}
	c.s = newSession(b, tc, implicitTLS)
	defer c.s.Logout()
	defer func() {
		// A fault in handling one command ends that connection, not the relay.
		if v := recover(); v != nil {
			s.log.Error(fmt.Errorf("%v", v), "panic in SMTP session", "listener", b.listener.Name, "stack", string(debug.Stack()))
			c.reply(errInternal)
			c.flush()
		}
	}()
	c.replyLine(220, noEnhancedCode, c.name+" ESMTP Service Ready")
	for c.next() {
	}
	c.flush()
}

// handshake runs the server side of TLS within the command timeout.
func (c *conversation) handshake() bool {
	ctx, cancel := context.WithTimeout(context.Background(), c.lim.CommandTimeout.Duration)
	defer cancel()
	tlsConn := tls.Server(c.tc, c.tc.srv.tlsConfig)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		c.tc.srv.log.V(1).Info("TLS handshake failed", "listener", c.tc.listener, "client", c.tc.ip.String(), "error", err.Error())
		return false
	}
	c.use(tlsConn)
	return true
}

// next reads and answers one command; false ends the conversation.
func (c *conversation) next() bool {
	line, err := c.readLine()
	if err != nil {
		switch {
		case errors.Is(err, errLineTooLong):
			c.reply(errLineTooLong)
		case c.tc.draining.Load():
			c.reply(errShuttingDown)
		case isTimeout(err):
			c.reply(errIdleTimeout)
		}
		return false
	}
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	arg = strings.TrimSpace(arg)
	keep := true
	switch verb {
	case "EHLO", "HELO":
		c.helo(verb == "EHLO", arg)
	case "MAIL":
		c.mail(arg)
	case "RCPT":
		c.rcpt(arg)
	case "DATA":
		keep = c.data(arg)
	case "RSET":
		c.s.Reset()
		c.replyLine(250, enhancedCode{2, 0, 0}, "Reset")
		keep = c.afterTransaction()
	case "NOOP":
		c.replyLine(250, enhancedCode{2, 0, 0}, "OK")
	case "VRFY":
		// RFC 5321 section 3.5.3: no verdict on the address, no refusal either.
		c.replyLine(252, enhancedCode{2, 5, 0}, "Cannot VRFY user, but will accept message and attempt delivery")
	case "QUIT":
		c.replyLine(221, enhancedCode{2, 0, 0}, "Bye")
		return false
	case "AUTH":
		keep = c.auth(arg)
	case "STARTTLS":
		keep = c.startTLS(arg)
	case "BDAT", "EXPN", "HELP", "ETRN", "TURN", "SEND", "SOML", "SAML":
		c.refuse(errNotImplemented)
	default:
		c.refuse(errUnknownCommand)
	}
	return keep && !c.tc.closeAfterWrite.Load()
}

// readLine reads one command line within the command timeout, without its line
// ending. Replies waiting in the buffer are sent first unless another command is
// already waiting (RFC 2920 section 3.2).
func (c *conversation) readLine() (string, error) {
	if c.br.Buffered() == 0 {
		if err := c.flush(); err != nil {
			return "", err
		}
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(c.lim.CommandTimeout.Duration))
	max := c.lim.MaxLineLength
	var long []byte
	for {
		frag, err := c.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull || (err == nil && long != nil) {
			long = append(long, frag...)
			if max > 0 && len(long) > max {
				return "", errLineTooLong
			}
			if err != nil {
				continue
			}
			frag = long
		} else if err != nil {
			return "", err
		}
		if max > 0 && len(frag) > max {
			return "", errLineTooLong
		}
		frag = frag[:len(frag)-1]
		if n := len(frag); n > 0 && frag[n-1] == '\r' {
			frag = frag[:n-1]
		}
		return string(frag), nil
	}
}

// reply buffers a refusal (or any reply held in an *smtpError).
func (c *conversation) reply(e *smtpError) {
	c.replyLine(e.Code, e.EnhancedCode, e.Message)
}

// refuse counts a refused command against the session's error budget and answers it.
func (c *conversation) refuse(e *smtpError) {
	c.answer(c.s.fail(e), 0, noEnhancedCode, "")
}

// answer sends the reply for what a session method returned: ok on success,
// otherwise the refusal.
func (c *conversation) answer(err error, code int, enh enhancedCode, ok string) {
	if err == nil {
		c.replyLine(code, enh, ok)
		return
	}
	var e *smtpError
	if !errors.As(err, &e) {
		e = errLocal
	}
	c.reply(e)
}

func (c *conversation) replyLine(code int, enh enhancedCode, text string) {
	c.bw.WriteString(strconv.Itoa(code))
	c.bw.WriteByte(' ')
	c.writeEnhanced(code, enh)
	c.bw.WriteString(text)
	c.bw.WriteString("\r\n")
}

func (c *conversation) writeEnhanced(code int, enh enhancedCode) {
	if enh == noEnhancedCode {
		return
	}
	if enh == (enhancedCode{}) {
		enh = enhancedCode{code / 100, 0, 0}
	}
	c.bw.WriteString(strconv.Itoa(enh[0]))
	c.bw.WriteByte('.')
	c.bw.WriteString(strconv.Itoa(enh[1]))
	c.bw.WriteByte('.')
	c.bw.WriteString(strconv.Itoa(enh[2]))
	c.bw.WriteByte(' ')
}

// flush sends the buffered replies within the command timeout.
func (c *conversation) flush() error {
	if c.bw.Buffered() == 0 {
		return nil
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.lim.CommandTimeout.Duration))
	return c.bw.Flush()
}

// helo answers HELO and EHLO (RFC 5321 section 4.1.1.1); either also resets any
// transaction, as RSET does.
func (c *conversation) helo(esmtp bool, arg string) {
	domain, _, _ := strings.Cut(arg, " ")
	if domain == "" {
		c.refuse(&smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "Syntax: EHLO hostname"})
		return
	}
	c.s.Reset()
	c.s.helo = domain
	c.hello, c.esmtp = true, esmtp
	if !esmtp {
		c.replyLine(250, noEnhancedCode, c.name+" Hello "+sanitizeToken(domain, 64))
		return
	}
	lines := []string{
		c.name + " Hello " + sanitizeToken(domain, 64),
		"PIPELINING",
		"8BITMIME",
		"ENHANCEDSTATUSCODES",
	}
	if c.lim.MaxMessageBytes > 0 {
		lines = append(lines, "SIZE "+strconv.FormatInt(c.lim.MaxMessageBytes, 10))
	} else {
		lines = append(lines, "SIZE")
	}
	if c.s.b.listener.TLS == config.TLSStartTLS && !c.s.tls {
		lines = append(lines, "STARTTLS")
	}
	// Credentials only ever travel encrypted.
	if mechs := c.s.AuthMechanisms(); c.s.tls && len(mechs) > 0 {
		lines = append(lines, "AUTH "+strings.Join(mechs, " "))
	}
	if c.lim.MaxRecipients > 0 {
		lines = append(lines, "LIMITS RCPTMAX="+strconv.Itoa(c.lim.MaxRecipients))
	}
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		c.bw.WriteString("250")
		c.bw.WriteString(sep)
		c.bw.WriteString(l)
		c.bw.WriteString("\r\n")
	}
}

// mail answers MAIL FROM:<path> [parameters] (RFC 5321 section 4.1.1.2).
func (c *conversation) mail(arg string) {
	if !c.hello {
		c.refuse(errHelloFirst)
		return
	}
	syntax := &smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "Syntax: MAIL FROM:<address> [parameters]"}
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		c.refuse(syntax)
		return
	}
	from, params, err := address.SplitPath(rest)
	if err != nil {
		c.refuse(syntax)
		return
	}
	opts, perr := c.mailParams(params)
	if perr != nil {
		c.refuse(perr)
		return
	}
	c.answer(c.s.Mail(from, opts), 250, enhancedCode{2, 1, 0}, "Sender OK")
}

// mailParams reads the ESMTP parameters of MAIL that the relay offers.
func (c *conversation) mailParams(params string) (mailParams, *smtpError) {
	var opts mailParams
	for _, p := range strings.Fields(params) {
		key, value, _ := strings.Cut(p, "=")
		switch strings.ToUpper(key) {
		case "SIZE":
			size, err := strconv.ParseInt(value, 10, 64)
			if err != nil || size < 0 {
				return opts, &smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "SIZE must be a number of bytes"}
			}
			if c.lim.MaxMessageBytes > 0 && size > c.lim.MaxMessageBytes {
				// RFC 1870 section 6.
				return opts, &smtpError{Code: 552, EnhancedCode: enhancedCode{5, 3, 4},
					Message: "Message size exceeds the limit of " + strconv.FormatInt(c.lim.MaxMessageBytes, 10) + " bytes"}
			}
		case "BODY":
			switch v := strings.ToUpper(value); v {
			case "7BIT", "8BITMIME":
				opts.Body = v
			default:
				return opts, &smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "BODY must be 7BIT or 8BITMIME"}
			}
		case "AUTH":
			// RFC 4954 section 5: accepted, and not passed on (the relay is the sender's
			// first hop that checked an identity).
		default:
			return opts, &smtpError{Code: 555, EnhancedCode: enhancedCode{5, 5, 4}, Message: "MAIL parameter " + sanitizeToken(key, 32) + " is not supported"}
		}
	}
	return opts, nil
}

// rcpt answers RCPT TO:<path> (RFC 5321 section 4.1.1.3).
func (c *conversation) rcpt(arg string) {
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		c.refuse(&smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "Syntax: RCPT TO:<address>"})
		return
	}
	to, params, err := address.SplitPath(rest)
	if err != nil {
		c.refuse(&smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "Syntax: RCPT TO:<address>"})
		return
	}
	if f := strings.Fields(params); len(f) > 0 {
		key, _, _ := strings.Cut(f[0], "=")
		c.refuse(&smtpError{Code: 555, EnhancedCode: enhancedCode{5, 5, 4}, Message: "RCPT parameter " + sanitizeToken(key, 32) + " is not supported"})
		return
	}
	c.answer(c.s.Rcpt(to), 250, enhancedCode{2, 1, 5}, "Recipient OK")
}

// data answers DATA (RFC 5321 section 4.1.1.4): 354, the message, then the verdict
// on it once the client's final dot was read. false ends the conversation.
func (c *conversation) data(arg string) bool {
	if arg != "" {
		c.refuse(&smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "Syntax: DATA"})
		return true
	}
	if e := c.s.dataReady(); e != nil {
		c.refuse(e)
		return true
	}
	c.replyLine(354, noEnhancedCode, "End data with <CR><LF>.<CR><LF>")
	if err := c.flush(); err != nil {
		return false
	}
	dr := newDotReader(c.br, c.nc, c.lim.DataTimeout.Duration, c.lim.MaxLineLength, c.lim.MaxMessageBytes)
	err := c.s.Data(dr)
	// Whatever the session read, the data runs to the client's final dot.
	if fatal := dr.drain(); fatal != nil {
		if err == nil {
			err = fatal
		}
		c.tc.closeAfterWrite.Store(true)
	}
	c.answer(err, 250, enhancedCode{2, 0, 0}, "OK: queued as "+c.s.queueID)
	c.s.Reset()
	return c.afterTransaction()
}

// afterTransaction ends the conversation, with 421, if the relay is shutting down: a
// transaction has just ended, so nothing is lost (RFC 5321 section 3.8).
func (c *conversation) afterTransaction() bool {
	if c.tc.srv.shuttingDown.Load() || c.tc.srv.draining.Load() {
		c.reply(errShuttingDown)
		return false
	}
	return true
}

// auth runs AUTH mechanism [initial-response] (RFC 4954) with the session's SASL
// servers. false ends the conversation.
func (c *conversation) auth(arg string) bool {
	switch {
	case !c.hello:
		c.refuse(errHelloFirst)
		return true
	case !c.s.tls:
		c.refuse(errAuthNeedsTLS)
		return true
	case c.s.user != "":
		c.refuse(errAuthDone)
		return true
	case c.s.inTransaction():
		c.refuse(errAuthInTx)
		return true
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	offered := false
	for _, m := range c.s.AuthMechanisms() {
		offered = offered || m == mech
	}
	if !offered {
		c.refuse(errAuthMechanism)
		return true
	}
	srv, err := c.s.Auth(mech)
	if err != nil {
		c.answer(err, 0, noEnhancedCode, "")
		return !c.tc.closeAfterWrite.Load()
	}
	var resp []byte
	if hasIR {
		if resp, err = decodeSASL(ir); err != nil {
			c.refuse(errAuthEncoding)
			return true
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			var e *smtpError
			if !errors.As(err, &e) {
				e = errAuthFailed
			}
			c.reply(e)
			return !c.tc.closeAfterWrite.Load()
		}
		if done {
			c.replyLine(235, enhancedCode{2, 7, 0}, "Authentication succeeded")
			return true
		}
		c.replyLine(334, noEnhancedCode, base64.StdEncoding.EncodeToString(challenge))
		line, err := c.readLine()
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				c.reply(errLineTooLong)
			}
			return false
		}
		if line == "*" {
			c.refuse(errAuthCancelled)
			return true
		}
		if resp, err = decodeSASL(line); err != nil {
			c.refuse(errAuthEncoding)
			return true
		}
	}
}

// decodeSASL decodes a SASL response; "=" is the empty one (RFC 4954 section 4).
func decodeSASL(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

// startTLS answers STARTTLS (RFC 3207) and restarts the session over TLS. false ends
// the conversation.
func (c *conversation) startTLS(arg string) bool {
	switch {
	case c.s.tls:
		c.refuse(errTLSActive)
		return true
	case c.s.b.listener.TLS != config.TLSStartTLS:
		c.refuse(errNoStartTLS)
		return true
	case arg != "":
		c.refuse(&smtpError{Code: 501, EnhancedCode: enhancedCode{5, 5, 4}, Message: "Syntax: STARTTLS"})
		return true
	}
	c.replyLine(220, enhancedCode{2, 0, 0}, "Ready to start TLS")
	if err := c.flush(); err != nil {
		return false
	}
	// Whatever followed STARTTLS in plain text could have been injected by a man in
	// the middle (CVE-2011-0411): it is dropped, never read as commands under TLS.
	if n := c.br.Buffered(); n > 0 {
		c.s.log.Info("dropping plain text sent after STARTTLS", "bytes", n)
	}
	if !c.handshake() {
		return false
	}
	// RFC 3207 section 4.2: everything learnt before TLS is forgotten.
	c.hello, c.esmtp = false, false
	c.s.restart()
	return true
}

// cutPrefixFold is strings.CutPrefix ignoring ASCII case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}
