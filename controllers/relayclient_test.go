package controllers_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// TestRelayClient follows one application's RelayClient through its life: refused
// while its namespace is not admitted, then its Secret written and its hash in the
// relay's configuration, a bad allowed sender named in a condition, a rotation whose
// previous password works until the overlap's end and then stops, and its deletion revoking
// it. A client whose Secret name is taken gets a condition and leaves that Secret be.
func TestRelayClient(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	relayNS, appNS := namespace(t, "client-mail"), namespace(t, "client-app")
	relay := newRelay(relayNS, "outbound", withTLS("tls"), withSmarthost("mta"))
	create(t, tlsSecret(t, relayNS, "tls"), newSmarthost(relayNS, "mta", "mta.corp.example", 25, plainText), relay,
		newDomain(appNS, "app", "app.example", relayv1alpha1.RelayReference{Name: "outbound", Namespace: relayNS}))
	app := newClient(appNS, "billing", relayv1alpha1.RelayReference{Name: "outbound", Namespace: relayNS}, "noreply@app.example")
	create(t, app)
	conds := func() []metav1.Condition { return app.Status.Conditions }
	username := appNS + ".billing"

	// The relay takes RelayClients from its own namespace only: refused, no Secret.
	eventually(t, condition(t, app, conds, relayv1alpha1.AcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonNamespaceNotAllowed))
	sec := &corev1.Secret{}
	secKey := types.NamespacedName{Namespace: appNS, Name: "billing"}
	if err := env.Client.Get(ctx, secKey, sec); !apierrors.IsNotFound(err) {
		t.Fatalf("a refused client got a Secret: %v", err)
	}

	// Admitting the namespace writes the Secret and attaches the client.
	update(t, relay, func() {
		relay.Spec.Domains.Namespaces = relayv1alpha1.DomainNamespaces{From: "Selector",
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"mail": "yes"}}}
	})
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: appNS}}
	update(t, nsObj, func() { nsObj.Labels = map[string]string{"mail": "yes"} })
	eventually(t, condition(t, app, conds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	if err := env.Client.Get(ctx, secKey, sec); err != nil {
		t.Fatal(err)
	}
	if !metav1.IsControlledBy(sec, app) {
		t.Errorf("the Secret is not controlled by its RelayClient: %+v", sec.OwnerReferences)
	}
	password := string(sec.Data["password"])
	want := map[string]string{"host": "outbound." + relayNS + ".svc", "port": "587", "username": username}
	for k, v := range want {
		if got := string(sec.Data[k]); got != v {
			t.Errorf("Secret key %s = %q, want %q", k, got, v)
		}
	}
	u, err := url.Parse(string(sec.Data["url"]))
	if pw, _ := u.User.Password(); err != nil || u.Scheme != "smtp" || u.Host != want["host"]+":587" || u.User.Username() != username || pw != password {
		t.Errorf("url %q does not carry the credentials (%v)", sec.Data["url"], err)
	}
	if len(password) < 32 {
		t.Errorf("password of %d characters, want at least 32", len(password))
	}
	if app.Status.Username != username || app.Status.SecretName != "billing" || app.Status.RotatedAt == nil {
		t.Errorf("status %s", toString(app.Status))
	}
	// hashes returns a function that checks which passwords the rendered
	// configuration accepts for the client.
	hashes := func(accepted []string, refused ...string) func() string {
		return func() string {
			l, msg := loadRendered(relayNS, "outbound")
			if l == nil {
				return msg
			}
			works := func(pw string) bool {
				for _, h := range l.PasswordHashes[username] {
					if bcrypt.CompareHashAndPassword(h, []byte(pw)) == nil {
						return true
					}
				}
				return false
			}
			for _, pw := range accepted {
				if !works(pw) {
					return fmt.Sprintf("a password that should work does not (%d hashes)", len(l.PasswordHashes[username]))
				}
			}
			for _, pw := range refused {
				if works(pw) {
					return fmt.Sprintf("a password that should not work does (%d hashes)", len(l.PasswordHashes[username]))
				}
			}
			return ""
		}
	}
	eventually(t, hashes([]string{password}))

	// A sender outside the client's domains: named in a condition, and the client
	// leaves the configuration.
	update(t, app, func() { app.Spec.AllowedSenders = []string{"noreply@app.example", "ceo@other.example"} })
	eventually(t, condition(t, app, conds, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonInvalidSender))
	if c := apimeta.FindStatusCondition(app.Status.Conditions, relayv1alpha1.ReadyCondition); !strings.Contains(c.Message, "spec.allowedSenders[1]") {
		t.Errorf("the condition does not name the field: %s", c.Message)
	}
	eventually(t, hashes(nil, password))
	update(t, app, func() { app.Spec.AllowedSenders = []string{"noreply@app.example"} })
	eventually(t, hashes([]string{password}))

	// Rotation: a new password; the previous one works for the overlap, then stops.
	update(t, app, func() {
		app.Spec.Rotation.Overlap = &metav1.Duration{Duration: time.Hour}
		app.Annotations = map[string]string{relayv1alpha1.RotateAnnotation: "1"}
	})
	var rotated string
	eventually(t, func() string {
		if err := env.Client.Get(ctx, secKey, sec); err != nil {
			return err.Error()
		}
		if rotated = string(sec.Data["password"]); rotated == password {
			return "password not rotated yet"
		}
		return ""
	})
	eventually(t, hashes([]string{password, rotated}))
	eventually(t, func() string {
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: appNS, Name: "billing"}, app); err != nil {
			return err.Error()
		}
		if app.Status.PreviousPasswordExpiresAt == nil {
			return "status.previousPasswordExpiresAt not set: " + toString(app.Status)
		}
		return ""
	})
	// The overlap ends (its end moved to the past, as time would): the old password
	// stops working.
	update(t, sec, func() {
		sec.Annotations["relay.kuberelay.io/previous-password-expires"] = time.Now().Add(-time.Second).UTC().Format(time.RFC3339)
	})
	eventually(t, hashes([]string{rotated}, password))
	// The same annotation value again is not a new request.
	update(t, app, func() { app.Labels = map[string]string{"touched": "yes"} })
	if err := env.Client.Get(ctx, secKey, sec); err != nil || string(sec.Data["password"]) != rotated {
		t.Fatalf("the password changed without a new rotate request (%v)", err)
	}
	noSecretIn(t, appNS, password, rotated)
	noSecretIn(t, relayNS, password, rotated)

	// A Secret name someone else uses: a condition, and the Secret untouched.
	create(t, basicAuth(appNS, "taken", "someone", "their-own-password"))
	other := newClient(appNS, "other", relayv1alpha1.RelayReference{Name: "outbound", Namespace: relayNS}, "app.example")
	other.Spec.SecretName = "taken"
	create(t, other)
	eventually(t, condition(t, other, func() []metav1.Condition { return other.Status.Conditions },
		relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonSecretConflict))
	taken := &corev1.Secret{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: appNS, Name: "taken"}, taken); err != nil || string(taken.Data["password"]) != "their-own-password" || len(taken.OwnerReferences) != 0 {
		t.Fatalf("the taken Secret was changed: %v %+v", err, taken.OwnerReferences)
	}

	// Deleting the client revokes it.
	if err := env.Client.Delete(ctx, app); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		l, msg := loadRendered(relayNS, "outbound")
		if l == nil {
			return msg
		}
		if _, ok := l.PasswordHashes[username]; ok {
			return "the deleted client can still log in"
		}
		return ""
	})
}

