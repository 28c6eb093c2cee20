package server

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// TestDotReader checks decoding, the end of data and every refusal, with the data
// arriving in one read and one byte at a time (so each state meets a buffer boundary),
// and that what follows the end is left for the next command.
func TestDotReader(t *testing.T) {
	for _, tc := range []struct {
		name, in, out string
		bad           *smtpError
		fatal         *smtpError
	}{
		{name: "plain", in: "a\r\nb\r\n.\r\n", out: "a\r\nb\r\n"},
		{name: "empty", in: ".\r\n", out: ""},
		{name: "stuffed", in: "..a\r\n..\r\n.\r\n", out: ".a\r\n.\r\n"},
		{name: "dot inside a line", in: "a.\r\n.b\r\n.\r\n", out: "a.\r\nb\r\n"},
		{name: "bare CR after a leading dot", in: "a\r\n.\rX\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "dot CR CRLF", in: "a\r\n.\r\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "leading dot CR at the start", in: ".\rX\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "bare CR before CRLF", in: "a\r\r\nb\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "bare CR at the start", in: "\rX\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "bare CR and the client gone", in: "a\r", fatal: errClientRead},
		{name: "bare LF", in: "a\nb\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "LF dot LF is no end", in: "a\n.\nb\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "LF dot CRLF is no end", in: "a\n.\r\nb\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "dot LF", in: "a\r\n.\nb\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "NUL", in: "a\x00b\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "NUL after a leading dot", in: ".\x00\r\n.\r\n", bad: errAmbiguousLineEnding},
		{name: "too large", in: strings.Repeat("0123456789\r\n", 20) + ".\r\n", bad: errDataTooLarge},
		{name: "line too long", in: strings.Repeat("x", 150) + "\r\n.\r\n", fatal: errDataLineTooLong},
		{name: "no end", in: "a\r\nb\r\n", fatal: errClientRead},
	} {
		for _, oneByte := range []bool{false, true} {
			var r io.Reader = strings.NewReader(tc.in + "NEXT\r\n")
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			if tc.fatal == errClientRead {
				r = strings.NewReader(tc.in) // the client goes away
			}
			br := bufio.NewReaderSize(r, 16)
			d := newDotReader(br, nil, 0, 100, 200)
			got, err := io.ReadAll(d)
			var want error
			switch {
			case tc.bad != nil:
				want = tc.bad
			case tc.fatal != nil:
				want = tc.fatal
			}
			if want == nil && (err != nil || string(got) != tc.out) {
				t.Errorf("%s (one byte %v): got %q, %v; want %q", tc.name, oneByte, got, err, tc.out)
				continue
			}
			if want != nil && !errors.Is(err, want) {
				t.Errorf("%s (one byte %v): got %q, %v; want %v", tc.name, oneByte, got, err, want)
				continue
			}
			if fatal := d.drain(); fatal != tc.fatal {
				t.Errorf("%s (one byte %v): drain = %v, want %v", tc.name, oneByte, fatal, tc.fatal)
			}
			if tc.fatal != nil {
				continue
			}
			// The next command is read where the client sent it.
			if next, _ := br.ReadString('\n'); next != "NEXT\r\n" {
				t.Errorf("%s (one byte %v): after the data the next line is %q", tc.name, oneByte, next)
			}
		}
	}
}

// TestDotReaderEndAfterBareCR: "\r\r\n.\r\n" holds a real CRLF "." CRLF, so the data
// ends there (refused for its bare CR), and the commands after it are commands.
func TestDotReaderEndAfterBareCR(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("first\r\r\n.\r\nRSET\r\n"))
	d := newDotReader(br, nil, 0, 0, 0)
	if _, err := io.ReadAll(d); err != errAmbiguousLineEnding {
		t.Fatalf("got %v, want the bare CR refused", err)
	}
	if fatal := d.drain(); fatal != nil {
		t.Fatal(fatal)
	}
	if next, _ := br.ReadString('\n'); next != "RSET\r\n" {
		t.Fatalf("next line %q, want RSET", next)
	}
}

// FuzzDotReader: whatever the input, decoding never yields a bare CR, LF or NUL, and
// stops at the first CRLF "." CRLF of the wire (or its start), whichever way the input
// is split into reads.
func FuzzDotReader(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n", ".\rX\r\n.\r\n", "a\r\r\n.\r\n", "..\r\n.\r\n", "\n.\n\r\n.\r\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, size uint8) {
		var r io.Reader = strings.NewReader(string(in))
		if size%2 == 1 {
			r = iotest.OneByteReader(r)
		}
		br := bufio.NewReaderSize(r, 16+int(size))
		d := newDotReader(br, nil, 0, 0, 0)
		got, err := io.ReadAll(d)
		if err == nil {
			for i, c := range got {
				if c == 0 || c == '\r' && (i+1 >= len(got) || got[i+1] != '\n') || c == '\n' && (i == 0 || got[i-1] != '\r') {
					t.Fatalf("accepted %q as %q: bare line ending or NUL at %d", in, got, i)
				}
			}
		}
		d.drain()
		if !d.done {
			return
		}
		wire := "\r\n" + string(in)
		end := strings.Index(wire, "\r\n.\r\n")
		if end < 0 {
			t.Fatalf("ended in %q, which holds no CRLF . CRLF", in)
		}
		rest, _ := io.ReadAll(br)
		if want := wire[end+5:]; string(rest) != want {
			t.Fatalf("in %q the data ended before %q, want before %q", in, rest, want)
		}
	})
}
