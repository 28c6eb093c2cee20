package crlf

import (
	"bytes"
	"testing"
)

// naive is the byte-by-byte definition Check must agree with.
func naive(chunks [][]byte) bool {
	prevCR := false
	for _, p := range chunks {
		for _, c := range p {
			switch {
			case c == 0, c == '\n' && !prevCR, prevCR && c != '\n':
				return false
			}
			prevCR = c == '\r'
		}
	}
	return !prevCR
}

func checkAll(chunks [][]byte) bool {
	prevCR := false
	for _, p := range chunks {
		ok, cr := Check(p, prevCR)
		if !ok {
			return false
		}
		prevCR = cr
	}
	return !prevCR
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name   string
		chunks []string
		ok     bool
	}{
		{"empty", nil, true},
		{"lines", []string{"a\r\nb\r\n"}, true},
		{"no line end", []string{"abc"}, true},
		{"bare LF", []string{"a\nb\r\n"}, false},
		{"bare CR", []string{"a\rb\r\n"}, false},
		{"LF first", []string{"\nab"}, false},
		{"NUL", []string{"a\x00b\r\n"}, false},
		{"CRCRLF", []string{"a\r\r\n"}, false},
		{"CR LF split", []string{"a\r", "\nb\r\n"}, true},
		{"CR then not LF", []string{"a\r", "b\r\n"}, false},
		{"CR then empty then LF", []string{"a\r", "", "\n"}, true},
		{"trailing CR", []string{"a\r\n\r"}, false},
		{"LFLF", []string{"a\r\n\n"}, false},
		{"smuggling", []string{"a\r\n.\nMAIL FROM:<x>\r\n"}, false},
	}
	for _, c := range cases {
		var chunks [][]byte
		for _, s := range c.chunks {
			chunks = append(chunks, []byte(s))
		}
		if got := checkAll(chunks); got != c.ok {
			t.Errorf("%s: Check says %v, want %v", c.name, got, c.ok)
		}
		if n := naive(chunks); n != c.ok {
			t.Errorf("%s: the reference says %v, want %v (bad case)", c.name, n, c.ok)
		}
	}
}

// FuzzCheck compares Check with the byte-by-byte definition on arbitrary splits.
func FuzzCheck(f *testing.F) {
	f.Add([]byte("a\r\nb\r\n"), uint8(2))
	f.Add([]byte("a\rb\n"), uint8(1))
	f.Add([]byte("\r\n\r\n.\r\n"), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		c := int(cut)
		if c > len(data) {
			c = len(data)
		}
		chunks := [][]byte{data[:c], data[c:]}
		if got, want := checkAll(chunks), naive(chunks); got != want {
			t.Fatalf("Check(%q split at %d) = %v, byte by byte %v", data, c, got, want)
		}
	})
}

func BenchmarkCheck(b *testing.B) {
	line := append(bytes.Repeat([]byte("x"), 74), '\r', '\n')
	p := bytes.Repeat(line, 54) // a 4 KiB message
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		Check(p, false)
	}
}
