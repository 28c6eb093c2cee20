package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// TestSmarthostChecks: a relay fleet of two stand-in pods checks its Smarthost once
// per configuration (one pod asked, not both); a refused login becomes AuthAccepted
// False with the server's reply, an unreachable endpoint Reachable False naming it;
// fixing the password (a new configuration, no restart) makes the next round log in,
// and the conditions True.
func TestSmarthostChecks(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "checks")
	relay := newRelay(ns, "outbound", withSmarthost("mta"))
	sh := newSmarthost(ns, "mta", "mta.corp.example", 587, withCredentials("creds"), func(s *relayv1alpha1.SmarthostSpec) {
		s.Endpoints = append(s.Endpoints, relayv1alpha1.SmarthostEndpoint{Host: "mta2.corp.example", Port: 587})
	})
	creds := basicAuth(ns, "creds", "relay", "wrong-password")
	// A second Smarthost, routed to by a domain, with checks off: never checked.
	off := newSmarthost(ns, "off", "mta.off.example", 25, plainText, func(s *relayv1alpha1.SmarthostSpec) {
		s.Check = &relayv1alpha1.SmarthostCheck{Interval: &metav1.Duration{}}
	})
	create(t, creds, sh, off, relay, newDomain(ns, "off", "off.example", ref("outbound"), func(s *relayv1alpha1.RelayDomainSpec) {
		s.SmarthostRef = &relayv1alpha1.LocalObjectReference{Name: "off"}
	}))
	dep := &appsv1.Deployment{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(relay), dep); err != nil {
			return err.Error()
		}
		return ""
	})
	// The stand-ins answer as the relay would: the first endpoint refuses the wrong
	// password, the second does not answer.
	var fixed atomic.Bool
	check := func(u config.Upstream) []map[string]any {
		refused := !fixed.Load()
		first := map[string]any{"endpoint": "mta.corp.example:587", "reachable": true, "authAccepted": !refused}
		if refused {
			first["error"] = `upstream mta.corp.example:587: 535 5.7.8 Authentication credentials invalid: AUTH PLAIN as "relay" refused with 535`
		}
		return []map[string]any{first, {"endpoint": "mta2.corp.example:587", "reachable": false, "error": "upstream mta2.corp.example:587: connecting: dial tcp: i/o timeout"}}
	}
	pods := []*relayPod{startRelayPodNamed(t, ns, relay, dep, "outbound-7d9f8-aaaaa"), startRelayPodNamed(t, ns, relay, dep, "outbound-7d9f8-bbbbb")}
	for _, p := range pods {
		p.mu.Lock()
		p.check = check
		p.mu.Unlock()
		p.load(t)
	}
	conds := func() []metav1.Condition { return sh.Status.Conditions }
	eventually(t, condition(t, sh, conds, relayv1alpha1.AuthAcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonAuthRefused))
	if c := apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.AuthAcceptedCondition); !strings.Contains(c.Message, "535 5.7.8 Authentication credentials invalid") ||
		!strings.Contains(c.Message, "mta.corp.example:587") {
		t.Errorf("AuthAccepted message: %s", c.Message)
	}
	reach := apimeta.FindStatusCondition(sh.Status.Conditions, relayv1alpha1.ReachableCondition)
	if reach == nil || reach.Status != metav1.ConditionFalse || !strings.Contains(reach.Message, "mta2.corp.example:587") || !strings.Contains(reach.Message, "i/o timeout") {
		t.Errorf("Reachable: %+v", reach)
	}
	if n := pods[0].roundsAsked() + pods[1].roundsAsked(); n != 1 {
		t.Errorf("%d rounds asked of the fleet for one configuration, want 1", n)
	}
	eventually(t, warningEvent(ns, "mta", relayv1alpha1.ReasonAuthRefused))

	// The password fixed: a new configuration, loaded by the pods without a restart,
	// is checked once more.
	fixed.Store(true)
	update(t, creds, func() { creds.StringData = map[string]string{"password": "right-password"} })
	l, _ := loadRendered(ns, "outbound")
	eventually(t, func() string {
		nl, msg := loadRendered(ns, "outbound")
		if nl == nil || l != nil && nl.Hash == l.Hash {
			return "the new password is not rendered yet " + msg
		}
		return ""
	})
	for _, p := range pods {
		p.load(t)
	}
	eventually(t, condition(t, sh, conds, relayv1alpha1.AuthAcceptedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))
	if n := pods[0].roundsAsked() + pods[1].roundsAsked(); n != 2 {
		t.Errorf("%d rounds asked of the fleet for two configurations, want 2", n)
	}
	if pods[0].roundsAsked() != 1 || pods[1].roundsAsked() != 1 {
		t.Errorf("rounds per pod %d and %d: the rounds should go around the fleet", pods[0].roundsAsked(), pods[1].roundsAsked())
	}
	l, _ = loadRendered(ns, "outbound")
	for _, p := range pods {
		p.mu.Lock()
		for _, name := range p.checkedUpstreams {
			for _, u := range l.Config.Upstreams {
				if u.Name == name && u.Endpoints[0].Host == "mta.off.example" {
					t.Errorf("pod %s was asked to check %s, whose checks are off", p.name, name)
				}
			}
		}
		p.mu.Unlock()
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(off), off); err != nil || apimeta.FindStatusCondition(off.Status.Conditions, relayv1alpha1.ReachableCondition) != nil {
		t.Errorf("a Smarthost with checks off has a Reachable condition: %v %s", err, toString(off.Status))
	}
}

