// Package server is the relay's SMTP side: it accepts client connections on the
// configured listeners, applies the relay policy, and passes each message through to
// its upstream, answering the client only once the upstream has answered.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/go-logr/logr"

	"github.com/kuberelay/kuberelay/relay/capture"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/dkim"
	"github.com/kuberelay/kuberelay/relay/metrics"
	"github.com/kuberelay/kuberelay/relay/policy"
	"github.com/kuberelay/kuberelay/relay/queue"
	"github.com/kuberelay/kuberelay/relay/ratelimit"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// Options are what the server needs besides its configuration.
type Options struct {
	Log     logr.Logger
	Metrics *metrics.Metrics
	// SpoolDir holds messages being DKIM-signed that outgrow memory. Default: the
	// system temporary directory.
	SpoolDir string
	// Now is the rate limits' clock; time.Now when nil (tests set it).
	Now func() time.Time
	// SpoolMemory is how many bytes of a message being signed are kept in memory before
	// spilling to SpoolDir. Default 256 KiB.
	SpoolMemory int
	// Dial, if set, is how upstream connections are made (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ListenHost, if set, replaces the host of every listener address: a relay run
	// outside a pod binds only 127.0.0.1 while keeping the rendered configuration, and
	// so its hash, as it is.
	ListenHost string
}

// Server runs the relay's listeners.
type Server struct {
	opts      Options
	log       logr.Logger
	metrics   *metrics.Metrics
	tlsConfig *tls.Config
	pools     *poolRegistry
	authCache *policy.AuthCache
	authLimit *authLimiter
	// rates counts what rate limits bound; it outlives generations.
	rates *ratelimit.Table

	mu        sync.Mutex
	gen       *generation
	listeners []*listener
	// boundListeners are the listeners of the first configuration: they stay bound for
	// the life of the process.
	boundListeners []config.Listener
	conns          map[*trackedConn]struct{}
	// Open connections by client address, by listener, and on listeners that do not
	// require AUTH: what admit counts against the limits.
	perClient   map[netip.Addr]int
	perListener map[string]int
	openNoAuth  int

	// capture is the capture sink; it outlives generations, which set its cap.
	capture *capture.Store
	// checks are the upstream checks' rounds.
	checks checker

	// queue is Queue mode's store and deliverer; nil in PassThrough mode. The mode and
	// the spool directory are fixed at start, like the listeners.
	queue    *relayQueue
	delivery config.Delivery

	shuttingDown atomic.Bool
	// draining (Queue mode) takes no more mail but goes on delivering the queue, so a
	// pod about to be removed can be emptied first.
	draining atomic.Bool
	wg       sync.WaitGroup
	drained  chan struct{}
}

// generation is everything derived from one loaded configuration. Sessions keep the
// generation they started with; it is released when it is no longer current and its
// last connection has closed.
type generation struct {
	loaded   *config.Loaded
	hostname string
	since    time.Time
	policy   *policy.Policy
	pools    map[string]*upstream.Pool
	dkim     map[string]*dkim.Key
	// limits are the configured rate limits by what they bound; sessions the users'
	// maxSessions. Both nil when none is configured (the common case costs nothing).
	limits   map[ratelimit.Key]*ratelimit.Limits
	sessions map[string]int
	// capture says whose mail goes to the capture sink; nil when nobody's does.
	capture *captureRules

	mu      sync.Mutex
	conns   int
	retired bool
}

type listener struct {
	cfg config.Listener
	ln  net.Listener
}

