package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"golang.org/x/crypto/bcrypt"

	"github.com/kuberelay/kuberelay/internal/kubeletdir"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/internal/testcerts"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/metrics"
	"github.com/kuberelay/kuberelay/relay/reload"
	"github.com/kuberelay/kuberelay/relay/server"
)

const (
	testUser     = "app"
	testPassword = "correct horse battery staple"
	// wait bounds every wait on a condition in these tests; reaching it is a failure.
	wait = 15 * time.Second
)

// relayEnv is a relay running in-process on 127.0.0.1 from config and secrets
// directories laid out as the kubelet mounts them.
type relayEnv struct {
	t          testing.TB
	configDir  string
	secretsDir string
	secrets    map[string][]byte
	srv        *server.Server
	watcher    *reload.Watcher
	metrics    *metrics.Metrics
	clientTLS  *tls.Config
	cancel     context.CancelFunc
	logs       *syncBuffer
	// applied receives the hash of every configuration the watcher applies.
	applied chan string
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) WriteString(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(v)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// baseConfig is a relay with a plain listener for allowed networks, a STARTTLS
// submission listener that requires AUTH, and an Implicit TLS one. upstream is the
// default upstream's host:port.
func baseConfig(upstream string, extra string) string {
	host, port, _ := net.SplitHostPort(upstream)
	return fmt.Sprintf(`apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayConfig
hostname: relay.test
listeners:
- {name: smtp, address: "127.0.0.1:0", tls: STARTTLS}
- {name: plain, address: "127.0.0.1:0", tls: None}
- {name: submission, address: "127.0.0.1:0", tls: STARTTLS, requireAuth: true}
- {name: smtps, address: "127.0.0.1:0", tls: Implicit}
tls: {certFile: tls.crt, keyFile: tls.key}
allowedNetworks: [127.0.0.1/32]
users:
- username: %s
  passwordHashFile: users/app
  allowedSenders: [example.com]
domains:
- domain: example.com
  allowedSenders: [noreply, "alerts-*"]
- domain: example.org
defaultUpstream: main
upstreams:
- name: main
  endpoints: [{host: "%s", port: %s}]
  tls: {mode: None}
  timeouts: {acquire: 2s}
%s`, testUser, host, port, extra)
}

func testSecrets(t testing.TB, certName string) map[string][]byte {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := selfSigned(t, certName)
	return map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "users/app": hash}
}

