package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
)

// SmarthostReconciler reports whether each Smarthost can be used: the Secrets it names
// exist and hold what they must, and the relay accepts its settings. Relays render
// from the Smarthost itself; this status is for the people who write it.
type SmarthostReconciler struct {
	client.Client
	// APIReader reads referenced Secrets straight from the API server, so the cache
	// never holds Secret data.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Checks holds the relay fleets' upstream checks (Reachable, AuthAccepted).
	Checks *checkStore
}

func (r *SmarthostReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	sh := &relayv1alpha1.Smarthost{}
	if err := r.Get(ctx, req.NamespacedName, sh); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !sh.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	secrets := map[types.NamespacedName]*corev1.Secret{}
	for _, k := range smarthostSecrets(sh) {
		s := &corev1.Secret{}
		switch err := r.APIReader.Get(ctx, k, s); {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return ctrl.Result{}, err
		}
		secrets[k] = s
	}
	base := sh.DeepCopy()
	sh.Status.ObservedGeneration = sh.Generation
	set := func(t string, status metav1.ConditionStatus, reason, msg string) {
		apimeta.SetStatusCondition(&sh.Status.Conditions, metav1.Condition{Type: t, Status: status,
			Reason: reason, Message: msg, ObservedGeneration: sh.Generation})
	}
	if problem := render.CheckSmarthost(sh, secrets); problem != nil {
		if !conditionIs(base.Status.Conditions, relayv1alpha1.ReadyCondition, problem.Reason, problem.Message) {
			r.Recorder.Eventf(sh, nil, corev1.EventTypeWarning, problem.Reason, "Check", "%s", problem.Message)
		}
		set(relayv1alpha1.ReadyCondition, metav1.ConditionFalse, problem.Reason, problem.Message)
		set(relayv1alpha1.StalledCondition, metav1.ConditionTrue, problem.Reason, problem.Message)
	} else {
		set(relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded, "Referenced Secrets hold usable credentials and settings")
		apimeta.RemoveStatusCondition(&sh.Status.Conditions, relayv1alpha1.StalledCondition)
	}
	apimeta.RemoveStatusCondition(&sh.Status.Conditions, relayv1alpha1.ReconcilingCondition)
	switch {
	case checkInterval(sh) == 0:
		// Checks are off: no stale verdict stays.
		apimeta.RemoveStatusCondition(&sh.Status.Conditions, relayv1alpha1.ReachableCondition)
		apimeta.RemoveStatusCondition(&sh.Status.Conditions, relayv1alpha1.AuthAcceptedCondition)
	case r.Checks != nil:
		setCheckConditions(sh, r.Checks.results(req.NamespacedName))
		for _, t := range []string{relayv1alpha1.ReachableCondition, relayv1alpha1.AuthAcceptedCondition} {
			// An event when a check starts failing, not at each round: servers' replies
			// carry session ids, so the message differs every time.
			c, was := apimeta.FindStatusCondition(sh.Status.Conditions, t), apimeta.FindStatusCondition(base.Status.Conditions, t)
			if c != nil && c.Status == metav1.ConditionFalse && (was == nil || was.Status != c.Status || was.Reason != c.Reason) {
				r.Recorder.Eventf(sh, nil, corev1.EventTypeWarning, c.Reason, "Check", "%s", c.Message)
			}
		}
	}
	return requeueOnConflict(patchStatusIfChanged(ctx, r.Client, base, sh, base.Status, sh.Status))
}

// SetupWithManager registers the reconciler and its watches.
func (r *SmarthostReconciler) SetupWithManager(mgr ctrl.Manager) error {
	m := &mapper{Client: r.Client}
	b := ctrl.NewControllerManagedBy(mgr).
		For(&relayv1alpha1.Smarthost{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(m.smarthostsNaming), builder.OnlyMetadata)
	if r.Checks != nil {
		// New check results from the relay reconciler.
		b = b.WatchesRawSource(source.Channel(r.Checks.events, &handler.EnqueueRequestForObject{}))
	}
	return b.Named("smarthost").Complete(r)
}