// New prepares a server for a loaded configuration. Call Listen, then Serve.
func New(l *config.Loaded, opts Options) *Server {
	if opts.Log.GetSink() == nil {
		opts.Log = logr.Discard()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.SpoolMemory == 0 {
		opts.SpoolMemory = 256 << 10
	}
	if opts.SpoolDir == "" {
		opts.SpoolDir = os.TempDir()
	}
	s := &Server{
		opts:        opts,
		log:         opts.Log,
		metrics:     opts.Metrics,
		pools:       &poolRegistry{},
		authCache:   policy.NewAuthCache(),
		authLimit:   newAuthLimiter(),
		rates:       &ratelimit.Table{Now: opts.Now},
		conns:       map[*trackedConn]struct{}{},
		perClient:   map[netip.Addr]int{},
		perListener: map[string]int{},
		drained:     make(chan struct{}),
	}
	// The certificate is looked up at every handshake, so a renewed one is served at
	// once, to sessions of every generation.
	s.tlsConfig = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// TLS 1.2 suites limited to forward-secret AEAD ones; TLS 1.3 suites are all
		// modern and not configurable.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			g := s.current()
			if g == nil || g.loaded.Certificate == nil {
				return nil, errors.New("no certificate configured")
			}
			return g.loaded.Certificate, nil
		},
	}
	s.capture = capture.NewStore(0, 0, s.metrics.CaptureEvicted.Inc)
	s.metrics.WatchCapture(func() (int, int64) { st := s.capture.Stats(); return st.Messages, st.Bytes })
	s.metrics.WatchRates(s.RateUse)
	s.apply(l)
	return s
}

// RateUse is what the current configuration's rate-limited keys used of the current
// windows.
func (s *Server) RateUse() []metrics.RateUse {
	g := s.current()
	out := make([]metrics.RateUse, 0, len(g.limits))
	for k := range g.limits {
		out = append(out, metrics.RateUse{Kind: k.Kind.String(), Name: k.Name,
			Messages: s.rates.Used(k, ratelimit.Messages), Recipients: s.rates.Used(k, ratelimit.Recipients)})
	}
	return out
}

// Listen binds every configured listener. Listeners are fixed for the life of the
// process; Apply reports listener changes instead of re-binding.
func (s *Server) Listen() error {
	g := s.current()
	s.delivery = g.loaded.Config.Delivery
	if s.delivery.Mode == config.Queue {
		store, envs, err := queue.Open(s.delivery.Queue.Dir)
		if err != nil {
			return fmt.Errorf("delivery.queue.dir: %w", err)
		}
		s.queue = &relayQueue{store: store, deliverer: newDeliverer(s, store, envs)}
		s.metrics.WatchQueue(func() metrics.QueueStats {
			st := store.Stats()
			return metrics.QueueStats{Messages: st.Messages, Bytes: st.Bytes, Oldest: st.Oldest, Flushes: st.Syncs, Commits: st.Commits}
		})
		s.log.Info("queue opened", "dir", s.delivery.Queue.Dir, "messages", len(envs))
	}
	for _, lc := range g.loaded.Config.Listeners {
		addr := lc.Address
		if s.opts.ListenHost != "" {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				s.closeListeners()
				return fmt.Errorf("listener %s: %w", lc.Name, err)
			}
			addr = net.JoinHostPort(s.opts.ListenHost, port)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		s.listeners = append(s.listeners, &listener{cfg: lc, ln: ln})
	}
	return nil
}

// Addr returns the bound address of the named listener, or nil.
func (s *Server) Addr(name string) net.Addr {
	for _, l := range s.listeners {
		if l.cfg.Name == name {
			return l.ln.Addr()
		}
	}
	return nil
}

// Serve starts accepting on every listener and returns at once.
func (s *Server) Serve() {
	if s.queue != nil {
		s.queue.deliverer.start()
	}
	for _, l := range s.listeners {
		s.wg.Add(1)
		go s.acceptLoop(l)
	}
}

// Current returns the hash of the configuration in use and when it was loaded.
func (s *Server) Current() (hash string, since time.Time) {
	g := s.current()
	return g.loaded.Hash, g.since
}

