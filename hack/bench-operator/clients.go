package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
	"github.com/kuberelay/kuberelay/internal/testcerts"
	"github.com/kuberelay/kuberelay/relay/config"
)

const (
	// clientRelayNamespace and clientRelayName are the one SmtpRelay of the
	// RelayClients phase, which admits RelayDomains and RelayClients from every
	// namespace.
	clientRelayNamespace = "bench-clients"
	clientRelayName      = "outbound"
)

// clientPlan is what the RelayClients phase creates, in four groups one after the
// other: namespaces, what the relay references, the relay and one RelayDomain per
// application namespace, then the RelayClients spread evenly over those namespaces.
type clientPlan struct {
	namespaces, inputs, relay, clients []client.Object

	relayKey   types.NamespacedName
	clientKeys []types.NamespacedName
}

func (p *clientPlan) count() int {
	return len(p.namespaces) + len(p.inputs) + len(p.relay) + len(p.clients)
}

func clientNamespace(o options, i int) string {
	width := len(fmt.Sprint(o.clientNamespaces - 1))
	return fmt.Sprintf("team-%0*d", width, i%o.clientNamespaces)
}

func buildClientPlan(o options) (*clientPlan, error) {
	certPEM, keyPEM, err := testcerts.SelfSigned(clientRelayName + "." + clientRelayNamespace + ".svc")
	if err != nil {
		return nil, err
	}
	ns := clientRelayNamespace
	p := &clientPlan{relayKey: types.NamespacedName{Namespace: ns, Name: clientRelayName}}
	p.namespaces = append(p.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	p.inputs = append(p.inputs, upstreamObjects(ns)...)
	p.inputs = append(p.inputs,
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: clientRelayName + "-tls", Namespace: ns}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM}},
	)
	p.relay = append(p.relay, &relayv1alpha1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Name: clientRelayName, Namespace: ns}, Spec: relayv1alpha1.SmtpRelaySpec{
		AllowedNetworks: []string{"10.0.0.0/8"},
		SmarthostRef:    &relayv1alpha1.LocalObjectReference{Name: smarthostName},
		TLS:             &relayv1alpha1.RelayTLS{SecretRef: relayv1alpha1.LocalObjectReference{Name: clientRelayName + "-tls"}},
		Domains:         relayv1alpha1.DomainAttachment{Namespaces: relayv1alpha1.DomainNamespaces{From: "All"}},
	}})
	relayRef := relayv1alpha1.RelayReference{Name: clientRelayName, Namespace: ns}
	for i := range o.clientNamespaces {
		team := clientNamespace(o, i)
		p.namespaces = append(p.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: team}})
		p.relay = append(p.relay, &relayv1alpha1.RelayDomain{ObjectMeta: metav1.ObjectMeta{Name: team, Namespace: team},
			Spec: relayv1alpha1.RelayDomainSpec{Domain: team + ".example", RelayRef: relayRef}})
	}
	for i := range o.clients {
		team := clientNamespace(o, i)
		name := fmt.Sprintf("app-%04d", i)
		p.clients = append(p.clients, &relayv1alpha1.RelayClient{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: team},
			Spec: relayv1alpha1.RelayClientSpec{RelayRef: relayRef, AllowedSenders: []string{"noreply@" + team + ".example"}}})
		p.clientKeys = append(p.clientKeys, types.NamespacedName{Namespace: team, Name: name})
	}
	return p, nil
}

func (p *clientPlan) create(ctx context.Context, c client.Client, workers int) error {
	for _, group := range [][]client.Object{p.namespaces, p.inputs, p.relay, p.clients} {
		if err := createAll(ctx, c, group, workers); err != nil {
			return err
		}
	}
	return nil
}

// hashWatch counts the changes of one relay's status.configHash, from an informer.
type hashWatch struct {
	key types.NamespacedName

	mu         sync.Mutex
	last       string
	changes    int
	lastChange time.Time
}

func (h *hashWatch) observe(obj any) {
	r, ok := obj.(*relayv1alpha1.SmtpRelay)
	if !ok || client.ObjectKeyFromObject(r) != h.key || r.Status.ConfigHash == "" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.Status.ConfigHash != h.last {
		h.last = r.Status.ConfigHash
		h.changes++
		h.lastChange = time.Now()
	}
}

// snapshot returns how many times the hash changed, when it last did, and the hash.
func (h *hashWatch) snapshot() (int, time.Time, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changes, h.lastChange, h.last
}

