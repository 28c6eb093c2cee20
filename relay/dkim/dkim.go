// Package dkim signs outgoing mail with a domain's DKIM key (RFC 6376, RFC 8463 for
// Ed25519) and derives the DNS record that publishes the key.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"

	"github.com/emersion/go-msgauth/dkim"
)

// Key is one domain's signing key.
type Key struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
	Headers  []string
}

// NewSigner starts a signature: write the whole message (header and body, CRLF lines)
// to it, Close it, then prepend Signature() to the message.
func (k *Key) NewSigner() (*dkim.Signer, error) {
	return dkim.NewSigner(&dkim.SignOptions{
		Domain:   k.Domain,
		Selector: k.Selector,
		Signer:   k.Signer,
		// relaxed/relaxed survives the header re-folding and whitespace changes that
		// smarthosts commonly make; simple/simple would break on them.
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             k.Headers,
	})
}

// Sign reads a whole message from r and returns the DKIM-Signature header field
// (with its trailing CRLF) to prepend to it.
func (k *Key) Sign(r io.Reader) (string, error) {
	s, err := k.NewSigner()
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(s, r); err != nil {
		s.Close()
		return "", err
	}
	if err := s.Close(); err != nil {
		return "", err
	}
	return s.Signature(), nil
}

// TXTRecord returns the value of the TXT record to publish at
// <selector>._domainkey.<domain> for the public half of key.
func TXTRecord(key crypto.Signer) (string, error) {
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	default:
		return "", fmt.Errorf("unsupported DKIM key type %T", pub)
	}
}
