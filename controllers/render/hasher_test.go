package render

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/bcrypt"
	"k8s.io/apimachinery/pkg/types"
)

// countingHasher is a DefaultHasher at bcrypt's minimum cost that counts the hashes
// it computes.
func countingHasher() (*DefaultHasher, *atomic.Int32) {
	var n atomic.Int32
	h := &DefaultHasher{Cost: bcrypt.MinCost}
	h.generate = func(pw []byte, cost int) ([]byte, error) {
		n.Add(1)
		return bcrypt.GenerateFromPassword(pw, cost)
	}
	return h, &n
}

func TestDefaultHasherReuse(t *testing.T) {
	h, n := countingHasher()
	first, err := h.Hash("mail/relay/app", []byte("secret-one"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bcrypt.CompareHashAndPassword(first, []byte("secret-one")); err != nil {
		t.Fatalf("hash does not verify: %v", err)
	}
	again, err := h.Hash("mail/relay/app", []byte("secret-one"), first)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, again) || n.Load() != 1 {
		t.Errorf("unchanged password re-hashed (%d hashes)", n.Load())
	}
	// Another user with the same password has its own entry.
	if _, err := h.Hash("mail/relay/other", []byte("secret-one"), nil); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 2 {
		t.Errorf("%d hashes, want 2", n.Load())
	}
	changed, err := h.Hash("mail/relay/app", []byte("secret-two"), first)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(changed, first) || bcrypt.CompareHashAndPassword(changed, []byte("secret-two")) != nil {
		t.Error("a changed password needs a new hash of the new password")
	}
	if n.Load() != 3 {
		t.Errorf("%d hashes, want 3", n.Load())
	}
	// Callers must not be able to corrupt the cache through the returned slice.
	changed[10] ^= 1
	again, _ = h.Hash("mail/relay/app", []byte("secret-two"), nil)
	if bytes.Equal(again, changed) {
		t.Error("the cache shares memory with the caller")
	}
}

func TestDefaultHasherPrevious(t *testing.T) {
	prev, err := bcrypt.GenerateFromPassword([]byte("secret-one"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// A fresh process (as after an operator restart) keeps a hash that still matches.
	h, n := countingHasher()
	got, err := h.Hash("k", []byte("secret-one"), prev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, prev) || n.Load() != 0 {
		t.Errorf("matching previous hash not reused (%d hashes)", n.Load())
	}
	// ...and remembers it.
	if got, _ := h.Hash("k", []byte("secret-one"), nil); !bytes.Equal(got, prev) || n.Load() != 0 {
		t.Error("reused hash not cached")
	}
	// A previous hash of another password is replaced.
	h, n = countingHasher()
	got, err = h.Hash("k", []byte("secret-two"), prev)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, prev) || n.Load() != 1 {
		t.Error("stale previous hash reused")
	}
	// Garbage in the previous Secret is ignored.
	if _, err := h.Hash("k2", []byte("secret-two"), []byte("not a hash")); err != nil {
		t.Fatal(err)
	}
	// The cache disagrees with the Secret (another operator process wrote it): the
	// Secret's hash wins while it matches, so the two processes do not flip-flop.
	h, n = countingHasher()
	mine, _ := h.Hash("k", []byte("secret-one"), nil)
	got, _ = h.Hash("k", []byte("secret-one"), prev)
	if !bytes.Equal(got, prev) || bytes.Equal(mine, prev) || n.Load() != 1 {
		t.Error("matching previous hash not preferred over the cached one")
	}
}

func TestDefaultHasherErrors(t *testing.T) {
	h, _ := countingHasher()
	long := strings.Repeat("p", 73)
	_, err := h.Hash("k", []byte(long), nil)
	if !errors.Is(err, bcrypt.ErrPasswordTooLong) {
		t.Errorf("err = %v, want ErrPasswordTooLong", err)
	}
	if err != nil && strings.Contains(err.Error(), long) {
		t.Error("the error contains the password")
	}
	h.generate = func([]byte, int) ([]byte, error) { return nil, errors.New("boom") }
	if _, err := h.Hash("k", []byte("pw"), nil); err == nil {
		t.Error("generate's error is lost")
	}
}

func TestDefaultHasherForgetRelay(t *testing.T) {
	h, n := countingHasher()
	relay := types.NamespacedName{Namespace: "mail", Name: "relay"}
	for _, k := range []string{hasherKey(relay, "a"), hasherKey(relay, "b"), "mail/relay-two/a"} {
		if _, err := h.Hash(k, []byte("pw"), nil); err != nil {
			t.Fatal(err)
		}
	}
	h.ForgetRelay(relay)
	if len(h.cache) != 1 {
		t.Errorf("%d entries left, want mail/relay-two's only", len(h.cache))
	}
	_, _ = h.Hash(hasherKey(relay, "a"), []byte("pw"), nil)
	if n.Load() != 4 {
		t.Errorf("%d hashes, want 4", n.Load())
	}
}

func TestDefaultHasherConcurrent(t *testing.T) {
	h, _ := countingHasher()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k%d", i%4)
			pw := []byte(fmt.Sprintf("pw%d", i%4))
			got, err := h.Hash(key, pw, nil)
			if err != nil {
				t.Error(err)
				return
			}
			if bcrypt.CompareHashAndPassword(got, pw) != nil {
				t.Error("wrong hash")
			}
		}()
	}
	wg.Wait()
}

// TestDefaultHasherDefaultCost: NewDefaultHasher and the zero value hash at
// bcrypt.DefaultCost.
func TestDefaultHasherDefaultCost(t *testing.T) {
	for _, h := range []*DefaultHasher{NewDefaultHasher(), {}} {
		got, err := h.Hash("k", []byte("pw"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if c, _ := bcrypt.Cost(got); c != bcrypt.DefaultCost {
			t.Errorf("cost %d, want %d", c, bcrypt.DefaultCost)
		}
	}
}
