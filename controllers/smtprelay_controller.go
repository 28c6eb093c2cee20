package controllers

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
)

// SmtpRelayReconciler turns an SmtpRelay, its attached RelayDomains, the Smarthosts
// they route through and the Secrets they all name into a running relay fleet.
type SmtpRelayReconciler struct {
	client.Client
	// APIReader reads referenced Secrets straight from the API server, so the cache
	// never holds Secret data.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// Image is the relay image used when an SmtpRelay names none.
	Image string
	// Hasher bcrypt-hashes client passwords, re-hashing only changed ones.
	Hasher render.PasswordHasher
	// Pods asks ready relay pods which configuration they run.
	Pods PodStatus

	// owned applies the objects each relay owns.
	owned *applier
	// usage is the rate-limited users' use the ready pods of each relay last
	// reported, summed: relay namespace/name -> user -> [messages, recipients] of the
	// current minute, hour and day.
	usage sync.Map
	// checks receives the upstream checks' results; checkRuns is each relay's
	// current or last round (relay namespace/name -> checkRun).
	checks    *checkStore
	checkRuns sync.Map
}

// usagePoll is how often a relay whose clients have limits is asked for their use.
const usagePoll = 30 * time.Second

// While some ready pods still run an older configuration they are asked again: every
// configPollFast for the first configPollFastFor of the wait (a pod reloads within a
// second of its kubelet updating the files), then every configPollSlow, so a pod that
// never converges costs little. Nothing else tells the operator when a pod reloaded.
const (
	configPollFast    = time.Second
	configPollFastFor = 30 * time.Second
	configPollSlow    = 10 * time.Second
)

// configHashAnnotation on a relay pod holds the hash of the configuration the
// operator last rendered for it (see stampPod).
const configHashAnnotation = "relay.kuberelay.io/config-hash"

// relayScope carries one reconcile's state between its phases.
type relayScope struct {
	relay   *relayv1alpha1.SmtpRelay
	domains []relayv1alpha1.RelayDomain
	// in are the render's inputs (the attached clients and their Secrets among them).
	in     render.Inputs
	result *render.Result
	// renderErr is what the user must fix before the relay can be rendered.
	renderErr *render.Error
	// applied is what the ready pods reported; nil when they were not asked.
	applied *configApplied
	// drainMessage says what a Queue-mode scale-down waits for; drainAfter is when
	// to look again ("" and 0 when none is waiting).
	drainMessage string
	drainAfter   time.Duration
	// checkable are the ready pods that run the rendered configuration; reports are
	// the ready pods' reports by name (for the upstream checks).
	checkable []*corev1.Pod
	reports   map[string]PodReport
}

// configApplied counts the ready pods that run the rendered configuration.
type configApplied struct {
	ready, converged int32
	// queued sums the messages queued in the pods that answered (Queue mode).
	queued *int64
	// problems describe, briefly, the pods that do not run it yet.
	problems []string
}

// phase is one step of a reconcile.
type phase func(ctx context.Context, s *relayScope) (ctrl.Result, error)

