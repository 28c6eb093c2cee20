package controllers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/util/retry"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/internal/testenv"
	"github.com/kuberelay/kuberelay/relay/config"
)

// condition returns "" when obj (fetched again) has condition t with status and
// reason, and otherwise says what it has.
func condition(t *testing.T, obj client.Object, conds func() []metav1.Condition, typ string, status metav1.ConditionStatus, reason string) func() string {
	t.Helper()
	return func() string {
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
			return err.Error()
		}
		c := apimeta.FindStatusCondition(conds(), typ)
		if c == nil || c.Status != status || (reason != "" && c.Reason != reason) {
			return fmt.Sprintf("%T %s: want %s=%s (%s); conditions: %s", obj, obj.GetName(), typ, status, reason, toString(conds()))
		}
		if c.ObservedGeneration != obj.GetGeneration() {
			return fmt.Sprintf("%T %s: %s describes generation %d, not %d", obj, obj.GetName(), typ, c.ObservedGeneration, obj.GetGeneration())
		}
		return ""
	}
}

// update reads obj, changes it with mutate and writes it back, reading it again when
// the operator wrote it (its status) in between.
func update(t *testing.T, obj client.Object, mutate func()) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate()
		return env.Client.Update(ctx, obj)
	})
	if err != nil {
		t.Fatalf("updating %T %s: %v", obj, obj.GetName(), err)
	}
}

// noSecretIn fails if any event in ns, or the status of any kuberelay object in ns,
// holds one of the secret values.
func noSecretIn(t *testing.T, ns string, secrets ...string) {
	t.Helper()
	ctx := context.Background()
	var texts []string
	var evs eventsv1.EventList
	if err := env.Client.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		texts = append(texts, e.Note, e.Reason)
	}
	for _, l := range []client.ObjectList{&relayv1alpha1.SmtpRelayList{}, &relayv1alpha1.SmarthostList{}, &relayv1alpha1.RelayDomainList{}, &corev1.ConfigMapList{}} {
		if err := env.Client.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		texts = append(texts, toString(l))
	}
	for _, text := range texts {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("a secret value (%q) appears in %s", s, text)
			}
		}
	}
}

// warningEvent returns "" once an event with reason about the object named regarding
// has been recorded in ns.
func warningEvent(ns, regarding, reason string) func() string {
	return func() string {
		var evs eventsv1.EventList
		if err := env.Client.List(context.Background(), &evs, client.InNamespace(ns)); err != nil {
			return err.Error()
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == regarding && e.Reason == reason && e.Type == corev1.EventTypeWarning {
				return ""
			}
		}
		return fmt.Sprintf("no %s event about %s among %d events", reason, regarding, len(evs.Items))
	}
}

