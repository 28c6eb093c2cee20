package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
)

// Upstream checks: a relay fleet checks the Smarthosts it routes through, one pod per
// round, at most once per the shortest of their spec.check.interval and after each
// configuration change (once every ready pod runs it). The results become the
// Smarthosts' Reachable and AuthAccepted conditions.
const (
	defaultCheckInterval = 5 * time.Minute
	// checkPoll is how soon a round's results are looked for on its pod.
	checkPoll = 2 * time.Second
	// checkRetry is how soon a pod that would not start a round is asked again.
	checkRetry = 30 * time.Second
	// checkGiveUp: a round not reported by then is asked for again (the pod may have
	// restarted).
	checkGiveUp = 3 * time.Minute
	// maxCheckMessage bounds a condition message built from check results.
	maxCheckMessage = 1024
)

// EndpointCheck is one endpoint's result, as a relay pod reports it.
type EndpointCheck struct {
	Endpoint     string `json:"endpoint"`
	Reachable    bool   `json:"reachable"`
	AuthAccepted *bool  `json:"authAccepted,omitempty"`
	Error        string `json:"error,omitempty"`
}

// PodChecks is a relay pod's last round of upstream checks.
type PodChecks struct {
	ConfigHash string                     `json:"configHash"`
	StartedAt  time.Time                  `json:"startedAt"`
	FinishedAt *time.Time                 `json:"finishedAt,omitempty"`
	Upstreams  map[string][]EndpointCheck `json:"upstreams,omitempty"`
}

// checkRun is a relay fleet's current or last round.
type checkRun struct {
	hash    string // the configuration the round was asked on
	pod     string
	askedAt time.Time
	started time.Time // the round's start as the pod reported it
	done    bool
	// upstreams are the round's upstreams (relay.yaml names).
	upstreams []string
	// checked is when each Smarthost was last checked on hash.
	checked map[types.NamespacedName]time.Time
	// next picks the pod of the next round, so rounds go around the fleet.
	next int
}

// checkStore holds the fleets' last results by Smarthost, shared by the two
// reconcilers; a change enqueues the Smarthost.
type checkStore struct {
	mu          sync.Mutex
	bySmarthost map[types.NamespacedName]map[types.NamespacedName][]EndpointCheck
	events      chan event.GenericEvent
}

func newCheckStore() *checkStore {
	return &checkStore{bySmarthost: map[types.NamespacedName]map[types.NamespacedName][]EndpointCheck{},
		events: make(chan event.GenericEvent, 1024)}
}

// put records relay's results for the Smarthosts in results, and drops its results
// for the Smarthosts not in used.
func (c *checkStore) put(relay types.NamespacedName, results map[types.NamespacedName][]EndpointCheck, used map[types.NamespacedName]bool) {
	var changed []types.NamespacedName
	c.mu.Lock()
	for sh, r := range results {
		if c.bySmarthost[sh] == nil {
			c.bySmarthost[sh] = map[types.NamespacedName][]EndpointCheck{}
		}
		c.bySmarthost[sh][relay] = r
		changed = append(changed, sh)
	}
	for sh, m := range c.bySmarthost {
		if _, ok := m[relay]; ok && !used[sh] {
			delete(m, relay)
			changed = append(changed, sh)
		}
	}
	c.mu.Unlock()
	for _, sh := range changed {
		obj := &relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Namespace: sh.Namespace, Name: sh.Name}}
		select {
		case c.events <- event.GenericEvent{Object: obj}:
		default:
			// The queue is full of Smarthosts to reconcile already; this one is
			// picked up at its next reconcile.
		}
	}
}

// forget drops a deleted relay's results.
func (c *checkStore) forget(relay types.NamespacedName) { c.put(relay, nil, nil) }

// results returns the fleets' last results for a Smarthost, by relay.
func (c *checkStore) results(sh types.NamespacedName) map[types.NamespacedName][]EndpointCheck {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[types.NamespacedName][]EndpointCheck{}
	for k, v := range c.bySmarthost[sh] {
		out[k] = v
	}
	return out
}

// checkInterval is a Smarthost's spec.check.interval (0: off).
func checkInterval(sh *relayv1alpha1.Smarthost) time.Duration {
	if sh == nil {
		return 0
	}
	if c := sh.Spec.Check; c != nil && c.Interval != nil {
		return c.Interval.Duration
	}
	return defaultCheckInterval
}

