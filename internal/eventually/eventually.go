// Package eventually is the one way tests wait for a condition: polled, bounded in
// time, and reporting the condition's own last word when it does not come true.
package eventually

import (
	"testing"
	"time"
)

// interval is how often a condition is polled.
const interval = 20 * time.Millisecond

// Within polls cond until it returns "" (met) or bound has passed, and returns the
// reason cond last gave ("" when it was met).
func Within(bound time.Duration, cond func() string) string {
	deadline := time.Now().Add(bound)
	for {
		why := cond()
		if why == "" || time.Now().After(deadline) {
			return why
		}
		time.Sleep(interval)
	}
}

// Require is Within that fails the test with cond's last reason.
func Require(t testing.TB, bound time.Duration, cond func() string) {
	t.Helper()
	if why := Within(bound, cond); why != "" {
		t.Fatalf("not within %s: %s", bound, why)
	}
}

// Holds is Within for a condition without a reason: it reports whether cond held
// within bound.
func Holds(bound time.Duration, cond func() bool) bool {
	return Within(bound, func() string {
		if cond() {
			return ""
		}
		return "not yet"
	}) == ""
}