func TestSmarthostStatus(t *testing.T) {
	startManager(t)
	ns := namespace(t, "smarthost-status")
	sh := newSmarthost(ns, "ses", "email-smtp.eu-west-1.amazonaws.com", 587, withCredentials("creds"),
		func(s *relayv1alpha1.SmarthostSpec) {
			s.TLS.CASecretRef = &relayv1alpha1.SecretKeyReference{Name: "ca"}
		})
	create(t, sh)
	conds := func() []metav1.Condition { return sh.Status.Conditions }

	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonSecretNotFound))
	eventually(t, condition(t, sh, conds, relayv1alpha1.StalledCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSecretNotFound))
	if msg := apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.ReadyCondition).Message; !strings.Contains(msg, "creds") {
		t.Errorf("the message does not name the missing Secret: %s", msg)
	}
	eventually(t, warningEvent(ns, "ses", relayv1alpha1.ReasonSecretNotFound))

	// Creating the Secrets it names makes it ready, without touching the Smarthost.
	creds := basicAuth(ns, "creds", "AKIASMARTHOSTUSER", "smarthost-secret-pw")
	create(t, creds)
	eventually(t, func() string {
		if why := condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonSecretNotFound)(); why != "" {
			return why
		}
		if msg := apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.ReadyCondition).Message; !strings.Contains(msg, "spec.tls.caSecretRef") {
			return "still waiting for the CA Secret to be reported: " + msg
		}
		return ""
	})
	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ca", Namespace: ns},
		Data: map[string][]byte{"ca.crt": fixture(t, "smarthost-ca.crt")}})
	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	if kstatus(sh, sh.Status.ObservedGeneration, sh.Status.Conditions) != "Current" {
		t.Errorf("a ready Smarthost is not kstatus Current: %s", toString(sh.Status))
	}

	// A Secret that loses a key it must hold is reported, with the key's name.
	update(t, creds, func() { delete(creds.Data, "password") })
	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonSecretKeyMissing))
	if msg := apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.ReadyCondition).Message; !strings.Contains(msg, `"password"`) {
		t.Errorf("the message does not name the missing key: %s", msg)
	}
	// Repairing it makes it ready again.
	update(t, creds, func() { creds.StringData = map[string]string{"password": "smarthost-secret-pw2"} })
	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	if apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.StalledCondition) != nil {
		t.Errorf("a ready Smarthost is still Stalled: %s", toString(sh.Status))
	}

	noSecretIn(t, ns, "smarthost-secret-pw", "smarthost-secret-pw2", "AKIASMARTHOSTUSER")
}

// TestSmarthostOAuth2: a Smarthost logging in with OAuth 2.0 tokens waits for its
// client's Secret, names a missing key, and is ready once the Secret holds both;
// neither value appears anywhere else.
func TestSmarthostOAuth2(t *testing.T) {
	startManager(t)
	ns := namespace(t, "smarthost-oauth")
	sh := newSmarthost(ns, "m365", "smtp.office365.com", 587, func(s *relayv1alpha1.SmarthostSpec) {
		s.Auth = &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{
			TokenURL: "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token", Scopes: []string{"https://outlook.office365.com/.default"},
			ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "m365-oauth"}, Username: "relay@contoso.example"}}
	})
	create(t, sh)
	conds := func() []metav1.Condition { return sh.Status.Conditions }
	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonSecretNotFound))
	if msg := apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.ReadyCondition).Message; !strings.Contains(msg, "spec.auth.oauth2.clientSecretRef") {
		t.Errorf("the message does not name the field: %s", msg)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "m365-oauth", Namespace: ns}, StringData: map[string]string{"client-id": "0f1e2d3c-app-id"}}
	create(t, sec)
	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonSecretKeyMissing))
	if msg := apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.ReadyCondition).Message; !strings.Contains(msg, `"client-secret"`) {
		t.Errorf("the message does not name the missing key: %s", msg)
	}
	update(t, sec, func() { sec.StringData = map[string]string{"client-secret": "oauth-client-s3cret-value"} })
	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	noSecretIn(t, ns, "oauth-client-s3cret-value")
}

