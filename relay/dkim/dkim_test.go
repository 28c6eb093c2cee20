package dkim_test

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"

	"github.com/kuberelay/kuberelay/relay/dkim"
)

// BenchmarkSign signs a 4 KiB message: the cost DKIM adds to each relayed message.
func BenchmarkSign(b *testing.B) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	msg := "From: noreply@example.com\r\nTo: someone@example.net\r\nSubject: bench\r\n\r\n" +
		strings.Repeat(strings.Repeat("x", 78)+"\r\n", 4096/80)
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
	}{{"rsa-2048", rsaKey}, {"ed25519", edKey}} {
		b.Run(tc.name, func(b *testing.B) {
			k := &dkim.Key{Domain: "example.com", Selector: "s1", Signer: tc.signer}
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				sig, err := k.Sign(strings.NewReader(msg))
				if err != nil {
					b.Fatal(err)
				}
				if !strings.HasPrefix(sig, "DKIM-Signature:") {
					b.Fatalf("signature %q", sig)
				}
			}
		})
	}
}
