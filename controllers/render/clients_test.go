package render

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// clientWithSecret is a RelayClient in ns and the Secret it controls.
func clientWithSecret(ns, name, password string, senders ...string) (relayv1alpha1.RelayClient, *corev1.Secret) {
	c := relayv1alpha1.RelayClient{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
		Spec:       relayv1alpha1.RelayClientSpec{RelayRef: relayv1alpha1.RelayReference{Name: relayName, Namespace: relayNS}, AllowedSenders: senders},
	}
	yes := true
	s := secretObj(ns, name, corev1.SecretTypeOpaque, map[string][]byte{ClientKeyPassword: []byte(password)})
	s.OwnerReferences = []metav1.OwnerReference{{APIVersion: relayv1alpha1.GroupVersion.String(), Kind: "RelayClient", Name: name, UID: c.UID, Controller: &yes}}
	return c, s
}

// Each way a client can be left out says why, naming the field to fix; the others
// become users, with the previous password's hash only while it has not expired.
func TestClientResults(t *testing.T) {
	w := newWorld(t)
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	relay := realisticRelay()
	domains := []relayv1alpha1.RelayDomain{domain("team-a", "a", "team-a.example", 1), domain(relayNS, "shared", "example.com", 2),
		domain("team-b", "b", "team-b.example", 3)}

	good, goodSec := clientWithSecret("team-a", "app", "pw-good", "noreply@team-a.example", "example.com")
	old, _ := bcrypt.GenerateFromPassword([]byte("pw-old"), bcrypt.MinCost)
	goodSec.Annotations = map[string]string{PreviousHashAnnotation: string(old), PreviousExpiresAnnotation: now.Add(time.Hour).Format(time.RFC3339)}
	expired, expiredSec := clientWithSecret("team-a", "expired", "pw-expired", "team-a.example")
	expiredSec.Annotations = map[string]string{PreviousHashAnnotation: string(old), PreviousExpiresAnnotation: now.Add(-time.Second).Format(time.RFC3339)}
	foreign, foreignSec := clientWithSecret("team-a", "foreign", "pw-foreign", "team-b.example")
	unknown, unknownSec := clientWithSecret("team-a", "unknown", "pw-unknown", "nowhere.example")
	stolen, stolenSec := clientWithSecret("team-a", "stolen", "pw-stolen", "team-a.example")
	stolenSec.OwnerReferences = nil
	waiting, _ := clientWithSecret("team-a", "waiting", "", "team-a.example")
	for _, s := range []*corev1.Secret{goodSec, expiredSec, foreignSec, unknownSec, stolenSec} {
		w.addSecret(s)
	}
	in := w.inputs(relay, domains...)
	in.Clients = []relayv1alpha1.RelayClient{good, expired, foreign, unknown, stolen, waiting}
	in.Now = now
	res, err := Config(in)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct{ reason, in string }{
		"app": {"", ""}, "expired": {"", ""},
		"foreign": {relayv1alpha1.ReasonInvalidSender, "spec.allowedSenders[0]"},
		"unknown": {relayv1alpha1.ReasonInvalidSender, "not relayed"},
		"stolen":  {relayv1alpha1.ReasonSecretConflict, "not this RelayClient's"},
		"waiting": {relayv1alpha1.ReasonProgressing, "waiting"},
	} {
		got := res.ClientResults[types.NamespacedName{Namespace: "team-a", Name: name}]
		if got.Included != (want.reason == "") || got.Reason != want.reason || !strings.Contains(got.Message, want.in) {
			t.Errorf("%s: %+v, want reason %q mentioning %q", name, got, want.reason, want.in)
		}
	}
	users := map[string]int{}
	for _, u := range res.Config.Users {
		n := 1
		if u.PreviousPasswordHashFile != "" {
			n = 2
		}
		users[u.Username] = n
	}
	if users["team-a.app"] != 2 || users["team-a.expired"] != 1 || len(users) != 4 { // and the relay's two users
		t.Errorf("users and their hash counts: %v", users)
	}
	if !res.NextChange.Equal(now.Add(time.Hour)) {
		t.Errorf("NextChange %v, want the previous password's expiry", res.NextChange)
	}
	checkNoSecretValues(t, in, res)
}

// The endpoint is the first listener that requires AUTH over TLS; without TLS there
// is none, and clients are told so.
func TestClientEndpoint(t *testing.T) {
	relay := realisticRelay()
	if ep := ClientEndpoint(relay); ep.Port != 587 || ep.Implicit || ep.Host != relayName+"."+relayNS+".svc" {
		t.Errorf("default listeners: %+v", ep)
	}
	relay.Spec.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 25}, {Name: "smtps", Port: 465, TLS: relayv1alpha1.TLSImplicit, RequireAuth: true}}
	if ep := ClientEndpoint(relay); ep.Port != 465 || !ep.Implicit {
		t.Errorf("implicit TLS listener: %+v", ep)
	}
	relay.Spec.TLS = nil
	relay.Spec.Listeners = nil
	if ep := ClientEndpoint(relay); ep.Port != 0 {
		t.Errorf("no TLS: %+v", ep)
	}
	w := newWorld(t)
	c, s := clientWithSecret(relayNS, "app", "pw", "example.com")
	w.addSecret(s)
	relay.Spec.Auth = nil
	in := w.inputs(relay, domain(relayNS, "d", "example.com", 1))
	in.Clients = []relayv1alpha1.RelayClient{c}
	res, err := Config(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.ClientResults[types.NamespacedName{Namespace: relayNS, Name: "app"}]; got.Reason != relayv1alpha1.ReasonNoSubmissionListener {
		t.Errorf("client of a relay without TLS: %+v", got)
	}
}

