// Package mailcapture is a small SMTP server that accepts messages and keeps them: in
// memory for tests, and as .eml files a person can open when a directory is given. It
// offers real TLS (STARTTLS or implicit) and AUTH, so it can stand in for a smarthost:
// the local run and the e2e test use it as theirs, and testpeers wraps it for tests.
package mailcapture

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one captured message with its envelope.
type Message struct {
	// Helo is the name the client gave in EHLO.
	Helo string
	From string
	To   []string
	Data []byte
	// TLS says whether the message came over TLS.
	TLS bool
	// User is the name the client authenticated as, if it did.
	User string
	// File is where the message was saved, if a directory was given.
	File string
}

// Options configure Start. The zero value is a plain server without AUTH.
type Options struct {
	// Dir, when set, receives each message as an .eml file, envelope first as
	// X-Envelope-* fields.
	Dir string
	// TLS, when set, is offered with STARTTLS, or from the first byte when Implicit.
	TLS      *tls.Config
	Implicit bool
	// Auth offers AUTH once TLS is on (never in plain text). Users maps user names to
	// passwords; without Users any credentials are accepted. With Users, MAIL is
	// refused until the client authenticated.
	Auth  bool
	Users map[string]string
	// Mechanisms are the AUTH mechanisms offered: "PLAIN" and/or "LOGIN", and with
	// Bearer "XOAUTH2" and/or "OAUTHBEARER". Default PLAIN and LOGIN, or with Bearer
	// XOAUTH2 and OAUTHBEARER.
	Mechanisms []string
	// Bearer, when set, checks the access token of an XOAUTH2 or OAUTHBEARER login
	// (a stand-in for Microsoft 365's and Google's SMTP AUTH): nil accepts; an error
	// refuses it the way those servers do (a challenge with a JSON error, then 535).
	Bearer func(user, token string) error
	// Rcpt, when set, gives the reply to each RCPT TO: nil accepts, an *smtp.SMTPError
	// refuses that recipient (a stand-in for an upstream's per-recipient verdicts,
	// which smtp-sink cannot give).
	Rcpt func(to string) error
}

// Server captures messages.
type Server struct {
	opts Options
	smtp *smtp.Server
	ln   net.Listener

	mu       sync.Mutex
	messages []Message
	notify   chan struct{}
	conns    []net.Conn
	accepted int
}

// Start listens on addr ("127.0.0.1:0" for any free port) and serves until Close.
func Start(addr string, opts Options) (*Server, error) {
	if len(opts.Mechanisms) == 0 {
		opts.Mechanisms = []string{sasl.Plain, sasl.Login}
		if opts.Bearer != nil {
			opts.Mechanisms = []string{"XOAUTH2", sasl.OAuthBearer}
		}
	}
	s := &Server{opts: opts, notify: make(chan struct{})}
	s.smtp = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{s: s, c: c}, nil
	}))
	s.smtp.Domain = "capture.localhost"
	s.smtp.ReadTimeout = time.Minute
	s.smtp.WriteTimeout = time.Minute
	s.smtp.MaxMessageBytes = 64 << 20
	s.smtp.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("capture smarthost: %w", err)
	}
	s.ln = &trackingListener{Listener: l, s: s}
	switch {
	case opts.TLS != nil && opts.Implicit:
		s.ln = tls.NewListener(s.ln, opts.TLS)
	case opts.TLS != nil:
		s.smtp.TLSConfig = opts.TLS
	}
	go func() { _ = s.smtp.Serve(s.ln) }()
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

// Accepted returns how many connections the server accepted so far.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// DropConnections closes every open connection from the server side, as a restarting or
// idle-timing-out upstream would.
func (s *Server) DropConnections() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (s *Server) add(m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.Dir != "" {
		name := filepath.Join(s.opts.Dir, fmt.Sprintf("%s-%04d.eml", time.Now().Format("20060102-150405"), len(s.messages)+1))
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

// trackingListener remembers accepted connections (under any TLS layer, so the SMTP
// server still sees *tls.Conn where it looks for one) for DropConnections.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns = append(l.s.conns, c)
		l.s.accepted++
		l.s.mu.Unlock()
	}
	return c, err
}

