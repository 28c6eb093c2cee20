package controllers_test

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// TestCaptureSelection: a relay capturing the mail of namespaces labelled
// env=staging marks a namespace's domain and client in relay.yaml, and the client's
// status, once the namespace gets the label, and unmarks them when it loses it; a
// client asking with spec.capture is captured wherever it is.
func TestCaptureSelection(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	relayNS, appNS := namespace(t, "capture-mail"), namespace(t, "capture-app")
	relay := newRelay(relayNS, "outbound", withTLS("tls"), withSmarthost("mta"))
	relay.Spec.Domains.Namespaces = relayv1alpha1.DomainNamespaces{From: "All"}
	relay.Spec.Capture = &relayv1alpha1.CaptureSpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "staging"}}}
	ref := relayv1alpha1.RelayReference{Name: "outbound", Namespace: relayNS}
	app := newClient(appNS, "app", ref, "noreply@app.example")
	tester := newClient(relayNS, "tester", ref, "qa@corp.example")
	tester.Spec.Capture = true
	create(t, tlsSecret(t, relayNS, "tls"), newSmarthost(relayNS, "mta", "mta.corp.example", 25, plainText), relay,
		newDomain(appNS, "app", "app.example", ref), newDomain(relayNS, "corp", "corp.example", ref), app, tester)

	// captured reports what relay.yaml and the clients' status say, as a mismatch.
	captured := func(wantApp bool) func() string {
		return func() string {
			l, msg := loadRendered(relayNS, "outbound")
			if l == nil {
				return msg
			}
			users, doms := map[string]bool{}, map[string]bool{}
			for _, u := range l.Config.Users {
				users[u.Username] = u.Capture
			}
			for _, d := range l.Config.Domains {
				doms[d.Domain] = d.Capture
			}
			c := l.Config.Capture
			if c == nil || c.All || c.MaxMessages != 1000 || c.MaxBytes != 32<<20 {
				return fmt.Sprintf("capture section %+v, want selected mail only, with the default cap", c)
			}
			if users[appNS+".app"] != wantApp || doms["app.example"] != wantApp || !users[relayNS+".tester"] || doms["corp.example"] {
				return fmt.Sprintf("captured users %v, domains %v (want the app's and its domain: %v)", users, doms, wantApp)
			}
			for _, rc := range []*relayv1alpha1.RelayClient{app, tester} {
				if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rc), rc); err != nil {
					return err.Error()
				}
			}
			if app.Status.Captured != wantApp || !tester.Status.Captured {
				return fmt.Sprintf("status.captured: app %v, tester %v", app.Status.Captured, tester.Status.Captured)
			}
			return ""
		}
	}
	eventually(t, captured(false))
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: appNS}}
	update(t, nsObj, func() { nsObj.Labels = map[string]string{"env": "staging"} })
	eventually(t, captured(true))
	update(t, nsObj, func() { delete(nsObj.Labels, "env") })
	eventually(t, captured(false))
}