// Each pod gets its share of a fleet budget, rounded down and at least 1: a client's,
// a domain's and a smarthost's.
func TestFleetShares(t *testing.T) {
	w := newWorld(t)
	relay := realisticRelay()
	d := domain("team-a", "a", "team-a.example", 1)
	d.Spec.Limits = &relayv1alpha1.RateLimits{RecipientsPerHour: 1000}
	c, s := clientWithSecret("team-a", "app", "pw", "team-a.example")
	c.Spec.Limits = &relayv1alpha1.ClientRateLimits{RateLimits: relayv1alpha1.RateLimits{MessagesPerMinute: 300, MessagesPerDay: 2}, MaxSessions: 10}
	w.addSecret(s)
	ses := w.smarthosts[types.NamespacedName{Namespace: relayNS, Name: "ses"}]
	ses.Spec.Limits = &relayv1alpha1.RateLimits{MessagesPerHour: 50000}
	defer func() { ses.Spec.Limits = nil }()
	for pods, want := range map[int32][4]int64{1: {300, 2, 10, 1000}, 3: {100, 1, 3, 333}, 4: {75, 1, 2, 250}} {
		in := w.inputs(relay, d)
		in.Clients = []relayv1alpha1.RelayClient{c}
		in.FleetSize = pods
		res, err := Config(in)
		if err != nil {
			t.Fatal(err)
		}
		var got [4]int64
		for _, u := range res.Config.Users {
			if u.Username == "team-a.app" && u.RateLimits != nil {
				got[0], got[1], got[2] = u.RateLimits.MessagesPerMinute, u.RateLimits.MessagesPerDay, int64(u.RateLimits.MaxSessions)
			}
		}
		for _, dc := range res.Config.Domains {
			if dc.Domain == "team-a.example" && dc.RateLimits != nil {
				got[3] = dc.RateLimits.RecipientsPerHour
			}
		}
		if got != want {
			t.Errorf("%d pods: client per minute, per day, sessions and domain recipients per hour %v, want %v", pods, got, want)
		}
		for _, u := range res.Config.Upstreams {
			if u.RateLimits == nil || u.RateLimits.MessagesPerHour != 50000/int64(pods) {
				t.Errorf("%d pods: upstream %s limits %+v, want %d per hour", pods, u.Name, u.RateLimits, 50000/pods)
			}
		}
	}
}

// Capture: everything, or the domains and clients of the selected namespaces and
// the clients that ask for it; the cap passes to the relay.
func TestCaptureRendered(t *testing.T) {
	w := newWorld(t)
	relay := realisticRelay()
	domains := []relayv1alpha1.RelayDomain{domain("staging", "s", "staging.example", 1), domain("prod", "p", "prod.example", 2)}
	stagingApp, s1 := clientWithSecret("staging", "app", "pw1", "staging.example")
	prodApp, s2 := clientWithSecret("prod", "app", "pw2", "prod.example")
	prodTest, s3 := clientWithSecret("prod", "test", "pw3", "prod.example")
	prodTest.Spec.Capture = true
	for _, s := range []*corev1.Secret{s1, s2, s3} {
		w.addSecret(s)
	}
	render := func(c *relayv1alpha1.CaptureSpec, selected map[string]bool) *Result {
		t.Helper()
		r := relay.DeepCopy()
		r.Spec.Capture = c
		in := w.inputs(r, domains...)
		in.Clients = []relayv1alpha1.RelayClient{stagingApp, prodApp, prodTest}
		in.CaptureNamespaces = selected
		in.Now = time.Now()
		res, err := Config(in)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	captured := func(res *Result) (users, doms []string) {
		for _, u := range res.Config.Users {
			if u.Capture {
				users = append(users, u.Username)
			}
		}
		for _, d := range res.Config.Domains {
			if d.Capture {
				doms = append(doms, d.Domain)
			}
		}
		return users, doms
	}

	// No spec.capture: only the client that asks.
	res := render(nil, nil)
	if users, doms := captured(res); res.Config.Capture != nil || strings.Join(users, ",") != "prod.test" || len(doms) != 0 {
		t.Fatalf("without spec.capture: capture %+v, users %v, domains %v", res.Config.Capture, users, doms)
	}
	// All: the relay's flag, no marks needed.
	size := resource.MustParse("8Mi")
	res = render(&relayv1alpha1.CaptureSpec{MaxMessages: ptr(int32(50)), MaxSize: &size}, nil)
	if c := res.Config.Capture; c == nil || !c.All || c.MaxMessages != 50 || c.MaxBytes != 8<<20 {
		t.Fatalf("capture all: %+v", c)
	}
	// A selector: the staging namespace's domain and client, and the one that asks.
	res = render(&relayv1alpha1.CaptureSpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "staging"}}},
		map[string]bool{"staging": true})
	users, doms := captured(res)
	if c := res.Config.Capture; c == nil || c.All || strings.Join(users, ",") != "prod.test,staging.app" || strings.Join(doms, ",") != "staging.example" {
		t.Fatalf("selector: capture %+v, users %v, domains %v", c, users, doms)
	}
	if !ClientCaptured(relay, &prodTest, nil) || ClientCaptured(relay, &prodApp, nil) {
		t.Fatal("ClientCaptured without spec.capture")
	}
	// A bad cap names the field.
	zero := resource.MustParse("0")
	r := relay.DeepCopy()
	r.Spec.Capture = &relayv1alpha1.CaptureSpec{MaxSize: &zero}
	if _, err := Config(w.inputs(r, domains...)); err == nil || !strings.Contains(err.Error(), "spec.capture.maxSize") {
		t.Fatalf("maxSize 0: %v", err)
	}
}
