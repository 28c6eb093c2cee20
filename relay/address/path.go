package address

import (
	"errors"
	"strings"
)

// ErrPathSyntax means the argument of MAIL FROM or RCPT TO does not start with a path.
var ErrPathSyntax = errors.New("expected a path such as <user@example.com> (RFC 5321 section 4.1.2)")

// SplitPath reads the path that starts arg, the text after "MAIL FROM:" or "RCPT TO:",
// and returns its mailbox the way Parse takes it (a quoted local part unquoted, its
// quoted pairs resolved) and the ESMTP parameters that follow. "<>" is the empty
// mailbox: the null reverse-path. A source route ("@a,@b:") is dropped, as RFC 5321
// section 4.1.2 lets a server do. Angle brackets may be left out, as many clients do;
// the mailbox then ends at the first space.
func SplitPath(arg string) (mailbox, params string, err error) {
	s := strings.TrimLeft(arg, " \t")
	if rest, ok := strings.CutPrefix(s, "<>"); ok {
		return "", rest, nil
	}
	bracket := strings.HasPrefix(s, "<")
	if bracket {
		s = s[1:]
		if strings.HasPrefix(s, "@") {
			// A source route ends at the first ':'.
			i := strings.IndexByte(s, ':')
			if i < 0 {
				return "", "", ErrPathSyntax
			}
			s = s[i+1:]
		}
	}
	var local string
	dotStart := s
	quoted := strings.HasPrefix(s, `"`)
	if quoted {
		// A Quoted-string: a backslash quotes the next character.
		var b strings.Builder
		s = s[1:]
		for {
			if s == "" {
				return "", "", ErrPathSyntax
			}
			c := s[0]
			s = s[1:]
			if c == '"' {
				break
			}
			if c == '\\' {
				if s == "" {
					return "", "", ErrPathSyntax
				}
				c, s = s[0], s[1:]
			}
			b.WriteByte(c)
		}
		local = b.String()
	} else {
		// A Dot-string runs to the '@'.
		i := strings.IndexByte(s, '@')
		if i < 0 {
			i = len(s)
		}
		if strings.ContainsAny(s[:i], "()<>[]:;\\,\" \t") {
			return "", "", ErrPathSyntax
		}
		local, s = s[:i], s[i:]
	}
	if local == "" || !strings.HasPrefix(s, "@") {
		return "", "", ErrPathSyntax
	}
	end := strings.IndexAny(s, " \t>")
	if end < 0 {
		end = len(s)
	}
	if end == 1 {
		return "", "", ErrPathSyntax // no domain
	}
	domain := s[:end]
	s = s[end:]
	if bracket {
		var ok bool
		if s, ok = strings.CutPrefix(s, ">"); !ok {
			return "", "", ErrPathSyntax
		}
	}
	if quoted {
		return local + domain, s, nil
	}
	// Unquoted, the mailbox is the client's own text: no allocation.
	return dotStart[:len(local)+len(domain)], s, nil
}