func (s *Server) current() *generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// Apply makes l the configuration for new connections. Sessions already open finish
// on the configuration they started with. It returns an error describing what could
// not be applied without a restart (listener changes); everything else is applied.
func (s *Server) Apply(l *config.Loaded) error {
	s.apply(l)
	s.mu.Lock()
	bound := s.boundListeners
	s.mu.Unlock()
	if !listenersEqual(bound, l.Config.Listeners) {
		return errors.New("listeners changed: the new listeners take effect when the relay restarts; the old ones keep serving with the new configuration")
	}
	if d := l.Config.Delivery; s.delivery.Mode != "" && (d.Mode != s.delivery.Mode || d.Queue.Dir != s.delivery.Queue.Dir) {
		return errors.New("delivery.mode or delivery.queue.dir changed: they take effect when the relay restarts; the rest of the configuration is applied")
	}
	return nil
}

// listenersEqual compares what a bound listener fixes for the life of the process; a
// listener's connection limit is read from each new configuration.
func listenersEqual(a, b []config.Listener) bool {
	bound := func(ls []config.Listener) string {
		ls = slices.Clone(ls)
		for i := range ls {
			ls[i].MaxConnections = 0
		}
		j, _ := json.Marshal(ls)
		return string(j)
	}
	return bound(a) == bound(b)
}

func (s *Server) apply(l *config.Loaded) {
	g := &generation{
		loaded: l,
		since:  time.Now(),
		policy: policy.New(l, s.authCache),
		pools:  map[string]*upstream.Pool{},
		dkim:   map[string]*dkim.Key{},
	}
	hostname := hostnameOf(l.Config)
	g.hostname = hostname
	for _, u := range l.Config.Upstreams {
		var creds *config.Credentials
		if c, ok := l.UpstreamCredentials[u.Name]; ok {
			creds = &c
		}
		g.pools[u.Name] = s.pools.acquire(u, l.UpstreamCAs[u.Name], creds, upstream.Options{
			LocalName: hostname,
			Log:       s.log.WithValues("upstream", u.Name),
			Dial:      s.opts.Dial,
		})
	}
	addLimits := func(k ratelimit.Kind, name string, r *config.RateLimits) {
		if r == nil {
			return
		}
		var lim ratelimit.Limits
		lim[ratelimit.Messages] = [3]int64{r.MessagesPerMinute, r.MessagesPerHour, r.MessagesPerDay}
		lim[ratelimit.Recipients] = [3]int64{r.RecipientsPerMinute, r.RecipientsPerHour, r.RecipientsPerDay}
		if lim.Any() {
			if g.limits == nil {
				g.limits = map[ratelimit.Key]*ratelimit.Limits{}
			}
			g.limits[ratelimit.Key{Kind: k, Name: name}] = &lim
		}
		if r.MaxSessions > 0 {
			if g.sessions == nil {
				g.sessions = map[string]int{}
			}
			g.sessions[name] = r.MaxSessions
		}
	}
	for _, u := range l.Config.Users {
		addLimits(ratelimit.User, u.Username, u.RateLimits)
	}
	for _, d := range l.Config.Domains {
		addLimits(ratelimit.Domain, d.Domain, d.RateLimits)
	}
	for _, u := range l.Config.Upstreams {
		addLimits(ratelimit.Upstream, u.Name, u.RateLimits)
	}
	if c := l.Config.Capture; c != nil {
		s.capture.SetLimits(c.MaxMessages, c.MaxBytes)
	}
	g.capture = newCaptureRules(l.Config)
	for _, d := range l.Config.Domains {
		if d.DKIM != nil {
			g.dkim[d.Domain] = &dkim.Key{Domain: d.Domain, Selector: d.DKIM.Selector,
				Signer: l.DKIMKeys[d.Domain], Headers: d.DKIM.Headers}
		}
	}
	s.mu.Lock()
	if s.boundListeners == nil {
		// Listeners are bound once; every generation serves those same listeners.
		s.boundListeners = l.Config.Listeners
	}
	s.mu.Unlock()
	s.mu.Lock()
	old := s.gen
	s.gen = g
	s.mu.Unlock()
	s.metrics.SetConfigHash(l.Hash)
	s.metrics.ConfigLastSuccess.Set(float64(g.since.Unix()))
	if old != nil {
		s.retire(old)
	}
}