func (r *SmtpRelayReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	relay := &relayv1alpha1.SmtpRelay{}
	if err := r.Get(ctx, req.NamespacedName, relay); err != nil {
		if apierrors.IsNotFound(err) {
			r.owned.forget(req.NamespacedName)
			forgetRelayReady(req.NamespacedName)
			r.usage.Delete(req.NamespacedName)
			r.checkRuns.Delete(req.NamespacedName)
			if r.checks != nil {
				r.checks.forget(req.NamespacedName)
			}
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !relay.DeletionTimestamp.IsZero() {
		// Owner references remove everything the relay owns.
		r.owned.forget(req.NamespacedName)
		forgetRelayReady(req.NamespacedName)
		return ctrl.Result{}, nil
	}
	s := &relayScope{relay: relay}
	base := relay.DeepCopy()
	defer func() {
		switch err := r.patchStatus(ctx, base, s, retErr); {
		case apierrors.IsConflict(err):
			// The status was computed from a cached copy older than the object: run
			// again on a fresh one rather than write over a newer status.
			res = ctrl.Result{Requeue: true}
		case err != nil:
			retErr = kerrors.NewAggregate([]error{retErr, err})
		}
	}()
	for _, p := range []phase{r.reconcileConfig, r.reconcileWorkload, r.reconcileDomains, r.reconcilePods} {
		res, err := p(ctx, s)
		if err != nil {
			return res, err
		}
		if !res.IsZero() {
			// The clients' status still follows what was rendered, with the use the
			// pods just reported.
			if cres, err := r.reconcileClients(ctx, s); err != nil || cres.Requeue {
				return cres, err
			}
			return res, nil
		}
	}
	if res, err := r.reconcileClients(ctx, s); err != nil || !res.IsZero() {
		return res, err
	}
	// A scale-down waiting for pods to empty their queues looks again, and so does a
	// rendering that changes by itself (a rotation's previous password expires).
	after := s.drainAfter
	for _, c := range s.in.Clients {
		if c.Spec.Limits != nil && (after == 0 || usagePoll < after) {
			// Their use is read from the pods again (no API write unless it changed).
			after = usagePoll
		}
	}
	if s.result != nil && !s.result.NextChange.IsZero() {
		if d := time.Until(s.result.NextChange) + time.Second; after == 0 || d < after {
			after = max(d, time.Second)
		}
	}
	if d := r.reconcileChecks(ctx, s); d > 0 && (after == 0 || d < after) {
		after = d
	}
	return ctrl.Result{RequeueAfter: after}, nil
}

// reconcileConfig gathers the inputs, renders the relay's configuration and writes
// its ConfigMap and Secret.
func (r *SmtpRelayReconciler) reconcileConfig(ctx context.Context, s *relayScope) (ctrl.Result, error) {
	in, domains, err := r.inputs(ctx, s.relay)
	if err != nil {
		return ctrl.Result{}, err
	}
	s.domains, s.in = domains, in
	result, err := render.Config(in)
	if err != nil {
		var re *render.Error
		if errors.As(err, &re) {
			// The user must fix something: the last good configuration stays live.
			if !conditionIs(s.relay.Status.Conditions, relayv1alpha1.StalledCondition, re.Reason, re.Message) {
				r.Recorder.Eventf(s.relay, nil, corev1.EventTypeWarning, re.Reason, "Render", "%s", re.Message)
			}
			setCondition(s.relay, relayv1alpha1.StalledCondition, metav1.ConditionTrue, re.Reason, re.Message)
			s.renderErr = re
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	s.result = result
	apimeta.RemoveStatusCondition(&s.relay.Status.Conditions, relayv1alpha1.StalledCondition)
	// The Secret goes first: a pod that starts between the two writes then finds every
	// file the configuration names (a new DKIM key, a new user), instead of failing its
	// first load and restarting.
	for _, obj := range []client.Object{render.Secret(s.relay, result), render.ConfigMap(s.relay, result)} {
		if err := r.owned.apply(ctx, r.Client, client.ObjectKeyFromObject(s.relay), obj); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{}, nil
}

// reconcileWorkload writes the ServiceAccount, Service, Deployment and
// PodDisruptionBudget. Their content does not depend on the configuration, so a
// configuration change never restarts pods.
func (r *SmtpRelayReconciler) reconcileWorkload(ctx context.Context, s *relayScope) (ctrl.Result, error) {
	if s.result == nil {
		return ctrl.Result{}, nil
	}
	objs := []client.Object{render.ServiceAccount(s.relay), render.Service(s.relay)}
	// Queue mode runs a StatefulSet (one volume per pod) behind a headless Service;
	// PassThrough a Deployment. The workload of the other mode goes once the new one is
	// ready: switching modes replaces the pods (a StatefulSet's claims stay, with any
	// mail they hold).
	meta := metav1.ObjectMeta{Name: s.relay.Name, Namespace: s.relay.Namespace}
	var stale []client.Object
	var res ctrl.Result
	if render.QueueMode(s.relay) {
		replicas, after, err := r.queueReplicas(ctx, s)
		if err != nil {
			return ctrl.Result{}, err
		}
		res.RequeueAfter = after
		objs = append(objs, render.PeerService(s.relay), render.StatefulSet(s.relay, r.Image, replicas))
		stale = []client.Object{&appsv1.Deployment{ObjectMeta: meta}}
	} else {
		objs = append(objs, render.Deployment(s.relay, r.Image))
		stale = []client.Object{&appsv1.StatefulSet{ObjectMeta: meta},
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: render.PeerServiceName(s.relay), Namespace: s.relay.Namespace}}}
	}
	for _, obj := range objs {
		if err := r.owned.apply(ctx, r.Client, client.ObjectKeyFromObject(s.relay), obj); err != nil {
			return ctrl.Result{}, err
		}
	}
	if render.QueueMode(s.relay) {
		if err := r.releaseEmptiedClaims(ctx, s.relay); err != nil {
			return ctrl.Result{}, err
		}
	}
	// The other mode's pods keep serving until the new ones are all ready, so a switch
	// never leaves the Service without pods.
	if w, err := r.workload(ctx, s.relay); err == nil && w.observed >= w.generation && w.ready == render.Replicas(s.relay) {
		for _, obj := range stale {
			if err := deleteIfExists(ctx, r.Client, obj); err != nil {
				return ctrl.Result{}, err
			}
		}
	}
	if pdb := render.PodDisruptionBudget(s.relay); pdb != nil {
		if err := r.owned.apply(ctx, r.Client, client.ObjectKeyFromObject(s.relay), pdb); err != nil {
			return ctrl.Result{}, err
		}
	} else {
		stale := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: s.relay.Name, Namespace: s.relay.Namespace}}
		if err := deleteIfExists(ctx, r.Client, stale); err != nil {
			return ctrl.Result{}, err
		}
	}
	if res.RequeueAfter > 0 {
		// Draining: the rest of the reconcile (domains, pods, status) still runs; the
		// result only brings the next look at the leaving pods.
		s.drainAfter = res.RequeueAfter
	}
	return ctrl.Result{}, nil
}

// emptiedAnnotation marks a Queue-mode claim whose pod delivered everything and was
// then scaled away: the only claims the operator deletes.
const emptiedAnnotation = "relay.kuberelay.io/queue-emptied"

// drainPoll is how often the leaving pods of a scale-down are asked about their queues.
const drainPoll = 5 * time.Second

// queueReplicas is the StatefulSet's replica count. A scale-down of a Queue-mode relay
// removes pods only once they are empty: the leaving pods (the highest ordinals) are
// told to drain, that is to take no more mail and deliver their queues, and the
// StatefulSet keeps them until each reports an empty queue. after is when to look
// again while they drain.
func (r *SmtpRelayReconciler) queueReplicas(ctx context.Context, s *relayScope) (int32, time.Duration, error) {
	want := render.Replicas(s.relay)
	ss := &appsv1.StatefulSet{}
	switch err := r.Get(ctx, client.ObjectKeyFromObject(s.relay), ss); {
	case apierrors.IsNotFound(err):
		return want, 0, nil
	case err != nil:
		return 0, 0, err
	}
	current := want
	if ss.Spec.Replicas != nil {
		current = *ss.Spec.Replicas
	}
	if r.Pods == nil {
		return want, 0, nil
	}
	if current <= want {
		return want, 0, r.undrain(ctx, s.relay, want)
	}
	var list corev1.PodList
	if err := r.List(ctx, &list, client.InNamespace(s.relay.Namespace), client.MatchingLabels(render.SelectorLabels(s.relay))); err != nil {
		return 0, 0, err
	}
	pods := map[int]*corev1.Pod{}
	for i := range list.Items {
		if n, ok := ordinal(s.relay.Name, list.Items[i].Name); ok {
			pods[n] = &list.Items[i]
		}
	}
	var left int64
	var waiting []string
	for n := int(want); n < int(current); n++ {
		p := pods[n]
		if p == nil || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			// A leaving pod that does not run cannot say its queue is empty: its claim
			// is kept and the scale-down waits for it.
			waiting = append(waiting, fmt.Sprintf("%s-%d (not running)", s.relay.Name, n))
			continue
		}
		rep, err := r.Pods.Report(ctx, p)
		switch {
		case err != nil:
			waiting = append(waiting, fmt.Sprintf("%s (did not answer: %v)", p.Name, err))
		case !rep.Draining:
			// Emptiness counts only once the pod takes no more mail.
			left += valueOr(rep.Queued)
			if err := r.Pods.Drain(ctx, p); err != nil {
				waiting = append(waiting, fmt.Sprintf("%s (could not start draining: %v)", p.Name, err))
			} else {
				waiting = append(waiting, fmt.Sprintf("%s (draining, %d messages left)", p.Name, valueOr(rep.Queued)))
			}
		case rep.Queued == nil || *rep.Queued > 0:
			left += valueOr(rep.Queued)
			waiting = append(waiting, fmt.Sprintf("%s (%d messages left)", p.Name, valueOr(rep.Queued)))
		}
	}
	if len(waiting) > 0 {
		s.drainMessage = fmt.Sprintf("Scaling down from %d to %d pods once the leaving pods have delivered their queues (%d messages left): %s",
			current, want, left, briefList(waiting, 3))
		return current, drainPoll, nil
	}
	// Every leaving pod is empty: their claims may go once the pods have.
	for n := int(want); n < int(current); n++ {
		claim := &corev1.PersistentVolumeClaim{}
		key := types.NamespacedName{Namespace: s.relay.Namespace, Name: render.QueueClaimName(s.relay, n)}
		if err := r.Get(ctx, key, claim); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return 0, 0, err
		}
		if claim.Annotations[emptiedAnnotation] == "" {
			base := claim.DeepCopy()
			if claim.Annotations == nil {
				claim.Annotations = map[string]string{}
			}
			claim.Annotations[emptiedAnnotation] = "true"
			if err := r.Patch(ctx, claim, client.MergeFrom(base)); err != nil {
				return 0, 0, err
			}
		}
	}
	log.FromContext(ctx).Info("leaving pods are empty: scaling down", "from", current, "to", want)
	return want, 0, nil
}

