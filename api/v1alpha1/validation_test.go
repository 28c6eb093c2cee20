package v1alpha1_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func namespace(t *testing.T, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := env.Client.Create(ctxFor(t), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// deleteAfter removes obj when the test ends, so the test can run again (-count).
func deleteAfter(t *testing.T, obj client.Object) {
	t.Cleanup(func() {
		if err := env.Client.Delete(context.Background(), obj); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting %s: %v", obj.GetName(), err)
		}
	})
}

// The samples describe a realistic setup and must apply as they are.
func TestSamplesApply(t *testing.T) {
	namespace(t, "mail")
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "config", "samples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples found: %v", err)
	}
	kinds := map[string]int{}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if err := env.Client.Create(ctxFor(t), &u); err != nil {
				t.Errorf("%s: %s %s: %v", filepath.Base(f), u.GetKind(), u.GetName(), err)
			} else {
				deleteAfter(t, &u)
			}
			kinds[u.GetKind()]++
		}
	}
	if kinds["SmtpRelay"] != 1 || kinds["Smarthost"] != 1 || kinds["RelayDomain"] != 2 {
		t.Fatalf("samples hold %v, want one SmtpRelay, one Smarthost and two RelayDomains", kinds)
	}
}

// Defaults are filled in by the API server, so every client sees the same values.
func TestDefaults(t *testing.T) {
	namespace(t, "defaults")
	ctx := ctxFor(t)
	sh := &relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Name: "sh", Namespace: "defaults"},
		Spec: relayv1alpha1.SmarthostSpec{Endpoints: []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.example.net"}}}}
	if err := env.Client.Create(ctx, sh); err != nil {
		t.Fatal(err)
	}
	deleteAfter(t, sh)
	if sh.Spec.TLS.Mode != relayv1alpha1.TLSStartTLS || sh.Spec.Endpoints[0].Port != 587 || sh.Spec.MaxConnections != 10 {
		t.Errorf("smarthost defaults: tls %q, port %d, maxConnections %d", sh.Spec.TLS.Mode, sh.Spec.Endpoints[0].Port, sh.Spec.MaxConnections)
	}
	r := &relayv1alpha1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "defaults"}}
	if err := env.Client.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	deleteAfter(t, r)
	if r.Spec.Replicas == nil || *r.Spec.Replicas != 2 || r.Spec.Domains.Namespaces.From != "Same" || r.Spec.NullSender != "Reject" {
		t.Errorf("relay defaults: %+v", r.Spec)
	}
}

