package server

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/relay/config"
)

func TestAuthLimiter(t *testing.T) {
	lim := config.AuthLimits{MaxFailuresPerClient: 5, MaxFailuresPerUser: 7,
		FailureWindow: config.Duration{Duration: 10 * time.Minute}, UserLockout: config.Duration{Duration: time.Minute},
		FailureDelay: config.Duration{Duration: 4 * time.Second}}
	now := time.Unix(1700000000, 0)
	a := newAuthLimiter()
	a.now = func() time.Time { return now }
	attacker, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")

	// The delay doubles with each failure of the address, up to the cap.
	var delays []time.Duration
	for i := 0; i < 5; i++ {
		if a.blockedClient(lim, attacker) {
			t.Fatalf("blocked after %d failures, budget 5", i)
		}
		delays = append(delays, a.failed(lim, attacker, "app"))
		now = now.Add(time.Second)
	}
	want := []time.Duration{4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", delays, want)
		}
	}
	if !a.blockedClient(lim, attacker) || a.blockedClient(lim, other) {
		t.Fatal("the budget of 5 is spent for the attacker only")
	}
	// Forgotten a window after the last failure, delay and all.
	now = now.Add(10 * time.Minute)
	if a.blockedClient(lim, attacker) {
		t.Fatal("still blocked a failure window after the last failure")
	}
	if d := a.failed(lim, attacker, "app"); d != 4*time.Second {
		t.Fatalf("first delay after the window: %v", d)
	}

	// The username: 7 failures in the window lock it for a minute, except for an
	// address that authenticated as it.
	a.succeeded(other, "app")
	for i := 0; i < 6; i++ {
		a.failed(lim, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), "app")
	}
	stranger := netip.MustParseAddr("203.0.113.9")
	if !a.blockedUser(lim, stranger, "app") || a.blockedUser(lim, other, "app") || a.blockedUser(lim, stranger, "someone") {
		t.Fatal("the spent user budget locks 'app' for new addresses only")
	}
	now = now.Add(time.Minute)
	if a.blockedUser(lim, stranger, "app") {
		t.Fatal("the user lockout outlasts userLockout")
	}
	// A known address stays exempt for a day, not for ever.
	now = now.Add(goodFor)
	for i := 0; i < 7; i++ {
		a.failed(lim, stranger, "app")
	}
	if !a.blockedUser(lim, stranger, "app") {
		t.Fatal("7 new failures do not lock the user again")
	}
	if !a.blockedUser(lim, other, "app") {
		t.Fatal("an address that authenticated a day ago is still exempt")
	}
}

func TestAuthLimiterBounded(t *testing.T) {
	lim := config.AuthLimits{MaxFailuresPerClient: 1, MaxFailuresPerUser: 1,
		FailureWindow: config.Duration{Duration: time.Hour}, UserLockout: config.Duration{Duration: time.Minute},
		FailureDelay: config.Duration{Duration: time.Second}}
	a := newAuthLimiter()
	for i := 0; i < 3*maxTracked; i++ {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		a.failed(lim, ip, "user-"+ip.String())
		a.succeeded(ip, "user-"+ip.String())
	}
	if len(a.clients) > maxTracked || len(a.users) > maxTracked || len(a.good) > maxTracked {
		t.Fatalf("tables grew to %d clients, %d users, %d known; bound %d", len(a.clients), len(a.users), len(a.good), maxTracked)
	}
}
