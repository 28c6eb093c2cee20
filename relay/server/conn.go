package server

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// trackedConn is the relay's view of one client connection, under any TLS layer. It
// lets the relay close a connection right after its next reply (too many errors, a
// data timeout) and drain it on shutdown.
type trackedConn struct {
	net.Conn
	srv      *Server
	listener string
	ip       netip.Addr
	// noAuth: the listener does not require AUTH, so the connection counts against the
	// share that leaves room for authenticating clients.
	noAuth bool

	closeAfterWrite atomic.Bool
	// draining makes every read deadline "now": the next command read times out, so the
	// conversation answers 421 and closes, with correct TLS framing.
	draining atomic.Bool

	mu      sync.Mutex
	gen     *generation
	sess    *session
	closed  bool
	release func()
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && isTimeout(err) {
		// After a read timeout the client's remaining bytes are unknown (the rest of a
		// message, perhaps): whatever the relay replies next is the last thing this
		// connection carries, so nothing the client sent late is read as a command.
		c.closeAfterWrite.Store(true)
	}
	return n, err
}

// isTimeout is kept out of Read so that its error target does not escape to the heap
// on every read.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.closeAfterWrite.Load() {
		c.Close()
	}
	return n, err
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	if c.draining.Load() {
		t = time.Unix(1, 0)
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// lastReplyTimeout bounds the write of a reply that ends a connection, to a client
// that does not read.
const lastReplyTimeout = 5 * time.Second

// lastReply writes e as a one-line SMTP reply to w (the connection, or its TLS layer)
// within lastReplyTimeout of raw's write deadline. The caller closes the connection.
func lastReply(w io.Writer, raw net.Conn, e *smtp.SMTPError) {
	_ = raw.SetWriteDeadline(time.Now().Add(lastReplyTimeout))
	_, _ = fmt.Fprintf(w, "%d %d.%d.%d %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
}

// drain makes the session end at its next command read: the read times out and the
// conversation answers 421 between two commands, through the TLS layer if any. It is
// safe from any goroutine.
func (c *trackedConn) drain() {
	c.draining.Store(true)
	_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
}

func (c *trackedConn) setSession(s *session) {
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
}

// idle reports whether the connection is between transactions, where ending it loses
// nothing.
func (c *trackedConn) idle() bool {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	return s == nil || !s.inTransaction()
}

func (c *trackedConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	release := c.release
	c.mu.Unlock()
	err := c.Conn.Close()
	if release != nil {
		release()
	}
	return err
}