// TestDomainAttachment covers a domain's life against its relay: a relay that does
// not exist yet, another namespace refused and then allowed by label, a relay
// deleted under it.
func TestDomainAttachment(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	relayNS, teamNS := namespace(t, "attach-mail"), namespace(t, "attach-team")
	create(t,
		newSmarthost(relayNS, "mta", "mta.corp.example", 25, plainText),
	)
	local := newDomain(relayNS, "local", "local.example", ref("outbound"))
	team := newDomain(teamNS, "team", "team.example", relayv1alpha1.RelayReference{Name: "outbound", Namespace: relayNS})
	create(t, local, team)
	localConds := func() []metav1.Condition { return local.Status.Conditions }
	teamConds := func() []metav1.Condition { return team.Status.Conditions }

	// No relay yet.
	eventually(t, condition(t, local, localConds, relayv1alpha1.AcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonRelayNotFound))
	eventually(t, condition(t, team, teamConds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonRelayNotFound))
	eventually(t, warningEvent(relayNS, "local", relayv1alpha1.ReasonRelayNotFound))
	if kstatus(local, local.Status.ObservedGeneration, local.Status.Conditions) != "Failed" {
		t.Errorf("a domain without its relay is not kstatus Failed: %s", toString(local.Status))
	}

	// The relay appears: the local domain attaches, the other namespace is refused.
	relay := newRelay(relayNS, "outbound", withSmarthost("mta"))
	create(t, relay)
	eventually(t, condition(t, local, localConds, relayv1alpha1.AcceptedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	eventually(t, condition(t, local, localConds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	eventually(t, condition(t, team, teamConds, relayv1alpha1.AcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonNamespaceNotAllowed))
	relayed := func(want ...string) func() string {
		return func() string {
			cm := &corev1.ConfigMap{}
			if err := env.Client.Get(ctx, types.NamespacedName{Namespace: relayNS, Name: "outbound-config"}, cm); err != nil {
				return err.Error()
			}
			c, err := config.Parse([]byte(cm.Data[config.FileName]))
			if err != nil {
				return err.Error()
			}
			var got []string
			for _, d := range c.Domains {
				got = append(got, d.Domain)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				return fmt.Sprintf("relayed domains %v, want %v", got, want)
			}
			return ""
		}
	}
	eventually(t, relayed("local.example"))

	// The relay accepts namespaces labelled team=mail; labelling the namespace attaches
	// the domain without touching it.
	update(t, relay, func() {
		relay.Spec.Domains.Namespaces = relayv1alpha1.DomainNamespaces{From: "Selector",
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "mail"}}}
	})
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: teamNS}}
	update(t, ns, func() { ns.Labels = map[string]string{"team": "mail"} })
	eventually(t, condition(t, team, teamConds, relayv1alpha1.AcceptedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	eventually(t, relayed("local.example", "team.example"))
	eventually(t, func() string {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(relay), relay); err != nil {
			return err.Error()
		}
		if relay.Status.AttachedDomains != 2 {
			return "attachedDomains: " + toString(relay.Status)
		}
		return ""
	})

	// Removing the label detaches it again.
	update(t, ns, func() { ns.Labels = nil })
	eventually(t, condition(t, team, teamConds, relayv1alpha1.AcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonNamespaceNotAllowed))
	eventually(t, relayed("local.example"))

	// A domain that moves to another relay leaves the first one's configuration.
	update(t, local, func() { local.Spec.RelayRef.Name = "elsewhere" })
	eventually(t, condition(t, local, localConds, relayv1alpha1.AcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonRelayNotFound))
	eventually(t, relayed())

	// Deleting the relay leaves its domains saying so.
	update(t, local, func() { local.Spec.RelayRef.Name = "outbound" })
	eventually(t, relayed("local.example"))
	if err := env.Client.Delete(ctx, relay); err != nil {
		t.Fatal(err)
	}
	eventually(t, condition(t, local, localConds, relayv1alpha1.AcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonRelayNotFound))
	if local.Status.DKIMRecord != nil {
		t.Errorf("a detached domain still publishes a DKIM record")
	}
}

// TestChangesReachTheConfig updates each kind and rotates each kind of Secret, and
// checks that the change reaches the relay's ConfigMap or Secret and its hash, and
// never its pod template.
func TestChangesReachTheConfig(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "changes")
	create(t,
		tlsSecret(t, ns, "tls"),
		basicAuth(ns, "creds", "upstream-user", "upstream-pw-1"),
		basicAuth(ns, "app", "app", "client-pw-1"),
		dkimSecret(t, ns, "dkim"),
		newSmarthost(ns, "up", "smtp.one.example", 587, withCredentials("creds")),
		newRelay(ns, "relay", withTLS("tls"), withUsers("app"), withSmarthost("up")),
		&relayv1alpha1.RelayDomain{ObjectMeta: metav1.ObjectMeta{Name: "example-com", Namespace: ns}, Spec: relayv1alpha1.RelayDomainSpec{
			Domain: "example.com", RelayRef: relayv1alpha1.RelayReference{Name: "relay"},
			DKIM: &relayv1alpha1.DKIMSigning{Selector: "k1", PrivateKeySecretRef: relayv1alpha1.SecretKeyReference{Name: "dkim", Key: "dkim.key"}}}},
	)
	relay := &relayv1alpha1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Name: "relay", Namespace: ns}}
	domain := &relayv1alpha1.RelayDomain{ObjectMeta: metav1.ObjectMeta{Name: "example-com", Namespace: ns}}

	// rendered waits for a new hash, checks the pod template did not move, and returns
	// the loaded configuration.
	var lastHash, template string
	rendered := func(what string) *config.Loaded {
		t.Helper()
		var loaded *config.Loaded
		eventually(t, func() string {
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(relay), relay); err != nil {
				return err.Error()
			}
			if relay.Status.ConfigHash == "" || relay.Status.ConfigHash == lastHash {
				return what + ": the relay was not re-rendered: " + toString(relay.Status)
			}
			l, why := loadRendered(ns, "relay")
			if why != "" {
				return why
			}
			if l.Hash != relay.Status.ConfigHash {
				return what + ": ConfigMap and Secret not yet at the status hash"
			}
			loaded = l
			return ""
		})
		lastHash = relay.Status.ConfigHash
		dep := &appsv1.Deployment{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(relay), dep); err != nil {
			t.Fatal(err)
		}
		if template == "" {
			template = toString(dep.Spec.Template)
		} else if toString(dep.Spec.Template) != template {
			t.Fatalf("%s changed the pod template, which would restart the pods", what)
		}
		return loaded
	}
	first := rendered("creating")
	if first.Config.Upstreams[0].Endpoints[0].Host != "smtp.one.example" {
		t.Fatalf("upstream: %+v", first.Config.Upstreams[0])
	}
	hashBefore := first.PasswordHashes["app"][0]

	// Each kind, updated.
	sh := &relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Name: "up", Namespace: ns}}
	update(t, sh, func() { sh.Spec.Endpoints[0].Host = "smtp.two.example" })
	if l := rendered("a Smarthost endpoint change"); l.Config.Upstreams[0].Endpoints[0].Host != "smtp.two.example" {
		t.Errorf("upstream after the change: %+v", l.Config.Upstreams[0])
	}
	update(t, relay, func() { relay.Spec.AllowedNetworks = []string{"10.0.0.0/8", "192.168.0.0/16"} })
	if l := rendered("an SmtpRelay change"); len(l.Config.AllowedNetworks) != 2 {
		t.Errorf("allowedNetworks after the change: %v", l.Config.AllowedNetworks)
	}
	update(t, domain, func() { domain.Spec.AllowedSenders = []string{"billing"} })
	if l := rendered("a RelayDomain change"); len(l.Config.Domains[0].AllowedSenders) != 1 {
		t.Errorf("domain after the change: %+v", l.Config.Domains[0])
	}
	if l, _ := loadRendered(ns, "relay"); !bytes.Equal(l.PasswordHashes["app"][0], hashBefore) {
		t.Error("the client password was re-hashed although it did not change")
	}

	// Each kind of Secret, rotated.
	rotate := func(name string, data map[string][]byte) {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		update(t, s, func() {
			for k, v := range data {
				s.Data[k] = v
			}
		})
	}
	rotate("creds", map[string][]byte{"password": []byte("upstream-pw-2")})
	rendered("an upstream password rotation")
	if l, _ := loadRendered(ns, "relay"); l.UpstreamCredentials["up"].Password != "upstream-pw-2" {
		t.Errorf("the relay Secret does not hold the rotated upstream password")
	}
	rotate("app", map[string][]byte{"password": []byte("client-pw-2")})
	if l := rendered("a client password rotation"); bytes.Equal(l.PasswordHashes["app"][0], hashBefore) {
		t.Error("the rotated client password was not re-hashed")
	}
	rotate("tls", map[string][]byte{"tls.crt": fixture(t, "relay-tls-renewed.crt"), "tls.key": fixture(t, "relay-tls-renewed.key")})
	rendered("a certificate renewal")
	recordBefore := toString(domain.Status.DKIMRecord)
	rotate("dkim", map[string][]byte{"dkim.key": fixture(t, "dkim-rsa.key")})
	rendered("a DKIM key rotation")
	eventually(t, func() string {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(domain), domain); err != nil {
			return err.Error()
		}
		if r := domain.Status.DKIMRecord; r == nil || toString(r) == recordBefore || !strings.Contains(r.Value, "k=rsa") {
			return "DKIM record after rotation: " + toString(r)
		}
		return ""
	})

	// A rotation that breaks the key is reported on the domain, which leaves the
	// configuration; the relay keeps relaying its other domains.
	rotate("dkim", map[string][]byte{"dkim.key": []byte("not a key")})
	domainConds := func() []metav1.Condition { return domain.Status.Conditions }
	eventually(t, condition(t, domain, domainConds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonInvalidDKIMKey))
	if l := rendered("a broken DKIM key"); len(l.Config.Domains) != 0 {
		t.Errorf("a domain with a broken key is still relayed: %+v", l.Config.Domains)
	}
	eventually(t, warningEvent(ns, "example-com", relayv1alpha1.ReasonInvalidDKIMKey))

	// Deleting the domain removes it for good.
	rotate("dkim", map[string][]byte{"dkim.key": fixture(t, "dkim-ed25519.key")})
	if l := rendered("a repaired DKIM key"); len(l.Config.Domains) != 1 {
		t.Errorf("the repaired domain is not relayed: %+v", l.Config.Domains)
	}
	if err := env.Client.Delete(ctx, domain); err != nil {
		t.Fatal(err)
	}
	if l := rendered("deleting the domain"); len(l.Config.Domains) != 0 {
		t.Errorf("a deleted domain is still relayed: %+v", l.Config.Domains)
	}

	// A relay whose Secret disappears keeps its last good configuration and says why.
	cmBefore := resourceVersions(t, ns)
	if err := env.Client.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "tls", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	relayConds := func() []metav1.Condition { return relay.Status.Conditions }
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.StalledCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSecretNotFound))
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonSecretNotFound))
	eventually(t, warningEvent(ns, "relay", relayv1alpha1.ReasonSecretNotFound))
	if after := resourceVersions(t, ns); after["*relayv1alpha1.ConfigMapList/relay-config"] != cmBefore["*relayv1alpha1.ConfigMapList/relay-config"] ||
		after["*relayv1alpha1.SecretList/relay-secrets"] != cmBefore["*relayv1alpha1.SecretList/relay-secrets"] {
		t.Error("the last good configuration was overwritten while the relay could not be rendered")
	}
	if relay.Status.ConfigHash != lastHash {
		t.Errorf("status.configHash moved to %s without a new configuration", relay.Status.ConfigHash)
	}

	noSecretIn(t, ns, "upstream-pw-1", "upstream-pw-2", "client-pw-1", "client-pw-2", "PRIVATE KEY")
}

