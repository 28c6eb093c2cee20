// Package testcerts makes the certificates and keys that the local run, the
// benchmarks and the end-to-end checks need: short-lived, generated on the spot,
// never for production.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"time"
)

// validity is how long the certificates are valid: long enough for any run.
const validity = 30 * 24 * time.Hour

// SelfSigned returns a self-signed ECDSA P-256 server certificate for hosts (DNS
// names or IP addresses; the first is also the common name) and its PKCS #8 key, PEM.
func SelfSigned(hosts ...string) (certPEM, keyPEM []byte, err error) {
	return issue(hosts, nil, nil)
}

// issue makes a server certificate for hosts signed by parent with parentKey, or by
// itself when parent is nil, and returns it and its key in PEM.
func issue(hosts []string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl, err := serverTemplate(hosts)
	if err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", kb), nil
}

// CA is a certificate authority of its own, for a server whose clients are given
// PEM to trust (a Smarthost's caSecretRef).
type CA struct {
	// PEM is the CA certificate.
	PEM  []byte
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA makes a CA named name.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{PEM: pemBlock("CERTIFICATE", der), cert: cert, key: key}, nil
}

// Issue makes a server certificate for hosts (DNS names or IP addresses; the first is
// also the common name) and returns it and its PKCS #8 key in PEM, as a
// kubernetes.io/tls Secret holds them.
func (ca *CA) Issue(hosts ...string) (certPEM, keyPEM []byte, err error) {
	return issue(hosts, ca.cert, ca.key)
}

// ServerTLS issues a server certificate for hosts and returns a TLS configuration
// that serves it.
func (ca *CA) ServerTLS(hosts ...string) (*tls.Config, error) {
	certPEM, keyPEM, err := ca.Issue(hosts...)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}

// Ed25519Key returns an Ed25519 private key, PKCS #8 PEM: a DKIM signing key.
func Ed25519Key() ([]byte, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	b, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pemBlock("PRIVATE KEY", b), nil
}

func serverTemplate(hosts []string) (*x509.Certificate, error) {
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{SerialNumber: serial,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for i, h := range hosts {
		if i == 0 {
			t.Subject = pkix.Name{CommonName: h}
		}
		if ip := net.ParseIP(h); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, h)
		}
	}
	return t, nil
}

// serialNumber is random, so that certificates renewed for the same name differ.
func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
