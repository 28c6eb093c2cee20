package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// RelayDomainReconciler writes the status of RelayDomains that are not attached to a
// relay: the relay they name does not exist or does not accept their namespace. The
// status of an attached domain is written by SmtpRelayReconciler, which renders it; a
// domain has one writer at a time, and each re-checks attachment on every change.
type RelayDomainReconciler struct {
	client.Client
	Recorder events.EventRecorder
}

func (r *RelayDomainReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	d := &relayv1alpha1.RelayDomain{}
	if err := r.Get(ctx, req.NamespacedName, d); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !d.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	relayKey := domainRelay(d)
	var reason, msg string
	relay := &relayv1alpha1.SmtpRelay{}
	switch err := r.Get(ctx, relayKey, relay); {
	case apierrors.IsNotFound(err) || err == nil && !relay.DeletionTimestamp.IsZero():
		reason = relayv1alpha1.ReasonRelayNotFound
		msg = fmt.Sprintf("SmtpRelay %s (spec.relayRef) not found: create it or point spec.relayRef at an existing SmtpRelay", relayKey)
	case err != nil:
		return ctrl.Result{}, err
	default:
		ok, err := attachmentAllowed(ctx, r.Client, relay, d.Namespace)
		if err != nil {
			return ctrl.Result{}, err
		}
		if ok {
			// Attached: the relay's reconciler writes this domain's status.
			return ctrl.Result{}, nil
		}
		reason = relayv1alpha1.ReasonNamespaceNotAllowed
		msg = fmt.Sprintf("SmtpRelay %s does not accept RelayDomains from namespace %s: its spec.domains.namespaces must allow this namespace (from: All, or a selector matching its labels)", relayKey, d.Namespace)
	}
	base := d.DeepCopy()
	d.Status.ObservedGeneration = d.Generation
	for _, t := range []string{relayv1alpha1.AcceptedCondition, relayv1alpha1.ReadyCondition} {
		setDomainCondition(d, t, metav1.ConditionFalse, reason, msg)
	}
	setDomainCondition(d, relayv1alpha1.StalledCondition, metav1.ConditionTrue, reason, msg)
	apimeta.RemoveStatusCondition(&d.Status.Conditions, relayv1alpha1.ReconcilingCondition)
	// A DKIM record is published for a domain that is relayed, not for this one.
	d.Status.DKIMRecord, d.Status.DKIM = nil, nil
	if !conditionIs(base.Status.Conditions, relayv1alpha1.AcceptedCondition, reason, msg) {
		r.Recorder.Eventf(d, nil, corev1.EventTypeWarning, reason, "Attach", "%s", msg)
	}
	return requeueOnConflict(patchStatusIfChanged(ctx, r.Client, base, d, base.Status, d.Status))
}

// SetupWithManager registers the reconciler and its watches. Status updates of the
// domain itself pass, so that a status the relay wrote from a stale view of the relay
// is checked again.
func (r *RelayDomainReconciler) SetupWithManager(mgr ctrl.Manager) error {
	m := &mapper{Client: r.Client}
	return ctrl.NewControllerManagedBy(mgr).
		For(&relayv1alpha1.RelayDomain{}).
		Watches(&relayv1alpha1.SmtpRelay{}, handler.EnqueueRequestsFromMapFunc(m.relayDomains),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(m.namespaceDomains), builder.OnlyMetadata,
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Named("relaydomain").
		Complete(r)
}