// loadRendered loads a relay's ConfigMap and Secret with the relay's own loader.
func loadRendered(ns, relay string) (*config.Loaded, string) {
	ctx := context.Background()
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: relay + "-config"}, cm); err != nil {
		return nil, err.Error()
	}
	sec := &corev1.Secret{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: relay + "-secrets"}, sec); err != nil {
		return nil, err.Error()
	}
	l, err := config.LoadBytes([]byte(cm.Data[config.FileName]), mapFS(sec.Data))
	if err != nil {
		return nil, "the rendered configuration does not load: " + err.Error()
	}
	return l, ""
}

// TestConfigAppliedAndCurrent plays the parts envtest does not run: the Deployment
// controller (its status) and a relay pod, which serves /status with the hash the
// relay's loader computes from the ConfigMap and Secret it has been given. The relay
// must report ConfigApplied, and become kstatus Current, only once the pod runs the
// rendered configuration.
func TestConfigAppliedAndCurrent(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "applied")
	relay := newRelay(ns, "relay", withReplicas(1), withSmarthost("mta"))
	create(t, newSmarthost(ns, "mta", "mta.corp.example", 25, plainText), relay)
	relayConds := func() []metav1.Condition { return relay.Status.Conditions }

	// The Deployment exists; without pods the relay is still rolling out.
	dep := &appsv1.Deployment{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(relay), dep); err != nil {
			return err.Error()
		}
		return ""
	})
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, relayv1alpha1.ReasonRolloutInProgress))
	if got := kstatus(relay, relay.Status.ObservedGeneration, relay.Status.Conditions); got != "InProgress" {
		t.Errorf("kstatus while rolling out: %s", got)
	}

	// A pod, started on the configuration rendered now, then the rollout completes.
	pod := startRelayPod(t, ns, relay, dep)
	pod.load(t)
	dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if err := env.Client.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ConfigAppliedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonConfigApplied))
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	if relay.Status.ConfigAppliedReplicas != 1 || relay.Status.ReadyReplicas != 1 || relay.Status.Selector == "" {
		t.Errorf("status: %s", toString(relay.Status))
	}
	if got := kstatus(relay, relay.Status.ObservedGeneration, relay.Status.Conditions); got != "Current" {
		t.Errorf("kstatus when done: %s (%s)", got, toString(relay.Status))
	}

	// A change renders a new configuration: until the pod has it, the relay says so.
	update(t, relay, func() { relay.Spec.AllowedNetworks = []string{"10.1.0.0/16"} })
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ConfigAppliedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonConfigPending))
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, relayv1alpha1.ReasonConfigPending))
	if msg := apimeta.FindStatusCondition(relay.Status.Conditions, relayv1alpha1.ConfigAppliedCondition).Message; !strings.Contains(msg, "0 of 1") || !strings.Contains(msg, pod.name) {
		t.Errorf("ConfigApplied message does not say which pod lags: %s", msg)
	}
	if got := kstatus(relay, relay.Status.ObservedGeneration, relay.Status.Conditions); got != "InProgress" {
		t.Errorf("kstatus while a pod runs an older configuration: %s", got)
	}
	// The pod is stamped with the new hash, which makes a kubelet refresh its mounted
	// files at once; its spec, and so the container, is untouched.
	podObj := &corev1.Pod{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: pod.name}, podObj); err != nil {
			return err.Error()
		}
		if got := podObj.Annotations["relay.kuberelay.io/config-hash"]; got != relay.Status.ConfigHash {
			return fmt.Sprintf("pod annotated with %q, want %q", got, relay.Status.ConfigHash)
		}
		return ""
	})
	// The kubelet delivers the new files and the relay reloads them.
	pod.load(t)
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ConfigAppliedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonConfigApplied))
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	if pod.hash() != relay.Status.ConfigHash {
		t.Errorf("ConfigApplied with the pod at %s and the relay at %s", pod.hash(), relay.Status.ConfigHash)
	}

	// A pod that stops answering is reported by name.
	pod.srv.Close()
	update(t, relay, func() { relay.Spec.AllowedNetworks = []string{"10.2.0.0/16"} })
	eventually(t, condition(t, relay, relayConds, relayv1alpha1.ConfigAppliedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonConfigPending))
	if msg := apimeta.FindStatusCondition(relay.Status.Conditions, relayv1alpha1.ConfigAppliedCondition).Message; !strings.Contains(msg, pod.name+" did not answer") {
		t.Errorf("ConfigApplied message: %s", msg)
	}
}

