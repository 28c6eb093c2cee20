// Package localrun runs the whole product on one machine with no cluster: an embedded
// control plane (envtest's kube-apiserver and etcd) with the CRDs, the operator, the
// samples from config/samples, and the relay process fed with exactly the ConfigMap
// and Secret the operator rendered, written to disk as the kubelet mounts them, so
// that an edit to any resource reaches the running relay by hot reload. The samples'
// smarthost is pointed at a local capture server that saves each message as an .eml
// file. `make run` and the end-to-end test both use it.
package localrun

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crconfig "sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers"
	"github.com/kuberelay/kuberelay/controllers/render"
	"github.com/kuberelay/kuberelay/internal/kubeletdir"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/internal/testcerts"
	"github.com/kuberelay/kuberelay/internal/testenv"
	"github.com/kuberelay/kuberelay/relay/config"
)

// The samples' names the local run relies on.
const (
	Namespace     = "mail"
	RelayName     = "outbound"
	SmarthostName = "ses"
	// relayTLSSecret and dkimSecret are named by the samples but not included there,
	// since their content must be generated: the local run generates them.
	relayTLSSecret = "outbound-tls"
	dkimSecret     = "example-com-dkim"
	captureCA      = "local-capture-ca"
)

// Options configure a local run.
type Options struct {
	// Dir holds everything the run writes: mail/, relay/, kubeconfig and logs.
	Dir string
	// RelayBinary is the relay program to run.
	RelayBinary string
	// Samples is the directory of sample manifests (config/samples).
	Samples string
	// HTTPAddress is the relay's --http-address (default 127.0.0.1:9090).
	HTTPAddress string
	// Log receives the operator's log lines (default: Dir/manager.log).
	Log logr.Logger
}

// Run is a running local setup. Stop it when done.
type Run struct {
	Env        *testenv.Env
	Capture    *mailcapture.Server
	Kubeconfig string
	// ConfigDir and SecretsDir are the relay's mounted-volume directories.
	ConfigDir, SecretsDir string
	// HTTPAddress is where the relay serves /status, /metrics, /readyz.
	HTTPAddress string
	// RelayLog is the relay's log file.
	RelayLog string

	relay      *exec.Cmd
	relayDone  chan error
	stopSync   context.CancelFunc
	syncDone   chan struct{}
	stopMgr    context.CancelFunc
	mgrDone    chan error
	managerLog *os.File
}

