package server

import (
	"net/netip"
	"sync"
	"time"

	"github.com/kuberelay/kuberelay/relay/config"
)

const (
	// maxTracked bounds each table of the authLimiter, so that failures from a great
	// many addresses cannot exhaust memory.
	maxTracked = 10000
	// goodFor is how long an address that authenticated as a user stays exempt from
	// that user's lockout.
	goodFor = 24 * time.Hour
	// maxGoodPerUser bounds the exempt addresses remembered per user.
	maxGoodPerUser = 64
)

// authLimiter counts failed AUTH attempts per client address and per username across
// connections; it belongs to the Server, so a reload does not forget an attack. An
// address over its budget is refused whatever the password; a username over its
// budget is refused only for a short lockout, and never from an address that recently
// authenticated as it, so a guessing attacker cannot keep a working client out.
type authLimiter struct {
	mu      sync.Mutex
	clients map[netip.Addr]*failures
	users   map[string]*failures
	good    map[string]map[netip.Addr]time.Time
	now     func() time.Time
}

type failures struct {
	n    int
	last time.Time
}

func newAuthLimiter() *authLimiter {
	return &authLimiter{
		clients: map[netip.Addr]*failures{},
		users:   map[string]*failures{},
		good:    map[string]map[netip.Addr]time.Time{},
		now:     time.Now,
	}
}

// blockedClient reports whether ip has spent its budget of failures.
func (a *authLimiter) blockedClient(lim config.AuthLimits, ip netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.clients[ip]
	return f != nil && f.n >= lim.MaxFailuresPerClient && a.now().Sub(f.last) < lim.FailureWindow.Duration
}

// blockedUser reports whether user is locked out for ip.
func (a *authLimiter) blockedUser(lim config.AuthLimits, ip netip.Addr, user string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.users[user]
	if f == nil || f.n < lim.MaxFailuresPerUser || a.now().Sub(f.last) >= lim.UserLockout.Duration {
		return false
	}
	seen, ok := a.good[user][ip]
	return !ok || a.now().Sub(seen) >= goodFor
}

// failed records a failure of ip (and of user, when the client named one the relay
// knows or not) and returns how long to wait before answering it: failureDelay,
// doubled for each earlier failure of ip still remembered, at most
// config.MaxAuthFailureDelay.
func (a *authLimiter) failed(lim config.AuthLimits, ip netip.Addr, user string) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	n := count(a.clients, ip, now, lim.FailureWindow.Duration)
	if user != "" {
		count(a.users, user, now, lim.FailureWindow.Duration)
	}
	d := lim.FailureDelay.Duration
	for i := 1; i < n && d < config.MaxAuthFailureDelay; i++ {
		d *= 2
	}
	return min(d, config.MaxAuthFailureDelay)
}

// succeeded exempts ip from user's lockout for goodFor.
func (a *authLimiter) succeeded(ip netip.Addr, user string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	g := a.good[user]
	if g == nil {
		if len(a.good) >= maxTracked {
			clear(a.good)
		}
		g = map[netip.Addr]time.Time{}
		a.good[user] = g
	}
	if _, ok := g[ip]; !ok && len(g) >= maxGoodPerUser {
		// Forget the address seen longest ago.
		var oldest netip.Addr
		for addr, t := range g {
			if !oldest.IsValid() || t.Before(g[oldest]) {
				oldest = addr
			}
		}
		delete(g, oldest)
	}
	g[ip] = now
}

// count adds a failure for key, forgetting earlier ones older than window, and returns
// how many are remembered.
func count[K comparable](m map[K]*failures, key K, now time.Time, window time.Duration) int {
	f := m[key]
	if f == nil {
		if len(m) >= maxTracked {
			for k, v := range m {
				if now.Sub(v.last) >= window {
					delete(m, k)
				}
			}
			if len(m) >= maxTracked {
				// Still full of live entries: start again rather than grow without bound.
				clear(m)
			}
		}
		f = &failures{}
		m[key] = f
	}
	if now.Sub(f.last) >= window {
		f.n = 0
	}
	f.n++
	f.last = now
	return f.n
}