// TestAccepted applies objects that leave optional fields out in ways the rules must
// allow: a rule that reads an unset field fails to evaluate and refuses the object.
func TestAccepted(t *testing.T) {
	namespace(t, "good")
	meta := metav1.ObjectMeta{Namespace: "good", GenerateName: "good-"}
	endpoints := []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.example.net"}}
	objs := []client.Object{
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Endpoints: endpoints,
			TLS: relayv1alpha1.SmarthostTLS{CASecretRef: &relayv1alpha1.SecretKeyReference{Name: "ca"}}}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Endpoints: endpoints,
			TLS: relayv1alpha1.SmarthostTLS{InsecureSkipVerify: true}}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Endpoints: endpoints,
			Auth: &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "creds"}}}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Endpoints: endpoints,
			Auth: &relayv1alpha1.SmarthostAuth{OAuth2: m365OAuth2()}}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Provider: "SES", Region: "eu-west-1",
			Auth: &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "creds"}}}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Provider: "Mailgun", Region: "eu"}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Endpoints: endpoints,
			Check: &relayv1alpha1.SmarthostCheck{Interval: &metav1.Duration{}}}},
		&relayv1alpha1.RelayDomain{ObjectMeta: meta, Spec: relayv1alpha1.RelayDomainSpec{Domain: "gen.example", RelayRef: relayv1alpha1.RelayReference{Name: "r"},
			DKIM: &relayv1alpha1.DKIMSigning{Generate: &relayv1alpha1.DKIMGenerate{}}}},
		&relayv1alpha1.RelayDomain{ObjectMeta: meta, Spec: relayv1alpha1.RelayDomainSpec{Domain: "gen2.example", RelayRef: relayv1alpha1.RelayReference{Name: "r"},
			DKIM: &relayv1alpha1.DKIMSigning{Generate: &relayv1alpha1.DKIMGenerate{Algorithm: "RSA", Bits: ptr(int32(3072)), RotateEvery: &metav1.Duration{Duration: 2160 * time.Hour}}}}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Provider: "Microsoft365",
			Auth: &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{TenantID: "contoso.onmicrosoft.com",
				ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "m365-oauth"}, Username: "relay@contoso.example"}}}},
		&relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{Endpoints: endpoints,
			Auth: &relayv1alpha1.SmarthostAuth{OAuth2: m365OAuth2(), Mechanism: "OAUTHBEARER"}}},
		&relayv1alpha1.SmtpRelay{ObjectMeta: meta, Spec: relayv1alpha1.SmtpRelaySpec{Listeners: []relayv1alpha1.Listener{{Name: "smtp", Port: 25}}}},
		&relayv1alpha1.SmtpRelay{ObjectMeta: meta, Spec: relayv1alpha1.SmtpRelaySpec{Domains: relayv1alpha1.DomainAttachment{Namespaces: relayv1alpha1.DomainNamespaces{From: "All"}}}},
		&relayv1alpha1.SmtpRelay{ObjectMeta: meta, Spec: relayv1alpha1.SmtpRelaySpec{
			Listeners: []relayv1alpha1.Listener{{Name: "smtp", Port: 25, MaxConnections: ptr(int32(100))}},
			Limits: &relayv1alpha1.RelayLimits{MaxConnections: ptr(int32(200)), ReservedAuthConnections: ptr(int32(199)), MaxConnectionsPerClient: ptr(int32(10)),
				Auth: &relayv1alpha1.AuthLimits{MaxFailuresPerClient: ptr(int32(3)), FailureWindow: &metav1.Duration{Duration: time.Hour},
					UserLockout: &metav1.Duration{Duration: time.Hour}, FailureDelay: &metav1.Duration{Duration: time.Second}}},
		}},
	}
	for _, o := range objs {
		if err := env.Client.Create(ctxFor(t), o); err != nil {
			t.Errorf("%T %s refused: %v", o, toJSON(o), err)
		}
	}
}

