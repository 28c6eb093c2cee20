package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
	"github.com/kuberelay/kuberelay/relay/config"
)

// pollInterval is how often the relays are listed while waiting; it bounds the
// precision of the convergence time.
const pollInterval = 250 * time.Millisecond

// converger decides when every relay of a plan has converged: its ConfigMap and
// Secret exist, relay.yaml names all its domains, and status.configHash is
// config.Hash of the two with status.attachedDomains equal to the domains created.
type converger struct {
	c    client.Client
	plan *plan
	want int32 // domains per relay
	// seen is what the last listing of ConfigMaps and Secrets showed for each relay.
	// They are listed again only when a relay's status claims a hash not seen yet, so
	// polling a large fleet stays cheap for the API server the operator is using.
	seen map[types.NamespacedName]rendered
}

// rendered is what the operator had rendered for a relay when last listed.
type rendered struct {
	hash    string // config.Hash of the ConfigMap and Secret; empty if problem is set
	problem string
}

func newConverger(c client.Client, p *plan, domainsPerRelay int) *converger {
	return &converger{c: c, plan: p, want: int32(domainsPerRelay), seen: map[types.NamespacedName]rendered{}}
}

// wait polls until every relay has converged, and returns the time since start.
func (v *converger) wait(ctx context.Context, start time.Time, timeout time.Duration, m *manager) (time.Duration, error) {
	deadline := start.Add(timeout)
	lastProgress := time.Now()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	total := len(v.plan.domains)
	for {
		if m.Exited() {
			return 0, fmt.Errorf("the manager exited while the relays converged: %v", m.Err())
		}
		n, _, err := v.poll(ctx, false)
		if err != nil {
			return 0, err
		}
		if n == total {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, v.notConverged(ctx, timeout)
		}
		if time.Since(lastProgress) >= 5*time.Second {
			progress("%d/%d relays converged after %v", n, total, time.Since(start).Round(time.Second))
			lastProgress = time.Now()
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
		}
	}
}

// poll lists the relays and, when needed or full is set, their ConfigMaps and
// Secrets. It returns how many relays have converged, and why each other one has not.
func (v *converger) poll(ctx context.Context, full bool) (int, map[types.NamespacedName]string, error) {
	var relays relayv1alpha1.SmtpRelayList
	if err := v.c.List(ctx, &relays); err != nil {
		return 0, nil, fmt.Errorf("listing SmtpRelays: %w", err)
	}
	byKey := make(map[types.NamespacedName]*relayv1alpha1.SmtpRelay, len(relays.Items))
	for i := range relays.Items {
		r := &relays.Items[i]
		byKey[client.ObjectKeyFromObject(r)] = r
	}
	listed := false
	if full || v.unseenHash(byKey) {
		if err := v.listRendered(ctx, byKey); err != nil {
			return 0, nil, err
		}
		listed = true
	}
	converged, why := 0, map[types.NamespacedName]string{}
	for key := range v.plan.domains {
		if reason := v.notConvergedReason(key, byKey[key]); reason != "" {
			why[key] = reason
		} else {
			converged++
		}
	}
	if converged == len(v.plan.domains) && !listed {
		// Every status matches what an earlier listing showed: confirm against the
		// ConfigMaps and Secrets as they are now.
		return v.poll(ctx, true)
	}
	return converged, why, nil
}

// unseenHash reports whether some relay's status claims a complete configuration that
// differs from what was last listed.
func (v *converger) unseenHash(relays map[types.NamespacedName]*relayv1alpha1.SmtpRelay) bool {
	for key := range v.plan.domains {
		r := relays[key]
		if r != nil && r.Status.ConfigHash != "" && r.Status.AttachedDomains == v.want && r.Status.ConfigHash != v.seen[key].hash {
			return true
		}
	}
	return false
}

// listRendered lists every ConfigMap and Secret and records what each relay's hold.
func (v *converger) listRendered(ctx context.Context, relays map[types.NamespacedName]*relayv1alpha1.SmtpRelay) error {
	var cms corev1.ConfigMapList
	if err := v.c.List(ctx, &cms); err != nil {
		return fmt.Errorf("listing ConfigMaps: %w", err)
	}
	var secrets corev1.SecretList
	if err := v.c.List(ctx, &secrets); err != nil {
		return fmt.Errorf("listing Secrets: %w", err)
	}
	cmByKey := make(map[types.NamespacedName]*corev1.ConfigMap, len(cms.Items))
	for i := range cms.Items {
		cmByKey[client.ObjectKeyFromObject(&cms.Items[i])] = &cms.Items[i]
	}
	secretByKey := make(map[types.NamespacedName]*corev1.Secret, len(secrets.Items))
	for i := range secrets.Items {
		secretByKey[client.ObjectKeyFromObject(&secrets.Items[i])] = &secrets.Items[i]
	}
	for key, domains := range v.plan.domains {
		r := relays[key]
		if r == nil {
			delete(v.seen, key)
			continue
		}
		cmKey := types.NamespacedName{Namespace: key.Namespace, Name: render.ConfigMapName(r)}
		secretKey := types.NamespacedName{Namespace: key.Namespace, Name: render.SecretName(r)}
		cm, secret := cmByKey[cmKey], secretByKey[secretKey]
		switch {
		case cm == nil:
			v.seen[key] = rendered{problem: "no ConfigMap " + cmKey.Name}
		case secret == nil:
			v.seen[key] = rendered{problem: "no Secret " + secretKey.Name}
		default:
			yaml := cm.Data[config.FileName]
			missing := 0
			for _, d := range domains {
				if !strings.Contains(yaml, d) {
					missing++
				}
			}
			if missing > 0 {
				v.seen[key] = rendered{problem: fmt.Sprintf("%s lacks %d of its %d domains", config.FileName, missing, len(domains))}
			} else {
				v.seen[key] = rendered{hash: config.Hash([]byte(yaml), secret.Data)}
			}
		}
	}
	return nil
}