// undrain restarts the pods that are still draining although they stay (a scale-down
// was undone before they went): a draining relay takes no mail until it restarts. Only
// pods that are not ready are asked, as a draining pod is not. Their claims lose the
// emptied mark, since they take mail again.
func (r *SmtpRelayReconciler) undrain(ctx context.Context, relay *relayv1alpha1.SmtpRelay, want int32) error {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(relay.Namespace), client.MatchingLabels(render.SelectorLabels(relay))); err != nil {
		return err
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		n, ok := ordinal(relay.Name, p.Name)
		if !ok || n >= int(want) || podReady(p) || p.DeletionTimestamp != nil || p.Status.PodIP == "" {
			continue
		}
		if rep, err := r.Pods.Report(ctx, p); err == nil && rep.Draining {
			log.FromContext(ctx).Info("restarting a pod left draining by an undone scale-down", "pod", p.Name)
			if err := r.Delete(ctx, p); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	var claims corev1.PersistentVolumeClaimList
	if err := r.List(ctx, &claims, client.InNamespace(relay.Namespace), client.MatchingLabels(render.SelectorLabels(relay))); err != nil {
		return err
	}
	for i := range claims.Items {
		c := &claims.Items[i]
		if n, ok := ordinal(render.QueueClaimPrefix(relay), c.Name); !ok || n >= int(want) || c.Annotations[emptiedAnnotation] == "" {
			continue
		}
		base := c.DeepCopy()
		delete(c.Annotations, emptiedAnnotation)
		if err := r.Patch(ctx, c, client.MergeFrom(base)); err != nil {
			return err
		}
	}
	return nil
}

// releaseEmptiedClaims deletes the claims marked emptied whose pods are gone (and
// which the StatefulSet no longer counts), so no claim is left holding mail and none
// is deleted that might.
func (r *SmtpRelayReconciler) releaseEmptiedClaims(ctx context.Context, relay *relayv1alpha1.SmtpRelay) error {
	var claims corev1.PersistentVolumeClaimList
	if err := r.List(ctx, &claims, client.InNamespace(relay.Namespace), client.MatchingLabels(render.SelectorLabels(relay))); err != nil {
		return err
	}
	want := int(render.Replicas(relay))
	for i := range claims.Items {
		c := &claims.Items[i]
		n, ok := ordinal(render.QueueClaimPrefix(relay), c.Name)
		if !ok || n < want || c.Annotations[emptiedAnnotation] == "" || c.DeletionTimestamp != nil {
			continue
		}
		pod := &corev1.Pod{}
		switch err := r.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: fmt.Sprintf("%s-%d", relay.Name, n)}, pod); {
		case err == nil:
			continue // still there, still using it
		case !apierrors.IsNotFound(err):
			return err
		}
		if err := r.Delete(ctx, c); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		log.FromContext(ctx).Info("deleted an emptied queue claim", "claim", c.Name)
	}
	return nil
}

