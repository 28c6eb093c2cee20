// Package mailcapture is a small SMTP server that accepts every message and keeps it:
// in memory for tests, and as an .eml file a person can open when a directory is given.
// The local run uses it as its smarthost.
package mailcapture

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one captured message with its envelope.
type Message struct {
	From string
	To   []string
	Data []byte
	// File is where the message was saved, if a directory was given.
	File string
	// User is the name the client authenticated as, if it did.
	User string
}

// Server captures messages.
type Server struct {
	dir  string
	smtp *smtp.Server
	ln   net.Listener

	mu       sync.Mutex
	messages []Message
	notify   chan struct{}
}

// Start listens on addr ("127.0.0.1:0" for any free port). When dir is not empty each
// message is also written there as an .eml file, envelope first as X-Envelope-* fields.
func Start(addr, dir string) (*Server, error) {
	return StartTLS(addr, dir, nil)
}

// StartTLS is Start with STARTTLS offered using cfg, and, once TLS is on, AUTH PLAIN
// accepting any credentials: enough to stand in for a smarthost that requires both.
func StartTLS(addr, dir string, cfg *tls.Config) (*Server, error) {
	s := &Server{dir: dir, notify: make(chan struct{})}
	s.smtp = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		if cfg != nil {
			return &authSession{session: session{s: s}}, nil
		}
		return &session{s: s}, nil
	}))
	s.smtp.TLSConfig = cfg
	s.smtp.Domain = "capture.localhost"
	s.smtp.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("capture smarthost: %w", err)
	}
	s.ln = ln
	go func() { _ = s.smtp.Serve(ln) }()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server.
func (s *Server) Close() error { return s.smtp.Close() }

// Messages returns what has been captured so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Wait blocks until at least n messages were captured or timeout passes, and returns
// the messages captured.
func (s *Server) Wait(n int, timeout time.Duration) []Message {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		msgs, ch := append([]Message(nil), s.messages...), s.notify
		s.mu.Unlock()
		if len(msgs) >= n {
			return msgs
		}
		select {
		case <-ch:
		case <-deadline:
			return msgs
		}
	}
}

func (s *Server) add(m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir != "" {
		name := filepath.Join(s.dir, fmt.Sprintf("%s-%04d.eml", time.Now().Format("20060102-150405"), len(s.messages)+1))
		var b bytes.Buffer
		fmt.Fprintf(&b, "X-Envelope-From: <%s>\r\n", m.From)
		for _, t := range m.To {
			fmt.Fprintf(&b, "X-Envelope-To: <%s>\r\n", t)
		}
		b.Write(m.Data)
		if err := os.WriteFile(name, b.Bytes(), 0o644); err != nil {
			return err
		}
		m.File = name
	}
	s.messages = append(s.messages, m)
	close(s.notify)
	s.notify = make(chan struct{})
	return nil
}

type session struct {
	s    *Server
	user string
	from string
	to   []string
}

// authSession offers AUTH PLAIN (go-smtp offers it only after STARTTLS).
type authSession struct {
	session
}

func (c *authSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (c *authSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, username, _ string) error {
		c.user = username
		return nil
	}), nil
}

func (c *session) Mail(from string, _ *smtp.MailOptions) error {
	c.from = from
	return nil
}

func (c *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	c.to = append(c.to, to)
	return nil
}

func (c *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	return c.s.add(Message{From: c.from, To: c.to, Data: b, User: c.user})
}

func (c *session) Reset()        { c.from, c.to = "", nil }
func (c *session) Logout() error { return nil }
