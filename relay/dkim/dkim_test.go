package dkim_test

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/kuberelay/kuberelay/relay/dkim"
)

// TestSignVerifies signs with RSA and Ed25519 keys and verifies each signature with
// go-msgauth against the record TXTRecord publishes: relaxed canonicalisation keeps
// it valid through re-folded headers and changed whitespace, and a changed body
// breaks it.
func TestSignVerifies(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	msg := "From: noreply@example.com\r\nTo: someone@example.net\r\nSubject: a subject\r\n\r\nHello,\r\nworld.\r\n"
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
		algo   string
	}{{"rsa-2048", rsaKey, "rsa-sha256"}, {"ed25519", edKey, "ed25519-sha256"}} {
		t.Run(tc.name, func(t *testing.T) {
			k := &dkim.Key{Domain: "example.com", Selector: "s1", Signer: tc.signer, Headers: []string{"From", "To", "Subject"}}
			sig, err := k.Sign(strings.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(sig, "a="+tc.algo) || !strings.Contains(sig, "c=relaxed/relaxed") || !strings.HasSuffix(sig, "\r\n") {
				t.Fatalf("signature header %q", sig)
			}
			record, err := dkim.TXTRecord(tc.signer)
			if err != nil {
				t.Fatal(err)
			}
			verify := func(m string) error {
				vs, err := msgauth.VerifyWithOptions(strings.NewReader(m), &msgauth.VerifyOptions{
					LookupTXT: func(name string) ([]string, error) {
						if name != "s1._domainkey.example.com" {
							return nil, fmt.Errorf("no TXT record %s", name)
						}
						return []string{record}, nil
					}})
				if err != nil {
					return err
				}
				if len(vs) != 1 {
					return fmt.Errorf("%d signatures", len(vs))
				}
				if vs[0].Err != nil {
					return vs[0].Err
				}
				if vs[0].Domain != "example.com" {
					return fmt.Errorf("signed for %s", vs[0].Domain)
				}
				return nil
			}
			if err := verify(sig + msg); err != nil {
				t.Fatalf("the signature does not verify: %v", err)
			}
			// What smarthosts do to a message in transit: headers re-folded, spaces doubled.
			reworked := strings.Replace(strings.Replace(sig+msg, "Subject: a subject", "Subject: a\r\n  subject", 1), "Hello,", "Hello,  ", 1)
			if err := verify(reworked); err != nil {
				t.Fatalf("the signature does not survive re-folding and whitespace: %v", err)
			}
			if err := verify(sig + strings.Replace(msg, "world", "w0rld", 1)); err == nil {
				t.Fatal("a changed body still verifies")
			}
		})
	}
}

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
