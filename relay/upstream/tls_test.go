package upstream_test

import (
	"crypto/x509"
	"strings"
	"testing"

	"github.com/kuberelay/kuberelay/internal/testpeers"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

func tlsPool(t *testing.T, u config.Upstream, ca *x509.CertPool, creds *config.Credentials) *upstream.Pool {
	t.Helper()
	p := upstream.New(u, ca, creds, upstream.Options{LocalName: "relay.test"})
	t.Cleanup(p.Close)
	return p
}

// TestStartTLS delivers over STARTTLS, greeting with the relay's name on both sides of
// the handshake.
func TestStartTLS(t *testing.T) {
	t.Parallel()
	srv := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS})
	p := tlsPool(t, testUpstream(t, config.TLSStartTLS, srv.Addr), srv.CA.Pool, nil)
	if o := send(ctxFor(t), p, "starttls", "r@example.net"); o.err != nil {
		t.Fatal(describe(o))
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || !msgs[0].TLS || msgs[0].Helo != "relay.test" {
		t.Fatalf("messages %+v, want one over TLS after EHLO relay.test", msgs)
	}
}

// TestStartTLSNeverFallsBack: an endpoint without STARTTLS is skipped, never used in
// plain text; with no other endpoint the message fails temporarily.
func TestStartTLSNeverFallsBack(t *testing.T) {
	t.Parallel()
	plain := testpeers.StartSink(t) // smtp-sink does not offer STARTTLS
	srv := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS})
	ctx := ctxFor(t)

	p := tlsPool(t, testUpstream(t, config.TLSStartTLS, plain.Addr, srv.Addr), srv.CA.Pool, nil)
	if o := send(ctx, p, "fallback", "r@example.net"); o.err != nil || o.endpoint != srv.Addr {
		t.Fatalf("want delivery to %s: %s", srv.Addr, describe(o))
	}
	if n := len(srv.Messages()); n != 1 {
		t.Fatalf("TLS endpoint holds %d messages, want 1", n)
	}

	only := tlsPool(t, testUpstream(t, config.TLSStartTLS, plain.Addr), srv.CA.Pool, nil)
	o := send(ctx, only, "fallback-only", "r@example.net")
	e := asError(t, o.err)
	if !e.Temporary() || e.Code != 0 || !strings.Contains(e.Error(), "STARTTLS") {
		t.Fatalf("error %v: want a temporary local error about STARTTLS", e)
	}
	p.Close()
	only.Close()
	plain.WaitSessions(t, 2)
	if n := len(plain.Messages(t)); n != 0 {
		t.Fatalf("plain-text endpoint got %d messages", n)
	}
}

// TestTLSVerification: the certificate must chain to the configured CA and match the
// server name, unless insecureSkipVerify; a failing endpoint is skipped.
func TestTLSVerification(t *testing.T) {
	t.Parallel()
	other := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS}) // its own CA
	good := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS})
	ctx := ctxFor(t)

	p := tlsPool(t, testUpstream(t, config.TLSStartTLS, other.Addr, good.Addr), good.CA.Pool, nil)
	if o := send(ctx, p, "verify", "r@example.net"); o.err != nil || o.endpoint != good.Addr {
		t.Fatalf("want delivery to the trusted endpoint: %s", describe(o))
	}
	if len(other.Messages()) != 0 || len(good.Messages()) != 1 {
		t.Fatalf("untrusted endpoint got %d messages, trusted %d", len(other.Messages()), len(good.Messages()))
	}

	u := testUpstream(t, config.TLSStartTLS, good.Addr)
	u.TLS.ServerName = "wrong.example"
	if o := send(ctx, tlsPool(t, u, good.CA.Pool, nil), "wrong-name", "r@example.net"); o.err == nil ||
		!strings.Contains(o.err.Error(), "TLS handshake") || !asError(t, o.err).Temporary() {
		t.Fatalf("wrong server name: %s", describe(o))
	}
	u.TLS.ServerName = "localhost" // in the certificate
	if o := send(ctx, tlsPool(t, u, good.CA.Pool, nil), "right-name", "r@example.net"); o.err != nil {
		t.Fatalf("serverName localhost: %s", describe(o))
	}

	u = testUpstream(t, config.TLSStartTLS, other.Addr)
	u.TLS.InsecureSkipVerify = true
	if o := send(ctx, tlsPool(t, u, nil, nil), "insecure", "r@example.net"); o.err != nil {
		t.Fatalf("insecureSkipVerify: %s", describe(o))
	}
}

// TestImplicitTLS delivers over TLS from the first byte; a plain-text endpoint fails the
// handshake and is skipped.
func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	plain := testpeers.StartSink(t)
	srv := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSImplicit})
	p := tlsPool(t, testUpstream(t, config.TLSImplicit, plain.Addr, srv.Addr), srv.CA.Pool, nil)
	if o := send(ctxFor(t), p, "implicit", "r@example.net"); o.err != nil || o.endpoint != srv.Addr {
		t.Fatalf("want delivery to %s: %s", srv.Addr, describe(o))
	}
	if msgs := srv.Messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Fatalf("messages %+v, want one over TLS", msgs)
	}
	p.Close()
	plain.WaitSessions(t, 1)
	if n := len(plain.Messages(t)); n != 0 {
		t.Fatalf("plain-text endpoint got %d messages", n)
	}
}