// notConvergedReason says why a relay has not converged, or "" if it has.
func (v *converger) notConvergedReason(key types.NamespacedName, r *relayv1alpha1.SmtpRelay) string {
	seen, ok := v.seen[key]
	switch {
	case r == nil:
		return "SmtpRelay not listed"
	case ok && seen.problem != "":
		return seen.problem
	case r.Status.ConfigHash == "":
		return "status.configHash empty"
	case r.Status.AttachedDomains != v.want:
		return fmt.Sprintf("status.attachedDomains %d, not %d", r.Status.AttachedDomains, v.want)
	case !ok:
		return "ConfigMap and Secret not listed yet"
	case r.Status.ConfigHash != seen.hash:
		return "status.configHash is not config.Hash of the ConfigMap and Secret"
	}
	return ""
}

// notConverged describes the relays that have not converged: how many, why, and the
// conditions of a few of them.
func (v *converger) notConverged(ctx context.Context, timeout time.Duration) error {
	n, why, err := v.poll(ctx, true)
	if err != nil {
		return fmt.Errorf("only some relays converged within -timeout %v; then: %w", timeout, err)
	}
	var relays relayv1alpha1.SmtpRelayList
	if err := v.c.List(ctx, &relays); err != nil {
		return fmt.Errorf("%d/%d relays converged within -timeout %v; then listing them: %w", n, len(v.plan.domains), timeout, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d relays converged within -timeout %v; the others:\n", n, len(v.plan.domains), timeout)
	byReason, byCondition := map[string]int{}, map[string]int{}
	var examples []string
	keys := slices.SortedFunc(maps.Keys(why), func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	for _, key := range keys {
		byReason[why[key]]++
		var r *relayv1alpha1.SmtpRelay
		for i := range relays.Items {
			if client.ObjectKeyFromObject(&relays.Items[i]) == key {
				r = &relays.Items[i]
			}
		}
		if r == nil {
			continue
		}
		byCondition[conditionSummary(r)]++
		if len(examples) < 3 {
			examples = append(examples, fmt.Sprintf("    %s (generation %d, observedGeneration %d, attachedDomains %d): %s\n%s",
				key, r.Generation, r.Status.ObservedGeneration, r.Status.AttachedDomains, why[key], conditionDetails(r)))
		}
	}
	writeCounts(&b, "  why", byReason)
	writeCounts(&b, "  conditions", byCondition)
	fmt.Fprintf(&b, "  for example:\n%s", strings.Join(examples, "\n"))
	return fmt.Errorf("%s", strings.TrimRight(b.String(), "\n"))
}

// conditionSummary is the kstatus conditions of a relay in one line, e.g.
// "Ready=False/SecretNotFound Stalled=True/SecretNotFound".
func conditionSummary(r *relayv1alpha1.SmtpRelay) string {
	var parts []string
	for _, t := range []string{relayv1alpha1.ReadyCondition, relayv1alpha1.ReconcilingCondition, relayv1alpha1.StalledCondition} {
		if c := apimeta.FindStatusCondition(r.Status.Conditions, t); c != nil {
			parts = append(parts, fmt.Sprintf("%s=%s/%s", t, c.Status, c.Reason))
		}
	}
	if len(parts) == 0 {
		return "no conditions"
	}
	return strings.Join(parts, " ")
}

func conditionDetails(r *relayv1alpha1.SmtpRelay) string {
	if len(r.Status.Conditions) == 0 {
		return "      no conditions"
	}
	var lines []string
	for _, c := range r.Status.Conditions {
		lines = append(lines, fmt.Sprintf("      %s=%s %s: %s", c.Type, c.Status, c.Reason, c.Message))
	}
	return strings.Join(lines, "\n")
}

func writeCounts(b *strings.Builder, title string, counts map[string]int) {
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		if d := counts[b] - counts[a]; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	for _, k := range keys {
		fmt.Fprintf(b, "%s: %d %s\n", title, counts[k], k)
	}
}