// TestProviderPresets: a Smarthost naming a provider renders its endpoint, and
// Microsoft 365's token endpoint and scope, into the relay's configuration.
func TestProviderPresets(t *testing.T) {
	startManager(t)
	ns := namespace(t, "presets")
	sh := &relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ses"},
		Spec: relayv1alpha1.SmarthostSpec{Provider: "SES", Region: "eu-west-1",
			Auth: &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "creds"}}}}
	create(t, basicAuth(ns, "creds", "AKIAUSER", "ses-smtp-password"), sh, newRelay(ns, "outbound", withSmarthost("ses")))
	rendered := func(check func(config.Upstream) string) func() string {
		return func() string {
			l, msg := loadRendered(ns, "outbound")
			if l == nil {
				return msg
			}
			if len(l.Config.Upstreams) != 1 {
				return "no upstream rendered"
			}
			return check(l.Config.Upstreams[0])
		}
	}
	eventually(t, rendered(func(u config.Upstream) string {
		if len(u.Endpoints) != 1 || u.Endpoints[0].Host != "email-smtp.eu-west-1.amazonaws.com" || u.Endpoints[0].Port != 587 || u.TLS.Mode != config.TLSStartTLS {
			return fmt.Sprintf("SES rendered as %+v %s", u.Endpoints, u.TLS.Mode)
		}
		return ""
	}))
	conds := func() []metav1.Condition { return sh.Status.Conditions }
	eventually(t, condition(t, sh, conds, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded))

	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "m365"}, StringData: map[string]string{"client-id": "id", "client-secret": "m365-secret"}})
	update(t, sh, func() {
		sh.Spec.Provider, sh.Spec.Region = "Microsoft365", ""
		sh.Spec.Auth = &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{TenantID: "contoso.onmicrosoft.com",
			ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "m365"}, Username: "relay@contoso.example"}}
	})
	eventually(t, rendered(func(u config.Upstream) string {
		if u.Endpoints[0].Host != "smtp.office365.com" || u.Auth == nil || u.Auth.OAuth2 == nil ||
			u.Auth.OAuth2.TokenURL != "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token" ||
			u.RateLimits == nil || u.RateLimits.MessagesPerMinute != 15 { // 30 a minute over the default 2 replicas
			return fmt.Sprintf("Microsoft 365 rendered as %+v auth %+v limits %+v", u.Endpoints, u.Auth, u.RateLimits)
		}
		return ""
	}))
}
