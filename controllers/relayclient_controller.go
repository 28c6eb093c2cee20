package controllers

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"maps"
	"net"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
)

// RelayClientReconciler keeps each attached RelayClient's Secret (its credentials)
// and rotates its password on request. Like RelayDomainReconciler it writes the status
// only of clients that are not attached; SmtpRelayReconciler, which renders them,
// writes the status of the others.
type RelayClientReconciler struct {
	client.Client
	// APIReader reads Secrets, which the cache holds as metadata only.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func (r *RelayClientReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// clientRelay is the relay a RelayClient names (its own namespace by default).
func clientRelay(c *relayv1alpha1.RelayClient) types.NamespacedName {
	ns := c.Spec.RelayRef.Namespace
	if ns == "" {
		ns = c.Namespace
	}
	return types.NamespacedName{Namespace: ns, Name: c.Spec.RelayRef.Name}
}

func (r *RelayClientReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	c := &relayv1alpha1.RelayClient{}
	if err := r.Get(ctx, req.NamespacedName, c); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !c.DeletionTimestamp.IsZero() {
		// Its Secret goes with it (owner reference); the relay drops the user.
		return ctrl.Result{}, nil
	}
	relayKey := clientRelay(c)
	relay := &relayv1alpha1.SmtpRelay{}
	switch err := r.Get(ctx, relayKey, relay); {
	case apierrors.IsNotFound(err) || err == nil && !relay.DeletionTimestamp.IsZero():
		return r.detached(ctx, c, relayv1alpha1.ReasonRelayNotFound, fmt.Sprintf(
			"SmtpRelay %s (spec.relayRef) not found: create it or point spec.relayRef at an existing SmtpRelay", relayKey))
	case err != nil:
		return ctrl.Result{}, err
	}
	ok, err := attachmentAllowed(ctx, r.Client, relay, c.Namespace)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !ok {
		return r.detached(ctx, c, relayv1alpha1.ReasonNamespaceNotAllowed, fmt.Sprintf(
			"SmtpRelay %s does not accept RelayClients from namespace %s: its spec.domains.namespaces must allow this namespace (from: All, or a selector matching its labels)", relayKey, c.Namespace))
	}
	return r.ensureSecret(ctx, c, relay)
}

// detached writes the status of a client no relay renders.
func (r *RelayClientReconciler) detached(ctx context.Context, c *relayv1alpha1.RelayClient, reason, msg string) (ctrl.Result, error) {
	base := c.DeepCopy()
	c.Status.ObservedGeneration = c.Generation
	for _, t := range []string{relayv1alpha1.AcceptedCondition, relayv1alpha1.ReadyCondition} {
		setClientCondition(c, t, metav1.ConditionFalse, reason, msg)
	}
	setClientCondition(c, relayv1alpha1.StalledCondition, metav1.ConditionTrue, reason, msg)
	apimeta.RemoveStatusCondition(&c.Status.Conditions, relayv1alpha1.ReconcilingCondition)
	if !conditionIs(base.Status.Conditions, relayv1alpha1.AcceptedCondition, reason, msg) {
		r.Recorder.Eventf(c, nil, corev1.EventTypeWarning, reason, "Attach", "%s", msg)
	}
	return requeueOnConflict(patchStatusIfChanged(ctx, r.Client, base, c, base.Status, c.Status))
}

// ensureSecret writes the client's Secret: created with a new password, rotated when
// the rotate annotation has a value not yet handled, its address kept current, and
// the previous password's hash dropped once it expired.
func (r *RelayClientReconciler) ensureSecret(ctx context.Context, c *relayv1alpha1.RelayClient, relay *relayv1alpha1.SmtpRelay) (ctrl.Result, error) {
	key := types.NamespacedName{Namespace: c.Namespace, Name: render.ClientSecretName(c)}
	sec := &corev1.Secret{}
	err := r.APIReader.Get(ctx, key, sec)
	switch {
	case apierrors.IsNotFound(err):
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	case err != nil:
		return ctrl.Result{}, err
	case !metav1.IsControlledBy(sec, c):
		// Someone else's: never overwritten (the relay reports the conflict).
		return ctrl.Result{}, nil
	}
	before := sec.DeepCopy()
	now := r.now()
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	password := sec.Data[render.ClientKeyPassword]
	want := c.Annotations[relayv1alpha1.RotateAnnotation]
	rotate := len(password) == 0 || want != "" && want != sec.Annotations[render.RotationHandledAnnotation]
	if rotate {
		next, err := newPassword()
		if err != nil {
			return ctrl.Result{}, err
		}
		overlap := time.Hour
		if o := c.Spec.Rotation.Overlap; o != nil {
			overlap = o.Duration
		}
		delete(sec.Annotations, render.PreviousHashAnnotation)
		delete(sec.Annotations, render.PreviousExpiresAnnotation)
		if len(password) > 0 && overlap > 0 {
			h, err := bcrypt.GenerateFromPassword(password, bcrypt.DefaultCost)
			if err != nil {
				return ctrl.Result{}, fmt.Errorf("hashing the previous password of RelayClient %s/%s: %w", c.Namespace, c.Name, err)
			}
			sec.Annotations[render.PreviousHashAnnotation] = string(h)
			sec.Annotations[render.PreviousExpiresAnnotation] = now.Add(overlap).UTC().Format(time.RFC3339)
		}
		password = next
		sec.Annotations[render.RotatedAtAnnotation] = now.UTC().Format(time.RFC3339)
		sec.Annotations[render.RotationHandledAnnotation] = want
	}
	var requeue time.Duration
	if until, err := time.Parse(time.RFC3339, sec.Annotations[render.PreviousExpiresAnnotation]); err == nil {
		if !until.After(now) {
			delete(sec.Annotations, render.PreviousHashAnnotation)
			delete(sec.Annotations, render.PreviousExpiresAnnotation)
		} else {
			requeue = until.Sub(now) + time.Second
		}
	}
	ep := render.ClientEndpoint(relay)
	username := render.ClientUsername(c)
	data := map[string][]byte{
		render.ClientKeyHost:     []byte(ep.Host),
		render.ClientKeyPort:     []byte(strconv.Itoa(int(ep.Port))),
		render.ClientKeyUsername: []byte(username),
		render.ClientKeyPassword: password,
	}
	if ep.Port != 0 {
		scheme := "smtp"
		if ep.Implicit {
			scheme = "smtps"
		}
		u := url.URL{Scheme: scheme, User: url.UserPassword(username, string(password)), Host: net.JoinHostPort(ep.Host, strconv.Itoa(int(ep.Port)))}
		data[render.ClientKeyURL] = []byte(u.String())
	}
	sec.Data = data
	sec.Type = corev1.SecretTypeOpaque
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels[render.LabelName] = render.CommonLabels()[render.LabelName]
	sec.Labels["relay.kuberelay.io/relay"] = relay.Name
	if err := controllerutil.SetControllerReference(c, sec, r.Scheme()); err != nil {
		return ctrl.Result{}, err
	}
	if sec.ResourceVersion == "" {
		if err := r.Create(ctx, sec); err != nil {
			return requeueOnConflict(client.IgnoreAlreadyExists(err))
		}
	} else if !maps.EqualFunc(before.Data, sec.Data, bytesEqual) || !maps.Equal(before.Annotations, sec.Annotations) ||
		!maps.Equal(before.Labels, sec.Labels) || len(before.OwnerReferences) != len(sec.OwnerReferences) {
		// resourceVersion is kept: a concurrent change is a conflict, retried on a fresh read.
		if err := r.Update(ctx, sec); err != nil {
			return requeueOnConflict(err)
		}
	}
	if rotate && before.ResourceVersion != "" {
		r.Recorder.Eventf(c, nil, corev1.EventTypeNormal, "Rotated", "Rotate", "New password in Secret %s; the previous one works until %s",
			sec.Name, orNow(sec.Annotations[render.PreviousExpiresAnnotation]))
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

func orNow(s string) string {
	if s == "" {
		return "now"
	}
	return s
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// newPassword is 192 random bits, URL-safe, so the url key needs no escaping.
func newPassword() ([]byte, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return []byte(base64.RawURLEncoding.EncodeToString(b)), nil
}

func setClientCondition(c *relayv1alpha1.RelayClient, t string, status metav1.ConditionStatus, reason, msg string) {
	apimeta.SetStatusCondition(&c.Status.Conditions, metav1.Condition{
		Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: c.Generation,
	})
}

// SetupWithManager registers the reconciler and its watches.
func (r *RelayClientReconciler) SetupWithManager(mgr ctrl.Manager) error {
	m := &mapper{Client: r.Client}
	return ctrl.NewControllerManagedBy(mgr).
		// Every change passes: the rotate annotation asks for a rotation, and a status
		// the relay wrote from a stale view of attachment is checked again.
		For(&relayv1alpha1.RelayClient{}).
		Owns(&corev1.Secret{}, builder.OnlyMetadata).
		Watches(&relayv1alpha1.SmtpRelay{}, handler.EnqueueRequestsFromMapFunc(m.relayClients),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(m.namespaceClients), builder.OnlyMetadata,
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Named("relayclient").
		Complete(r)
}
