package render

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// The test world: a relay "relay" in namespace "mail" delivering through Amazon SES,
// and teams in other namespaces with their own domains and smarthosts.
const (
	relayNS   = "mail"
	relayName = "relay"
	testImage = "ghcr.io/kuberelay/kuberelay:v0.1.0"
)

// fakeHasher is a deterministic PasswordHasher for golden files: bcrypt salts, so real
// hashes would change on every run. Its output has bcrypt's shape, which is all the
// relay's loader checks.
type fakeHasher struct {
	mu    sync.Mutex
	calls int
}

func (f *fakeHasher) Hash(key string, password, previous []byte) ([]byte, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	sum := sha256.Sum256(append([]byte(key+"\x00"), password...))
	return []byte("$2a$10$" + hex.EncodeToString(sum[:])[:53]), nil
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ts(day int) metav1.Time {
	return metav1.NewTime(time.Date(2025, 1, day, 12, 0, 0, 0, time.UTC))
}

func secretObj(ns, name string, typ corev1.SecretType, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: typ, Data: data}
}

func basicAuth(ns, name, user, pass string) *corev1.Secret {
	return secretObj(ns, name, corev1.SecretTypeBasicAuth, map[string][]byte{
		"username": []byte(user), "password": []byte(pass),
	})
}

// world holds every object a test may reference; inputs() hands all of them to Config,
// so a test breaks a reference by deleting an object or pointing at a missing one.
type world struct {
	secrets    map[types.NamespacedName]*corev1.Secret
	smarthosts map[types.NamespacedName]*relayv1alpha1.Smarthost
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{secrets: map[types.NamespacedName]*corev1.Secret{}, smarthosts: map[types.NamespacedName]*relayv1alpha1.Smarthost{}}
	w.addSecret(secretObj(relayNS, "relay-tls", corev1.SecretTypeTLS, map[string][]byte{
		"tls.crt": fixture(t, "relay-tls.crt"), "tls.key": fixture(t, "relay-tls.key"),
	}))
	// A trailing newline, as `echo` leaves it, is not part of the password.
	w.addSecret(basicAuth(relayNS, "user-app", "app", "app-password-one\n"))
	w.addSecret(basicAuth(relayNS, "user-billing", "billing", "billing-password-two"))
	w.addSecret(basicAuth(relayNS, "ses-credentials", "AKIAEXAMPLEUSERNAME1", "ses-smtp-password-three"))
	w.addSecret(secretObj(relayNS, "ses-ca", corev1.SecretTypeOpaque, map[string][]byte{"ca.crt": fixture(t, "smarthost-ca.crt")}))
	w.addSecret(secretObj(relayNS, "dkim-example-com", corev1.SecretTypeOpaque, map[string][]byte{"dkim.key": fixture(t, "dkim-rsa.key")}))
	w.addSecret(basicAuth("team-a", "mailgun-credentials", "postmaster@mg.team-a.example", "mailgun-password-four"))
	w.addSecret(secretObj("team-a", "dkim", corev1.SecretTypeOpaque, map[string][]byte{"private": fixture(t, "dkim-ed25519.key")}))
	w.addSecret(basicAuth("team-b", "mailgun-credentials", "postmaster@mg.team-b.example", "mailgun-password-five"))

	w.addSmarthost(&relayv1alpha1.Smarthost{
		ObjectMeta: metav1.ObjectMeta{Namespace: relayNS, Name: "ses"},
		Spec: relayv1alpha1.SmarthostSpec{
			Endpoints: []relayv1alpha1.SmarthostEndpoint{
				{Host: "email-smtp.eu-west-1.amazonaws.com", Port: 587},
				{Host: "email-smtp.eu-central-1.amazonaws.com", Port: 587},
			},
			TLS: relayv1alpha1.SmarthostTLS{
				Mode:        relayv1alpha1.TLSStartTLS,
				CASecretRef: &relayv1alpha1.SecretKeyReference{Name: "ses-ca"},
			},
			Auth:                     &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "ses-credentials"}, Mechanism: "PLAIN"},
			MaxConnections:           20,
			MaxMessagesPerConnection: 50,
			Timeouts: &relayv1alpha1.SmarthostTimeouts{
				Connect: &metav1.Duration{Duration: 15 * time.Second},
				Idle:    &metav1.Duration{Duration: 45 * time.Second},
			},
		},
	})
	for _, ns := range []string{"team-a", "team-b"} {
		w.addSmarthost(&relayv1alpha1.Smarthost{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mailgun"},
			Spec: relayv1alpha1.SmarthostSpec{
				Endpoints: []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.eu.mailgun.org", Port: 465}},
				TLS:       relayv1alpha1.SmarthostTLS{Mode: relayv1alpha1.TLSImplicit},
				Auth:      &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "mailgun-credentials"}, Mechanism: "LOGIN"},
			},
		})
	}
	return w
}