func TestRejected(t *testing.T) {
	namespace(t, "bad")
	meta := metav1.ObjectMeta{Namespace: "bad", GenerateName: "bad-"}
	relay := func(mut func(*relayv1alpha1.SmtpRelaySpec)) client.Object {
		r := &relayv1alpha1.SmtpRelay{ObjectMeta: meta}
		mut(&r.Spec)
		return r
	}
	smarthost := func(mut func(*relayv1alpha1.SmarthostSpec)) client.Object {
		s := &relayv1alpha1.Smarthost{ObjectMeta: meta, Spec: relayv1alpha1.SmarthostSpec{
			Endpoints: []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.example.net", Port: 587}}}}
		mut(&s.Spec)
		return s
	}
	domain := func(mut func(*relayv1alpha1.RelayDomainSpec)) client.Object {
		d := &relayv1alpha1.RelayDomain{ObjectMeta: meta, Spec: relayv1alpha1.RelayDomainSpec{Domain: "example.com", RelayRef: relayv1alpha1.RelayReference{Name: "r"}}}
		mut(&d.Spec)
		return d
	}
	rclient := func(mut func(*relayv1alpha1.RelayClientSpec)) client.Object {
		c := &relayv1alpha1.RelayClient{ObjectMeta: meta, Spec: relayv1alpha1.RelayClientSpec{
			RelayRef: relayv1alpha1.RelayReference{Name: "r"}, AllowedSenders: []string{"example.com"}}}
		mut(&c.Spec)
		return c
	}
	users := &relayv1alpha1.RelayAuth{Users: []relayv1alpha1.RelayUser{{SecretRef: relayv1alpha1.LocalObjectReference{Name: "u"}}}}
	cases := []struct {
		name string
		obj  client.Object
		want string
	}{
		{"open relay IPv4", relay(func(s *relayv1alpha1.SmtpRelaySpec) { s.AllowedNetworks = []string{"10.0.0.0/8", "0.0.0.0/0"} }), "open relay"},
		{"queue settings without Queue mode", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Delivery = &relayv1alpha1.DeliverySpec{Mode: relayv1alpha1.DeliveryPassThrough, Queue: &relayv1alpha1.QueueSpec{MaxMessages: ptr(int32(10))}}
		}), "queue settings need mode Queue"},
		{"unknown delivery mode", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Delivery = &relayv1alpha1.DeliverySpec{Mode: "Spool"}
		}), "spec.delivery.mode"},
		{"retry backoff over 10", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Delivery = &relayv1alpha1.DeliverySpec{Mode: relayv1alpha1.DeliveryQueue, Queue: &relayv1alpha1.QueueSpec{Retry: &relayv1alpha1.QueueRetry{Backoff: ptr(int32(11))}}}
		}), "backoff"},
		{"open relay IPv6", relay(func(s *relayv1alpha1.SmtpRelaySpec) { s.AllowedNetworks = []string{"::/0"} }), "open relay"},
		{"network not a CIDR", relay(func(s *relayv1alpha1.SmtpRelaySpec) { s.AllowedNetworks = []string{"10.0.0.1"} }), "must be CIDRs"},
		{"AUTH on a listener without TLS", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Auth = users
			s.Listeners = []relayv1alpha1.Listener{{Name: "submission", Port: 587, TLS: relayv1alpha1.TLSNone, RequireAuth: true}}
		}), "requireAuth needs TLS"},
		{"AUTH listener, TLS by default but no certificate", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Auth = users
			s.Listeners = []relayv1alpha1.Listener{{Name: "submission", Port: 587, RequireAuth: true}}
		}), "requireAuth needs TLS"},
		{"TLS listener without certificate", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Listeners = []relayv1alpha1.Listener{{Name: "smtps", Port: 465, TLS: relayv1alpha1.TLSImplicit}}
		}), "needs a certificate"},
		{"duplicate listener ports", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Listeners = []relayv1alpha1.Listener{{Name: "a", Port: 25}, {Name: "b", Port: 25}}
		}), "ports must be unique"},
		{"duplicate listener names", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Listeners = []relayv1alpha1.Listener{{Name: "a", Port: 25}, {Name: "a", Port: 26}}
		}), "Duplicate value"},
		{"unknown listener TLS mode", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Listeners = []relayv1alpha1.Listener{{Name: "a", Port: 25, TLS: "Opportunistic"}}
		}), "Unsupported value"},
		{"privileged container port", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			p := int32(25)
			s.Listeners = []relayv1alpha1.Listener{{Name: "a", Port: 25, ContainerPort: &p}}
		}), "containerPort"},
		{"null sender allowed without a smarthost", relay(func(s *relayv1alpha1.SmtpRelaySpec) { s.NullSender = "Allow" }), "nullSender Allow"},
		{"listener named http", relay(func(s *relayv1alpha1.SmtpRelaySpec) { s.Listeners = []relayv1alpha1.Listener{{Name: "http", Port: 25}} }), "taken by the relay's metrics"},
		{"listener name with a double hyphen", relay(func(s *relayv1alpha1.SmtpRelaySpec) { s.Listeners = []relayv1alpha1.Listener{{Name: "a--b", Port: 25}} }), "listeners[0].name"},
		{"duplicate user secrets", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Auth = &relayv1alpha1.RelayAuth{Users: []relayv1alpha1.RelayUser{{SecretRef: relayv1alpha1.LocalObjectReference{Name: "u"}}, {SecretRef: relayv1alpha1.LocalObjectReference{Name: "u"}}}}
		}), "different Secret"},
		{"reserved connections not below the total", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Limits = &relayv1alpha1.RelayLimits{MaxConnections: ptr(int32(50)), ReservedAuthConnections: ptr(int32(50))}
		}), "reservedAuthConnections must be below maxConnections"},
		{"reserved connections not below the default total", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Limits = &relayv1alpha1.RelayLimits{ReservedAuthConnections: ptr(int32(1000))}
		}), "reservedAuthConnections must be below maxConnections"},
		{"user lockout longer than the failure window", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Limits = &relayv1alpha1.RelayLimits{Auth: &relayv1alpha1.AuthLimits{FailureWindow: &metav1.Duration{Duration: time.Minute},
				UserLockout: &metav1.Duration{Duration: time.Hour}}}
		}), "userLockout must not be longer than failureWindow"},
		{"listener connection limit of zero", relay(func(s *relayv1alpha1.SmtpRelaySpec) {
			s.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 25, MaxConnections: ptr(int32(0))}}
		}), "maxConnections"},
		{"endpoint without host", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.Endpoints = []relayv1alpha1.SmarthostEndpoint{{Port: 587}} }), "host"},
		{"endpoint with a port in the host", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.Endpoints = []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.example.net:587"}}
		}), "without port or scheme"},
		{"impossible port", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.Endpoints = []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.example.net", Port: 70000}}
		}), "65535"},
		{"unknown TLS mode", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.TLS.Mode = "SSL" }), "Unsupported value"},
		{"auth without TLS", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.TLS.Mode = relayv1alpha1.TLSNone
			s.Auth = &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "creds"}}
		}), "auth needs TLS"},
		{"unknown AUTH mechanism", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.Auth = &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "creds"}, Mechanism: "CRAM-MD5"}
		}), "Unsupported value"},
		{"neither endpoints nor provider", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.Endpoints = nil }), "endpoints are required unless provider"},
		{"SES without region", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.Endpoints, s.Provider = nil, "SES" }), "provider SES needs region"},
		{"region without a regional provider", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.Provider, s.Region = "SendGrid", "eu" }), "region is only for provider SES"},
		{"Mailgun region", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.Endpoints, s.Provider, s.Region = nil, "Mailgun", "ap" }), "Mailgun's region is us or eu"},
		{"unknown provider", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.Provider = "Sendmail" }), "Unsupported value"},
		{"password and OAuth 2.0 together", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.Auth = &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "creds"}, OAuth2: m365OAuth2()}
		}), "set secretRef (a user name and password) or oauth2"},
		{"auth with neither", smarthost(func(s *relayv1alpha1.SmarthostSpec) { s.Auth = &relayv1alpha1.SmarthostAuth{} }),
			"set secretRef (a user name and password) or oauth2"},
		{"OAuth 2.0 with PLAIN", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.Auth = &relayv1alpha1.SmarthostAuth{OAuth2: m365OAuth2(), Mechanism: "PLAIN"}
		}), "oauth2 logs in with XOAUTH2 or OAUTHBEARER"},
		{"XOAUTH2 with a password", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.Auth = &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "creds"}, Mechanism: "XOAUTH2"}
		}), "XOAUTH2 and OAUTHBEARER need oauth2"},
		{"OAuth 2.0 token URL over http", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			o := m365OAuth2()
			o.TokenURL = "http://login.example/token"
			s.Auth = &relayv1alpha1.SmarthostAuth{OAuth2: o}
		}), "tokenURL must be https"},
		{"OAuth 2.0 without a mailbox", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			o := m365OAuth2()
			o.Username = ""
			s.Auth = &relayv1alpha1.SmarthostAuth{OAuth2: o}
		}), "username"},
		{"invalid domain", domain(func(s *relayv1alpha1.RelayDomainSpec) { s.Domain = "exa mple.com" }), "DNS domain name"},
		{"wildcard domain", domain(func(s *relayv1alpha1.RelayDomainSpec) { s.Domain = "*.example.com" }), "DNS domain name"},
		{"single-label domain", domain(func(s *relayv1alpha1.RelayDomainSpec) { s.Domain = "localhost" }), "DNS domain name"},
		{"upper-case domain", domain(func(s *relayv1alpha1.RelayDomainSpec) { s.Domain = "Example.com" }), "lower-case"},
		{"bad DKIM selector", domain(func(s *relayv1alpha1.RelayDomainSpec) {
			s.DKIM = &relayv1alpha1.DKIMSigning{Selector: "a b", PrivateKeySecretRef: relayv1alpha1.SecretKeyReference{Name: "k"}}
		}), "selector"},
		{"bad allowed sender", domain(func(s *relayv1alpha1.RelayDomainSpec) { s.AllowedSenders = []string{"a@b"} }), "allowedSenders"},
		{"DKIM with neither a key nor generate", domain(func(s *relayv1alpha1.RelayDomainSpec) {
			s.DKIM = &relayv1alpha1.DKIMSigning{Selector: "s1"}
		}), "set selector and privateKeySecretRef"},
		{"DKIM generate with a key", domain(func(s *relayv1alpha1.RelayDomainSpec) {
			s.DKIM = &relayv1alpha1.DKIMSigning{Selector: "s1", PrivateKeySecretRef: relayv1alpha1.SecretKeyReference{Name: "k"}, Generate: &relayv1alpha1.DKIMGenerate{}}
		}), "generate makes its own selectors and keys"},
		{"DKIM bits for Ed25519", domain(func(s *relayv1alpha1.RelayDomainSpec) {
			s.DKIM = &relayv1alpha1.DKIMSigning{Generate: &relayv1alpha1.DKIMGenerate{Algorithm: "Ed25519", Bits: ptr(int32(2048))}}
		}), "bits is for RSA keys only"},
		{"DKIM rotation too often", domain(func(s *relayv1alpha1.RelayDomainSpec) {
			s.DKIM = &relayv1alpha1.DKIMSigning{Generate: &relayv1alpha1.DKIMGenerate{RotateEvery: &metav1.Duration{Duration: time.Minute}}}
		}), "rotateEvery must be at least 1h"},
		{"smarthost check too often", smarthost(func(s *relayv1alpha1.SmarthostSpec) {
			s.Check = &relayv1alpha1.SmarthostCheck{Interval: &metav1.Duration{Duration: 5 * time.Second}}
		}), "interval must be 0s (off) or at least 30s"},
		{"client without senders", rclient(func(s *relayv1alpha1.RelayClientSpec) { s.AllowedSenders = nil }), "allowedSenders"},
		{"client without relay", rclient(func(s *relayv1alpha1.RelayClientSpec) { s.RelayRef.Name = "" }), "relayRef.name"},
		{"client Secret name", rclient(func(s *relayv1alpha1.RelayClientSpec) { s.SecretName = "Not_A_Name" }), "secretName"},
		{"negative client limit", rclient(func(s *relayv1alpha1.RelayClientSpec) {
			s.Limits = &relayv1alpha1.ClientRateLimits{RateLimits: relayv1alpha1.RateLimits{MessagesPerMinute: -1}}
		}), "messagesPerMinute"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := env.Client.Create(ctxFor(t), c.obj)
			if err == nil {
				t.Fatalf("accepted; want an error mentioning %q", c.want)
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v; want Invalid mentioning %q", err, c.want)
			}
		})
	}
}

