// Package testenv starts a real kube-apiserver and etcd (controller-runtime's envtest)
// with kuberelay's CRDs installed, for tests. The binaries are built from the Go module
// proxy by hack/envtest-assets and cached outside the repository; a test that cannot
// get them fails and says why, it never skips.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/util/retry"

	"github.com/kuberelay/kuberelay/internal/eventually"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
	"github.com/kuberelay/kuberelay/internal/gobuild"
)

// Scheme knows the built-in kinds and kuberelay's.
var Scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := relayv1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// Env is a running control plane.
type Env struct {
	Config *rest.Config
	Client client.Client
	env    *envtest.Environment
}

// Start starts a control plane with kuberelay's CRDs installed; Stop it when done.
// Test packages usually call Main instead. apiServerFlags are set on kube-apiserver's
// command line (e.g. an audit log).
func Start(apiServerFlags ...[2]string) (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := Assets(root)
	if err != nil {
		return nil, err
	}
	e := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme,
	}
	args := e.ControlPlane.GetAPIServer().Configure()
	for _, f := range apiServerFlags {
		args.Set(f[0], f[1])
	}
	cfg, err := e.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", assets, err)
	}
	c, err := client.New(cfg, client.Options{Scheme: Scheme})
	if err != nil {
		_ = e.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, env: e}, nil
}

// Stop stops the control plane.
func (e *Env) Stop() error { return e.env.Stop() }

// Main runs a test package's tests against one control plane, started before and
// stopped after them, and exits with their result.
func Main(m *testing.M, env **Env) {
	e, err := Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		os.Exit(1)
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: stopping the control plane: %v\n", err)
	}
	os.Exit(code)
}

var (
	assetsOnce sync.Once
	assetsDir  string
	assetsErr  error
)

// Assets returns the directory holding kube-apiserver, etcd and kubectl: the
// KUBEBUILDER_ASSETS environment variable when set, otherwise what hack/envtest-assets
// prints (it builds the binaries on first use, which takes several minutes).
func Assets(root string) (string, error) {
	assetsOnce.Do(func() {
		if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
			assetsDir = d
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command(filepath.Join(root, "hack", "envtest-assets"))
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			assetsErr = fmt.Errorf("hack/envtest-assets could not provide kube-apiserver and etcd (%v); it builds them with go from the module proxy:\n%s", err, stderr.String())
			return
		}
		assetsDir = strings.TrimSpace(string(out))
	})
	return assetsDir, assetsErr
}

// RepoRoot finds the repository root (the directory with go.mod) above the working
// directory, which go test sets to the package's directory.
func RepoRoot() (string, error) { return gobuild.ModuleRoot() }

// WriteKubeconfig writes a kubeconfig file for the control plane, so that kubectl and
// the manager binary can reach it.
func (e *Env) WriteKubeconfig(path string) error {
	cfg := e.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	return clientcmd.WriteToFile(*kc, path)
}

// StartRelayPod plays the Deployment controller and the kubelet, which envtest does
// not run, for one relay pod: it creates a Pod named name from dep's template whose
// http container port is httpPort, and marks it running and ready at 127.0.0.1, so
// that the operator asks a local server on httpPort for the pod's configuration.
func StartRelayPod(ctx context.Context, c client.Client, dep *appsv1.Deployment, name string, httpPort int32) (*corev1.Pod, error) {
	return StartPod(ctx, c, dep.Spec.Template, dep.Namespace, name, httpPort)
}

// StartPod is StartRelayPod for any workload's pod template (a StatefulSet's).
func StartPod(ctx context.Context, c client.Client, tmpl corev1.PodTemplateSpec, namespace, name string, httpPort int32) (*corev1.Pod, error) {
	spec := *tmpl.Spec.DeepCopy()
	for i := range spec.Containers {
		for j := range spec.Containers[i].Ports {
			if spec.Containers[i].Ports[j].Name == render.HTTPPortName {
				spec.Containers[i].Ports[j].ContainerPort = httpPort
			}
		}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: tmpl.Labels}, Spec: spec}
	if err := c.Create(ctx, pod); err != nil {
		return nil, err
	}
	// The operator may stamp the new pod meanwhile: read it again on a conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return err
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		return c.Status().Update(ctx, pod)
	})
	return pod, err
}

// Eventually waits for cond to return "" (met), and fails the test with the last
// reason cond gave once bound has passed.
func Eventually(t testing.TB, bound time.Duration, cond func() string) {
	t.Helper()
	eventually.Require(t, bound, cond)
}