func hostnameOf(c *config.Config) string {
	if c.Hostname != "" {
		return c.Hostname
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// retire stops old from taking new connections and releases it once its last
// connection has closed.
func (s *Server) retire(g *generation) {
	g.mu.Lock()
	g.retired = true
	done := g.conns == 0
	g.mu.Unlock()
	if done {
		s.release(g)
	}
}

func (s *Server) release(g *generation) {
	for _, p := range g.pools {
		s.pools.release(p)
	}
}

func (s *Server) acceptLoop(l *listener) {
	defer s.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.log.Error(err, "accepting connection", "listener", l.cfg.Name)
			time.Sleep(50 * time.Millisecond) // e.g. out of file descriptors: back off, do not spin
			continue
		}
		s.handoff(l, c)
	}
}

func (s *Server) handoff(l *listener, c net.Conn) {
	name := l.cfg.Name
	for {
		g := s.current()
		if s.shuttingDown.Load() || s.draining.Load() {
			s.refuse(l, c, "shutdown", errShuttingDown)
			return
		}
		tc := &trackedConn{Conn: c, srv: s, listener: name, gen: g, ip: remoteIP(c)}
		g.mu.Lock()
		if g.retired {
			// Replaced meanwhile: the connection starts on the new generation.
			g.mu.Unlock()
			continue
		}
		g.conns++
		g.mu.Unlock()
		if reason, reply := s.admit(g, tc); reply != nil {
			s.leave(g)
			s.log.V(1).Info("connection refused", "listener", name, "client", tc.ip.String(), "reason", reason)
			s.refuse(l, c, reason, reply)
			return
		}
		s.metrics.Sessions.WithLabelValues(name).Inc()
		s.metrics.ConnectionsOpen.WithLabelValues(name).Inc()
		tc.release = func() { s.connClosed(tc) }
		// A session keeps the generation it started with, so the limits and policy it
		// starts with never change under it.
		go s.serve(&backend{srv: s, gen: g, listener: l.cfg}, tc, l.cfg.TLS == config.TLSImplicit)
		return
	}
}

// admit counts tc's connection against the limits of generation g, or says which limit
// refuses it: the relay's total, the share of listeners without requireAuth (the rest
// is kept for authenticating clients), the listener's own, and the client address's.
func (s *Server) admit(g *generation, tc *trackedConn) (reason string, reply *smtp.SMTPError) {
	lim := g.loaded.Config.Limits
	lc := g.listener(tc.listener)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(s.conns) >= lim.MaxConnections:
		return "limit", errTooManyConnections
	case !lc.RequireAuth && s.openNoAuth >= lim.MaxConnections-lim.ReservedAuthConnections:
		return "limit", errTooManyConnections
	case lc.MaxConnections > 0 && s.perListener[tc.listener] >= lc.MaxConnections:
		return "listener-limit", errTooManyConnections
	case s.perClient[tc.ip] >= lim.MaxConnectionsPerClient:
		return "client-limit", errTooManyFromClient
	}
	tc.noAuth = !lc.RequireAuth
	s.conns[tc] = struct{}{}
	s.perClient[tc.ip]++
	s.perListener[tc.listener]++
	if tc.noAuth {
		s.openNoAuth++
	}
	return "", nil
}

// listener is the current configuration of the listener named name (bound listeners
// keep their address and TLS mode; their limits and requireAuth follow reloads).
func (g *generation) listener(name string) config.Listener {
	for _, l := range g.loaded.Config.Listeners {
		if l.Name == name {
			return l
		}
	}
	return config.Listener{Name: name}
}

func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

func (s *Server) refuse(l *listener, c net.Conn, reason string, reply *smtp.SMTPError) {
	s.metrics.ConnectionsRefused.WithLabelValues(l.cfg.Name, reason).Inc()
	if l.cfg.TLS != config.TLSImplicit {
		lastReply(c, c, reply)
	}
	c.Close()
}

