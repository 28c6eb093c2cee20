package upstream

import (
	"encoding/base64"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"2.0.0 Ok: queued as ABC":      "2.0.0 Ok: queued as ABC",
		"first line\nsecond line":      "first line second line",
		"evil\r\n250 fake\x00\x1b[31m": "evil 250 fake??[31m",
		"caf\xc3\xa9":                  "caf??",
		"  spaced\t\tout  ":            "spaced out",
		strings.Repeat("x", 500):       strings.Repeat("x", maxMessageLen-3) + "...",
		strings.Repeat("y", 200):       strings.Repeat("y", 200),
	} {
		got := sanitize(in)
		if got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
		if len(got) > maxMessageLen {
			t.Errorf("sanitize(%q) is %d bytes long", in, len(got))
		}
	}
}

func TestLineEndingReader(t *testing.T) {
	for in, wantErr := range map[string]bool{
		"a\r\nb\r\n": false,
		"a\r\nb":     false,
		"":           false,
		"a\nb\r\n":   true,
		"a\rb\r\n":   true,
		"a\r\n\r":    true,
		"a\r\r\n":    true,
		"\n":         true,
		"a\r\n.\r\n": false,
	} {
		// One byte at a time, so a CRLF split across reads is exercised.
		_, err := io.ReadAll(&lineEndingReader{r: iotest.OneByteReader(strings.NewReader(in))})
		if got := errors.Is(err, ErrBareLineEnding); got != wantErr {
			t.Errorf("%q: error %v, want bare line ending %v", in, err, wantErr)
		}
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Code: 451, Enhanced: [3]int{4, 3, 0}, Message: "try later", Endpoint: "mx:25"}
	if got, want := e.Error(), "upstream mx:25: 451 4.3.0 try later"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !e.Temporary() {
		t.Error("451 not temporary")
	}
	if (&Error{Code: 550}).Temporary() {
		t.Error("550 temporary")
	}
	cause := errors.New("connection refused")
	e = &Error{Endpoint: "mx:25", Err: cause}
	if !errors.Is(e, cause) || !e.Temporary() || e.Error() != "upstream mx:25: connection refused" {
		t.Errorf("local error %q", e.Error())
	}
}

func TestValidAddress(t *testing.T) {
	for a, want := range map[string]bool{
		"a@example.com":                 true,
		"":                              true, // the null sender
		`"a b"@example.com`:             true,
		`"a>b <c"@example.com`:          true,
		`"a\"b"@example.com`:            true,
		"a b@example.com":               false, // the space would end the path
		"a@example.com> X=1":            false,
		"a@example.com>":                false,
		"<a@example.com":                false,
		`"unterminated@example.com`:     false,
		`"a\"@example.com`:              false, // the quote is escaped: still open
		"a\r\nRSET@example.com":         false,
		"a\x00@example.com":             false,
		"j\xc3\xb6rg@example.com":       false,
		strings.Repeat("a", 1001) + "@": false,
	} {
		if got := validAddress(a); got != want {
			t.Errorf("validAddress(%q) = %v, want %v", a, got, want)
		}
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		code     int
		msg      string
		enhanced [3]int
		text     string
	}{
		{451, "4.3.0 try later", [3]int{4, 3, 0}, "try later"},
		{550, "5.1.1 no such user\n5.1.1 see the docs", [3]int{5, 1, 1}, "no such user see the docs"},
		{421, "service closing", [3]int{}, "service closing"},
		{550, "4.1.1 class differs", [3]int{}, "4.1.1 class differs"},
		{554, "5.x.1 not a code", [3]int{}, "5.x.1 not a code"},
		{452, "4.5.3", [3]int{4, 5, 3}, ""},
		{550, "evil\r 250 \x1b[31m", [3]int{}, "evil 250 ?[31m"},
	} {
		e := parseReply("mx:25", tc.code, tc.msg)
		if e.Code != tc.code || e.Enhanced != tc.enhanced || e.Message != tc.text || e.Endpoint != "mx:25" {
			t.Errorf("parseReply(%d, %q) = %d %v %q, want %d %v %q", tc.code, tc.msg, e.Code, e.Enhanced, e.Message, tc.code, tc.enhanced, tc.text)
		}
	}
}

// The XOAUTH2 initial response is byte for byte Google's documented example.
func TestXOAUTH2InitialResponse(t *testing.T) {
	c := &xoauth2Client{user: "someuser@example.com", token: "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"}
	mech, ir, err := c.Start()
	const documented = "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
	if err != nil || mech != "XOAUTH2" || base64.StdEncoding.EncodeToString(ir) != documented {
		t.Fatalf("%s %q %v", mech, ir, err)
	}
}