// relayPod stands in for a relay pod: a Pod object, ready at 127.0.0.1, whose http
// port is a local server answering /status as the relay does.
type relayPod struct {
	name, ns, relay string
	srv             *httptest.Server
	mu              sync.Mutex
	configHash      string
	// rateUse is served as /status's rateUse, as a relay with rate limits reports it.
	rateUse []map[string]any
	// loaded is the configuration load made the pod run.
	loaded *config.Loaded
	// check answers POST /upstreams/check: each upstream's endpoint results; rounds
	// are the rounds asked for and lastRound the last, served in /status.
	check     func(config.Upstream) []map[string]any
	rounds    int
	lastRound map[string]any
	// checkedUpstreams are the upstreams each round checked.
	checkedUpstreams []string
}

func (p *relayPod) hash() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.configHash
}

// load is the kubelet delivering the current ConfigMap and Secret and the relay
// loading them.
func (p *relayPod) load(t *testing.T) {
	t.Helper()
	var l *config.Loaded
	eventually(t, func() string {
		var why string
		l, why = loadRendered(p.ns, p.relay)
		return why
	})
	p.mu.Lock()
	p.configHash, p.loaded = l.Hash, l
	p.mu.Unlock()
}

// roundsAsked is how many rounds of upstream checks the pod was asked for.
func (p *relayPod) roundsAsked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rounds
}

