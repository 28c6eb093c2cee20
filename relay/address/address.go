// Package address checks the mailboxes of MAIL FROM and RCPT TO and gives the form
// they are sent upstream in. SplitPath hands the relay a mailbox with a quoted-string
// local part already unquoted, so `<"a b"@example.com>` arrives as `a b@example.com`; sent on as it is, that text would be another address, or carry
// ESMTP parameters of the client's choosing, to the upstream. Mailbox.Wire quotes the
// local part again exactly as RFC 5321 section 4.1.2 requires, so the upstream reads
// the very address the relay's policy checked.
package address

import (
	"errors"
	"net/netip"
	"strings"

	"github.com/kuberelay/kuberelay/relay/config"
)

// RFC 5321 section 4.5.3.1: the longest local part and domain.
const (
	MaxLocalPart = 64
	MaxDomain    = 255
	maxLabel     = 63
)

// The ways a mailbox can be refused; each names what the client must change.
var (
	ErrNoDomain     = errors.New("mailbox has no domain: use local-part@domain")
	ErrEmptyLocal   = errors.New("mailbox has an empty local part")
	ErrControl      = errors.New("mailbox contains a control character (RFC 5321 section 4.1.2)")
	ErrNonASCII     = errors.New("mailbox contains non-ASCII characters, which need SMTPUTF8 (RFC 6531); this relay does not offer it")
	ErrLocalTooLong = errors.New("local part is longer than 64 octets (RFC 5321 section 4.5.3.1.1)")
	ErrDomainLength = errors.New("domain is longer than 255 octets (RFC 5321 section 4.5.3.1.2)")
	ErrDomain       = errors.New("domain is not a host name or an IP address literal (RFC 5321 section 4.1.2)")
)

// Mailbox is a checked Local-part "@" Domain. Local is the local part as the client
// meant it (unquoted); Domain is config.NormalizeDomain's spelling.
type Mailbox struct {
	Local  string
	Domain string
	// wire is Wire's result, kept from Parse: for the usual mailbox it is the client's
	// own text, so nothing is allocated per command.
	wire string
}

// String is the mailbox as the policy sees it: Local "@" Domain, unquoted.
func (m Mailbox) String() string { return m.Local + "@" + m.Domain }

// Wire is the mailbox as RFC 5321 section 4.1.2 writes it: the local part as a
// Dot-string when it is one, otherwise as a Quoted-string.
func (m Mailbox) Wire() string {
	if m.wire != "" {
		return m.wire
	}
	return wire(m.Local, m.Domain)
}

func wire(local, domain string) string {
	if isDotString(local) {
		return local + "@" + domain
	}
	return quote(local) + "@" + domain
}

// Parse checks a mailbox as SplitPath decoded it. The domain is what follows
// the last "@": a valid domain holds none, so an "@" before it belongs to the local
// part, whether the client quoted it or not, and is quoted on the wire.
func Parse(decoded string) (Mailbox, error) {
	at := strings.LastIndexByte(decoded, '@')
	if at < 0 || at == len(decoded)-1 {
		return Mailbox{}, ErrNoDomain
	}
	local, domain := decoded[:at], decoded[at+1:]
	if local == "" {
		return Mailbox{}, ErrEmptyLocal
	}
	for i := 0; i < len(decoded); i++ {
		switch c := decoded[i]; {
		case c < 0x20 || c == 0x7f:
			return Mailbox{}, ErrControl
		case c >= 0x80:
			return Mailbox{}, ErrNonASCII
		}
	}
	m := Mailbox{Local: local, Domain: config.NormalizeDomain(domain)}
	if err := checkDomain(m.Domain); err != nil {
		return Mailbox{}, err
	}
	if m.Domain == domain && isDotString(local) {
		m.wire = decoded
	} else {
		m.wire = wire(local, m.Domain)
	}
	if len(m.wire)-len(m.Domain)-1 > MaxLocalPart {
		return Mailbox{}, ErrLocalTooLong
	}
	return m, nil
}

// checkDomain accepts RFC 5321's Domain (LDH labels) and its IPv4 and IPv6 address
// literals. General address literals are refused: nothing routes them.
func checkDomain(d string) error {
	if len(d) > MaxDomain {
		return ErrDomainLength
	}
	if strings.HasPrefix(d, "[") {
		if !strings.HasSuffix(d, "]") {
			return ErrDomain
		}
		lit := d[1 : len(d)-1]
		if v6, ok := strings.CutPrefix(lit, "ipv6:"); ok {
			a, err := netip.ParseAddr(v6)
			if err != nil || !a.Is6() || a.Zone() != "" {
				return ErrDomain
			}
			return nil
		}
		if a, err := netip.ParseAddr(lit); err != nil || !a.Is4() {
			return ErrDomain
		}
		return nil
	}
	for label := range strings.SplitSeq(d, ".") {
		if !isLabel(label) {
			return ErrDomain
		}
	}
	return nil
}

// isLabel: Let-dig [Ldh-str], at most 63 octets.
func isLabel(l string) bool {
	if l == "" || len(l) > maxLabel || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isDotString: Atom *("." Atom), with Atom one or more atext characters.
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '.' && !isAtext(c) {
			return false
		}
	}
	return true
}

// isAtext is RFC 5322's atext, which RFC 5321 section 4.1.2 uses for Atom.
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// quote writes s as a Quoted-string: qtextSMTP as it is, '"' and '\' as quoted pairs.
// Parse has already refused everything outside printable ASCII.
func quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