// ordinal reads n from a StatefulSet pod or claim name "<prefix>-<n>".
func ordinal(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok || rest == "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0
}

// reconcileDomains writes the status of every RelayDomain attached to the relay: it is
// the only writer of an attached domain's status (RelayDomainReconciler writes the
// status of the others).
func (r *SmtpRelayReconciler) reconcileDomains(ctx context.Context, s *relayScope) (ctrl.Result, error) {
	if s.result == nil && s.renderErr == nil {
		return ctrl.Result{}, nil
	}
	var patches statusPatches
	for i := range s.domains {
		d := &s.domains[i]
		var dr render.DomainResult
		if s.result != nil {
			var ok bool
			if dr, ok = s.result.DomainResults[types.NamespacedName{Namespace: d.Namespace, Name: d.Name}]; !ok {
				continue
			}
		} else {
			// The relay cannot be rendered at all: its domains say why.
			dr = render.DomainResult{Reason: s.renderErr.Reason, Message: fmt.Sprintf(
				"SmtpRelay %s/%s cannot be configured: %s", s.relay.Namespace, s.relay.Name, s.renderErr.Message)}
		}
		base := d.DeepCopy()
		d.Status.ObservedGeneration = d.Generation
		setDomainCondition(d, relayv1alpha1.AcceptedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded,
			fmt.Sprintf("Attached to SmtpRelay %s/%s", s.relay.Namespace, s.relay.Name))
		if dr.Included {
			setDomainCondition(d, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded, "Relayed by "+s.relay.Name)
			apimeta.RemoveStatusCondition(&d.Status.Conditions, relayv1alpha1.StalledCondition)
		} else {
			setDomainCondition(d, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, dr.Reason, dr.Message)
			setDomainCondition(d, relayv1alpha1.StalledCondition, metav1.ConditionTrue, dr.Reason, dr.Message)
		}
		apimeta.RemoveStatusCondition(&d.Status.Conditions, relayv1alpha1.ReconcilingCondition)
		d.Status.DKIMRecord = dr.DKIMRecord
		d.Status.DKIM = dr.DKIM
		if !dr.Included && s.result != nil && !conditionIs(base.Status.Conditions, relayv1alpha1.ReadyCondition, dr.Reason, dr.Message) {
			r.Recorder.Eventf(d, s.relay, corev1.EventTypeWarning, dr.Reason, "Attach", "%s", dr.Message)
		}
		patches.add(patchStatusIfChanged(ctx, r.Client, base, d, base.Status, d.Status))
	}
	return patches.result()
}

// statusPatches collects the outcome of patching several objects' status.
type statusPatches struct {
	conflict bool
	errs     []error
}

func (p *statusPatches) add(err error) {
	switch {
	case apierrors.IsConflict(err):
		p.conflict = true
	case err != nil:
		p.errs = append(p.errs, err)
	}
}

// result is the reconcile's: an object changed under it is done again on its new
// version; other errors are returned.
func (p *statusPatches) result() (ctrl.Result, error) {
	if p.conflict && len(p.errs) == 0 {
		return ctrl.Result{Requeue: true}, nil
	}
	return ctrl.Result{}, kerrors.NewAggregate(p.errs)
}