// TestAuth authenticates with PLAIN and LOGIN; a wrong password fails the endpoint (the
// next one is tried) with a temporary error that does not reveal the password.
func TestAuth(t *testing.T) {
	t.Parallel()
	const user, pass = "relay", "s3cret-Pa55"
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		t.Run(mech, func(t *testing.T) {
			t.Parallel()
			srv := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, Users: map[string]string{user: pass}})
			u := testUpstream(t, config.TLSStartTLS, srv.Addr)
			u.Auth = &config.UpstreamAuth{Mechanism: mech}
			ctx := ctxFor(t)

			p := tlsPool(t, u, srv.CA.Pool, &config.Credentials{Username: user, Password: pass})
			// The second message reuses the authenticated connection after RSET.
			for i := range 2 {
				if o := send(ctx, p, "auth-"+mech, "r@example.net"); o.err != nil {
					t.Fatalf("message %d: %s", i, describe(o))
				}
			}
			msgs := srv.Messages()
			if len(msgs) != 2 || msgs[0].User != user || msgs[1].User != user {
				t.Fatalf("messages %+v, want two from %s", msgs, user)
			}
			if n := srv.Accepted(); n != 1 {
				t.Fatalf("%d connections for two messages, want 1", n)
			}

			bad := tlsPool(t, u, srv.CA.Pool, &config.Credentials{Username: user, Password: "wrong-" + pass})
			o := send(ctx, bad, "auth-bad-"+mech, "r@example.net")
			e := asError(t, o.err)
			if !e.Temporary() || e.Code != 0 || !strings.Contains(e.Error(), "AUTH "+mech) {
				t.Fatalf("wrong password: %v, want a temporary local AUTH error", e)
			}
			if strings.Contains(e.Error(), pass) {
				t.Fatalf("error reveals the password: %v", e)
			}
			if n := len(srv.Messages()); n != 2 {
				t.Fatalf("server holds %d messages after the failed login, want 2", n)
			}
		})
	}
}

// TestAuthFailover: an endpoint refusing the credentials is skipped for the next one.
func TestAuthFailover(t *testing.T) {
	t.Parallel()
	ca := testpeers.NewCA(t)
	refusing := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, CA: ca, Users: map[string]string{"relay": "other"}})
	accepting := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, CA: ca, Users: map[string]string{"relay": "pw"}})
	u := testUpstream(t, config.TLSStartTLS, refusing.Addr, accepting.Addr)
	u.Auth = &config.UpstreamAuth{Mechanism: "PLAIN"}
	p := tlsPool(t, u, ca.Pool, &config.Credentials{Username: "relay", Password: "pw"})
	if o := send(ctxFor(t), p, "auth-failover", "r@example.net"); o.err != nil || o.endpoint != accepting.Addr {
		t.Fatalf("want delivery to %s: %s", accepting.Addr, describe(o))
	}
	if len(refusing.Messages()) != 0 || len(accepting.Messages()) != 1 {
		t.Fatalf("refusing got %d, accepting %d messages", len(refusing.Messages()), len(accepting.Messages()))
	}
}

// TestAuthMechanismNotOffered fails clearly when the upstream lacks the mechanism, and
// never sends credentials without TLS.
func TestAuthMechanismNotOffered(t *testing.T) {
	t.Parallel()
	srv := testpeers.StartServer(t, testpeers.ServerOptions{TLS: testpeers.TLSStartTLS, Users: map[string]string{"u": "p"}, Mechanisms: []string{"PLAIN"}})
	u := testUpstream(t, config.TLSStartTLS, srv.Addr)
	u.Auth = &config.UpstreamAuth{Mechanism: "LOGIN"}
	ctx := ctxFor(t)
	o := send(ctx, tlsPool(t, u, srv.CA.Pool, &config.Credentials{Username: "u", Password: "p"}), "no-login", "r@example.net")
	if o.err == nil || !strings.Contains(o.err.Error(), "does not offer AUTH LOGIN (it offers: PLAIN)") {
		t.Fatalf("got %s, want an error naming the missing mechanism", describe(o))
	}

	sink := testpeers.StartSink(t) // offers AUTH PLAIN LOGIN in plain text
	u = testUpstream(t, config.TLSNone, sink.Addr)
	u.Auth = &config.UpstreamAuth{Mechanism: "PLAIN"}
	o = send(ctx, tlsPool(t, u, nil, &config.Credentials{Username: "u", Password: "p"}), "plain-auth", "r@example.net")
	if o.err == nil || !strings.Contains(o.err.Error(), "without TLS") {
		t.Fatalf("got %s, want a refusal to authenticate in plain text", describe(o))
	}
}