// A RelayClient's budget is split across the relay's pods and split again when the
// relay is scaled.
func TestFleetRateLimits(t *testing.T) {
	startManager(t)
	ns := namespace(t, "client-limits")
	relay := newRelay(ns, "outbound", withTLS("tls"), withSmarthost("mta"), withReplicas(3))
	app := newClient(ns, "app", ref("outbound"), "app.example")
	app.Spec.Limits = &relayv1alpha1.ClientRateLimits{RateLimits: relayv1alpha1.RateLimits{MessagesPerMinute: 300}, MaxSessions: 6}
	create(t, tlsSecret(t, ns, "tls"), newSmarthost(ns, "mta", "mta.corp.example", 25, plainText), relay,
		newDomain(ns, "app", "app.example", ref("outbound")), app)
	perPod := func(msgs int64, sessions int) func() string {
		return func() string {
			l, msg := loadRendered(ns, "outbound")
			if l == nil {
				return msg
			}
			for _, u := range l.Config.Users {
				if u.Username == ns+".app" {
					if u.RateLimits == nil || u.RateLimits.MessagesPerMinute != msgs || u.RateLimits.MaxSessions != sessions {
						return fmt.Sprintf("per-pod limits %+v, want %d messages a minute and %d sessions", u.RateLimits, msgs, sessions)
					}
					return ""
				}
			}
			return "the client is not rendered yet"
		}
	}
	eventually(t, perPod(100, 2))
	update(t, relay, func() { relay.Spec.Replicas = ptr(int32(2)) })
	eventually(t, perPod(150, 3))

	// A pod reports the client's use; the client's status shows the fleet's.
	ctx := context.Background()
	dep := &appsv1.Deployment{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(relay), dep); err != nil {
			return err.Error()
		}
		return ""
	})
	pod := startRelayPod(t, ns, relay, dep)
	pod.mu.Lock()
	pod.rateUse = []map[string]any{{"kind": "user", "name": ns + ".app", "messages": []int64{7, 40, 90}, "recipients": []int64{9, 50, 120}},
		{"kind": "domain", "name": "app.example", "messages": []int64{1, 1, 1}, "recipients": []int64{1, 1, 1}}}
	pod.mu.Unlock()
	pod.load(t)
	eventually(t, func() string {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(app), app); err != nil {
			return err.Error()
		}
		want := relayv1alpha1.ClientUsage{Messages: relayv1alpha1.WindowCounts{Minute: 7, Hour: 40, Day: 90},
			Recipients: relayv1alpha1.WindowCounts{Minute: 9, Hour: 50, Day: 120}}
		if app.Status.Usage == nil || *app.Status.Usage != want {
			return fmt.Sprintf("status.usage %+v, want %+v", app.Status.Usage, want)
		}
		return ""
	})
}