// Start brings everything up and returns once the relay serves the configuration the
// operator rendered from the samples.
func Start(ctx context.Context, o Options) (_ *Run, err error) {
	if o.HTTPAddress == "" {
		o.HTTPAddress = "127.0.0.1:9090"
	}
	r := &Run{HTTPAddress: o.HTTPAddress,
		ConfigDir: filepath.Join(o.Dir, "relay", "config"), SecretsDir: filepath.Join(o.Dir, "relay", "secrets"),
		RelayLog: filepath.Join(o.Dir, "relay.log"), Kubeconfig: filepath.Join(o.Dir, "kubeconfig")}
	defer func() {
		if err != nil {
			r.Stop()
		}
	}()
	for _, d := range []string{o.Dir, filepath.Join(o.Dir, "mail"), filepath.Join(o.Dir, "spool")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}

	if r.Env, err = testenv.Start(); err != nil {
		return nil, err
	}
	if err := r.Env.WriteKubeconfig(r.Kubeconfig); err != nil {
		return nil, err
	}

	// The capture smarthost speaks STARTTLS with a certificate from a CA of our own,
	// which the Smarthost trusts through caSecretRef, as a real one would.
	ca, err := testcerts.NewCA("kuberelay local capture CA")
	if err != nil {
		return nil, err
	}
	captureTLS, err := ca.ServerTLS("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	if r.Capture, err = mailcapture.Start("127.0.0.1:0", mailcapture.Options{Dir: filepath.Join(o.Dir, "mail"), TLS: captureTLS, Auth: true}); err != nil {
		return nil, err
	}

	if err := r.startManager(o); err != nil {
		return nil, err
	}
	if err := r.applySamples(ctx, o.Samples, ca.PEM); err != nil {
		return nil, err
	}
	if err := r.syncOnce(ctx, true); err != nil {
		return nil, err
	}
	syncCtx, stop := context.WithCancel(context.Background())
	r.stopSync, r.syncDone = stop, make(chan struct{})
	go r.syncLoop(syncCtx)
	if err := r.startRelay(ctx, o); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Run) startManager(o Options) error {
	log := o.Log
	if log.GetSink() == nil {
		f, err := os.Create(filepath.Join(o.Dir, "manager.log"))
		if err != nil {
			return err
		}
		r.managerLog = f
		log = logr.FromSlogHandler(slog.NewJSONHandler(f, nil))
	}
	ctrl.SetLogger(log)
	mgr, err := ctrl.NewManager(r.Env.Config, ctrl.Options{Scheme: testenv.Scheme, Cache: controllers.CacheOptions(nil),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0", Logger: log,
		// Tests start one run after another in a process; their controllers share names.
		Controller: crconfig.Controller{SkipNameValidation: ptr(true)}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := controllers.Setup(ctx, mgr, controllers.Options{RelayImage: "kuberelay:local", Hasher: render.NewDefaultHasher()}); err != nil {
		cancel()
		return err
	}
	r.stopMgr, r.mgrDone = cancel, make(chan error, 1)
	go func() { r.mgrDone <- mgr.Start(ctx) }()
	return nil
}

// applySamples creates the sample objects, with what a machine without a cluster
// needs changed: one relay replica (one relay process), and the smarthost pointed at
// the capture server. The Secrets the samples name but cannot ship are generated.
func (r *Run) applySamples(ctx context.Context, dir string, captureCAPEM []byte) error {
	objs, err := readManifests(dir)
	if err != nil {
		return err
	}
	relayCert, relayKey, err := testcerts.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		return err
	}
	dkimKey, err := testcerts.Ed25519Key()
	if err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(r.Capture.Addr())
	capturePort, _ := strconv.Atoi(port)
	objs = append([]client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: relayTLSSecret, Namespace: Namespace}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{corev1.TLSCertKey: relayCert, corev1.TLSPrivateKeyKey: relayKey}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: dkimSecret, Namespace: Namespace},
			Data: map[string][]byte{"dkim.key": dkimKey}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: captureCA, Namespace: Namespace},
			Data: map[string][]byte{"ca.crt": captureCAPEM}},
	}, objs...)
	for _, o := range objs {
		switch x := o.(type) {
		case *relayv1alpha1.Smarthost:
			if x.Name == SmarthostName {
				x.Spec.Endpoints = []relayv1alpha1.SmarthostEndpoint{{Host: "127.0.0.1", Port: int32(capturePort)}}
				x.Spec.TLS.CASecretRef = &relayv1alpha1.SecretKeyReference{Name: captureCA}
			}
		case *relayv1alpha1.SmtpRelay:
			one := int32(1)
			x.Spec.Replicas = &one
		}
		if err := r.Env.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

// readManifests decodes every object in the .yaml files of dir, but kustomization.yaml.
func readManifests(dir string) ([]client.Object, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	decoder := serializer.NewCodecFactory(testenv.Scheme).UniversalDeserializer()
	var objs []client.Object
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := docs.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := decoder.Decode(doc, nil, nil)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			objs = append(objs, obj.(client.Object))
		}
	}
	return objs, nil
}

// syncOnce writes the operator's ConfigMap and Secret for the relay into the relay's
// directories, as the kubelet would; with wait it waits for the operator to render
// them first.
func (r *Run) syncOnce(ctx context.Context, wait bool) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cm, sec, err := r.rendered(ctx)
		if err == nil {
			if err := kubeletdir.Write(r.ConfigDir, map[string][]byte{config.FileName: []byte(cm.Data[config.FileName])}); err != nil {
				return err
			}
			return kubeletdir.Write(r.SecretsDir, sec.Data)
		}
		if !wait || time.Now().After(deadline) {
			return fmt.Errorf("the operator's rendered configuration: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rendered fetches the relay's ConfigMap and Secret once both describe the hash in
// the relay's status, so the relay never sees one without the other.
func (r *Run) rendered(ctx context.Context) (*corev1.ConfigMap, *corev1.Secret, error) {
	relay := &relayv1alpha1.SmtpRelay{}
	if err := r.Env.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: RelayName}, relay); err != nil {
		return nil, nil, err
	}
	cm, sec := &corev1.ConfigMap{}, &corev1.Secret{}
	if err := r.Env.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: render.ConfigMapName(relay)}, cm); err != nil {
		return nil, nil, err
	}
	if err := r.Env.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: render.SecretName(relay)}, sec); err != nil {
		return nil, nil, err
	}
	if relay.Status.ConfigHash == "" || config.Hash([]byte(cm.Data[config.FileName]), sec.Data) != relay.Status.ConfigHash {
		return nil, nil, errors.New("not rendered yet")
	}
	return cm, sec, nil
}