// reconcileClients writes the status of every RelayClient attached to the relay, as
// reconcileDomains does for domains, with the use the pods reported last. It runs
// after reconcilePods, even when that one asks to look again.
func (r *SmtpRelayReconciler) reconcileClients(ctx context.Context, s *relayScope) (ctrl.Result, error) {
	if s.result == nil && s.renderErr == nil {
		return ctrl.Result{}, nil
	}
	var patches statusPatches
	for i := range s.in.Clients {
		c := &s.in.Clients[i]
		key := types.NamespacedName{Namespace: c.Namespace, Name: c.Name}
		var cr render.ClientResult
		if s.result != nil {
			cr = s.result.ClientResults[key]
		} else {
			cr = render.ClientResult{Reason: s.renderErr.Reason, Message: fmt.Sprintf(
				"SmtpRelay %s/%s cannot be configured: %s", s.relay.Namespace, s.relay.Name, s.renderErr.Message)}
		}
		base := c.DeepCopy()
		c.Status.ObservedGeneration = c.Generation
		c.Status.SecretName = render.ClientSecretName(c)
		c.Status.Username = render.ClientUsername(c)
		c.Status.RotatedAt, c.Status.PreviousPasswordExpiresAt = nil, nil
		if sec := s.in.Secrets[types.NamespacedName{Namespace: c.Namespace, Name: c.Status.SecretName}]; sec != nil && metav1.IsControlledBy(sec, c) {
			c.Status.RotatedAt = annotationTime(sec, render.RotatedAtAnnotation)
			if t := annotationTime(sec, render.PreviousExpiresAnnotation); t != nil && t.After(s.in.Now) {
				c.Status.PreviousPasswordExpiresAt = t
			}
		}
		c.Status.Captured = cr.Included && render.ClientCaptured(s.relay, c, s.in.CaptureNamespaces)
		c.Status.Usage = nil
		if c.Spec.Limits != nil {
			c.Status.Usage = base.Status.Usage
			if m, ok := r.usage.Load(client.ObjectKeyFromObject(s.relay)); ok {
				u := m.(map[string][2][3]int64)[c.Status.Username]
				c.Status.Usage = &relayv1alpha1.ClientUsage{
					Messages:   relayv1alpha1.WindowCounts{Minute: u[0][0], Hour: u[0][1], Day: u[0][2]},
					Recipients: relayv1alpha1.WindowCounts{Minute: u[1][0], Hour: u[1][1], Day: u[1][2]},
				}
			}
		}
		setClientCondition(c, relayv1alpha1.AcceptedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded,
			fmt.Sprintf("Attached to SmtpRelay %s/%s", s.relay.Namespace, s.relay.Name))
		switch {
		case cr.Included:
			setClientCondition(c, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded,
				fmt.Sprintf("Can log in to %s as %s with the credentials in Secret %s", s.relay.Name, c.Status.Username, c.Status.SecretName))
			apimeta.RemoveStatusCondition(&c.Status.Conditions, relayv1alpha1.StalledCondition)
			apimeta.RemoveStatusCondition(&c.Status.Conditions, relayv1alpha1.ReconcilingCondition)
		case cr.Reason == relayv1alpha1.ReasonProgressing:
			setClientCondition(c, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, cr.Reason, cr.Message)
			setClientCondition(c, relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, cr.Reason, cr.Message)
			apimeta.RemoveStatusCondition(&c.Status.Conditions, relayv1alpha1.StalledCondition)
		default:
			setClientCondition(c, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, cr.Reason, cr.Message)
			setClientCondition(c, relayv1alpha1.StalledCondition, metav1.ConditionTrue, cr.Reason, cr.Message)
			apimeta.RemoveStatusCondition(&c.Status.Conditions, relayv1alpha1.ReconcilingCondition)
			if s.result != nil && !conditionIs(base.Status.Conditions, relayv1alpha1.ReadyCondition, cr.Reason, cr.Message) {
				r.Recorder.Eventf(c, s.relay, corev1.EventTypeWarning, cr.Reason, "Attach", "%s", cr.Message)
			}
		}
		patches.add(patchStatusIfChanged(ctx, r.Client, base, c, base.Status, c.Status))
	}
	return patches.result()
}

// annotationTime reads an RFC 3339 time from an annotation of o.
func annotationTime(o metav1.Object, name string) *metav1.Time {
	t, err := time.Parse(time.RFC3339, o.GetAnnotations()[name])
	if err != nil {
		return nil
	}
	return &metav1.Time{Time: t}
}

// requeueOnConflict turns the conflict of a status patch made from an outdated copy
// into a prompt retry on a fresh one, instead of an error.
func requeueOnConflict(err error) (ctrl.Result, error) {
	if apierrors.IsConflict(err) {
		return ctrl.Result{Requeue: true}, nil
	}
	return ctrl.Result{}, err
}

// reconcilePods asks every ready relay pod which configuration it runs, and polls
// again while some still run an older one.
func (r *SmtpRelayReconciler) reconcilePods(ctx context.Context, s *relayScope) (ctrl.Result, error) {
	if s.result == nil || r.Pods == nil {
		return ctrl.Result{}, nil
	}
	var list corev1.PodList
	if err := r.List(ctx, &list, client.InNamespace(s.relay.Namespace), client.MatchingLabels(render.SelectorLabels(s.relay))); err != nil {
		return ctrl.Result{}, err
	}
	var ready []*corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		if err := r.stampPod(ctx, p, s.result.Hash); err != nil {
			return ctrl.Result{}, err
		}
		if podReady(p) {
			ready = append(ready, p)
		}
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].Name < ready[j].Name })
	a := &configApplied{ready: int32(len(ready))}
	reports, errs := podReports(ctx, r.Pods, ready)
	for i, p := range ready {
		if q := reports[i].Queued; errs[i] == nil && q != nil {
			a.queued = ptrTo(*q + valueOr(a.queued))
		}
		switch {
		case errs[i] != nil:
			a.problems = append(a.problems, fmt.Sprintf("pod %s did not answer: %v", p.Name, errs[i]))
		case reports[i].ConfigHash != s.result.Hash:
			a.problems = append(a.problems, fmt.Sprintf("pod %s runs %s", p.Name, reports[i].ConfigHash))
		default:
			a.converged++
		}
	}
	s.applied = a
	s.checkable, s.reports = checkPods(ready, reports, errs, s.result.Hash)
	users := map[string][2][3]int64{}
	for i := range ready {
		if errs[i] != nil {
			continue
		}
		for name, u := range reports[i].Users {
			sum := users[name]
			for k := range 2 {
				for w := range 3 {
					sum[k][w] += u[k][w]
				}
			}
			users[name] = sum
		}
	}
	r.usage.Store(client.ObjectKeyFromObject(s.relay), users)
	if a.converged < a.ready {
		log.FromContext(ctx).V(1).Info("waiting for pods to load the configuration", "hash", s.result.Hash, "problems", a.problems)
		after := configPollSlow
		if c := apimeta.FindStatusCondition(s.relay.Status.Conditions, relayv1alpha1.ConfigAppliedCondition); c == nil ||
			c.Status == metav1.ConditionTrue || time.Since(c.LastTransitionTime.Time) < configPollFastFor {
			after = configPollFast
		}
		return ctrl.Result{RequeueAfter: after}, nil
	}
	return ctrl.Result{}, nil
}

