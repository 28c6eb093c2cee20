package helmtest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/eventually"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/internal/testenv"
)

// waitTimeout bounds every wait on the API server.
const waitTimeout = time.Minute

var crdNames = []string{
	"smtprelays.relay.kuberelay.io",
	"smarthosts.relay.kuberelay.io",
	"relaydomains.relay.kuberelay.io",
	"relayclients.relay.kuberelay.io",
}

var crdGVK = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}

// startBare starts a control plane without kuberelay's CRDs, so that the chart
// installs them, and returns it with a kubeconfig file for helm.
func startBare(t *testing.T) (client.Client, string) {
	t.Helper()
	root, _ := repoRoot(t)
	assets, err := testenv.Assets(root)
	if err != nil {
		t.Fatal(err)
	}
	e := &envtest.Environment{BinaryAssetsDirectory: assets, Scheme: testenv.Scheme}
	cfg, err := e.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd from %s: %v", assets, err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: testenv.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := (&testenv.Env{Config: cfg, Client: c}).WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	return c, kubeconfig
}

// poll waits up to waitTimeout for cond, failing the test with what it last said.
func poll(t *testing.T, what string, cond func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	eventually.Require(t, waitTimeout, func() string {
		if err := cond(ctx); err != nil {
			return what + ": " + err.Error()
		}
		return ""
	})
}

func crdEstablished(ctx context.Context, c client.Client, name string) error {
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(crdGVK)
	if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
		return err
	}
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, cond := range conds {
		m, _ := cond.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return nil
		}
	}
	return errors.New("CRD " + name + " is not Established")
}

// TestInstallUpgradeUninstall installs the chart into a control plane (no
// controllers run, so pods never start and helm does not wait for them), creates the
// sample SmtpRelay, upgrades the release and uninstalls it.
func TestInstallUpgradeUninstall(t *testing.T) {
	h, chart := newHelm(t)
	c, kubeconfig := startBare(t)
	ctx := context.Background()
	helm := func(args ...string) string {
		t.Helper()
		out, err := h.Run(ctx, append(args, "--kubeconfig", kubeconfig, "--namespace", namespace)...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}

	out := helm("install", release, chart, "--create-namespace")
	if !strings.Contains(out, "kubectl get smtprelay") {
		t.Errorf("install notes lack the next steps:\n%s", out)
	}

	key := client.ObjectKey{Namespace: namespace, Name: release}
	for _, obj := range []struct {
		key client.ObjectKey
		obj client.Object
	}{
		{key, &appsv1.Deployment{}},
		{key, &corev1.ServiceAccount{}},
		{client.ObjectKey{Namespace: namespace, Name: release + "-metrics"}, &corev1.Service{}},
		{client.ObjectKey{Name: release + "-manager"}, &rbacv1.ClusterRole{}},
		{client.ObjectKey{Name: release + "-manager"}, &rbacv1.ClusterRoleBinding{}},
	} {
		if err := c.Get(ctx, obj.key, obj.obj); err != nil {
			t.Errorf("after install: %T %s: %v", obj.obj, obj.key, err)
		}
	}
	for _, name := range crdNames {
		poll(t, "CRD "+name+" established", func(ctx context.Context) error { return crdEstablished(ctx, c, name) })
	}

	// The sample SmtpRelay is valid against the installed CRDs.
	root, _ := repoRoot(t)
	sample, err := os.ReadFile(filepath.Join(root, "config", "samples", "relay_v1alpha1_smtprelay.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := serializer.NewCodecFactory(testenv.Scheme).UniversalDeserializer().Decode(sample, nil, nil)
	if err != nil {
		t.Fatalf("decoding the sample: %v", err)
	}
	relay, ok := obj.(*relayv1alpha1.SmtpRelay)
	if !ok {
		t.Fatalf("the sample is a %T, not an SmtpRelay", obj)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: relay.Namespace}}); err != nil {
		t.Fatal(err)
	}
	poll(t, "creating the sample SmtpRelay", func(ctx context.Context) error {
		err := c.Create(ctx, relay.DeepCopy())
		if meta.IsNoMatchError(err) {
			return err // the client's discovery has not caught up with the new CRD yet
		}
		if err != nil {
			t.Fatalf("the API server refuses the sample SmtpRelay: %v", err)
		}
		return nil
	})

	helm("upgrade", release, chart, "--set", "replicaCount=2", "--set", "logLevel=debug")
	var dep appsv1.Deployment
	if err := c.Get(ctx, key, &dep); err != nil {
		t.Fatal(err)
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("after upgrade: replicas %v, want 2", dep.Spec.Replicas)
	}
	if args := dep.Spec.Template.Spec.Containers[0].Args; !strings.Contains(strings.Join(args, " "), "--log-level=debug") {
		t.Errorf("after upgrade: args %q lack --log-level=debug", args)
	}
	if out := helm("status", release); !strings.Contains(out, "REVISION: 2") {
		t.Errorf("after upgrade, helm status:\n%s", out)
	}

	helm("uninstall", release)
	poll(t, "Deployment deleted", func(ctx context.Context) error {
		err := c.Get(ctx, key, &appsv1.Deployment{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err == nil {
			return errors.New("the Deployment still exists")
		}
		return err
	})
	if err := c.Get(ctx, client.ObjectKey{Name: release + "-manager"}, &rbacv1.ClusterRole{}); !apierrors.IsNotFound(err) {
		t.Errorf("after uninstall: ClusterRole: want NotFound, got %v", err)
	}
	// crds.keep (the default) keeps the CRDs and so the relays.
	for _, name := range crdNames {
		crd := &unstructured.Unstructured{}
		crd.SetGroupVersionKind(crdGVK)
		if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
			t.Errorf("after uninstall: CRD %s: %v", name, err)
		} else if crd.GetDeletionTimestamp() != nil {
			t.Errorf("after uninstall: CRD %s is being deleted", name)
		}
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(relay), &relayv1alpha1.SmtpRelay{}); err != nil {
		t.Errorf("after uninstall: the sample SmtpRelay: %v", err)
	}
}
