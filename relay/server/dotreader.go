package server

import (
	"bufio"
	"errors"
	"io"
	"net"
	"time"
)

// errDataTooLarge refuses a message over limits.maxMessageBytes once its final dot
// has been read.
var errDataTooLarge = &smtpError{Code: 552, EnhancedCode: enhancedCode{5, 3, 4},
	Message: "Message exceeds the maximum message size"}

// States of dotReader, over the bytes of the wire.
const (
	dotBOL   = iota // at the start of a line (the CRLF ending DATA counts as one)
	dotDot          // a "." started the line
	dotDotCR        // ".\r" started the line
	dotData         // inside a line
	dotCR           // a CR inside (or starting) a line
)

// dotReader reads the message data after DATA off the connection (RFC 5321 section
// 4.1.1.4): it removes the dot-stuffing of section 4.5.2 and ends at the first
// CRLF "." CRLF. It refuses a CR or LF that is not part of a CRLF, and NUL, at every
// position, including right after a leading dot; the refusal is remembered and the
// reader keeps its place, so drain still finds the client's end of data and the
// next command is read where the client sent it. Only CRLF ends a line: a bare LF
// never starts one, so no lone "\n.\r\n" ends the message here while another server
// would see more.
type dotReader struct {
	br       *bufio.Reader
	conn     net.Conn      // gets a read deadline of timeout before each read
	timeout  time.Duration // 0: no deadline
	maxLine  int           // longest line, CRLF included; 0: no limit
	maxBytes int64         // largest message; 0: no limit

	state int
	line  int   // bytes of the current line read so far
	n     int64 // message bytes decoded
	// bad is the first refusal of the message (a bare line ending, NUL, its size):
	// Read returns it, drain reads on past it.
	bad *smtpError
	// fatal ends the conversation: the line limit was exceeded (the data need not
	// end), or reading failed. Nothing more can be read.
	fatal *smtpError
	done  bool
}

func newDotReader(br *bufio.Reader, conn net.Conn, timeout time.Duration, maxLine int, maxBytes int64) *dotReader {
	return &dotReader{br: br, conn: conn, timeout: timeout, maxLine: maxLine, maxBytes: maxBytes}
}

// Read returns message data, io.EOF after the final dot, or the *smtpError that
// refuses the message.
func (d *dotReader) Read(p []byte) (int, error) {
	switch {
	case d.fatal != nil:
		return 0, d.fatal
	case d.bad != nil:
		return 0, d.bad
	case d.done:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	n, err := d.step(p)
	if err == nil && d.done {
		err = io.EOF
	}
	return n, err
}

// drain reads to the end of the data, discarding it. It returns the error that ends
// the conversation, if any: then the end was not found.
func (d *dotReader) drain() *smtpError {
	for !d.done && d.fatal == nil {
		if _, err := d.step(nil); err != nil && d.fatal != nil {
			break
		}
	}
	return d.fatal
}

// step decodes what the connection has buffered (reading more if nothing is) into p,
// or discards it when p is nil.
func (d *dotReader) step(p []byte) (int, error) {
	if d.br.Buffered() == 0 {
		if d.conn != nil && d.timeout > 0 {
			_ = d.conn.SetReadDeadline(time.Now().Add(d.timeout))
		}
		if _, err := d.br.Peek(1); err != nil {
			d.fatal = readError(err)
			return 0, d.fatal
		}
	}
	in, _ := d.br.Peek(d.br.Buffered())
	n, used := d.decode(p, in)
	_, _ = d.br.Discard(used)
	switch {
	case d.fatal != nil:
		return 0, d.fatal
	case d.bad != nil && p != nil:
		return 0, d.bad
	}
	return n, nil
}

// decode runs the state machine over in, writing decoded bytes to dst (nil: none),
// until in or dst is used up, the data ends, or (when decoding into dst) the message
// is refused. It returns how much of dst it filled and of in it consumed.
func (d *dotReader) decode(dst, in []byte) (n, used int) {
	discard := dst == nil
	emit := func(c byte) {
		if !discard {
			dst[n] = c
		}
		n++
	}
	room := func() bool { return discard || n < len(dst) }
	i := 0
	for i < len(in) && room() && d.fatal == nil && !d.done {
		if d.bad != nil && !discard {
			break
		}
		if d.state == dotData {
			// The usual case: a run of ordinary bytes inside a line.
			j := i
			limit := len(in)
			if !discard && len(dst)-n < limit-i {
				limit = i + len(dst) - n
			}
			for j < limit && in[j] != '\r' && in[j] != '\n' && in[j] != 0 {
				j++
			}
			if j > i {
				if !discard {
					copy(dst[n:], in[i:j])
				}
				n += j - i
				d.line += j - i
				i = j
				if d.tooLong() {
					break
				}
				continue
			}
		}
		c := in[i]
		i++
		d.line++
		if d.tooLong() {
			break
		}
		switch d.state {
		case dotBOL:
			switch c {
			case '.':
				d.state = dotDot
			case '\r':
				d.state = dotCR
				emit(c)
			default:
				d.state = dotData
				d.ordinary(c, emit)
			}
		case dotDot:
			if c == '\r' {
				d.state = dotDotCR
				continue
			}
			// The leading dot was stuffing: the rest of the line is data.
			d.state = dotData
			d.ordinary(c, emit)
		case dotDotCR:
			if c == '\n' {
				d.done = true
				continue
			}
			// ".\r" and anything but LF: a bare CR after a stuffing dot.
			d.refuse(errAmbiguousLineEnding)
			d.state = dotData
			if c == '\r' {
				d.state = dotCR
			} else {
				d.ordinary(c, emit)
			}
		case dotData:
			d.ordinary(c, emit)
		case dotCR:
			switch c {
			case '\n':
				d.state = dotBOL
				d.line = 0
				emit(c)
			case '\r':
				d.refuse(errAmbiguousLineEnding) // the first CR was bare
				emit(c)
			default:
				d.refuse(errAmbiguousLineEnding)
				d.state = dotData
				d.ordinary(c, emit)
			}
		}
	}
	d.n += int64(n)
	if d.maxBytes > 0 && d.n > d.maxBytes {
		d.refuse(errDataTooLarge)
	}
	return n, i
}

// ordinary handles a byte inside a line (state dotData).
func (d *dotReader) ordinary(c byte, emit func(byte)) {
	switch c {
	case '\r':
		d.state = dotCR
	case '\n', 0:
		d.refuse(errAmbiguousLineEnding)
	}
	emit(c)
}

func (d *dotReader) refuse(e *smtpError) {
	if d.bad == nil {
		d.bad = e
	}
}

func (d *dotReader) tooLong() bool {
	if d.maxLine > 0 && d.line > d.maxLine {
		d.fatal = errDataLineTooLong
		return true
	}
	return false
}

// readError is the reply to a failed read of message data.
func readError(err error) *smtpError {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errDataTimeout
	}
	return errClientRead
}