// stampPod records the rendered configuration's hash on a relay pod. The pod's
// update makes its kubelet sync the pod, and with it the mounted ConfigMap and
// Secret, at once rather than at its next periodic sync up to a minute or more
// later; the pod itself is not restarted, since only its own metadata changes.
func (r *SmtpRelayReconciler) stampPod(ctx context.Context, pod *corev1.Pod, hash string) error {
	if pod.DeletionTimestamp != nil || pod.Annotations[configHashAnnotation] == hash {
		return nil
	}
	base := pod.DeepCopy()
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[configHashAnnotation] = hash
	if err := r.Patch(ctx, pod, client.MergeFrom(base)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("stamping pod %s with the configuration hash: %w", pod.Name, err)
	}
	return nil
}

// inputs fetches everything the relay's rendering depends on.
func (r *SmtpRelayReconciler) inputs(ctx context.Context, relay *relayv1alpha1.SmtpRelay) (render.Inputs, []relayv1alpha1.RelayDomain, error) {
	in := render.Inputs{
		Relay:      relay,
		Smarthosts: map[types.NamespacedName]*relayv1alpha1.Smarthost{},
		Secrets:    map[types.NamespacedName]*corev1.Secret{},
		Hasher:     r.Hasher,
	}
	var list relayv1alpha1.RelayDomainList
	if err := r.List(ctx, &list, client.MatchingFields{indexDomainRelay: key(relay.Namespace, relay.Name)}); err != nil {
		return in, nil, err
	}
	var attached []relayv1alpha1.RelayDomain
	for _, d := range list.Items {
		ok, err := attachmentAllowed(ctx, r.Client, relay, d.Namespace)
		if err != nil {
			return in, nil, err
		}
		if ok {
			attached = append(attached, d)
		}
	}
	sort.Slice(attached, func(i, j int) bool {
		return key(attached[i].Namespace, attached[i].Name) < key(attached[j].Namespace, attached[j].Name)
	})
	in.Domains = attached

	secretRefs := relaySecrets(relay)
	var clients relayv1alpha1.RelayClientList
	if err := r.List(ctx, &clients, client.MatchingFields{indexClientRelay: key(relay.Namespace, relay.Name)}); err != nil {
		return in, nil, err
	}
	for _, c := range clients.Items {
		ok, err := attachmentAllowed(ctx, r.Client, relay, c.Namespace)
		if err != nil {
			return in, nil, err
		}
		if ok && c.DeletionTimestamp.IsZero() {
			in.Clients = append(in.Clients, c)
			secretRefs = append(secretRefs, types.NamespacedName{Namespace: c.Namespace, Name: render.ClientSecretName(&c)})
		}
	}
	var err error
	if in.CaptureNamespaces, err = captureNamespaces(ctx, r.Client, relay, &in); err != nil {
		return in, nil, err
	}
	in.Now = time.Now()
	// Budgets are shared by every pod that may be sending: those wanted, and those
	// still running during a scale-down or a rollout.
	in.FleetSize = render.Replicas(relay)
	if w, err := r.workload(ctx, relay); err == nil {
		in.FleetSize = max(in.FleetSize, w.replicas)
	}
	smarthost := func(ns, name string) error {
		k := types.NamespacedName{Namespace: ns, Name: name}
		if _, seen := in.Smarthosts[k]; seen {
			return nil
		}
		sh := &relayv1alpha1.Smarthost{}
		switch err := r.Get(ctx, k, sh); {
		case apierrors.IsNotFound(err):
			return nil
		case err != nil:
			return err
		}
		in.Smarthosts[k] = sh
		secretRefs = append(secretRefs, smarthostSecrets(sh)...)
		return nil
	}
	if relay.Spec.SmarthostRef != nil {
		if err := smarthost(relay.Namespace, relay.Spec.SmarthostRef.Name); err != nil {
			return in, nil, err
		}
	}
	for _, d := range attached {
		if d.Spec.SmarthostRef != nil {
			if err := smarthost(d.Namespace, d.Spec.SmarthostRef.Name); err != nil {
				return in, nil, err
			}
		}
		switch k := d.Spec.DKIM; {
		case k != nil && k.Generate != nil:
			secretRefs = append(secretRefs, types.NamespacedName{Namespace: d.Namespace, Name: render.GeneratedDKIMSecretName(&d)})
		case k != nil:
			secretRefs = append(secretRefs, types.NamespacedName{Namespace: d.Namespace, Name: k.PrivateKeySecretRef.Name})
		}
	}
	for _, k := range secretRefs {
		if _, seen := in.Secrets[k]; seen {
			continue
		}
		sec := &corev1.Secret{}
		switch err := r.APIReader.Get(ctx, k, sec); {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return in, nil, err
		}
		in.Secrets[k] = sec
	}
	// The Secret the operator wrote last time: unchanged passwords keep their hashes.
	prev := &corev1.Secret{}
	switch err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: render.SecretName(relay)}, prev); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return in, nil, err
	default:
		in.Previous = prev.Data
	}
	return in, attached, nil
}