// selfSigned is a certificate for relay.test whose common name, cn, tells one
// certificate from its renewal.
func selfSigned(t testing.TB, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := testcerts.SelfSigned(cn, "relay.test")
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

func startRelay(t testing.TB, yaml string, secrets map[string][]byte) *relayEnv {
	t.Helper()
	return startRelayLog(t, yaml, secrets, logr.Logger{})
}

// startRelayLog is startRelay with the relay's log going to log instead (benchmarks
// log as the relay binary does, not through the test log).
func startRelayLog(t testing.TB, yaml string, secrets map[string][]byte, log logr.Logger, opts ...func(*server.Options)) *relayEnv {
	t.Helper()
	dir := t.TempDir()
	e := &relayEnv{t: t, configDir: filepath.Join(dir, "config"), secretsDir: filepath.Join(dir, "secrets"),
		secrets: secrets, metrics: metrics.New(), applied: make(chan string, 64)}
	if err := kubeletdir.Write(e.secretsDir, secrets); err != nil {
		t.Fatal(err)
	}
	if err := kubeletdir.Write(e.configDir, map[string][]byte{config.FileName: []byte(yaml)}); err != nil {
		t.Fatal(err)
	}
	// Logs go to the test output and to a buffer that tests search for leaked secrets.
	e.logs = &syncBuffer{}
	if log.GetSink() == nil {
		log = funcr.NewJSON(func(obj string) { t.Log(obj); e.logs.WriteString(obj + "\n") }, funcr.Options{})
	}
	e.watcher = &reload.Watcher{ConfigDir: e.configDir, SecretsDir: e.secretsDir, Log: log, Metrics: e.metrics,
		Interval: time.Hour, Apply: func(l *config.Loaded) {
			_ = e.srv.Apply(l)
			e.applied <- l.Hash
		}}
	l, err := e.watcher.Load()
	if err != nil {
		t.Fatalf("loading config: %v", err)
	}
	o := server.Options{Log: log, Metrics: e.metrics, SpoolDir: dir, SpoolMemory: 1024}
	for _, f := range opts {
		f(&o)
	}
	e.srv = server.New(l, o)
	if err := e.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	e.srv.Serve()
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	done := make(chan struct{})
	go func() { defer close(done); _ = e.watcher.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		ctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = e.srv.Shutdown(ctx)
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(secrets["tls.crt"])
	e.clientTLS = &tls.Config{RootCAs: pool, ServerName: "relay.test"}
	return e
}

func (e *relayEnv) addr(listener string) string {
	return e.srv.Addr(listener).String()
}

// publish swaps the config (and, if given, secrets) exactly as the kubelet does and
// waits until the relay runs the new configuration.
func (e *relayEnv) publish(yaml string, secrets map[string][]byte) {
	e.t.Helper()
	before, _ := e.srv.Current()
	if secrets != nil {
		e.secrets = secrets
		if err := kubeletdir.Write(e.secretsDir, secrets); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := kubeletdir.Write(e.configDir, map[string][]byte{config.FileName: []byte(yaml)}); err != nil {
		e.t.Fatal(err)
	}
	timeout := time.After(wait)
	for {
		select {
		case h := <-e.applied:
			if h != before {
				return
			}
		case <-timeout:
			e.t.Fatalf("relay did not load the new configuration within %s (last error: %v)", wait, e.watcher.Status().LastError)
		}
	}
}

func startCapture(t testing.TB) *mailcapture.Server {
	t.Helper()
	c, err := mailcapture.Start("127.0.0.1:0", mailcapture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// smtpConn is a raw SMTP client conversation, for the cases a well-behaved client
// library would refuse to produce.
type smtpConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// connect opens a raw conversation with addr, from the loopback address local ("" for
// any), over TLS from the first byte when cfg is set. It reads nothing; the connection
// is closed when the test ends.
func connect(t *testing.T, addr, local string, cfg *tls.Config) *smtpConn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		// Linux routes all of 127.0.0.0/8 to lo, so one test can be many clients.
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	var c net.Conn
	var err error
	if cfg != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, cfg)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &smtpConn{t: t, conn: c, r: bufio.NewReader(c)}
}

// dialRaw connects to addr and reads the greeting.
func dialRaw(t *testing.T, addr string) *smtpConn {
	t.Helper()
	s := connect(t, addr, "", nil)
	s.expect(220)
	return s
}

// dialTLSRaw connects to an implicit TLS listener and reads the greeting.
func dialTLSRaw(t *testing.T, addr string, cfg *tls.Config) *smtpConn {
	t.Helper()
	s := connect(t, addr, "", cfg)
	s.expect(220)
	return s
}

// refusedAt connects to addr and returns the text of the 421 the relay greets it with.
func refusedAt(t *testing.T, addr string) string {
	t.Helper()
	return connect(t, addr, "", nil).expect(421)
}

// reply reads one (possibly multi-line) reply.
func (s *smtpConn) reply() (int, string, error) {
	_ = s.conn.SetReadDeadline(time.Now().Add(wait))
	var text []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(text, "\n"), err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return 0, line, fmt.Errorf("short reply %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return 0, line, fmt.Errorf("bad reply %q", line)
		}
		text = append(text, line[min(4, len(line)):])
		if len(line) == 3 || line[3] == ' ' {
			return code, strings.Join(text, "\n"), nil
		}
	}
}

func (s *smtpConn) expect(code int) string {
	s.t.Helper()
	got, text, err := s.reply()
	if err != nil {
		s.t.Fatalf("waiting for %d: %v (got %q)", code, err, text)
	}
	if got != code {
		s.t.Fatalf("want %d, got %d %s", code, got, text)
	}
	return text
}

func (s *smtpConn) send(raw string) {
	s.t.Helper()
	if _, err := s.conn.Write([]byte(raw)); err != nil {
		s.t.Fatalf("writing: %v", err)
	}
}

func (s *smtpConn) cmd(line string, code int) string {
	s.t.Helper()
	s.send(line + "\r\n")
	return s.expect(code)
}

// closed reports whether the server closed the connection (EOF or reset) within wait.
func (s *smtpConn) closed() bool {
	_ = s.conn.SetReadDeadline(time.Now().Add(wait))
	for {
		_, err := s.r.ReadString('\n')
		if err != nil {
			ne, ok := err.(net.Error)
			return !(ok && ne.Timeout())
		}
	}
}

func (s *smtpConn) startTLS(cfg *tls.Config) {
	s.t.Helper()
	s.cmd("STARTTLS", 220)
	tc := tls.Client(s.conn, cfg)
	if err := tc.Handshake(); err != nil {
		s.t.Fatalf("TLS handshake: %v", err)
	}
	s.conn = tc
	s.r = bufio.NewReader(tc)
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// writeConfig publishes relay.yaml without waiting for it to load.
func writeConfig(e *relayEnv, yaml string) error {
	return kubeletdir.Write(e.configDir, map[string][]byte{config.FileName: []byte(yaml)})
}

// BenchmarkReloadLatency measures the time from a kubelet-style "..data" swap of the
// config directory to the relay serving the new configuration.
func BenchmarkReloadLatency(b *testing.B) {
	up := startCapture(b)
	cfgA := baseConfig(up.Addr(), "")
	cfgB := strings.Replace(cfgA, "hostname: relay.test", "hostname: relay2.test", 1)
	e := startRelay(b, cfgA, testSecrets(b, "one"))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			e.publish(cfgB, nil)
		} else {
			e.publish(cfgA, nil)
		}
	}
}