// clientConverger decides when every RelayClient of a plan is Ready. It reads the
// RelayClients from an informer cache (the RelayClients phase has many more objects
// than the relays phase has relays, and listing them every 250ms would load the API
// server the manager is using), and once all say Ready it checks, with direct reads,
// that every client's Secret exists and is controlled by it, and that the relay's
// rendered configuration lists every client as a user with its hash file, under a
// status.configHash that is config.Hash of the ConfigMap and Secret.
type clientConverger struct {
	c     client.Client // direct
	cache cache.Cache
	plan  *clientPlan
	hash  *hashWatch
	// checked is the verified configHash: the direct checks pass for it.
	checked string
	// cost is the bcrypt cost of the spot-checked hash.
	cost int
}

func newClientConverger(ctx context.Context, c client.Client, ca cache.Cache, p *clientPlan) (*clientConverger, error) {
	v := &clientConverger{c: c, cache: ca, plan: p, hash: &hashWatch{key: p.relayKey}}
	relays, err := ca.GetInformer(ctx, &relayv1alpha1.SmtpRelay{})
	if err != nil {
		return nil, err
	}
	if _, err := relays.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    v.hash.observe,
		UpdateFunc: func(_, obj any) { v.hash.observe(obj) },
	}); err != nil {
		return nil, err
	}
	if _, err := ca.GetInformer(ctx, &relayv1alpha1.RelayClient{}); err != nil {
		return nil, err
	}
	if !ca.WaitForCacheSync(ctx) {
		return nil, fmt.Errorf("the driver's cache of SmtpRelays and RelayClients did not sync")
	}
	return v, nil
}

// clientState is why a client is not Ready yet ("" when it is).
func clientState(c *relayv1alpha1.RelayClient) string {
	if c == nil {
		return "not created"
	}
	ready := apimeta.FindStatusCondition(c.Status.Conditions, relayv1alpha1.ReadyCondition)
	switch {
	case ready == nil:
		return "no Ready condition"
	case ready.Status != metav1.ConditionTrue || ready.Reason != relayv1alpha1.ReasonSucceeded:
		return fmt.Sprintf("Ready=%s/%s", ready.Status, ready.Reason)
	case ready.ObservedGeneration != c.Generation || c.Status.ObservedGeneration != c.Generation:
		return "Ready for an older generation"
	}
	return ""
}

// poll counts the Ready clients from the cache, and why the others are not. When
// all are, it runs the direct checks; problem is what they found ("" when nothing).
func (v *clientConverger) poll(ctx context.Context) (ready int, why map[string]int, problem string, err error) {
	var list relayv1alpha1.RelayClientList
	if err := v.cache.List(ctx, &list); err != nil {
		return 0, nil, "", fmt.Errorf("listing RelayClients from the cache: %w", err)
	}
	byKey := make(map[types.NamespacedName]*relayv1alpha1.RelayClient, len(list.Items))
	for i := range list.Items {
		byKey[client.ObjectKeyFromObject(&list.Items[i])] = &list.Items[i]
	}
	why = map[string]int{}
	for _, key := range v.plan.clientKeys {
		if s := clientState(byKey[key]); s != "" {
			why[s]++
		} else {
			ready++
		}
	}
	if ready < len(v.plan.clientKeys) {
		return ready, why, "", nil
	}
	_, _, hash := v.hash.snapshot()
	if hash != "" && hash == v.checked {
		return ready, why, "", nil
	}
	problem, err = v.check(ctx)
	if err == nil && problem == "" {
		v.checked = hash
	}
	return ready, why, problem, err
}

