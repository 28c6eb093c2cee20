// Package policy decides who may relay and as which sender, and which upstream a
// sender's mail goes to. It is compiled from a loaded configuration and is immutable,
// so sessions can share it without locks.
package policy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net/netip"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/kuberelay/kuberelay/relay/config"
)

// Rejections. Their texts never echo what the client sent.
var (
	ErrRelayDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Relaying denied: authenticate, or connect from an allowed network"}
	ErrAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required on this port"}
	ErrUnknownDomain = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Sender domain is not relayed by this server"}
	ErrSenderNotAllowed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Sender address is not allowed for this domain"}
	ErrUserSenderNotAllowed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Authenticated user may not send as this sender"}
	ErrNullSender = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "The null sender is not accepted by this relay"}
	ErrBadSender = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7},
		Message: "Sender address is not a valid mailbox"}
)

// Policy is the compiled client and sender policy of one configuration.
type Policy struct {
	networks        []netip.Prefix
	users           map[string]*user
	domains         map[string]*domain
	allowNull       bool
	defaultUpstream string
	cache           *AuthCache
}

type user struct {
	hashes  [][]byte // the current password's, then the previous one's
	senders []senderPattern
}

type domain struct {
	upstream string
	locals   []string
	hasDKIM  bool
}

type senderPattern struct {
	local  string // glob; "" means any local part
	domain string
}

// New compiles a policy. cache carries successful authentications across reloads; it
// may be nil.
func New(l *config.Loaded, cache *AuthCache) *Policy {
	c := l.Config
	if cache == nil {
		cache = NewAuthCache()
	}
	p := &Policy{
		users:           map[string]*user{},
		domains:         map[string]*domain{},
		allowNull:       c.NullSender == config.NullSenderAllow,
		defaultUpstream: c.DefaultUpstream,
		cache:           cache,
	}
	for _, n := range c.AllowedNetworks {
		if pfx, err := config.ParseNetwork(n); err == nil {
			p.networks = append(p.networks, pfx)
		}
	}
	for _, u := range c.Users {
		cu := &user{hashes: l.PasswordHashes[u.Username]}
		for _, s := range u.AllowedSenders {
			local, dom, ok := strings.Cut(strings.ToLower(s), "@")
			if !ok {
				local, dom = "", local
			}
			cu.senders = append(cu.senders, senderPattern{local: local, domain: dom})
		}
		p.users[u.Username] = cu
	}
	for _, d := range c.Domains {
		up := d.Upstream
		if up == "" {
			up = c.DefaultUpstream
		}
		cd := &domain{upstream: up, hasDKIM: d.DKIM != nil}
		for _, lp := range d.AllowedSenders {
			cd.locals = append(cd.locals, strings.ToLower(lp))
		}
		p.domains[d.Domain] = cd
	}
	return p
}

// AuthCache returns the cache to hand to the next policy.
func (p *Policy) AuthCache() *AuthCache { return p.cache }

// HasUsers reports whether any user can authenticate, i.e. whether to offer AUTH.
func (p *Policy) HasUsers() bool { return len(p.users) > 0 }

// NetworkAllowed reports whether a client address may relay without AUTH.
func (p *Policy) NetworkAllowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, n := range p.networks {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// Authenticate checks a password against the user's bcrypt hashes: the current
// password's, and during a rotation's overlap the previous one's.
func (p *Policy) Authenticate(username, password string) bool {
	u, ok := p.users[username]
	if !ok || len(u.hashes) == 0 {
		// Spend the same time as a real check so that timing does not reveal which
		// user names exist.
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
		return false
	}
	for _, h := range u.hashes {
		if p.cache.hit(username, password, h) {
			return true
		}
	}
	for _, h := range u.hashes {
		if bcrypt.CompareHashAndPassword(h, []byte(password)) == nil {
			p.cache.add(username, password, h)
			return true
		}
	}
	return false
}

// dummyHash is a bcrypt hash of a random password at the default cost, made on first
// use so that start-up does not pay for it.
var dummyHash = sync.OnceValue(func() []byte {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h, _ := bcrypt.GenerateFromPassword(b, bcrypt.DefaultCost)
	return h
})

// CheckSender decides whether the envelope sender may be used, by the given
// authenticated user ("" when the client did not authenticate). It returns the name of
// the upstream that carries the mail.
func (p *Policy) CheckSender(from, username string) (upstream string, err *smtp.SMTPError) {
	if from == "" {
		if !p.allowNull || p.defaultUpstream == "" {
			return "", ErrNullSender
		}
		return p.defaultUpstream, nil
	}
	at := strings.LastIndexByte(from, '@')
	if at <= 0 || at == len(from)-1 {
		return "", ErrBadSender
	}
	local, dom := strings.ToLower(from[:at]), config.NormalizeDomain(from[at+1:])
	d, ok := p.domains[dom]
	if !ok {
		return "", ErrUnknownDomain
	}
	if len(d.locals) > 0 && !matchAny(d.locals, local) {
		return "", ErrSenderNotAllowed
	}
	if username != "" {
		u := p.users[username]
		if u == nil {
			return "", ErrUserSenderNotAllowed
		}
		if len(u.senders) > 0 {
			allowed := false
			for _, s := range u.senders {
				if s.domain == dom && (s.local == "" || glob(s.local, local)) {
					allowed = true
					break
				}
			}
			if !allowed {
				return "", ErrUserSenderNotAllowed
			}
		}
	}
	return d.upstream, nil
}

// Domain reports whether dom (lowercase) is a relay domain.
func (p *Policy) Domain(dom string) bool {
	_, ok := p.domains[dom]
	return ok
}

func matchAny(patterns []string, s string) bool {
	for _, pat := range patterns {
		if glob(pat, s) {
			return true
		}
	}
	return false
}

// glob matches s against a pattern in which "*" matches any run of characters and
// every other character matches itself.
func glob(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, part := range parts[1 : len(parts)-1] {
		i := strings.Index(s, part)
		if i < 0 {
			return false
		}
		s = s[i+len(part):]
	}
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}

// AuthCache remembers recent successful authentications so that a client which
// authenticates for every message does not cost a bcrypt comparison each time. Keys are
// keyed hashes (HMAC with a per-process random key) of user name and password, so the
// cache holds no password; an entry only counts while the user's hash is unchanged.
type AuthCache struct {
	key     []byte
	mu      sync.Mutex
	entries map[[32]byte]string
}

const authCacheSize = 4096

// NewAuthCache returns an empty cache with a fresh random key.
func NewAuthCache() *AuthCache {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return &AuthCache{key: k, entries: map[[32]byte]string{}}
}

func (c *AuthCache) sum(username, password string) [32]byte {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(username))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

func (c *AuthCache) hit(username, password string, hash []byte) bool {
	k := c.sum(username, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.entries[k]
	return ok && hmac.Equal([]byte(h), hash)
}

func (c *AuthCache) add(username, password string, hash []byte) {
	k := c.sum(username, password)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= authCacheSize {
		clear(c.entries)
	}
	c.entries[k] = string(hash)
}
