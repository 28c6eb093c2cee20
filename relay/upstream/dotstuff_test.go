package upstream

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// TestDotStufferMatchesTextproto checks the chunked dot-stuffing against the standard
// library's DotWriter, for every way of splitting each input into two writes.
func TestDotStufferMatchesTextproto(t *testing.T) {
	// (An empty body is left out: the DotWriter turns it into one empty line, the
	// stuffer into an empty message.)
	inputs := []string{
		".\r\n",
		"..\r\n.\r\n",
		".leading\r\nmiddle\r\n.dot\r\n..two\r\nend.\r\n",
		"Subject: x\r\n\r\n.\r\n.\r\n",
		"no final newline.",
		"line\r\n.",
	}
	for _, in := range inputs {
		var want bytes.Buffer
		bw := bufio.NewWriter(&want)
		dw := textproto.NewWriter(bw).DotWriter()
		dw.Write([]byte(in))
		dw.Close()
		for split := 0; split <= len(in); split++ {
			var got bytes.Buffer
			d := &dotStuffer{w: &got, bol: true}
			d.Write([]byte(in[:split]))
			d.Write([]byte(in[split:]))
			if err := d.end(); err != nil {
				t.Fatal(err)
			}
			if got.String() != want.String() {
				t.Fatalf("input %q split at %d:\n got %q\nwant %q", in, split, got.String(), want.String())
			}
		}
	}
}