// check reads the clients' Secrets and the relay's ConfigMap and Secret from the API
// server and says what is not in place yet, or "".
func (v *clientConverger) check(ctx context.Context) (string, error) {
	var clients relayv1alpha1.RelayClientList
	if err := v.c.List(ctx, &clients); err != nil {
		return "", fmt.Errorf("listing RelayClients: %w", err)
	}
	byKey := make(map[types.NamespacedName]*relayv1alpha1.RelayClient, len(clients.Items))
	for i := range clients.Items {
		byKey[client.ObjectKeyFromObject(&clients.Items[i])] = &clients.Items[i]
	}
	var secrets corev1.SecretList
	if err := v.c.List(ctx, &secrets); err != nil {
		return "", fmt.Errorf("listing Secrets: %w", err)
	}
	secretByKey := make(map[types.NamespacedName]*corev1.Secret, len(secrets.Items))
	for i := range secrets.Items {
		secretByKey[client.ObjectKeyFromObject(&secrets.Items[i])] = &secrets.Items[i]
	}
	relay := &relayv1alpha1.SmtpRelay{}
	if err := v.c.Get(ctx, v.plan.relayKey, relay); err != nil {
		return "", fmt.Errorf("reading SmtpRelay %s: %w", v.plan.relayKey, err)
	}
	cm := &corev1.ConfigMap{}
	switch err := v.c.Get(ctx, types.NamespacedName{Namespace: relay.Namespace, Name: render.ConfigMapName(relay)}, cm); {
	case apierrors.IsNotFound(err):
		return "the relay has no ConfigMap " + render.ConfigMapName(relay), nil
	case err != nil:
		return "", fmt.Errorf("reading the relay's ConfigMap: %w", err)
	}
	relaySecret := secretByKey[types.NamespacedName{Namespace: relay.Namespace, Name: render.SecretName(relay)}]
	if relaySecret == nil {
		return "the relay has no Secret " + render.SecretName(relay), nil
	}
	yaml := []byte(cm.Data[config.FileName])
	if h := config.Hash(yaml, relaySecret.Data); relay.Status.ConfigHash != h {
		return "the relay's status.configHash is not config.Hash of its ConfigMap and Secret", nil
	}
	cfg, err := config.Parse(yaml)
	if err != nil {
		return "", fmt.Errorf("the relay's %s: %w", config.FileName, err)
	}
	users := make(map[string]config.User, len(cfg.Users))
	for _, u := range cfg.Users {
		users[u.Username] = u
	}
	problems := map[string]int{}
	spotChecked := false
	for _, key := range v.plan.clientKeys {
		c := byKey[key]
		if c == nil {
			problems["RelayClient not found"]++
			continue
		}
		if s := clientState(c); s != "" {
			problems[s]++
			continue
		}
		sec := secretByKey[types.NamespacedName{Namespace: c.Namespace, Name: render.ClientSecretName(c)}]
		switch {
		case sec == nil:
			problems["no Secret"]++
			continue
		case !metav1.IsControlledBy(sec, c):
			problems["Secret not controlled by the RelayClient"]++
			continue
		case len(sec.Data[render.ClientKeyPassword]) == 0 || len(sec.Data[render.ClientKeyURL]) == 0:
			problems["Secret without password or url"]++
			continue
		}
		u, ok := users[render.ClientUsername(c)]
		switch {
		case !ok:
			problems["not a user in "+config.FileName]++
			continue
		case len(relaySecret.Data[u.PasswordHashFile]) == 0:
			problems["hash file missing from the relay's Secret"]++
			continue
		}
		if !spotChecked {
			// One bcrypt comparison (tens of milliseconds), for the first client: the
			// hash the relay checks AUTH against is that of the password in its Secret.
			spotChecked = true
			hash := relaySecret.Data[u.PasswordHashFile]
			if bcrypt.CompareHashAndPassword(hash, sec.Data[render.ClientKeyPassword]) != nil {
				problems["the relay's hash does not match the password in the client's Secret"]++
			}
			v.cost, _ = bcrypt.Cost(hash)
		}
	}
	if len(problems) == 0 {
		return "", nil
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(problems)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, problems[k]))
	}
	return strings.Join(parts, ", "), nil
}

// wait polls until every client is Ready and the direct checks pass, and returns the
// time since start.
func (v *clientConverger) wait(ctx context.Context, start time.Time, timeout time.Duration, m *manager) (time.Duration, error) {
	deadline := start.Add(timeout)
	lastProgress := time.Now()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	total := len(v.plan.clientKeys)
	for {
		if m.Exited() {
			return 0, fmt.Errorf("the manager exited while the RelayClients converged: %v", m.Err())
		}
		n, why, problem, err := v.poll(ctx)
		if err != nil {
			return 0, err
		}
		if n == total && problem == "" {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, v.notConverged(ctx, timeout, n, why, problem)
		}
		if time.Since(lastProgress) >= 5*time.Second {
			changes, _, _ := v.hash.snapshot()
			detail := countsLine(why)
			if problem != "" {
				detail = "all Ready; not yet in place: " + problem
			}
			progress("%d/%d clients Ready after %v; config hash changed %d times (%s)", n, total, time.Since(start).Round(time.Second), changes, detail)
			lastProgress = time.Now()
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
		}
	}
}

// notConverged describes the clients that are not Ready, and the relay.
func (v *clientConverger) notConverged(ctx context.Context, timeout time.Duration, n int, why map[string]int, problem string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d RelayClients Ready within -timeout %v", n, len(v.plan.clientKeys), timeout)
	if problem != "" {
		fmt.Fprintf(&b, "; not in place: %s", problem)
	}
	b.WriteString("\n")
	writeCounts(&b, "  why", why)
	var list relayv1alpha1.RelayClientList
	if err := v.c.List(ctx, &list); err == nil {
		examples := 0
		for i := range list.Items {
			c := &list.Items[i]
			if clientState(c) == "" || examples == 3 {
				continue
			}
			examples++
			fmt.Fprintf(&b, "  for example %s/%s (generation %d, observedGeneration %d):\n", c.Namespace, c.Name, c.Generation, c.Status.ObservedGeneration)
			for _, cond := range c.Status.Conditions {
				fmt.Fprintf(&b, "      %s=%s %s: %s\n", cond.Type, cond.Status, cond.Reason, cond.Message)
			}
		}
	}
	relay := &relayv1alpha1.SmtpRelay{}
	if err := v.c.Get(ctx, v.plan.relayKey, relay); err == nil {
		changes, last, _ := v.hash.snapshot()
		fmt.Fprintf(&b, "  SmtpRelay %s (generation %d, observedGeneration %d, configHash %q, changed %d times, last at %s):\n%s",
			v.plan.relayKey, relay.Generation, relay.Status.ObservedGeneration, relay.Status.ConfigHash, changes, last.Format(time.TimeOnly), conditionDetails(relay))
	}
	return fmt.Errorf("%s", strings.TrimRight(b.String(), "\n"))
}

