package controllers_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crconfig "sigs.k8s.io/controller-runtime/pkg/config"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers"
	"github.com/kuberelay/kuberelay/controllers/render"
	"github.com/kuberelay/kuberelay/internal/testenv"
	"github.com/kuberelay/kuberelay/relay/config"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// startManager runs the operator's controllers against the test control plane until
// the test ends.
func startManager(t *testing.T) {
	t.Helper()
	// Each test runs its own manager: controller names may repeat in this process.
	skip := true
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: testenv.Scheme, Cache: controllers.CacheOptions(nil),
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: crconfig.Controller{SkipNameValidation: &skip}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := controllers.Setup(ctx, mgr, controllers.Options{RelayImage: "kuberelay:test", Hasher: render.NewDefaultHasher()}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("render", "testdata", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// namespace creates a namespace with a fresh name, so a test can run again against
// the same control plane (-count): envtest never finishes deleting a namespace.
func namespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

func TestRelayReconciled(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := namespace(t, "reconcile")
	create(t,
		tlsSecret(t, ns, "tls"),
		basicAuth(ns, "ses-creds", "AKIAEXAMPLE", "upstream-secret-pw"),
		basicAuth(ns, "billing", "billing", "client-secret-pw"),
		dkimSecret(t, ns, "dkim"),
		newSmarthost(ns, "ses", "email-smtp.eu-west-1.amazonaws.com", 587, withCredentials("ses-creds")),
		newRelay(ns, "outbound", withTLS("tls"), withUsers("billing"), withSmarthost("ses")),
		newDomain(ns, "example-com", "example.com", ref("outbound"), signedWith("k1", "dkim")),
		newDomain(ns, "example-org", "example.org", ref("outbound")),
	)
	relayKey := types.NamespacedName{Namespace: ns, Name: "outbound"}

	// The configuration the relay pods will load holds both domains and no secret.
	cm := &corev1.ConfigMap{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "outbound-config"}, cm); err != nil {
			return err.Error()
		}
		if !strings.Contains(cm.Data[config.FileName], "example.org") || !strings.Contains(cm.Data[config.FileName], "example.com") {
			return "relay.yaml lacks a domain:\n" + cm.Data[config.FileName]
		}
		return ""
	})
	for _, secret := range []string{"upstream-secret-pw", "client-secret-pw", "PRIVATE KEY"} {
		if strings.Contains(cm.Data[config.FileName], secret) {
			t.Fatalf("relay.yaml holds a secret value (%q)", secret)
		}
	}
	sec := &corev1.Secret{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "outbound-secrets"}, sec); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for k, v := range sec.Data {
		files[k] = v
	}
	if _, err := config.LoadBytes([]byte(cm.Data[config.FileName]), mapFS(files)); err != nil {
		t.Fatalf("the rendered configuration does not load: %v", err)
	}
	for _, v := range sec.Data {
		if strings.Contains(string(v), "client-secret-pw") {
			t.Fatal("the client password reached the relay Secret unhashed")
		}
	}

	// The workload: a hardened Deployment, a Service, a ServiceAccount without a token.
	dep := &appsv1.Deployment{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, relayKey, dep); err != nil {
			return err.Error()
		}
		return ""
	})
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken ||
		c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem ||
		pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Fatalf("pod is not hardened: %+v", pod)
	}
	for _, o := range []client.Object{&corev1.Service{}, &corev1.ServiceAccount{}} {
		if err := env.Client.Get(ctx, relayKey, o); err != nil {
			t.Fatalf("%T: %v", o, err)
		}
	}

	// Status: the rendered hash and both domains; the domains say they are attached and
	// publish the DKIM record.
	relay := &relayv1alpha1.SmtpRelay{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, relayKey, relay); err != nil {
			return err.Error()
		}
		if relay.Status.ConfigHash == "" || relay.Status.AttachedDomains != 2 || relay.Status.ObservedGeneration != relay.Generation {
			return "relay status not there yet: " + toString(relay.Status)
		}
		return ""
	})
	if got := apimeta.FindStatusCondition(relay.Status.Conditions, relayv1alpha1.ReadyCondition); got == nil || got.Status != metav1.ConditionFalse || got.Reason != relayv1alpha1.ReasonRolloutInProgress {
		// No kubelet runs here, so no pod ever gets ready.
		t.Fatalf("Ready condition %+v, want False/RolloutInProgress without running pods", got)
	}
	d := &relayv1alpha1.RelayDomain{}
	eventually(t, func() string {
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "example-com"}, d); err != nil {
			return err.Error()
		}
		if !apimeta.IsStatusConditionTrue(d.Status.Conditions, relayv1alpha1.AcceptedCondition) || !apimeta.IsStatusConditionTrue(d.Status.Conditions, relayv1alpha1.ReadyCondition) {
			return "domain status: " + toString(d.Status)
		}
		if d.Status.DKIMRecord == nil || d.Status.DKIMRecord.Name != "k1._domainkey.example.com" || !strings.HasPrefix(d.Status.DKIMRecord.Value, "v=DKIM1;") {
			return "DKIM record: " + toString(d.Status.DKIMRecord)
		}
		return ""
	})

	// Everything the relay runs on is owned by it, and goes with it.
	owned := []client.Object{&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "outbound-config"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "outbound-secrets"}}, &corev1.Service{}, &corev1.ServiceAccount{},
		&appsv1.Deployment{}, &policyv1.PodDisruptionBudget{}}
	for _, o := range owned {
		name := o.GetName()
		if name == "" {
			name = relayKey.Name
		}
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, o); err != nil {
			t.Fatalf("%T %s: %v", o, name, err)
		}
		if ref := metav1.GetControllerOf(o); ref == nil || ref.UID != relay.UID || ref.Kind != "SmtpRelay" {
			t.Errorf("%T %s is not controlled by the relay: %v", o, name, o.GetOwnerReferences())
		}
	}

	// A new domain changes the configuration only: the pod template stays as it was.
	template := toString(dep.Spec.Template)
	oldHash := relay.Status.ConfigHash
	create(t, &relayv1alpha1.RelayDomain{ObjectMeta: metav1.ObjectMeta{Name: "example-net", Namespace: ns}, Spec: relayv1alpha1.RelayDomainSpec{
		Domain: "example.net", RelayRef: relayv1alpha1.RelayReference{Name: "outbound"}}})
	eventually(t, func() string {
		if err := env.Client.Get(ctx, relayKey, relay); err != nil {
			return err.Error()
		}
		if relay.Status.ConfigHash == oldHash || relay.Status.AttachedDomains != 3 {
			return "relay not re-rendered: " + toString(relay.Status)
		}
		return ""
	})
	if err := env.Client.Get(ctx, relayKey, dep); err != nil {
		t.Fatal(err)
	}
	if toString(dep.Spec.Template) != template {
		t.Fatal("a new domain changed the pod template, which would restart the pods")
	}

	// A resync that changes nothing writes nothing: touch the relay's labels (a
	// metadata-only change that triggers a reconcile) and check that no owned object
	// or status moves.
	before := resourceVersions(t, ns)
	reconcilesBefore := reconciles(t)
	relay.Labels = map[string]string{"touched": "yes"}
	if err := env.Client.Update(ctx, relay); err != nil {
		t.Fatal(err)
	}
	rvAfterTouch := relay.ResourceVersion
	// The touch's reconcile has run once the controller counts one more.
	eventually(t, func() string {
		if n := reconciles(t); n <= reconcilesBefore {
			return "the relay was not reconciled after the touch"
		}
		return ""
	})
	after := resourceVersions(t, ns)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s was written on a no-op reconcile (resourceVersion %s -> %s)", k, v, after[k])
		}
	}
	if err := env.Client.Get(ctx, relayKey, relay); err != nil {
		t.Fatal(err)
	}
	if relay.ResourceVersion != rvAfterTouch {
		t.Errorf("relay status was written on a no-op reconcile")
	}
}

func resourceVersions(t *testing.T, ns string) map[string]string {
	t.Helper()
	out := map[string]string{}
	lists := []client.ObjectList{&corev1.ConfigMapList{}, &corev1.SecretList{}, &corev1.ServiceList{},
		&corev1.ServiceAccountList{}, &appsv1.DeploymentList{}, &relayv1alpha1.RelayDomainList{}}
	for _, l := range lists {
		if err := env.Client.List(context.Background(), l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		items, _ := apimeta.ExtractList(l)
		for _, it := range items {
			o := it.(client.Object)
			out[typeName(l)+"/"+o.GetName()] = o.GetResourceVersion()
		}
	}
	return out
}

// reconciles is how many reconciles of SmtpRelays have finished, from the
// controller's own metrics.
func reconciles(t *testing.T) float64 {
	t.Helper()
	mfs, err := crmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "smtprelay" {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// eventually waits for cond (see testenv.Eventually) with this package's bound.
func eventually(t *testing.T, cond func() string) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, cond)
}
