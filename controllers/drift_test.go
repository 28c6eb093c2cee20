package controllers_test

import (
	"context"
	"fmt"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kuberelay/kuberelay/relay/config"
)

// TestOwnedObjectsRepaired edits each kind of object the operator owns by hand, as a
// kubectl edit or scale would, and checks that the operator puts it back.
func TestOwnedObjectsRepaired(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "drift")
	create(t,
		basicAuth(ns, "app", "app", "client-secret-pw"),
		tlsSecret(t, ns, "tls"),
		newRelay(ns, "outbound", withReplicas(2), withTLS("tls"), withUsers("app")),
	)
	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

	cases := []struct {
		obj    client.Object
		name   string
		edit   func(client.Object)
		intact func(client.Object) string // "" once the operator's state is back
	}{
		{&appsv1.Deployment{}, "outbound", func(o client.Object) { o.(*appsv1.Deployment).Spec.Replicas = ptr(int32(7)) },
			func(o client.Object) string {
				if r := o.(*appsv1.Deployment).Spec.Replicas; r == nil || *r != 2 {
					return fmt.Sprintf("replicas %v, want 2", r)
				}
				return ""
			}},
		{&corev1.Service{}, "outbound", func(o client.Object) {
			o.(*corev1.Service).Spec.Selector["app.kubernetes.io/instance"] = "someone-else"
		}, func(o client.Object) string {
			if v := o.(*corev1.Service).Spec.Selector["app.kubernetes.io/instance"]; v != "outbound" {
				return "selector picks instance " + v + ", want outbound"
			}
			return ""
		}},
		{&corev1.ConfigMap{}, "outbound-config", func(o client.Object) { o.(*corev1.ConfigMap).Data[config.FileName] = "tampered" },
			func(o client.Object) string {
				if d := o.(*corev1.ConfigMap).Data[config.FileName]; d == "tampered" || d == "" {
					return "relay.yaml not restored: " + d
				}
				return ""
			}},
		{&corev1.Secret{}, "outbound-secrets", func(o client.Object) {
			for k := range o.(*corev1.Secret).Data {
				o.(*corev1.Secret).Data[k] = []byte("tampered")
			}
		}, func(o client.Object) string {
			for k, v := range o.(*corev1.Secret).Data {
				if string(v) == "tampered" {
					return "secret file " + k + " not restored"
				}
			}
			return ""
		}},
		{&corev1.ServiceAccount{}, "outbound", func(o client.Object) { o.(*corev1.ServiceAccount).AutomountServiceAccountToken = ptr(true) },
			func(o client.Object) string {
				if a := o.(*corev1.ServiceAccount).AutomountServiceAccountToken; a == nil || *a {
					return fmt.Sprintf("automountServiceAccountToken %v, want false", a)
				}
				return ""
			}},
		{&policyv1.PodDisruptionBudget{}, "outbound", func(o client.Object) {
			o.(*policyv1.PodDisruptionBudget).Spec.MaxUnavailable = ptr(intstr.FromInt32(2))
		}, func(o client.Object) string {
			if m := o.(*policyv1.PodDisruptionBudget).Spec.MaxUnavailable; m == nil || m.IntValue() != 1 {
				return fmt.Sprintf("maxUnavailable %v, want 1", m)
			}
			return ""
		}},
	}
	for _, tc := range cases {
		kind := typeName(tc.obj)
		eventually(t, func() string {
			if err := env.Client.Get(ctx, key(tc.name), tc.obj); err != nil {
				return err.Error()
			}
			return tc.intact(tc.obj)
		})
		tc.edit(tc.obj)
		if err := env.Client.Update(ctx, tc.obj); err != nil {
			t.Fatalf("editing %s by hand: %v", kind, err)
		}
		if tc.intact(tc.obj) == "" {
			t.Fatalf("the edit of %s changes nothing the test checks: the test tests nothing", kind)
		}
		eventually(t, func() string {
			if err := env.Client.Get(ctx, key(tc.name), tc.obj); err != nil {
				return err.Error()
			}
			if why := tc.intact(tc.obj); why != "" {
				return kind + " not repaired: " + why
			}
			return ""
		})
	}
}
