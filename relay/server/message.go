package server

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// errAmbiguousLineEnding refuses data that two SMTP implementations could split into
// messages differently (SMTP smuggling): RFC 5321 section 2.3.8 allows CR and LF only
// together as CRLF, and NUL is never valid text.
var errAmbiguousLineEnding = &smtpError{
	Code:         550,
	EnhancedCode: enhancedCode{5, 5, 2},
	Message:      "Message contains a bare CR, a bare LF or a NUL byte: end every line with CRLF (RFC 5321 section 2.3.8)",
}

// errDataTimeout ends a session whose client stopped sending message data.
var errDataTimeout = &smtpError{
	Code:         421,
	EnhancedCode: enhancedCode{4, 4, 2},
	Message:      "Timeout waiting for message data, closing connection",
}

// errClientRead ends a session whose connection failed while reading message data.
var errClientRead = &smtpError{
	Code:         421,
	EnhancedCode: enhancedCode{4, 4, 0},
	Message:      "Connection error while reading message data, closing connection",
}

// errDataLineTooLong refuses a message with a line over the line limit. It is
// permanent, as RFC 5321 section 4.5.3.1.10 has it ("500 Line too long"): the same
// message would fail again, so a 4xx would only make the client retry for days. The
// connection is closed rather than the rest of an endless line read.
var errDataLineTooLong = &smtpError{
	Code:         500,
	EnhancedCode: enhancedCode{5, 5, 2},
	Message:      "Line too long in message data (RFC 5321 section 4.5.3.1.6), closing connection",
}

// dataReader passes the message data on and records how much there was, when the
// client's data ended (the final dot) and the first error, which says why the message
// was refused.
type dataReader struct {
	r     io.Reader
	n     int64
	eofAt time.Time
	err   error
}

func (d *dataReader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.r.Read(p)
	d.n += int64(n)
	switch {
	case err == io.EOF:
		d.eofAt = time.Now()
	case err != nil:
		d.err = err
	}
	return n, err
}

// receivedHeader is the trace field of RFC 5321 section 4.4. Client-supplied text (the
// HELO name) is reduced to characters that cannot change the header's structure.
func receivedHeader(helo string, ip string, by, protocol, id string, now time.Time) string {
	// Concatenation, not Sprintf: this runs for every message.
	return "Received: from " + sanitizeToken(helo, 64) + " ([" + ip + "])\r\n\tby " +
		sanitizeToken(by, 253) + " with " + protocol + " id " + id + ";\r\n\t" +
		now.UTC().Format(time.RFC1123Z) + "\r\n"
}

// sanitizeToken keeps only characters valid in a host name or address literal and
// bounds the length, so nothing a client sends is reflected raw.
func sanitizeToken(s string, max int) string {
	if tokenClean(s, max) {
		// The usual case: nothing to drop, nothing to allocate.
		return s
	}
	var b strings.Builder
	for _, c := range s {
		if b.Len() >= max {
			break
		}
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
			b.WriteRune(c)
		}
	}
	if b.Len() == 0 {
		return "unknown"
	}
	return b.String()
}

// tokenClean reports whether sanitizeToken would return s unchanged.
func tokenClean(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

// spool holds one message while it is signed: in memory up to limit bytes, then in an
// unlinked temporary file, so memory does not grow with message size.
type spool struct {
	dir   string
	limit int
	mem   bytes.Buffer
	f     *os.File
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && s.mem.Len()+len(p) > s.limit {
		f, err := os.CreateTemp(s.dir, "kuberelay-spool-*")
		if err != nil {
			return 0, fmt.Errorf("creating spool file: %w", err)
		}
		// Unlinked at once: nothing is left behind whatever happens to the process.
		_ = os.Remove(f.Name())
		if _, err := f.Write(s.mem.Bytes()); err != nil {
			f.Close()
			return 0, fmt.Errorf("writing spool file: %w", err)
		}
		s.mem = bytes.Buffer{}
		s.f = f
	}
	if s.f != nil {
		return s.f.Write(p)
	}
	return s.mem.Write(p)
}

// reader returns the spooled message from its start.
func (s *spool) reader() (io.Reader, error) {
	if s.f == nil {
		return bytes.NewReader(s.mem.Bytes()), nil
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return s.f, nil
}

func (s *spool) Close() {
	if s.f != nil {
		s.f.Close()
	}
}