func (w *world) addSecret(s *corev1.Secret) {
	w.secrets[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
}

func (w *world) addSmarthost(s *relayv1alpha1.Smarthost) {
	w.smarthosts[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
}

func (w *world) inputs(relay *relayv1alpha1.SmtpRelay, domains ...relayv1alpha1.RelayDomain) Inputs {
	return Inputs{Relay: relay, Domains: domains, Smarthosts: w.smarthosts, Secrets: w.secrets, Hasher: &fakeHasher{}}
}

func minimalRelay() *relayv1alpha1.SmtpRelay {
	return &relayv1alpha1.SmtpRelay{
		TypeMeta:   metav1.TypeMeta{APIVersion: relayv1alpha1.GroupVersion.String(), Kind: "SmtpRelay"},
		ObjectMeta: metav1.ObjectMeta{Namespace: relayNS, Name: relayName, UID: "5d5c1b6e-0d5e-4b0e-9a43-9b1b3c6f1d2a", Generation: 1},
	}
}

// realisticRelay has TLS, two users, client networks, SES as default route and limits.
func realisticRelay() *relayv1alpha1.SmtpRelay {
	r := minimalRelay()
	r.Spec = relayv1alpha1.SmtpRelaySpec{
		Replicas: ptr(int32(3)),
		TLS:      &relayv1alpha1.RelayTLS{SecretRef: relayv1alpha1.LocalObjectReference{Name: "relay-tls"}},
		Auth: &relayv1alpha1.RelayAuth{Users: []relayv1alpha1.RelayUser{
			{SecretRef: relayv1alpha1.LocalObjectReference{Name: "user-billing"}, AllowedSenders: []string{"invoices@example.com", "example.org"}},
			{SecretRef: relayv1alpha1.LocalObjectReference{Name: "user-app"}},
		}},
		AllowedNetworks: []string{"fd00::/8", "10.0.0.0/8"},
		SmarthostRef:    &relayv1alpha1.LocalObjectReference{Name: "ses"},
		NullSender:      "Allow",
		Limits: &relayv1alpha1.RelayLimits{
			MaxMessageBytes: ptr(int64(10 << 20)),
			MaxRecipients:   ptr(int32(50)),
			CommandTimeout:  &metav1.Duration{Duration: 2 * time.Minute},
		},
		Service: &relayv1alpha1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			Annotations:           map[string]string{"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		},
	}
	return r
}

func domain(ns, name, dom string, created int) relayv1alpha1.RelayDomain {
	return relayv1alpha1.RelayDomain{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: ts(created)},
		Spec:       relayv1alpha1.RelayDomainSpec{Domain: dom, RelayRef: relayv1alpha1.RelayReference{Name: relayName, Namespace: relayNS}},
	}
}

func withSmarthost(d relayv1alpha1.RelayDomain, name string) relayv1alpha1.RelayDomain {
	d.Spec.SmarthostRef = &relayv1alpha1.LocalObjectReference{Name: name}
	return d
}

func withDKIM(d relayv1alpha1.RelayDomain, selector, secret, key string) relayv1alpha1.RelayDomain {
	d.Spec.DKIM = &relayv1alpha1.DKIMSigning{Selector: selector, PrivateKeySecretRef: relayv1alpha1.SecretKeyReference{Name: secret, Key: key}}
	return d
}

func withSenders(d relayv1alpha1.RelayDomain, senders ...string) relayv1alpha1.RelayDomain {
	d.Spec.AllowedSenders = senders
	return d
}

// realisticDomains are example.com (signed with DKIM, restricted senders) and
// example.org, both in the relay's namespace and routed through its default.
func realisticDomains() []relayv1alpha1.RelayDomain {
	return []relayv1alpha1.RelayDomain{
		withSenders(withDKIM(domain(relayNS, "example-com", "example.com", 1), "s2025", "dkim-example-com", ""), "noreply", "alerts-*"),
		domain(relayNS, "example-org", "example.org", 2),
	}
}
