package address

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	long := strings.Repeat("a", 64)
	for _, tc := range []struct {
		decoded string
		wire    string
		err     error
	}{
		{decoded: "billing@example.com", wire: "billing@example.com"},
		{decoded: "Billing@EXAMPLE.com.", wire: "Billing@example.com"},
		{decoded: "first.last+tag@mail.example.com", wire: "first.last+tag@mail.example.com"},
		{decoded: "a@[192.0.2.1]", wire: "a@[192.0.2.1]"},
		{decoded: "a@[IPv6:2001:db8::1]", wire: "a@[ipv6:2001:db8::1]"},
		// What a client quoted is quoted again, never sent bare.
		{decoded: `ceo@gmail.com> SMTPUTF8 X=@example.com`, wire: `"ceo@gmail.com> SMTPUTF8 X="@example.com`},
		{decoded: "b@y.test@example.com", wire: `"b@y.test"@example.com`},
		{decoded: "a b@example.com", wire: `"a b"@example.com`},
		{decoded: `say "hi"\now@example.com`, wire: `"say \"hi\"\\now"@example.com`},
		{decoded: ".lead@example.com", wire: `".lead"@example.com`},
		{decoded: "two..dots@example.com", wire: `"two..dots"@example.com`},
		{decoded: long + "@example.com", wire: long + "@example.com"},
		{decoded: long + "a@example.com", err: ErrLocalTooLong},
		// Quoting counts: 62 letters and a space need 65 octets on the wire.
		{decoded: strings.Repeat("a", 62) + " @example.com", err: ErrLocalTooLong},
		{decoded: strings.Repeat("a", 61) + " @example.com", wire: `"` + strings.Repeat("a", 61) + ` "@example.com`},
		{decoded: "a\x00b@example.com", err: ErrControl},
		{decoded: "a@exam\x00ple.com", err: ErrControl},
		{decoded: "a\tb@example.com", err: ErrControl},
		{decoded: "a\rb@example.com", err: ErrControl},
		{decoded: "a\x7f@example.com", err: ErrControl},
		{decoded: "jörg@example.com", err: ErrNonASCII},
		{decoded: "a@bücher.example", err: ErrNonASCII},
		{decoded: "nodomain", err: ErrNoDomain},
		{decoded: "trailing@", err: ErrNoDomain},
		{decoded: "@example.com", err: ErrEmptyLocal},
		{decoded: "a@exa_mple.com", err: ErrDomain},
		{decoded: "a@-example.com", err: ErrDomain},
		{decoded: "a@example..com", err: ErrDomain},
		{decoded: `a@example.com"`, err: ErrDomain},
		{decoded: "a@example.com>x", err: ErrDomain},
		{decoded: "a@" + strings.Repeat("a", 64) + ".com", err: ErrDomain},
		{decoded: "a@" + strings.Repeat("abcdefgh.", 29) + "com", err: ErrDomainLength},
		{decoded: "a@[192.0.2.300]", err: ErrDomain},
		{decoded: "a@[IPv6:::ffff:192.0.2.1%eth0]", err: ErrDomain},
		{decoded: "a@[tag:general]", err: ErrDomain},
		{decoded: "a@[192.0.2.1", err: ErrDomain},
	} {
		m, err := Parse(tc.decoded)
		if !errors.Is(err, tc.err) {
			t.Errorf("Parse(%q) error = %v, want %v", tc.decoded, err, tc.err)
			continue
		}
		if err != nil {
			continue
		}
		if got := m.Wire(); got != tc.wire {
			t.Errorf("Parse(%q).Wire() = %q, want %q", tc.decoded, got, tc.wire)
		}
		checkRoundTrip(t, tc.decoded, m)
	}
}

// FuzzParse: whatever a client sends, a mailbox that Parse accepts goes upstream as
// printable ASCII that an RFC 5321 parser reads back as exactly the mailbox the
// policy checked.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"a@example.com", `x"y@example.com`, "a b@[192.0.2.1]", "a\\@b@c", "ceo@gmail.com> X=@e.com",
		"a@[IPv6:::1]", "\x00@a", ".@a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, decoded string) {
		m, err := Parse(decoded)
		if err != nil {
			return
		}
		checkRoundTrip(t, decoded, m)
	})
}

func checkRoundTrip(t *testing.T, decoded string, m Mailbox) {
	t.Helper()
	wire := m.Wire()
	for i := 0; i < len(wire); i++ {
		if wire[i] < 0x20 || wire[i] > 0x7e {
			t.Fatalf("Parse(%q).Wire() = %q holds byte %#x", decoded, wire, wire[i])
		}
	}
	local, domain, ok := parseWire(wire)
	if !ok {
		t.Fatalf("Parse(%q).Wire() = %q is not an RFC 5321 Mailbox", decoded, wire)
	}
	if local != m.Local || domain != m.Domain {
		t.Fatalf("Parse(%q): the wire form %q reads back as %q @ %q, the policy checked %q @ %q",
			decoded, wire, local, domain, m.Local, m.Domain)
	}
	if len(wire)-len(domain)-1 > MaxLocalPart || len(domain) > MaxDomain {
		t.Fatalf("Parse(%q) accepted %q, which is over RFC 5321's lengths", decoded, wire)
	}
}

// parseWire is RFC 5321 section 4.1.2's Mailbox, written from the grammar alone and
// independently of the code under test: it returns the local part unquoted.
func parseWire(s string) (local, domain string, ok bool) {
	var b strings.Builder
	i := 0
	if strings.HasPrefix(s, `"`) {
		for i = 1; ; i++ {
			if i >= len(s) {
				return "", "", false
			}
			c := s[i]
			if c == '"' {
				i++
				break
			}
			if c == '\\' {
				i++
				if i >= len(s) || s[i] < 32 || s[i] > 126 {
					return "", "", false
				}
				b.WriteByte(s[i])
				continue
			}
			if c < 32 || c > 126 {
				return "", "", false
			}
			b.WriteByte(c)
		}
	} else {
		for ; i < len(s) && s[i] != '@'; i++ {
			b.WriteByte(s[i])
		}
		for _, atom := range strings.Split(b.String(), ".") {
			if atom == "" || strings.Trim(atom, atext) != "" {
				return "", "", false
			}
		}
	}
	if i >= len(s) || s[i] != '@' {
		return "", "", false
	}
	domain = s[i+1:]
	if strings.HasPrefix(domain, "[") {
		// address-literal: "[" printable ASCII other than brackets and "\\" "]".
		inner, closed := strings.CutSuffix(domain[1:], "]")
		if !closed || inner == "" || strings.ContainsAny(inner, "[]\\ ") {
			return "", "", false
		}
		return b.String(), domain, true
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || strings.Trim(label, ldh) != "" || label[0] == '-' || label[len(label)-1] == '-' {
			return "", "", false
		}
	}
	return b.String(), domain, true
}

const (
	atext = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
	ldh   = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
)
