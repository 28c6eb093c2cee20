package policy

import (
	"net/netip"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/kuberelay/kuberelay/relay/config"
)

func compile(t *testing.T, c *config.Config) *Policy {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return New(&config.Loaded{Config: c, PasswordHashes: map[string][][]byte{"app": {hash}, "any": {hash}}}, nil)
}

func testConfig() *config.Config {
	return &config.Config{
		AllowedNetworks: []string{"10.0.0.0/8", "fd00::/8", "192.168.1.7"},
		Users: []config.User{
			{Username: "app", AllowedSenders: []string{"billing-*@example.com", "example.org"}},
			{Username: "any"},
		},
		Domains: []config.Domain{
			{Domain: "example.com", AllowedSenders: []string{"noreply", "billing-*"}},
			{Domain: "example.org", Upstream: "corp"},
		},
		DefaultUpstream: "ses",
		NullSender:      config.NullSenderReject,
	}
}

func TestNetworks(t *testing.T) {
	p := compile(t, testConfig())
	for addr, want := range map[string]bool{
		"10.1.2.3": true, "::ffff:10.1.2.3": true, "fd12::1": true, "192.168.1.7": true,
		"192.168.1.8": false, "11.0.0.1": false, "::1": false,
	} {
		if got := p.NetworkAllowed(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: got %v want %v", addr, got, want)
		}
	}
	if compile(t, &config.Config{}).NetworkAllowed(netip.MustParseAddr("127.0.0.1")) {
		t.Error("an empty policy allows a network")
	}
}

func TestAuthenticate(t *testing.T) {
	p := compile(t, testConfig())
	if !p.Authenticate("app", "pw") || !p.Authenticate("app", "pw") {
		t.Error("right password refused (first or cached)")
	}
	if p.Authenticate("app", "PW") || p.Authenticate("nobody", "pw") || p.Authenticate("app", "") {
		t.Error("wrong credentials accepted")
	}
	// The cache does not outlive a password change.
	c := testConfig()
	other, _ := bcrypt.GenerateFromPassword([]byte("new"), bcrypt.MinCost)
	p2 := New(&config.Loaded{Config: c, PasswordHashes: map[string][][]byte{"app": {other}}}, p.AuthCache())
	if p2.Authenticate("app", "pw") {
		t.Error("old password accepted from the cache after rotation")
	}
	if !p2.Authenticate("app", "new") {
		t.Error("new password refused")
	}
}

// During a rotation's overlap both passwords work; once the previous hash is gone,
// only the new one does, cached or not.
func TestAuthenticateRotationOverlap(t *testing.T) {
	old, _ := bcrypt.GenerateFromPassword([]byte("old"), bcrypt.MinCost)
	cur, _ := bcrypt.GenerateFromPassword([]byte("new"), bcrypt.MinCost)
	p := New(&config.Loaded{Config: testConfig(), PasswordHashes: map[string][][]byte{"app": {cur, old}}}, nil)
	for _, pw := range []string{"old", "new", "old", "new"} {
		if !p.Authenticate("app", pw) {
			t.Fatalf("%s password refused during the overlap", pw)
		}
	}
	if p.Authenticate("app", "other") {
		t.Fatal("a wrong password accepted with two hashes")
	}
	after := New(&config.Loaded{Config: testConfig(), PasswordHashes: map[string][][]byte{"app": {cur}}}, p.AuthCache())
	if after.Authenticate("app", "old") || !after.Authenticate("app", "new") {
		t.Fatal("after the overlap the old password still works, or the new one does not")
	}
}

func TestCheckSender(t *testing.T) {
	p := compile(t, testConfig())
	cases := []struct {
		from, user, route string
		err               error
	}{
		{"noreply@example.com", "", "ses", nil},
		{"NoReply@EXAMPLE.com", "", "ses", nil},
		{"billing-eu@example.com", "", "ses", nil},
		{"ceo@example.com", "", "", ErrSenderNotAllowed},
		{"anyone@example.org", "", "corp", nil},
		{"x@sub.example.org", "", "", ErrUnknownDomain},
		{"x@evil.test", "", "", ErrUnknownDomain},
		{"no-at-sign", "", "", ErrBadSender},
		{"", "", "", ErrNullSender},
		{"billing-us@example.com", "app", "ses", nil},
		{"noreply@example.com", "app", "", ErrUserSenderNotAllowed},
		{"x@example.org", "app", "corp", nil},
		{"noreply@example.com", "any", "ses", nil},
	}
	for _, tc := range cases {
		route, err := p.CheckSender(tc.from, tc.user)
		if (err == nil) != (tc.err == nil) || (err != nil && err != tc.err) || route != tc.route {
			t.Errorf("CheckSender(%q, %q) = %q, %v; want %q, %v", tc.from, tc.user, route, err, tc.route, tc.err)
		}
	}
	c := testConfig()
	c.NullSender = config.NullSenderAllow
	if route, err := compile(t, c).CheckSender("", ""); err != nil || route != "ses" {
		t.Errorf("null sender with Allow: %q %v", route, err)
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		pat, s string
		want   bool
	}{
		{"a", "a", true}, {"a", "ab", false}, {"*", "", true}, {"a*", "abc", true},
		{"*c", "abc", true}, {"a*c", "ac", true}, {"a*b*c", "axxbyyc", true},
		{"a*b*c", "acb", false}, {"ab*ba", "aba", false}, {"x*", "yx", false},
	} {
		if got := glob(tc.pat, tc.s); got != tc.want {
			t.Errorf("glob(%q, %q) = %v", tc.pat, tc.s, got)
		}
	}
}
