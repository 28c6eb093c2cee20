package testpeers

import (
	"crypto/tls"
	"testing"

	"github.com/kuberelay/kuberelay/internal/mailcapture"
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
	// Users maps user names to passwords. When set, AUTH is offered (over TLS only)
	// and MAIL is refused until the client authenticated.
	Users map[string]string
	// Mechanisms are the AUTH mechanisms offered (see mailcapture.Options).
	Mechanisms []string
	// Bearer checks XOAUTH2 and OAUTHBEARER logins (see mailcapture.Options); when
	// set, AUTH is offered and required.
	Bearer func(user, token string) error
	// CA issues the server certificate (for 127.0.0.1 and localhost). Default: a new CA,
	// available as Server.CA.
	CA *CA
}

// Server is the capture SMTP server (internal/mailcapture) with a certificate from a
// test CA, for the cases smtp-sink cannot play: TLS, AUTH, dropped connections.
type Server struct {
	*mailcapture.Server
	// Addr is the 127.0.0.1:port it listens on.
	Addr string
	// CA issued the server's certificate; CA.Pool verifies it.
	CA *CA
}

// Message is one message a Server received.
type Message = mailcapture.Message

// StartServer starts a Server on a free 127.0.0.1 port and stops it when the test ends.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	if opts.CA == nil {
		opts.CA = NewCA(t)
	}
	mo := mailcapture.Options{Auth: len(opts.Users) > 0 || opts.Bearer != nil, Users: opts.Users, Mechanisms: opts.Mechanisms, Bearer: opts.Bearer}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{opts.CA.Issue(t, "127.0.0.1", "localhost")}, MinVersion: tls.VersionTLS12}
	switch opts.TLS {
	case TLSStartTLS:
		mo.TLS = tlsConf
	case TLSImplicit:
		mo.TLS, mo.Implicit = tlsConf, true
	case "", TLSNone:
	default:
		t.Fatalf("unknown TLS mode %q", opts.TLS)
	}
	srv, err := mailcapture.Start("127.0.0.1:0", mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &Server{Server: srv, Addr: srv.Addr(), CA: opts.CA}
}
