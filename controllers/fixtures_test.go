package controllers_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// The objects controller tests build: each helper makes the usual object and takes
// options for what a test changes, so a test spells out only what it is about.

// tlsSecret is a kubernetes.io/tls Secret holding the relay's test certificate.
func tlsSecret(t *testing.T, ns, name string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": fixture(t, "relay-tls.crt"), "tls.key": fixture(t, "relay-tls.key")}}
}

// basicAuth is a kubernetes.io/basic-auth Secret.
func basicAuth(ns, name, username, password string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Type: corev1.SecretTypeBasicAuth,
		StringData: map[string]string{"username": username, "password": password}}
}

// dkimSecret holds the test Ed25519 DKIM key under dkim.key.
func dkimSecret(t *testing.T, ns, name string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Data: map[string][]byte{"dkim.key": fixture(t, "dkim-ed25519.key")}}
}

// newRelay is an SmtpRelay that admits 10.0.0.0/8, changed by opts.
func newRelay(ns, name string, opts ...func(*relayv1alpha1.SmtpRelaySpec)) *relayv1alpha1.SmtpRelay {
	r := &relayv1alpha1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: relayv1alpha1.SmtpRelaySpec{AllowedNetworks: []string{"10.0.0.0/8"}}}
	for _, o := range opts {
		o(&r.Spec)
	}
	return r
}

// withTLS serves the certificate of the kubernetes.io/tls Secret secret.
func withTLS(secret string) func(*relayv1alpha1.SmtpRelaySpec) {
	return func(s *relayv1alpha1.SmtpRelaySpec) {
		s.TLS = &relayv1alpha1.RelayTLS{SecretRef: relayv1alpha1.LocalObjectReference{Name: secret}}
	}
}

// withUsers lets the clients of these basic-auth Secrets authenticate.
func withUsers(secrets ...string) func(*relayv1alpha1.SmtpRelaySpec) {
	return func(s *relayv1alpha1.SmtpRelaySpec) {
		s.Auth = &relayv1alpha1.RelayAuth{}
		for _, n := range secrets {
			s.Auth.Users = append(s.Auth.Users, relayv1alpha1.RelayUser{SecretRef: relayv1alpha1.LocalObjectReference{Name: n}})
		}
	}
}

// withSmarthost delivers through the Smarthost name by default.
func withSmarthost(name string) func(*relayv1alpha1.SmtpRelaySpec) {
	return func(s *relayv1alpha1.SmtpRelaySpec) {
		s.SmarthostRef = &relayv1alpha1.LocalObjectReference{Name: name}
	}
}

func withReplicas(n int32) func(*relayv1alpha1.SmtpRelaySpec) {
	return func(s *relayv1alpha1.SmtpRelaySpec) { s.Replicas = &n }
}

// withQueue runs the relay in Queue mode.
func withQueue(s *relayv1alpha1.SmtpRelaySpec) {
	s.Delivery = &relayv1alpha1.DeliverySpec{Mode: relayv1alpha1.DeliveryQueue}
}

// newSmarthost is a Smarthost with one endpoint, changed by opts.
func newSmarthost(ns, name, host string, port int32, opts ...func(*relayv1alpha1.SmarthostSpec)) *relayv1alpha1.Smarthost {
	sh := &relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: relayv1alpha1.SmarthostSpec{Endpoints: []relayv1alpha1.SmarthostEndpoint{{Host: host, Port: port}}}}
	for _, o := range opts {
		o(&sh.Spec)
	}
	return sh
}

// plainText speaks to the smarthost without TLS.
func plainText(s *relayv1alpha1.SmarthostSpec) { s.TLS.Mode = relayv1alpha1.TLSNone }

// withCredentials authenticates with the basic-auth Secret secret.
func withCredentials(secret string) func(*relayv1alpha1.SmarthostSpec) {
	return func(s *relayv1alpha1.SmarthostSpec) {
		s.Auth = &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: secret}}
	}
}

// newDomain is a RelayDomain attaching domain to the relay ref, changed by opts.
func newDomain(ns, name, domain string, ref relayv1alpha1.RelayReference, opts ...func(*relayv1alpha1.RelayDomainSpec)) *relayv1alpha1.RelayDomain {
	d := &relayv1alpha1.RelayDomain{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: relayv1alpha1.RelayDomainSpec{Domain: domain, RelayRef: ref}}
	for _, o := range opts {
		o(&d.Spec)
	}
	return d
}

// signedWith signs with the key under dkim.key of Secret secret, as selector.
func signedWith(selector, secret string) func(*relayv1alpha1.RelayDomainSpec) {
	return func(s *relayv1alpha1.RelayDomainSpec) {
		s.DKIM = &relayv1alpha1.DKIMSigning{Selector: selector, PrivateKeySecretRef: relayv1alpha1.SecretKeyReference{Name: secret, Key: "dkim.key"}}
	}
}

// ref is a RelayReference to the relay name in the domain's own namespace.
func ref(name string) relayv1alpha1.RelayReference { return relayv1alpha1.RelayReference{Name: name} }

// newClient is a RelayClient of the relay ref, allowed to send as senders.
func newClient(ns, name string, ref relayv1alpha1.RelayReference, senders ...string) *relayv1alpha1.RelayClient {
	return &relayv1alpha1.RelayClient{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: relayv1alpha1.RelayClientSpec{RelayRef: ref, AllowedSenders: senders}}
}
