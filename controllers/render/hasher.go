package render

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
	"k8s.io/apimachinery/pkg/types"
)

// PasswordHasher turns a client's password into the bcrypt hash the relay checks
// AUTH against.
type PasswordHasher interface {
	// Hash returns the bcrypt hash of password. key identifies the user across
	// reconciles ("<relay namespace>/<relay name>/<Secret name>"), so an implementation
	// can cache. previous is the hash the operator-owned Secret holds for this user
	// now, or nil: when it still matches password, an implementation should return it,
	// so that a restarted operator does not rewrite every hash. Neither the password
	// nor anything derived from it may appear in a returned error.
	Hash(key string, password, previous []byte) ([]byte, error)
}

// hasherKey is the PasswordHasher key of a relay's user.
func hasherKey(relay types.NamespacedName, secretName string) string {
	return relay.String() + "/" + secretName
}

// DefaultHasher is the bcrypt PasswordHasher the operator uses. bcrypt salts every
// hash differently and costs tens of milliseconds, so hashing on every reconcile would
// rewrite the Secret (and reload every pod) each time: DefaultHasher remembers, per
// key, a keyed digest of the password and the hash it produced, and returns the same
// hash while the password is unchanged. After an operator restart its memory is empty;
// it then reuses the hash already in the Secret (Hash's previous) when it still
// matches. The zero value is ready to use and safe for concurrent use.
type DefaultHasher struct {
	// Cost is the bcrypt cost of new hashes. Default: bcrypt.DefaultCost.
	Cost int

	mu    sync.Mutex
	mac   []byte // random per process: the cache holds no plain digest of a password
	cache map[string]hashEntry

	// generate is bcrypt.GenerateFromPassword; tests count calls through it.
	generate func(password []byte, cost int) ([]byte, error)
}

type hashEntry struct {
	digest []byte
	hash   []byte
}

var _ PasswordHasher = (*DefaultHasher)(nil)

// NewDefaultHasher returns a DefaultHasher hashing at bcrypt.DefaultCost.
func NewDefaultHasher() *DefaultHasher {
	return &DefaultHasher{Cost: bcrypt.DefaultCost}
}

// Hash implements PasswordHasher.
func (h *DefaultHasher) Hash(key string, password, previous []byte) ([]byte, error) {
	if len(password) > maxPasswordBytes {
		return nil, bcrypt.ErrPasswordTooLong
	}
	digest := h.digest(key, password)
	h.mu.Lock()
	e, cached := h.cache[key]
	h.mu.Unlock()
	cached = cached && hmac.Equal(e.digest, digest)
	if cached && (previous == nil || bytes.Equal(previous, e.hash)) {
		return clone(e.hash), nil
	}
	// The Secret holds another hash than ours, e.g. written by the previous operator
	// process: keep it if it is still right for this password.
	if len(previous) > 0 && bcrypt.CompareHashAndPassword(previous, password) == nil {
		h.store(key, hashEntry{digest: digest, hash: clone(previous)})
		return clone(previous), nil
	}
	if cached {
		return clone(e.hash), nil
	}
	gen := h.generate
	if gen == nil {
		gen = bcrypt.GenerateFromPassword
	}
	cost := h.Cost
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	// Not under the lock: bcrypt is slow, and relays reconcile concurrently. Two
	// concurrent calls for one key may both hash; either result is correct.
	hash, err := gen(password, cost)
	if err != nil {
		return nil, err
	}
	h.store(key, hashEntry{digest: digest, hash: hash})
	return clone(hash), nil
}

// ForgetRelay drops the cached hashes of a relay's users, for when the relay is
// deleted.
func (h *DefaultHasher) ForgetRelay(relay types.NamespacedName) {
	prefix := relay.String() + "/"
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.cache {
		if strings.HasPrefix(k, prefix) {
			delete(h.cache, k)
		}
	}
}

func (h *DefaultHasher) digest(key string, password []byte) []byte {
	h.mu.Lock()
	if h.mac == nil {
		h.mac = make([]byte, 32)
		if _, err := rand.Read(h.mac); err != nil {
			// crypto/rand does not fail on supported platforms.
			panic(err)
		}
	}
	m := hmac.New(sha256.New, h.mac)
	h.mu.Unlock()
	m.Write([]byte(key))
	m.Write([]byte{0})
	m.Write(password)
	return m.Sum(nil)
}

func (h *DefaultHasher) store(key string, e hashEntry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cache == nil {
		h.cache = map[string]hashEntry{}
	}
	h.cache[key] = e
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
