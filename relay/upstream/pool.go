// Package upstream delivers mail to smarthosts: one Pool per configured upstream keeps
// a bounded set of reusable SMTP connections, and a Tx forwards one message to exactly
// one of the upstream's endpoints, failing over to the next endpoint only while the
// message cannot have been taken yet.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/kuberelay/kuberelay/relay/config"
)

// Options are the relay-wide settings a Pool needs besides its upstream's config.
type Options struct {
	// LocalName is the name the relay gives in EHLO.
	LocalName string
	// Log receives connection and failover events. The zero Logger discards.
	Log logr.Logger
	// Dial, if set, replaces net.Dialer.DialContext (tests).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Pool holds the connections to one upstream. It is safe for concurrent use.
type Pool struct {
	u     config.Upstream
	addrs []string // "host:port" of each endpoint, in order
	ca    *x509.CertPool
	creds *config.Credentials
	// tokens obtains access tokens when creds has an OAuth 2.0 client.
	tokens *tokens
	opts   Options
	log    logr.Logger
	dialFn func(ctx context.Context, network, addr string) (net.Conn, error)

	mu sync.Mutex
	// idle connections, oldest first; reuse takes the newest (LIFO) so that surplus
	// connections age out.
	idle []*conn
	// total counts permits: one per idle connection and one per transaction that holds
	// or is opening a connection. It never exceeds u.MaxConnections.
	total   int
	waiting int // transactions waiting in acquire
	closed  bool
	// wake is closed (and replaced) whenever a permit or an idle connection frees up.
	wake chan struct{}
	// reaper closes idle connections after the idle timeout; armed while any are idle.
	reaper      *time.Timer
	reaperArmed bool
	// retiring tracks connections being closed in the background, so Close can wait.
	retiring sync.WaitGroup
}

// Stats is a snapshot of a pool's connections.
type Stats struct {
	// Idle connections are open and waiting for a message.
	Idle int
	// InUse counts transactions holding a connection (or opening one).
	InUse int
	// Waiting counts transactions waiting for a connection because all are in use.
	Waiting int
}

// New makes a pool for upstream u. ca verifies the upstream's certificate (nil: the
// system roots); creds, if not nil, are used for AUTH. Unset fields take the config
// package's defaults (Upstream.WithDefaults). No connection is opened until a transaction needs one.
func New(u config.Upstream, ca *x509.CertPool, creds *config.Credentials, opts Options) *Pool {
	u = u.WithDefaults()
	if opts.LocalName == "" {
		opts.LocalName = "localhost"
	}
	p := &Pool{
		u:      u,
		ca:     ca,
		opts:   opts,
		log:    opts.Log,
		dialFn: opts.Dial,
		wake:   make(chan struct{}),
	}
	if creds != nil {
		c := *creds
		p.creds = &c
		if c.OAuth2 != nil {
			p.tokens = newTokens(c.OAuth2, c.Username, u.Timeouts.Connect.Duration+u.Timeouts.Command.Duration)
		}
	}
	if p.dialFn == nil {
		p.dialFn = (&net.Dialer{}).DialContext
	}
	for _, ep := range u.Endpoints {
		p.addrs = append(p.addrs, net.JoinHostPort(ep.Host, strconv.Itoa(ep.Port)))
	}
	return p
}

// Name is the upstream's name.
func (p *Pool) Name() string { return p.u.Name }

// Stats returns how many connections are idle and in use.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Idle: len(p.idle), InUse: p.total - len(p.idle), Waiting: p.waiting}
}

// Begin starts a transaction for envelope sender from ("" is the null sender). Nothing
// is sent until the first Rcpt (or Open). The caller must Close the transaction.
func (p *Pool) Begin(ctx context.Context, from string, opts *MailOptions) *Tx {
	tx := &Tx{p: p, from: from, mailOpts: opts}
	if !validAddress(from) {
		tx.err = &Error{Err: fmt.Errorf("invalid sender address %q", sanitize(from))}
	}
	return tx
}

// Close stops the pool: idle connections are closed now (with QUIT), those in use when
// their transaction ends. Transactions that have not connected yet fail with a
// temporary error wrapping ErrPoolClosed.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.retiring.Wait()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.total -= len(idle)
	if p.reaper != nil {
		p.reaper.Stop()
	}
	p.notifyLocked()
	p.mu.Unlock()

	var wg sync.WaitGroup
	for _, cn := range idle {
		wg.Go(cn.close)
	}
	wg.Wait()
	p.retiring.Wait()
}

func (p *Pool) tlsConfig(host string) *tls.Config {
	name := p.u.TLS.ServerName
	if name == "" {
		name = host
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         name,
		RootCAs:            p.ca,
		InsecureSkipVerify: p.u.TLS.InsecureSkipVerify,
	}
}

// notifyLocked wakes every waiter in acquire.
func (p *Pool) notifyLocked() {
	if p.waiting == 0 {
		// Nobody waits on p.wake: keep it rather than make a channel per release.
		return
	}
	close(p.wake)
	p.wake = make(chan struct{})
}