func startRelayPod(t *testing.T, ns string, relay *relayv1alpha1.SmtpRelay, dep *appsv1.Deployment) *relayPod {
	t.Helper()
	return startRelayPodNamed(t, ns, relay, dep, relay.Name+"-7d9f8-abcde")
}

func startRelayPodNamed(t *testing.T, ns string, relay *relayv1alpha1.SmtpRelay, dep *appsv1.Deployment, name string) *relayPod {
	t.Helper()
	ctx := context.Background()
	p := &relayPod{name: name, ns: ns, relay: relay.Name}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		switch {
		case r.URL.Path == "/status":
			_ = json.NewEncoder(w).Encode(map[string]any{"configHash": p.configHash, "ready": true, "rateUse": p.rateUse, "upstreamChecks": p.lastRound})
		case r.URL.Path == "/upstreams/check" && r.Method == http.MethodPost && p.check != nil && p.loaded != nil:
			// A round that finishes at once, on the configuration the pod runs.
			ups := map[string]any{}
			asked := r.URL.Query()["upstream"]
			for _, u := range p.loaded.Config.Upstreams {
				if len(asked) == 0 || slices.Contains(asked, u.Name) {
					ups[u.Name] = p.check(u)
					p.checkedUpstreams = append(p.checkedUpstreams, u.Name)
				}
			}
			p.rounds++
			now := time.Now().UTC().Add(time.Duration(p.rounds) * time.Millisecond)
			p.lastRound = map[string]any{"configHash": p.configHash, "startedAt": now, "finishedAt": now, "upstreams": ups}
			w.WriteHeader(http.StatusAccepted)
			_ = json.NewEncoder(w).Encode(p.lastRound)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(p.srv.Close)
	_, portStr, _ := net.SplitHostPort(p.srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)

	if _, err := testenv.StartRelayPod(ctx, env.Client, dep, p.name, int32(port)); err != nil {
		t.Fatal(err)
	}
	return p
}

// kstatus computes an object's status as kstatus does for a resource with standard
// conditions: InProgress until the status describes the current generation and
// while Reconciling is True, Failed while Stalled is True, otherwise Current.
func kstatus(obj client.Object, observedGeneration int64, conds []metav1.Condition) string {
	switch {
	case observedGeneration != obj.GetGeneration():
		return "InProgress"
	case apimeta.IsStatusConditionTrue(conds, relayv1alpha1.ReconcilingCondition):
		return "InProgress"
	case apimeta.IsStatusConditionTrue(conds, relayv1alpha1.StalledCondition):
		return "Failed"
	}
	return "Current"
}
