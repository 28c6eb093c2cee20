package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/internal/testenv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
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

// Queue mode runs a StatefulSet with a claim per pod behind a headless Service, and
// the rendered configuration queues on that claim; back to PassThrough, the
// Deployment returns and the StatefulSet and its Service go.
func TestQueueModeWorkload(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "queue")
	relay, ss := queueRelay(t, ns, 3)
	key := client.ObjectKeyFromObject(relay)
	claims := ss.Spec.VolumeClaimTemplates
	if *ss.Spec.Replicas != 3 || ss.Spec.ServiceName != "outbound-peers" || len(claims) != 1 ||
		claims[0].Spec.Resources.Requests.Storage().String() != "10Gi" ||
		ss.Spec.PersistentVolumeClaimRetentionPolicy.WhenScaled != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		t.Fatalf("StatefulSet: %s", toString(ss.Spec))
	}
	peers := &corev1.Service{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "outbound-peers"}, peers); err != nil || peers.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("headless Service: %v %s", err, toString(peers.Spec))
	}
	if err := env.Client.Get(ctx, key, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a Queue-mode relay has a Deployment (%v)", err)
	}
	l, why := loadRendered(ns, "outbound")
	if why != "" {
		t.Fatal(why)
	}
	if d := l.Config.Delivery; d.Mode != config.Queue || d.Queue.Dir != "/var/lib/kuberelay/queue/spool" || d.Queue.MaxAge.Duration != 120*time.Hour {
		t.Fatalf("rendered delivery %+v", d)
	}

	update(t, relay, func() { relay.Spec.Delivery.Mode = relayv1alpha1.DeliveryPassThrough })
	dep := &appsv1.Deployment{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, key, dep); err != nil {
			return "no Deployment after the switch: " + err.Error()
		}
		return ""
	})
	// The StatefulSet serves until the Deployment's pods are ready (no kube-controller-
	// manager here: its status is written by hand).
	if err := env.Client.Get(ctx, key, &appsv1.StatefulSet{}); err != nil {
		t.Fatalf("the StatefulSet went before the Deployment was ready: %v", err)
	}
	dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 3, ReadyReplicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3}
	if err := env.Client.Status().Update(ctx, dep); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		for _, o := range []client.Object{&appsv1.StatefulSet{}, &corev1.Service{}} {
			name := key
			if _, ok := o.(*corev1.Service); ok {
				name.Name = "outbound-peers"
			}
			if err := env.Client.Get(ctx, name, o); !apierrors.IsNotFound(err) {
				return fmt.Sprintf("%T %s still there after the switch (%v)", o, name.Name, err)
			}
		}
		return ""
	})
}

// queueRelay creates the Queue-mode SmtpRelay "outbound" in ns and returns it with the
// StatefulSet the operator made for it.
func queueRelay(t *testing.T, ns string, replicas int32) (*relayv1alpha1.SmtpRelay, *appsv1.StatefulSet) {
	t.Helper()
	relay := newRelay(ns, "outbound", withReplicas(replicas), withQueue)
	create(t, relay)
	ss := &appsv1.StatefulSet{}
	eventually(t, func() string {
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(relay), ss); err != nil {
			return err.Error()
		}
		return ""
	})
	return relay, ss
}

// queuePod is a Queue-mode relay pod's HTTP side: /status with a queue that the test
// sets, and /queue/drain.
type queuePod struct {
	srv      *httptest.Server
	mu       sync.Mutex
	queued   int64
	draining bool
}

func startQueuePod(t *testing.T, ss *appsv1.StatefulSet, name string) *queuePod {
	t.Helper()
	p := &queuePod{queued: 5}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		switch r.URL.Path {
		case "/status":
			_ = json.NewEncoder(w).Encode(map[string]any{"ready": true,
				"queue": map[string]any{"messages": p.queued, "draining": p.draining}})
		case "/queue/drain":
			p.draining = true
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(p.srv.Close)
	_, portStr, _ := net.SplitHostPort(p.srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	// The StatefulSet controller gives each pod the volume of its claim.
	tmpl := *ss.Spec.Template.DeepCopy()
	for _, c := range ss.Spec.VolumeClaimTemplates {
		tmpl.Spec.Volumes = append(tmpl.Spec.Volumes, corev1.Volume{Name: c.Name,
			VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c.Name + "-" + name}}})
	}
	if _, err := testenv.StartPod(context.Background(), env.Client, tmpl, ss.Namespace, name, int32(port)); err != nil {
		t.Fatal(err)
	}
	return p
}