// acquire returns an idle connection to endpoint ep, or nil meaning the caller now holds
// a permit and should dial. havePermit says the caller already holds one (it is failing
// over or replacing a dead connection): then it never waits. allowIdle false skips idle
// connections (after one turned out dead).
func (p *Pool) acquire(ctx context.Context, ep int, havePermit, allowIdle bool) (*conn, error) {
	var timeout <-chan time.Time
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		var expired []*conn
		var found *conn
		if allowIdle {
			now := time.Now()
			for i := len(p.idle) - 1; i >= 0 && found == nil; i-- {
				cn := p.idle[i]
				if cn.ep != ep {
					continue
				}
				p.idle = append(p.idle[:i], p.idle[i+1:]...)
				if now.Sub(cn.idleSince) >= p.u.Timeouts.Idle.Duration {
					// The reaper has not got to it yet; its permit is freed.
					expired = append(expired, cn)
					p.total--
					continue
				}
				found = cn
			}
		}
		switch {
		case found != nil:
			found.reused = true
			if havePermit {
				p.total-- // the idle connection brings its own permit
			}
		case havePermit:
		case p.total < p.u.MaxConnections:
			p.total++
		case len(p.idle) > 0:
			// Full, but with connections idling to other endpoints: take the oldest
			// one's permit.
			expired = append(expired, p.idle[0])
			p.idle = p.idle[1:]
		default:
			if len(expired) > 0 {
				p.retireLocked(expired)
			}
			wake := p.wake
			p.waiting++
			p.mu.Unlock()
			if timeout == nil {
				t := time.NewTimer(p.u.Timeouts.Acquire.Duration)
				defer t.Stop()
				timeout = t.C
			}
			var err error
			select {
			case <-wake:
			case <-timeout:
				err = fmt.Errorf("%w (waited %s for one of %d connections)", ErrPoolExhausted, p.u.Timeouts.Acquire.Duration, p.u.MaxConnections)
			case <-ctx.Done():
				err = ctx.Err()
			}
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
			if err != nil {
				return nil, err
			}
			continue
		}
		if len(expired) > 0 {
			p.retireLocked(expired)
		}
		p.mu.Unlock()
		return found, nil
	}
}

// retireLocked closes connections in the background (QUIT may take a while); Close
// waits for them. Their permits must already be accounted for.
func (p *Pool) retireLocked(cs []*conn) {
	if len(cs) == 0 {
		return
	}
	p.notifyLocked()
	p.retiring.Add(1)
	go func() {
		defer p.retiring.Done()
		for _, cn := range cs {
			cn.close()
		}
	}()
}

// release gives back a transaction's permit, and its connection if it has one: the
// connection is reused when its transaction ended cleanly or a RSET succeeded, otherwise
// closed.
func (p *Pool) release(cn *conn) {
	if cn != nil {
		cn.unwatch()
		limit := p.u.MaxMessagesPerConnection
		if !cn.broken && (limit <= 0 || cn.messages < limit) && !p.isClosed() && (cn.ended || cn.reset() == nil) {
			cn.ended = false
			p.mu.Lock()
			if !p.closed {
				cn.idleSince = time.Now()
				cn.reused = false
				p.idle = append(p.idle, cn)
				p.armReaperLocked()
				p.notifyLocked()
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
		}
		cn.close()
	}
	p.mu.Lock()
	p.total--
	p.notifyLocked()
	p.mu.Unlock()
}

// drop closes a connection a transaction gives up on while keeping its permit.
func (p *Pool) drop(cn *conn) {
	cn.unwatch()
	if cn.broken {
		cn.raw.Close()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		cn.broken = true
		cn.raw.Close()
		return
	}
	p.retiring.Add(1)
	go func() {
		defer p.retiring.Done()
		cn.close()
	}()
}

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *Pool) armReaperLocked() {
	if p.reaperArmed {
		return
	}
	p.reaperArmed = true
	if p.reaper == nil {
		p.reaper = time.AfterFunc(p.u.Timeouts.Idle.Duration, p.reap)
	} else {
		p.reaper.Reset(p.u.Timeouts.Idle.Duration)
	}
}

// reap closes the connections that have been idle for the idle timeout and re-arms
// itself for the oldest remaining one.
func (p *Pool) reap() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reaperArmed = false
	if p.closed {
		return
	}
	now := time.Now()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].idleSince) >= p.u.Timeouts.Idle.Duration {
		n++
	}
	expired := append([]*conn(nil), p.idle[:n]...)
	p.idle = append(p.idle[:0], p.idle[n:]...)
	p.total -= n
	if len(p.idle) > 0 {
		p.reaperArmed = true
		p.reaper.Reset(p.idle[0].idleSince.Add(p.u.Timeouts.Idle.Duration).Sub(now))
	}
	if n > 0 {
		p.log.V(1).Info("closing idle upstream connections", "upstream", p.u.Name, "count", n)
		p.retireLocked(expired)
	}
}
