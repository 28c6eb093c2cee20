package upstream

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
)

var (
	// ErrPoolExhausted means every connection the pool may open was in use for the whole
	// acquire timeout. It is temporary: the message should be tried again later.
	ErrPoolExhausted = errors.New("all connections to the upstream are in use")
	// ErrPoolClosed means the pool was closed (the upstream was removed from the config or
	// the relay is stopping).
	ErrPoolClosed = errors.New("upstream connection pool is closed")
	// ErrNoRecipients means Data was called although no recipient was accepted.
	ErrNoRecipients = errors.New("no recipient was accepted")
	// ErrBareLineEnding means the message handed to Data held a CR or LF that was not part
	// of a CRLF pair. It is refused rather than forwarded because such line endings are
	// what SMTP smuggling relies on (servers disagree on where the message ends).
	ErrBareLineEnding = errors.New("message contains a bare CR or LF")
	// ErrTxDone means the transaction was already finished, failed or closed.
	ErrTxDone = errors.New("upstream transaction is already finished")
)

// maxMessageLen bounds Error.Message, so an upstream cannot make the relay echo or log
// arbitrarily long text.
const maxMessageLen = 200

// Error is every failure the package returns.
type Error struct {
	// Code is the SMTP reply code from the upstream; 0 when the failure is local
	// (connect, TLS, timeout, pool exhausted, AUTH, reading the message).
	Code int
	// Enhanced is the enhanced status code (RFC 3463) if the upstream gave one.
	Enhanced [3]int
	// Message is the upstream's reply text, sanitised: printable ASCII only, at most 200
	// bytes, never a CR, LF or other control character. It is safe to log and to pass on
	// to an SMTP client.
	Message string
	// Endpoint is the "host:port" the failure happened at; "" when none was involved.
	Endpoint string
	// Err is the underlying cause, if any. Upstream replies themselves are not kept
	// here, as their raw text is not sanitised.
	Err error

	// auth says the failure was logging in (the endpoint was reachable).
	auth bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("upstream")
	if e.Endpoint != "" {
		b.WriteString(" ")
		b.WriteString(e.Endpoint)
	}
	if e.Code != 0 {
		fmt.Fprintf(&b, ": %d", e.Code)
		if e.Enhanced != ([3]int{}) {
			fmt.Fprintf(&b, " %d.%d.%d", e.Enhanced[0], e.Enhanced[1], e.Enhanced[2])
		}
		if e.Message != "" {
			b.WriteString(" ")
			b.WriteString(e.Message)
		}
	} else if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether trying again later may succeed: local failures and 4xx
// replies are temporary, 5xx replies are permanent.
func (e *Error) Temporary() bool { return e.Code == 0 || (e.Code >= 400 && e.Code < 500) }

// sanitize makes upstream text safe to log and to echo in an SMTP reply: multi-line
// replies become one line, anything but printable ASCII becomes '?', and the length is
// bounded.
func sanitize(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\r' || c == '\n' || c == '\t':
			c = ' '
		case c < 0x20 || c > 0x7e:
			c = '?'
		}
		if c == ' ' && (b.Len() == 0 || strings.HasSuffix(b.String(), " ")) {
			continue
		}
		if b.Len() >= maxMessageLen {
			out := b.String()[:maxMessageLen-3]
			return strings.TrimRight(out, " ") + "..."
		}
		b.WriteByte(c)
	}
	return strings.TrimRight(b.String(), " ")
}

// parseReply makes an *Error of an upstream reply: code and its text as
// net/textproto reads them (lines joined with "\n"), with the enhanced status code
// (RFC 3463) that leads the text taken off each line.
func parseReply(endpoint string, code int, msg string) *Error {
	e := &Error{Code: code, Endpoint: endpoint}
	first, _, _ := strings.Cut(msg, "\n")
	if enh, ok := parseEnhanced(first, code); ok {
		e.Enhanced = enh
		prefix := first[:strings.IndexByte(first+" ", ' ')]
		lines := strings.Split(msg, "\n")
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(strings.TrimPrefix(l, prefix), " ")
		}
		msg = strings.Join(lines, "\n")
	}
	e.Message = sanitize(msg)
	return e
}

// parseEnhanced reads the enhanced status code that starts line, if any: three
// numbers, the first one the reply code's class.
func parseEnhanced(line string, code int) (enh [3]int, ok bool) {
	word, _, _ := strings.Cut(line, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 {
		return enh, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || len(p) > 3 {
			return enh, false
		}
		enh[i] = n
	}
	return enh, enh[0] == code/100
}

// isNetworkError reports whether err means the connection can no longer be used: I/O
// errors, timeouts, EOF, a closed connection or a reply that could not be parsed.
func isNetworkError(err error) bool {
	var ne net.Error
	var pe textproto.ProtocolError
	return errors.As(err, &ne) || errors.As(err, &pe) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}

// validAddress refuses what could not be sent as one path: anything but printable
// ASCII, and a space or angle bracket outside a quoted local part, which would end the
// path early. Callers send mailboxes in their RFC 5321 wire form (relay/address); this
// is the last guard before the command line.
func validAddress(a string) bool {
	if len(a) > 1000 {
		return false
	}
	quoted := false
	for i := 0; i < len(a); i++ {
		switch c := a[i]; {
		case c < 0x20 || c > 0x7e:
			return false
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && (c == ' ' || c == '<' || c == '>'):
			return false
		}
	}
	return !quoted
}