// A Queue-mode scale-down keeps the leaving pods until they have drained (told to take
// no more mail, and reporting an empty queue), then scales the StatefulSet down and
// deletes their claims once the pods are gone; the staying pod's claim is kept.
func TestQueueScaleDownDrainsFirst(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "drain")
	relay, ss := queueRelay(t, ns, 3)
	key := client.ObjectKeyFromObject(relay)
	// Play the StatefulSet controller: three pods and their claims.
	pods := make([]*queuePod, 3)
	for i := range pods {
		pods[i] = startQueuePod(t, ss, fmt.Sprintf("outbound-%d", i))
		claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("queue-outbound-%d", i), Namespace: ns,
			Labels: ss.Spec.VolumeClaimTemplates[0].Labels}, Spec: ss.Spec.VolumeClaimTemplates[0].Spec}
		create(t, claim)
	}

	update(t, relay, func() { relay.Spec.Replicas = ptr(int32(1)) })
	// The leaving pods are told to drain; the StatefulSet keeps them while they hold mail.
	eventually(t, func() string {
		for _, p := range pods[1:] {
			p.mu.Lock()
			d := p.draining
			p.mu.Unlock()
			if !d {
				return "a leaving pod was not told to drain"
			}
		}
		return condition(t, relay, func() []metav1.Condition { return relay.Status.Conditions },
			relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, relayv1alpha1.ReasonDraining)()
	})
	pods[0].mu.Lock()
	stayingDrained := pods[0].draining
	pods[0].mu.Unlock()
	if stayingDrained {
		t.Fatal("the staying pod was told to drain")
	}
	if err := env.Client.Get(ctx, key, ss); err != nil || *ss.Spec.Replicas != 3 {
		t.Fatalf("StatefulSet replicas %d while the leaving pods hold mail, want 3 (%v)", *ss.Spec.Replicas, err)
	}
	c := apimeta.FindStatusCondition(relay.Status.Conditions, relayv1alpha1.ReadyCondition)
	if c == nil || !strings.Contains(c.Message, "10 messages left") {
		t.Fatalf("Ready condition %+v, want the messages left", c)
	}

	// They deliver everything: the StatefulSet scales down.
	for _, p := range pods[1:] {
		p.mu.Lock()
		p.queued = 0
		p.mu.Unlock()
	}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, key, ss); err != nil {
			return err.Error()
		}
		if *ss.Spec.Replicas != 1 {
			return fmt.Sprintf("StatefulSet replicas %d, want 1", *ss.Spec.Replicas)
		}
		return ""
	})
	// The StatefulSet controller removes the pods; then their claims go, the staying
	// pod's does not.
	for _, name := range []string{"outbound-1", "outbound-2"} {
		if err := env.Client.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() string {
		for _, name := range []string{"queue-outbound-1", "queue-outbound-2"} {
			pvc := &corev1.PersistentVolumeClaim{}
			if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, pvc); err == nil && pvc.DeletionTimestamp == nil {
				return name + " is still there"
			}
		}
		return ""
	})
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "queue-outbound-0"}, &corev1.PersistentVolumeClaim{}); err != nil {
		t.Fatalf("the staying pod's claim: %v", err)
	}
}

// A scale-down undone while the leaving pods drain restarts them (a draining relay
// takes no mail until it restarts) and keeps their claims.
func TestQueueScaleDownUndone(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "undrain")
	relay, ss := queueRelay(t, ns, 2)
	key := client.ObjectKeyFromObject(relay)
	startQueuePod(t, ss, "outbound-0")
	leaving := startQueuePod(t, ss, "outbound-1")
	update(t, relay, func() { relay.Spec.Replicas = ptr(int32(1)) })
	eventually(t, func() string {
		leaving.mu.Lock()
		defer leaving.mu.Unlock()
		if !leaving.draining {
			return "outbound-1 was not told to drain"
		}
		return ""
	})
	// A draining relay fails its readiness probe. The operator may stamp the pod
	// meanwhile: read it again on a conflict.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod := &corev1.Pod{}
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "outbound-1"}, pod); err != nil {
			return err
		}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		return env.Client.Status().Update(ctx, pod)
	}); err != nil {
		t.Fatal(err)
	}
	update(t, relay, func() { relay.Spec.Replicas = ptr(int32(2)) })
	eventually(t, func() string {
		p := &corev1.Pod{}
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "outbound-1"}, p)
		if apierrors.IsNotFound(err) || err == nil && p.DeletionTimestamp != nil {
			return ""
		}
		return "the pod left draining was not restarted"
	})
	if err := env.Client.Get(ctx, key, ss); err != nil || *ss.Spec.Replicas != 2 {
		t.Fatalf("StatefulSet replicas after the undo: %v", err)
	}
}