// countsLine is counts in one line, the largest first.
func countsLine(counts map[string]int) string {
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		if d := counts[b] - counts[a]; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

// runClients is the RelayClients phase: it creates the plan, waits until every client
// is Ready, then counts the manager's requests while idle.
func runClients(ctx context.Context, o options, p *clientPlan, c client.Client, cp *controlPlane, mgr *manager) (*clientReport, error) {
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = -1, 0
	ca, err := cache.New(cfg, cache.Options{Scheme: c.Scheme()})
	if err != nil {
		return nil, err
	}
	cacheCtx, stopCache := context.WithCancel(ctx)
	defer stopCache()
	cacheErr := make(chan error, 1)
	go func() { cacheErr <- ca.Start(cacheCtx) }()
	conv, err := newClientConverger(cacheCtx, c, ca, p)
	if err != nil {
		return nil, err
	}

	r := &clientReport{opts: o, plan: p}
	// Peak RSS of this phase alone: writing 5 to clear_refs resets VmHWM to the
	// current RSS (Linux 4.0 and later).
	r.peakReset = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", mgr.Pid()), []byte("5"), 0) == nil
	if _, r.rssStart, err = mgr.memory(); err != nil {
		return nil, err
	}
	before, err := mgr.scrape(ctx)
	if err != nil {
		return nil, mgr.withLog(err)
	}
	offset := cp.auditOffset()

	progress("creating %d objects for %d RelayClients in %d namespaces with %d workers", p.count(), o.clients, o.clientNamespaces, o.workers)
	start := time.Now()
	if err := p.create(ctx, c, o.workers); err != nil {
		return nil, mgr.withLog(err)
	}
	r.createTime = time.Since(start)

	progress("waiting for %d RelayClients to be Ready (at most %v)", o.clients, o.timeout)
	if r.convergeTime, err = conv.wait(ctx, start, o.timeout, mgr); err != nil {
		if ctx.Err() == nil {
			if hwm, rss, merr := mgr.memory(); merr == nil {
				fmt.Fprintf(os.Stderr, "bench-operator: manager peak RSS %.1f MiB, RSS now %.1f MiB\n", mib(hwm), mib(rss))
			}
			if now, serr := mgr.scrape(ctx); serr == nil {
				d := now.sub(before)
				fmt.Fprintf(os.Stderr, "bench-operator: manager CPU %.1f s since the phase started; reconciles %v\n", d.cpu, d.reconciles)
			}
		}
		return nil, mgr.withLog(err)
	}
	after, err := mgr.scrape(ctx)
	if err != nil {
		return nil, mgr.withLog(err)
	}
	r.converging = after.sub(before)
	r.convergingWrites, r.auditErr = cp.writesSince(offset, mgr.agent)
	r.bcryptCost = conv.cost
	var last time.Time
	r.hashChanges, last, _ = conv.hash.snapshot()
	if !last.IsZero() {
		r.lastHashChange = last.Sub(start)
	}

	if o.idle > 0 {
		progress("RelayClients Ready in %v; counting the manager's API requests for %v", r.convergeTime.Round(time.Millisecond), o.idle)
		if r.idle, err = measureIdle(ctx, mgr, cp, o.idle); err != nil {
			return nil, err
		}
		changes, _, _ := conv.hash.snapshot()
		r.idleHashChanges = changes - r.hashChanges
		// Still Ready, and the checks pass again on what the API server holds now.
		conv.checked = ""
		var problem string
		if r.readyAfterIdle, _, problem, err = conv.poll(ctx); err != nil {
			return nil, err
		}
		if problem != "" {
			r.afterIdleReason = "(" + problem + ")"
		}
	}
	if r.hwm, r.rss, err = mgr.memory(); err != nil {
		return nil, err
	}
	stopCache()
	if err := <-cacheErr; err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("the driver's cache: %w", err)
	}
	return r, nil
}
