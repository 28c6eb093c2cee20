package testpeers

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TLS modes of a Server, named as in the relay's config.
const (
	TLSNone     = "None"
	TLSStartTLS = "STARTTLS"
	TLSImplicit = "Implicit"
)

// ServerOptions configure StartServer.
type ServerOptions struct {
	// TLS is TLSNone (default), TLSStartTLS or TLSImplicit.
	TLS string
	// Users maps user names to passwords. When set, AUTH is offered (over TLS only, as
	// go-smtp does) and MAIL is refused until the client authenticated.
	Users map[string]string
	// Mechanisms are the AUTH mechanisms offered: "PLAIN" and/or "LOGIN". Default both.
	Mechanisms []string
	// CA issues the server certificate (for 127.0.0.1 and localhost). Default: a new CA,
	// available as Server.CA.
	CA *CA
}

// Server is an in-process SMTP server (go-smtp) with real TLS and AUTH, for the cases
// smtp-sink cannot play.
type Server struct {
	// Addr is the 127.0.0.1:port it listens on.
	Addr string
	// CA issued the server's certificate; CA.Pool verifies it.
	CA *CA

	opts ServerOptions

	mu       sync.Mutex
	messages []Message
	conns    []net.Conn
	accepted int
}

// Message is one message a Server received.
type Message struct {
	Helo string
	From string
	To   []string
	Data []byte
	// TLS says whether the message came over TLS.
	TLS bool
	// User is who authenticated ("" for nobody).
	User string
}

// StartServer starts a Server on a free 127.0.0.1 port and stops it when the test ends.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	if opts.CA == nil {
		opts.CA = NewCA(t)
	}
	if len(opts.Mechanisms) == 0 {
		opts.Mechanisms = []string{sasl.Plain, sasl.Login}
	}
	s := &Server{CA: opts.CA, opts: opts}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	s.Addr = l.Addr().String()
	var ln net.Listener = &trackingListener{Listener: l, s: s}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{s: s, c: c}, nil
	}))
	srv.Domain = "testpeer.localhost"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.MaxMessageBytes = 64 << 20
	tlsConf := &tls.Config{Certificates: []tls.Certificate{opts.CA.Issue(t, "127.0.0.1", "localhost")}, MinVersion: tls.VersionTLS12}
	switch opts.TLS {
	case TLSStartTLS:
		srv.TLSConfig = tlsConf
	case TLSImplicit:
		ln = tls.NewListener(ln, tlsConf)
	case "", TLSNone:
	default:
		t.Fatalf("unknown TLS mode %q", opts.TLS)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return s
}

// Messages returns the messages received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
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

// trackingListener remembers accepted connections (unwrapped, so go-smtp still sees
// *tls.Conn where it looks for one) for DropConnections.
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

func (ss *session) AuthMechanisms() []string {
	if len(ss.s.opts.Users) == 0 {
		return nil
	}
	return ss.s.opts.Mechanisms
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if want, ok := ss.s.opts.Users[user]; ok && pass == want {
			ss.user = user
			return nil
		}
		return smtp.ErrAuthFailed
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
		}
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if len(ss.s.opts.Users) > 0 && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	ss.from = from
	ss.to = nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		return err
	}
	_, isTLS := ss.c.TLSConnectionState()
	ss.s.mu.Lock()
	ss.s.messages = append(ss.s.messages, Message{
		Helo: ss.c.Hostname(), From: ss.from, To: append([]string(nil), ss.to...),
		Data: b.Bytes(), TLS: isTLS, User: ss.user,
	})
	ss.s.mu.Unlock()
	return nil
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