type session struct {
	s    *Server
	c    *smtp.Conn
	user string
	from string
	to   []string
}

var _ smtp.AuthSession = (*session)(nil)

// AuthMechanisms offers AUTH when configured; the SMTP server offers it only over TLS.
func (ss *session) AuthMechanisms() []string {
	if !ss.s.opts.Auth {
		return nil
	}
	return ss.s.opts.Mechanisms
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if users := ss.s.opts.Users; users != nil {
			if want, ok := users[user]; !ok || pass != want {
				return smtp.ErrAuthFailed
			}
		}
		ss.user = user
		return nil
	}
	for _, m := range ss.AuthMechanisms() {
		if m != mech {
			continue
		}
		switch mech {
		case sasl.Plain:
			return sasl.NewPlainServer(func(identity, user, pass string) error {
				if identity != "" && identity != user {
					return smtp.ErrAuthFailed
				}
				return check(user, pass)
			}), nil
		case sasl.Login:
			return &loginServer{check: check}, nil
		case "XOAUTH2":
			return &xoauth2Server{check: func(user, token string) error {
				if err := ss.s.opts.Bearer(user, token); err != nil {
					return err
				}
				ss.user = user
				return nil
			}}, nil
		case sasl.OAuthBearer:
			return sasl.NewOAuthBearerServer(func(o sasl.OAuthBearerOptions) *sasl.OAuthBearerError {
				if err := ss.s.opts.Bearer(o.Username, o.Token); err != nil {
					return &sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"}
				}
				ss.user = o.Username
				return nil
			}), nil
		}
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if (ss.s.opts.Users != nil || ss.s.opts.Bearer != nil) && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	ss.from = from
	ss.to = nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if f := ss.s.opts.Rcpt; f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	_, isTLS := ss.c.TLSConnectionState()
	return ss.s.add(Message{Helo: ss.c.Hostname(), From: ss.from, To: append([]string(nil), ss.to...),
		Data: b, TLS: isTLS, User: ss.user})
}

func (ss *session) Reset() {
	ss.from = ""
	ss.to = nil
}

func (ss *session) Logout() error { return nil }

// loginServer is the server side of AUTH LOGIN, which go-sasl only has as a client.
type loginServer struct {
	check func(user, pass string) error
	user  string
	state int
}

func (l *loginServer) Next(resp []byte) (challenge []byte, done bool, err error) {
	switch l.state {
	case 0:
		if resp == nil {
			l.state = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.state = string(resp), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.state = string(resp), 2
		return []byte("Password:"), false, nil
	case 2:
		l.state = 3
		return nil, true, l.check(l.user, string(resp))
	}
	return nil, false, errors.New("unexpected AUTH LOGIN step")
}

// xoauth2Server checks XOAUTH2's initial response, exactly
// "user=" user "\x01auth=Bearer " token "\x01\x01"; a refused token gets a challenge with
// a JSON error, and the client's (empty) answer to it 535.
type xoauth2Server struct {
	check  func(user, token string) error
	failed error
}

func (x *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if x.failed != nil {
		return nil, true, x.failed
	}
	if response == nil {
		return []byte{}, false, nil
	}
	rest, ok := strings.CutPrefix(string(response), "user=")
	user, rest, ok2 := strings.Cut(rest, "\x01auth=Bearer ")
	token, ok3 := strings.CutSuffix(rest, "\x01\x01")
	if !ok || !ok2 || !ok3 || user == "" || token == "" || strings.Contains(token, "\x01") {
		return nil, true, &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Malformed XOAUTH2 initial response"}
	}
	if err := x.check(user, token); err != nil {
		x.failed = smtp.ErrAuthFailed
		return []byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`), false, nil
	}
	return nil, true, nil
}