// reconcileChecks asks one ready pod that runs the rendered configuration to check
// the upstreams that are due (each Smarthost at its own spec.check.interval, all of
// them after a configuration change), and stores a finished round's results. It
// returns when to look again.
func (r *SmtpRelayReconciler) reconcileChecks(ctx context.Context, s *relayScope) time.Duration {
	if s.result == nil || r.Pods == nil || r.checks == nil || len(s.checkable) == 0 {
		return 0
	}
	relayKey := client.ObjectKeyFromObject(s.relay)
	// Only Smarthosts with checks on keep results: turning them off drops them.
	checked := map[types.NamespacedName]bool{}
	for _, k := range s.result.Upstreams {
		if checkInterval(s.in.Smarthosts[k]) > 0 {
			checked[k] = true
		}
	}
	var run checkRun
	if v, ok := r.checkRuns.Load(relayKey); ok {
		run = v.(checkRun)
	}
	now := time.Now()
	if run.pod != "" && !run.done {
		rep, seen := s.reports[run.pod]
		switch c := rep.Checks; {
		case seen && c != nil && c.StartedAt.Equal(run.started) && c.FinishedAt != nil:
			run.done = true
			// A round on another configuration than the one rendered now says nothing
			// about it (a fixed password would show as still refused).
			if c.ConfigHash == s.result.Hash && run.hash == s.result.Hash {
				if run.checked == nil {
					run.checked = map[types.NamespacedName]time.Time{}
				}
				results := map[types.NamespacedName][]EndpointCheck{}
				for _, name := range run.upstreams {
					if k, ok := s.result.Upstreams[name]; ok && checked[k] {
						results[k] = c.Upstreams[name]
						run.checked[k] = run.askedAt
					}
				}
				r.checks.put(relayKey, results, checked)
			}
			r.checkRuns.Store(relayKey, run)
		case now.Sub(run.askedAt) < checkGiveUp:
			return checkPoll
		}
	}
	if run.hash != s.result.Hash {
		run.checked = nil
	}
	var due []string
	next := time.Duration(0)
	for name, k := range s.result.Upstreams {
		iv := checkInterval(s.in.Smarthosts[k])
		if iv == 0 {
			continue
		}
		last, ok := run.checked[k]
		if !ok || now.Sub(last) >= iv {
			due = append(due, name)
		} else if d := last.Add(iv).Sub(now); next == 0 || d < next {
			next = d
		}
	}
	if len(due) == 0 {
		r.checks.put(relayKey, nil, checked)
		return next
	}
	sort.Strings(due)
	pod := s.checkable[run.next%len(s.checkable)]
	started, err := r.Pods.StartChecks(ctx, pod, due)
	if err != nil {
		log.FromContext(ctx).V(1).Info("upstream checks not started; asking again", "pod", pod.Name, "error", err.Error())
		run.next++
		r.checkRuns.Store(relayKey, run)
		return checkRetry
	}
	if run.checked == nil {
		run.checked = map[types.NamespacedName]time.Time{}
	}
	r.checkRuns.Store(relayKey, checkRun{hash: s.result.Hash, pod: pod.Name, askedAt: now, started: started, upstreams: due,
		checked: run.checked, next: run.next + 1})
	return checkPoll
}

// setCheckConditions sets a Smarthost's Reachable and AuthAccepted conditions from
// the fleets' last results; with none it leaves them as they are (the last known).
func setCheckConditions(sh *relayv1alpha1.Smarthost, results map[types.NamespacedName][]EndpointCheck) {
	if len(results) == 0 {
		return
	}
	relays := make([]types.NamespacedName, 0, len(results))
	for k := range results {
		relays = append(relays, k)
	}
	sort.Slice(relays, func(i, j int) bool { return relays[i].String() < relays[j].String() })
	var unreachable, refused []string
	endpoints, reached, authChecked := 0, 0, 0
	for _, rk := range relays {
		for _, e := range results[rk] {
			endpoints++
			if !e.Reachable {
				unreachable = append(unreachable, fmt.Sprintf("%s (from SmtpRelay %s): %s", e.Endpoint, rk, e.Error))
				continue
			}
			reached++
			if e.AuthAccepted != nil {
				authChecked++
				if !*e.AuthAccepted {
					refused = append(refused, fmt.Sprintf("%s (from SmtpRelay %s): %s", e.Endpoint, rk, e.Error))
				}
			}
		}
	}
	set := func(t string, status metav1.ConditionStatus, reason, msg string) {
		if len(msg) > maxCheckMessage {
			msg = msg[:maxCheckMessage-3] + "..."
		}
		apimeta.SetStatusCondition(&sh.Status.Conditions, metav1.Condition{Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: sh.Generation})
	}
	fleets := fmt.Sprintf("%d relay fleet(s)", len(relays))
	if len(unreachable) > 0 {
		set(relayv1alpha1.ReachableCondition, metav1.ConditionFalse, relayv1alpha1.ReasonEndpointUnreachable,
			fmt.Sprintf("%d of %d endpoint checks failed: %s", len(unreachable), endpoints, strings.Join(unreachable, "; ")))
	} else {
		set(relayv1alpha1.ReachableCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded,
			fmt.Sprintf("Every endpoint was reached by the last checks of %s", fleets))
	}
	switch {
	case sh.Spec.Auth == nil:
		apimeta.RemoveStatusCondition(&sh.Status.Conditions, relayv1alpha1.AuthAcceptedCondition)
	case len(refused) > 0:
		set(relayv1alpha1.AuthAcceptedCondition, metav1.ConditionFalse, relayv1alpha1.ReasonAuthRefused,
			fmt.Sprintf("%d of %d logins refused: %s", len(refused), authChecked, strings.Join(refused, "; ")))
	case reached == 0 || authChecked == 0:
		set(relayv1alpha1.AuthAcceptedCondition, metav1.ConditionUnknown, relayv1alpha1.ReasonEndpointUnreachable,
			"No endpoint was reached to log in to")
	default:
		set(relayv1alpha1.AuthAcceptedCondition, metav1.ConditionTrue, relayv1alpha1.ReasonSucceeded,
			fmt.Sprintf("Every endpoint reached took the login in the last checks of %s", fleets))
	}
}

// checkPods are the ready pods that run hash, the ones a round may be asked of.
func checkPods(ready []*corev1.Pod, reports []PodReport, errs []error, hash string) ([]*corev1.Pod, map[string]PodReport) {
	var pods []*corev1.Pod
	byName := map[string]PodReport{}
	for i, p := range ready {
		if errs[i] != nil {
			continue
		}
		byName[p.Name] = reports[i]
		if reports[i].ConfigHash == hash {
			pods = append(pods, p)
		}
	}
	return pods, byName
}
