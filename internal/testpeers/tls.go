package testpeers

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/kuberelay/kuberelay/internal/testcerts"
)

// CA is a certificate authority made up for one test (internal/testcerts' CA, with
// errors that fail the test).
type CA struct {
	// Pool trusts the CA, to verify certificates it issued.
	Pool *x509.CertPool
	// CertPEM is the CA certificate in PEM.
	CertPEM []byte

	ca *testcerts.CA
}

// NewCA makes a self-signed CA.
func NewCA(t testing.TB) *CA {
	t.Helper()
	ca, err := testcerts.NewCA("kuberelay test CA")
	if err != nil {
		t.Fatalf("making a CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.PEM) {
		t.Fatal("the CA certificate does not parse")
	}
	return &CA{Pool: pool, CertPEM: ca.PEM, ca: ca}
}

// Issue makes a server certificate for hosts (DNS names or IP addresses).
func (ca *CA) Issue(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	cert, _, _ := ca.IssuePEM(t, hosts...)
	return cert
}

// IssuePEM is Issue that also returns the certificate chain and key in PEM, as they
// would be stored in a kubernetes.io/tls Secret.
func (ca *CA) IssuePEM(t testing.TB, hosts ...string) (cert tls.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := ca.ca.Issue(hosts...)
	if err != nil {
		t.Fatalf("issuing a certificate for %v: %v", hosts, err)
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("loading certificate: %v", err)
	}
	return cert, certPEM, keyPEM
}