func TestRelayNameTooLong(t *testing.T) {
	namespace(t, "bad")
	r := &relayv1alpha1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Namespace: "bad", Name: strings.Repeat("r", 54)}}
	err := env.Client.Create(ctxFor(t), r)
	if err == nil || !strings.Contains(err.Error(), "at most 53 characters") {
		t.Fatalf("create: %v; want the name rule", err)
	}
}

// A domain name cannot change after creation: the DKIM record and attachment follow it.
func TestDomainImmutable(t *testing.T) {
	namespace(t, "immutable")
	ctx := ctxFor(t)
	d := &relayv1alpha1.RelayDomain{ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: "immutable"},
		Spec: relayv1alpha1.RelayDomainSpec{Domain: "example.com", RelayRef: relayv1alpha1.RelayReference{Name: "r"}}}
	if err := env.Client.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	deleteAfter(t, d)
	d.Spec.Domain = "example.org"
	err := env.Client.Update(ctx, d)
	if err == nil || !strings.Contains(err.Error(), "cannot be changed") {
		t.Fatalf("update: %v; want the immutability message", err)
	}
}

func toJSON(o any) string {
	b, err := json.Marshal(o)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func ptr[T any](v T) *T { return &v }

// m365OAuth2 is a Microsoft 365 client as its documentation has it.
func m365OAuth2() *relayv1alpha1.SmarthostOAuth2 {
	return &relayv1alpha1.SmarthostOAuth2{TokenURL: "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
		Scopes: []string{"https://outlook.office365.com/.default"}, ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "m365-oauth"},
		Username: "relay@contoso.example"}
}