func (s *Server) connClosed(tc *trackedConn) {
	s.metrics.ConnectionsOpen.WithLabelValues(tc.listener).Dec()
	s.mu.Lock()
	delete(s.conns, tc)
	left := len(s.conns)
	if s.perClient[tc.ip]--; s.perClient[tc.ip] <= 0 {
		delete(s.perClient, tc.ip)
	}
	s.perListener[tc.listener]--
	if tc.noAuth {
		s.openNoAuth--
	}
	s.mu.Unlock()
	s.leave(tc.gen)
	if left == 0 && s.shuttingDown.Load() {
		s.signalDrained()
	}
}

// leave ends a connection's hold on generation g, releasing a retired generation's
// upstream pools with its last connection.
func (s *Server) leave(g *generation) {
	g.mu.Lock()
	g.conns--
	done := g.retired && g.conns == 0
	g.mu.Unlock()
	if done {
		s.release(g)
	}
}

func (s *Server) signalDrained() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.drained:
	default:
		close(s.drained)
	}
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.ln.Close()
	}
}

// Drain makes a Queue-mode relay take no more mail while it goes on delivering what
// it holds: new connections and new transactions get 421, idle sessions are ended,
// transactions in progress finish. It cannot be undone but by a restart.
func (s *Server) Drain() {
	if s.draining.Swap(true) {
		return
	}
	s.log.Info("draining: no more mail is taken; the queue is delivered")
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if c.idle() {
			c.drain()
		}
	}
}

// Draining reports whether Drain was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// Shutdown stops accepting connections, ends idle sessions with 421, lets sessions in
// the middle of a transaction finish it, and when ctx ends closes whatever is left
// (those clients got no 250, so they still hold their messages).
func (s *Server) Shutdown(ctx context.Context) error {
	s.shuttingDown.Store(true)
	s.closeListeners()
	s.wg.Wait()
	s.mu.Lock()
	conns := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	empty := len(s.conns) == 0
	s.mu.Unlock()
	if empty {
		s.signalDrained()
	}
	for _, c := range conns {
		if c.idle() {
			c.drain()
		}
	}
	var err error
	select {
	case <-s.drained:
	case <-ctx.Done():
		err = fmt.Errorf("grace period over with sessions still open: %w", ctx.Err())
		s.mu.Lock()
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	if s.queue != nil {
		// Deliveries in flight finish; what is left stays on disk for the next start.
		s.queue.deliverer.shutdown()
		s.queue.store.Close()
	}
	g := s.current()
	s.retire(g)
	return err
}

// poolRegistry shares upstream pools between generations, so a reload that leaves an
// upstream unchanged keeps its warm connections.
type poolRegistry struct {
	mu      sync.Mutex
	entries []*poolEntry
}

type poolEntry struct {
	cfg   string
	ca    *x509.CertPool
	creds *config.Credentials
	pool  *upstream.Pool
	refs  int
}

func (r *poolRegistry) acquire(u config.Upstream, ca *x509.CertPool, creds *config.Credentials, opts upstream.Options) *upstream.Pool {
	cfg, _ := json.Marshal(struct {
		U    config.Upstream
		Name string
	}{u, opts.LocalName})
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.entries {
		if e.cfg == string(cfg) && sameCreds(e.creds, creds) && sameCA(e.ca, ca) {
			e.refs++
			return e.pool
		}
	}
	e := &poolEntry{cfg: string(cfg), ca: ca, creds: creds, refs: 1, pool: upstream.New(u, ca, creds, opts)}
	r.entries = append(r.entries, e)
	return e.pool
}

func (r *poolRegistry) release(p *upstream.Pool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.entries {
		if e.pool != p {
			continue
		}
		e.refs--
		if e.refs == 0 {
			r.entries = append(r.entries[:i], r.entries[i+1:]...)
			go p.Close()
		}
		return
	}
}

func sameCreds(a, b *config.Credentials) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

func sameCA(a, b *x509.CertPool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}