// syncLoop keeps the relay's directories and the objects a kubelet and the Deployment
// controller would keep (the Deployment's status, the relay's Pod) in step.
func (r *Run) syncLoop(ctx context.Context) {
	defer close(r.syncDone)
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
		if cm, sec, err := r.rendered(ctx); err == nil {
			if v := cm.ResourceVersion + "/" + sec.ResourceVersion; v != last {
				if err := r.syncOnce(ctx, false); err == nil {
					last = v
				}
			}
		}
		_ = r.playWorkload(ctx)
	}
}

// playWorkload stands in for the kubelet and the Deployment controller: a ready Pod
// at 127.0.0.1 for the relay process, and a Deployment status that says so, so that
// the operator asks the relay which configuration it runs and reports ConfigApplied.
func (r *Run) playWorkload(ctx context.Context) error {
	if r.relay == nil {
		return nil
	}
	dep := &appsv1.Deployment{}
	if err := r.Env.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: RelayName}, dep); err != nil {
		return err
	}
	pod := &corev1.Pod{}
	podKey := types.NamespacedName{Namespace: Namespace, Name: RelayName + "-local"}
	if err := r.Env.Client.Get(ctx, podKey, pod); apierrors.IsNotFound(err) {
		_, port, _ := net.SplitHostPort(r.HTTPAddress)
		httpPort, _ := strconv.Atoi(port)
		if _, err := testenv.StartRelayPod(ctx, r.Env.Client, dep, podKey.Name, int32(httpPort)); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if dep.Status.ObservedGeneration != dep.Generation || dep.Status.ReadyReplicas != 1 {
		dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
		return r.Env.Client.Status().Update(ctx, dep)
	}
	return nil
}

func (r *Run) startRelay(ctx context.Context, o Options) error {
	logf, err := os.Create(r.RelayLog)
	if err != nil {
		return err
	}
	cmd := exec.Command(o.RelayBinary, "--config-dir", r.ConfigDir, "--secrets-dir", r.SecretsDir,
		"--listen-host", "127.0.0.1", "--http-address", r.HTTPAddress,
		"--spool-dir", filepath.Join(o.Dir, "spool"), "--shutdown-grace", "5s", "--reload-interval", "2s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", o.RelayBinary, err)
	}
	r.relay, r.relayDone = cmd, make(chan error, 1)
	go func() { r.relayDone <- cmd.Wait(); logf.Close() }()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-r.relayDone:
			r.relayDone <- err
			log, _ := os.ReadFile(r.RelayLog)
			return fmt.Errorf("the relay exited (%v):\n%s", err, log)
		default:
		}
		if resp, err := hc.Get("http://" + r.HTTPAddress + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the relay did not become ready on %s; see %s", r.HTTPAddress, r.RelayLog)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RelayPID is the relay process's id: a hot reload keeps it.
func (r *Run) RelayPID() int { return r.relay.Process.Pid }

// RelayExited says whether the relay process has ended.
func (r *Run) RelayExited() bool {
	select {
	case err := <-r.relayDone:
		r.relayDone <- err
		return true
	default:
		return false
	}
}

// Stop stops the relay (SIGTERM), the operator, the capture server and the control
// plane, in that order.
func (r *Run) Stop() {
	if r.relay != nil {
		_ = r.relay.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.relayDone:
		case <-time.After(10 * time.Second):
			_ = r.relay.Process.Kill()
			<-r.relayDone
		}
	}
	if r.stopSync != nil {
		r.stopSync()
		<-r.syncDone
	}
	if r.stopMgr != nil {
		r.stopMgr()
		<-r.mgrDone
	}
	if r.managerLog != nil {
		r.managerLog.Close()
	}
	if r.Capture != nil {
		_ = r.Capture.Close()
	}
	if r.Env != nil {
		_ = r.Env.Stop()
	}
}

func ptr[T any](v T) *T { return &v }
