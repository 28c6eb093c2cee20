package address

import "testing"

func TestSplitPath(t *testing.T) {
	for _, tc := range []struct {
		arg, mailbox, params string
		bad                  bool
	}{
		{arg: "<a@example.com>", mailbox: "a@example.com"},
		{arg: "<a@example.com> BODY=8BITMIME SIZE=10", mailbox: "a@example.com", params: " BODY=8BITMIME SIZE=10"},
		{arg: " <a@example.com>", mailbox: "a@example.com"},
		{arg: "<>", mailbox: ""},
		{arg: "<> SIZE=1", mailbox: "", params: " SIZE=1"},
		{arg: "a@example.com SIZE=1", mailbox: "a@example.com", params: " SIZE=1"},
		{arg: `<"a b"@example.com>`, mailbox: "a b@example.com"},
		{arg: `<"a>b"@example.com>`, mailbox: "a>b@example.com"},
		{arg: `<"a\"b\\c"@example.com>`, mailbox: `a"b\c@example.com`},
		{arg: `<"ceo@gmail.com> SMTPUTF8 X="@example.org>`, mailbox: "ceo@gmail.com> SMTPUTF8 X=@example.org"},
		{arg: "<@relay.test,@b.test:a@example.com>", mailbox: "a@example.com"},
		{arg: "<a\x00b@example.com>", mailbox: "a\x00b@example.com"}, // Parse refuses it, naming the control character
		{arg: "<a@example.com", bad: true},
		{arg: "<a b@example.com>", bad: true},
		{arg: "<a@>", bad: true},
		{arg: "<@example.com>", bad: true},
		{arg: "<example.com>", bad: true},
		{arg: `<"unterminated@example.com>`, bad: true},
		{arg: `<"a\`, bad: true},
		{arg: "", bad: true},
		{arg: "<>>", mailbox: "", params: ">"},
	} {
		mb, params, err := SplitPath(tc.arg)
		if tc.bad {
			if err == nil {
				t.Errorf("SplitPath(%q) = %q, %q; want an error", tc.arg, mb, params)
			}
			continue
		}
		if err != nil || mb != tc.mailbox || params != tc.params {
			t.Errorf("SplitPath(%q) = %q, %q, %v; want %q, %q", tc.arg, mb, params, err, tc.mailbox, tc.params)
		}
	}
}

func FuzzSplitPath(f *testing.F) {
	for _, s := range []string{"<a@example.com> SIZE=1", `<"a b"@x.test>`, "<>", "<@a:b@c>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		mb, params, err := SplitPath(arg)
		if err != nil {
			return
		}
		if len(params) > len(arg) {
			t.Fatalf("params %q longer than the argument %q", params, arg)
		}
		if mb == "" {
			return
		}
		m, err := Parse(mb)
		if err != nil {
			return
		}
		// What goes upstream is one path that reads back as the same mailbox.
		again, rest, err := SplitPath("<" + m.Wire() + ">")
		if err != nil || rest != "" {
			t.Fatalf("wire form %q of %q does not split back: %q %v", m.Wire(), mb, rest, err)
		}
		m2, err := Parse(again)
		if err != nil || m2.String() != m.String() {
			t.Fatalf("wire form %q reads back as %q (%v), want %q", m.Wire(), m2.String(), err, m.String())
		}
	})
}
