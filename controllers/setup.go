package controllers

import (
	"context"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kuberelay/kuberelay/controllers/render"
)

// Options configure the controllers.
type Options struct {
	// RelayImage is the image relay pods run unless an SmtpRelay names another.
	RelayImage string
	// Hasher bcrypt-hashes client passwords.
	Hasher render.PasswordHasher
	// Concurrency is how many SmtpRelays are reconciled at once (default 4): a
	// reconcile mostly waits on the API server.
	Concurrency int
}

// Setup registers every reconciler, and the field indexes they share, with mgr. The
// manager's cache must be built with CacheOptions.
func Setup(ctx context.Context, mgr ctrl.Manager, o Options) error {
	if err := setupIndexes(ctx, mgr.GetFieldIndexer()); err != nil {
		return err
	}
	recorder := mgr.GetEventRecorder("kuberelay")
	checks := newCheckStore()
	relays := &SmtpRelayReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  recorder,
		Image:     o.RelayImage,
		Hasher:    o.Hasher,
		Pods:      &HTTPPodStatus{Client: &http.Client{Timeout: 2 * time.Second}},
		owned:     newApplier(),
		checks:    checks,
	}
	if err := relays.SetupWithManager(mgr, o.Concurrency); err != nil {
		return err
	}
	smarthosts := &SmarthostReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder, Checks: checks}
	if err := smarthosts.SetupWithManager(mgr); err != nil {
		return err
	}
	domains := &RelayDomainReconciler{Client: mgr.GetClient(), Recorder: recorder}
	if err := domains.SetupWithManager(mgr); err != nil {
		return err
	}
	keys := &DKIMKeyReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder}
	if err := keys.SetupWithManager(mgr); err != nil {
		return err
	}
	clients := &RelayClientReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder}
	return clients.SetupWithManager(mgr)
}

// CacheOptions are the manager's cache options: namespaces, when not empty, restricts
// it to those namespaces, and only relay pods are cached (the operator reads their
// readiness and address), not every pod in the cluster.
func CacheOptions(namespaces []string) cache.Options {
	o := cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}: {Label: labels.SelectorFromSet(render.CommonLabels())},
	}}
	if len(namespaces) > 0 {
		o.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			o.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return o
}
