package server_test

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/kuberelay/kuberelay/internal/testpeers"
)

// BenchmarkRelayMessage relays 4 KiB messages, one after another over one client
// connection, through to smtp-sink, logging as the relay binary does. Its figure of
// interest is allocs/op: the relay's allocations per message (and the client's,
// which are a handful). Throughput is measured by hack/bench-relay.
func BenchmarkRelayMessage(b *testing.B) {
	sink := testpeers.StartSink(b)
	log := logr.FromSlogHandler(slog.NewJSONHandler(io.Discard, nil))
	e := startRelayLog(b, baseConfig(sink.Addr, ""), testSecrets(b, "one"), log)
	c, err := net.Dial("tcp", e.addr("plain"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	expect := func(code string) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				b.Fatalf("reading a reply: %v", err)
			}
			if !strings.HasPrefix(line, code) {
				b.Fatalf("got %q, want %s", line, code)
			}
			if len(line) < 4 || line[3] != '-' {
				return
			}
		}
	}
	send := func(s string) {
		if _, err := io.WriteString(c, s); err != nil {
			b.Fatal(err)
		}
	}
	expect("220")
	send("EHLO client.test\r\n")
	expect("250")
	body := message("bench") + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 4096/80) + ".\r\n"
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		send("MAIL FROM:<noreply@example.com>\r\n")
		expect("250")
		send("RCPT TO:<someone@example.net>\r\n")
		expect("250")
		send("DATA\r\n")
		expect("354")
		send(body)
		expect("250")
	}
}
