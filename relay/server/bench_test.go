package server_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/kuberelay/kuberelay/internal/eventually"
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
	benchSession(b, e)
}

// BenchmarkRelayMessageLimited is BenchmarkRelayMessage with rate limits on the
// sender domain and the upstream (never reached): their cost on the hot path.
func BenchmarkRelayMessageLimited(b *testing.B) {
	sink := testpeers.StartSink(b)
	log := logr.FromSlogHandler(slog.NewJSONHandler(io.Discard, nil))
	cfg := strings.Replace(baseConfig(sink.Addr, ""), "  allowedSenders: [noreply, \"alerts-*\"]\n",
		"  allowedSenders: [noreply, \"alerts-*\"]\n  rateLimits: {messagesPerMinute: 1000000000, recipientsPerDay: 1000000000}\n", 1)
	cfg = strings.Replace(cfg, "  timeouts: {acquire: 2s}\n", "  timeouts: {acquire: 2s}\n  rateLimits: {messagesPerHour: 1000000000}\n", 1)
	e := startRelayLog(b, cfg, testSecrets(b, "one"), log)
	benchSession(b, e)
}

// BenchmarkQueueMessage is BenchmarkRelayMessage in Queue mode: each message stored,
// then delivered to smtp-sink; the time includes the deliveries.
func BenchmarkQueueMessage(b *testing.B) {
	sink := testpeers.StartSink(b)
	log := logr.FromSlogHandler(slog.NewJSONHandler(io.Discard, nil))
	e := startRelayLog(b, queueConfig(sink.Addr, b.TempDir(), ""), testSecrets(b, "one"), log)
	benchSession(b, e)
	eventually.Require(b, time.Minute, func() string {
		if st := e.srv.QueueStatus(); st.Messages != 0 {
			return fmt.Sprintf("%d messages still queued", st.Messages)
		}
		return ""
	})
}

// benchSession sends b.N messages over one connection to e's plain listener.
func benchSession(b *testing.B, e *relayEnv) {
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