// attachmentAllowed says whether a RelayDomain in namespace ns may attach to relay
// (spec.domains.namespaces, as Gateway API's allowedRoutes).
func attachmentAllowed(ctx context.Context, c client.Client, relay *relayv1alpha1.SmtpRelay, ns string) (bool, error) {
	from := relay.Spec.Domains.Namespaces.From
	switch {
	case ns == relay.Namespace, from == "All":
		return true, nil
	case from == "Selector" && relay.Spec.Domains.Namespaces.Selector != nil:
		return namespaceSelected(ctx, c, relay.Spec.Domains.Namespaces.Selector, ns)
	}
	return false, nil
}

// namespaceSelected says whether selector selects namespace ns.
func namespaceSelected(ctx context.Context, c client.Client, selector *metav1.LabelSelector, ns string) (bool, error) {
	sel, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		// Admission validates the selector; an invalid one selects nothing.
		return false, nil
	}
	// Labels are all that matter: only metadata is cached.
	nsObj := &metav1.PartialObjectMetadata{}
	nsObj.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	if err := c.Get(ctx, types.NamespacedName{Name: ns}, nsObj); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	return sel.Matches(labels.Set(nsObj.Labels)), nil
}

// captureNamespaces are the namespaces of in's domains and clients that the relay's
// spec.capture.namespaceSelector selects.
func captureNamespaces(ctx context.Context, c client.Client, relay *relayv1alpha1.SmtpRelay, in *render.Inputs) (map[string]bool, error) {
	cp := relay.Spec.Capture
	if cp == nil || cp.NamespaceSelector == nil {
		return nil, nil
	}
	out := map[string]bool{}
	seen := map[string]bool{}
	check := func(ns string) error {
		if seen[ns] {
			return nil
		}
		seen[ns] = true
		ok, err := namespaceSelected(ctx, c, cp.NamespaceSelector, ns)
		if ok {
			out[ns] = true
		}
		return err
	}
	for _, d := range in.Domains {
		if err := check(d.Namespace); err != nil {
			return nil, err
		}
	}
	for _, cl := range in.Clients {
		if err := check(cl.Namespace); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// patchStatus writes the relay's status once per reconcile, and only when it changed.
func (r *SmtpRelayReconciler) patchStatus(ctx context.Context, base *relayv1alpha1.SmtpRelay, s *relayScope, reconcileErr error) error {
	relay := s.relay
	st := &relay.Status
	st.ObservedGeneration = relay.Generation
	if s.result != nil {
		st.ConfigHash = s.result.Hash
		n := int32(0)
		for _, dr := range s.result.DomainResults {
			if dr.Included {
				n++
			}
		}
		st.AttachedDomains = n
	}
	w, depErr := r.workload(ctx, relay)
	if depErr == nil {
		st.Replicas = w.replicas
		st.ReadyReplicas = w.ready
		if sel, err := metav1.LabelSelectorAsSelector(w.selector); err == nil {
			st.Selector = sel.String()
		}
	}

	stalled := apimeta.IsStatusConditionTrue(st.Conditions, relayv1alpha1.StalledCondition)
	want := render.Replicas(relay)
	rolledOut := depErr == nil && w.observed >= w.generation &&
		w.updated == want && w.ready == want && w.replicas == want
	configPending := false
	if a := s.applied; a != nil {
		st.ConfigAppliedReplicas = a.converged
		// PassThrough stores nothing: its count is 0, so the column is never blank.
		st.QueuedMessages = ptrTo(valueOr(a.queued))
		msg := fmt.Sprintf("%d of %d ready pods run configuration %s", a.converged, a.ready, st.ConfigHash)
		switch {
		case a.ready == 0:
			setCondition(relay, relayv1alpha1.ConfigAppliedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonNoReadyPods, "No relay pod is ready to report its configuration")
		case a.converged == a.ready:
			setCondition(relay, relayv1alpha1.ConfigAppliedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonConfigApplied, msg)
		default:
			configPending = true
			setCondition(relay, relayv1alpha1.ConfigAppliedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonConfigPending, msg+": "+briefList(a.problems, 3))
		}
	}
	switch {
	case stalled:
		c := apimeta.FindStatusCondition(st.Conditions, relayv1alpha1.StalledCondition)
		setCondition(relay, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, c.Reason, c.Message)
		apimeta.RemoveStatusCondition(&st.Conditions, relayv1alpha1.ReconcilingCondition)
	case reconcileErr != nil:
		setCondition(relay, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonProgressing, "Reconcile failed: "+reconcileErr.Error())
		setCondition(relay, relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, relayv1alpha1.ReasonProgressing, "Retrying after an error")
	case s.drainMessage != "":
		setCondition(relay, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonDraining, s.drainMessage)
		setCondition(relay, relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, relayv1alpha1.ReasonDraining, s.drainMessage)
	case !rolledOut:
		msg := fmt.Sprintf("%d of %d relay pods ready", st.ReadyReplicas, want)
		setCondition(relay, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonRolloutInProgress, msg)
		setCondition(relay, relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, relayv1alpha1.ReasonRolloutInProgress, msg)
	case configPending:
		msg := fmt.Sprintf("Waiting for pods to load configuration %s", st.ConfigHash)
		setCondition(relay, relayv1alpha1.ReadyCondition, metav1.ConditionFalse, relayv1alpha1.ReasonConfigPending, msg)
		setCondition(relay, relayv1alpha1.ReconcilingCondition, metav1.ConditionTrue, relayv1alpha1.ReasonConfigPending, msg)
	default:
		setCondition(relay, relayv1alpha1.ReadyCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded,
			fmt.Sprintf("%d relay pods ready, %d domains attached", st.ReadyReplicas, st.AttachedDomains))
		apimeta.RemoveStatusCondition(&st.Conditions, relayv1alpha1.ReconcilingCondition)
	}
	setRelayReady(client.ObjectKeyFromObject(relay), apimeta.IsStatusConditionTrue(st.Conditions, relayv1alpha1.ReadyCondition))
	return patchStatusIfChanged(ctx, r.Client, base, relay, base.Status, relay.Status)
}

// workloadState is what the status needs of the relay's Deployment or StatefulSet.
type workloadState struct {
	replicas, ready, updated int32
	observed, generation     int64
	selector                 *metav1.LabelSelector
}

// workload reads the workload of the relay's delivery mode.
func (r *SmtpRelayReconciler) workload(ctx context.Context, relay *relayv1alpha1.SmtpRelay) (workloadState, error) {
	key := types.NamespacedName{Namespace: relay.Namespace, Name: relay.Name}
	if render.QueueMode(relay) {
		ss := &appsv1.StatefulSet{}
		if err := r.Get(ctx, key, ss); err != nil {
			return workloadState{}, err
		}
		return workloadState{replicas: ss.Status.Replicas, ready: ss.Status.ReadyReplicas, updated: ss.Status.UpdatedReplicas,
			observed: ss.Status.ObservedGeneration, generation: ss.Generation, selector: ss.Spec.Selector}, nil
	}
	dep := &appsv1.Deployment{}
	if err := r.Get(ctx, key, dep); err != nil {
		return workloadState{}, err
	}
	return workloadState{replicas: dep.Status.Replicas, ready: dep.Status.ReadyReplicas, updated: dep.Status.UpdatedReplicas,
		observed: dep.Status.ObservedGeneration, generation: dep.Generation, selector: dep.Spec.Selector}, nil
}

func setCondition(relay *relayv1alpha1.SmtpRelay, t string, status metav1.ConditionStatus, reason, msg string) {
	apimeta.SetStatusCondition(&relay.Status.Conditions, metav1.Condition{Type: t, Status: status,
		Reason: reason, Message: msg, ObservedGeneration: relay.Generation})
}

// conditionIs says whether conditions already hold condition t with this reason and
// message, so that an event is recorded once per change and not on every resync.
func conditionIs(conds []metav1.Condition, t, reason, msg string) bool {
	c := apimeta.FindStatusCondition(conds, t)
	return c != nil && c.Reason == reason && c.Message == msg
}

// briefList joins the first n items and says how many more there are.
func briefList(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(items[:n], "; "), len(items)-n)
}

func setDomainCondition(d *relayv1alpha1.RelayDomain, t string, status metav1.ConditionStatus, reason, msg string) {
	apimeta.SetStatusCondition(&d.Status.Conditions, metav1.Condition{Type: t, Status: status,
		Reason: reason, Message: msg, ObservedGeneration: d.Generation})
}

// patchStatusIfChanged patches obj's status from base, and makes no request when the
// statuses are equal.
func patchStatusIfChanged(ctx context.Context, c client.Client, base, obj client.Object, before, after any) error {
	if equalJSON(before, after) {
		return nil
	}
	// A merge patch from a cached base that is older than the object would leave
	// fields another reconcile changed meanwhile half-updated (a condition from one,
	// a count from another): the resourceVersion makes such a patch a conflict.
	return c.Status().Patch(ctx, obj, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
}

// SetupWithManager registers the reconciler and its watches; Setup registers the
// field indexes they use.
func (r *SmtpRelayReconciler) SetupWithManager(mgr ctrl.Manager, concurrency int) error {
	if concurrency <= 0 {
		concurrency = 4
	}
	m := &mapper{Client: r.Client}
	return ctrl.NewControllerManagedBy(mgr).
		// The relay's own status is written here: its status updates are not changes.
		// Labels and annotations pass, so touching either requests a reconcile.
		For(&relayv1alpha1.SmtpRelay{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{},
			predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.Service{}, builder.OnlyMetadata).
		Owns(&corev1.ConfigMap{}, builder.OnlyMetadata).
		Owns(&corev1.Secret{}, builder.OnlyMetadata).
		Owns(&corev1.ServiceAccount{}, builder.OnlyMetadata).
		Owns(&policyv1.PodDisruptionBudget{}, builder.OnlyMetadata).
		// A domain's status is written by the relay: only spec changes re-render.
		Watches(&relayv1alpha1.RelayDomain{}, handler.EnqueueRequestsFromMapFunc(m.domainRelay),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// A client's status is written by the relay too; its rotate annotation changes
		// its Secret, which is watched below.
		Watches(&relayv1alpha1.RelayClient{}, handler.EnqueueRequestsFromMapFunc(m.clientRelay),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&relayv1alpha1.Smarthost{}, handler.EnqueueRequestsFromMapFunc(m.smarthostRelays),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(m.secretRelays), builder.OnlyMetadata).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(m.namespaceRelays), builder.OnlyMetadata,
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podRelay),
			builder.WithPredicates(podServingChanged)).
		Named("smtprelay").
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrency}).
		Complete(r)
}

func ptrTo[T any](v T) *T { return &v }

func valueOr(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}
