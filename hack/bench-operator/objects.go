package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/internal/testcerts"
)

const (
	// authEvery: every authEvery-th relay has a TLS certificate and a login user, so
	// the operator bcrypt-hashes a password for it.
	authEvery = 4
	// dkimEvery: the first domain of every dkimEvery-th relay signs with DKIM.
	dkimEvery = 2
	// smarthostName is the one Smarthost of each namespace, which its relays use.
	smarthostName = "upstream"
)

// plan is everything the benchmark creates, in the three groups that are created one
// after the other, as kubectl apply or a GitOps tool would: namespaces, then what the
// relays reference, then the relays and their domains.
type plan struct {
	namespaces, inputs, relays []client.Object

	// domains are the domain names each relay must end up serving.
	domains                 map[types.NamespacedName][]string
	authRelays, dkimDomains int
}

func (p *plan) count() int { return len(p.namespaces) + len(p.inputs) + len(p.relays) }

func buildPlan(o options) (*plan, error) {
	certPEM, keyPEM, err := testcerts.SelfSigned("relay.bench.example.com")
	if err != nil {
		return nil, err
	}
	p := &plan{domains: map[types.NamespacedName][]string{}}
	nsName := func(i int) string { return fmt.Sprintf("bench-%02d", i%o.namespaces) }
	for i := range o.namespaces {
		ns := nsName(i)
		p.namespaces = append(p.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		p.inputs = append(p.inputs, upstreamObjects(ns)...)
	}
	for i := range o.relays {
		ns, name := nsName(i), fmt.Sprintf("relay-%04d", i)
		relay := &relayv1alpha1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: relayv1alpha1.SmtpRelaySpec{
			AllowedNetworks: []string{"10.0.0.0/8"},
			SmarthostRef:    &relayv1alpha1.LocalObjectReference{Name: smarthostName},
		}}
		if i%authEvery == 0 {
			p.authRelays++
			relay.Spec.TLS = &relayv1alpha1.RelayTLS{SecretRef: relayv1alpha1.LocalObjectReference{Name: name + "-tls"}}
			relay.Spec.Auth = &relayv1alpha1.RelayAuth{Users: []relayv1alpha1.RelayUser{{SecretRef: relayv1alpha1.LocalObjectReference{Name: name + "-user"}}}}
			p.inputs = append(p.inputs,
				&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-tls", Namespace: ns}, Type: corev1.SecretTypeTLS,
					Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM}},
				&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-user", Namespace: ns}, Type: corev1.SecretTypeBasicAuth,
					StringData: map[string]string{"username": name, "password": "client-password-" + name}},
			)
		}
		p.relays = append(p.relays, relay)
		key := types.NamespacedName{Namespace: ns, Name: name}
		for j := range o.domains {
			domain := fmt.Sprintf("d%d.%s.%s.example.com", j, name, ns)
			p.domains[key] = append(p.domains[key], domain)
			rd := &relayv1alpha1.RelayDomain{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-d%d", name, j), Namespace: ns}, Spec: relayv1alpha1.RelayDomainSpec{
				Domain:   domain,
				RelayRef: relayv1alpha1.RelayReference{Name: name},
			}}
			if j == 0 && i%dkimEvery == 0 {
				p.dkimDomains++
				keyPEM, err := testcerts.Ed25519Key()
				if err != nil {
					return nil, err
				}
				secret := rd.Name + "-dkim"
				p.inputs = append(p.inputs, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: ns},
					Data: map[string][]byte{"dkim.key": keyPEM}})
				rd.Spec.DKIM = &relayv1alpha1.DKIMSigning{Selector: "bench", PrivateKeySecretRef: relayv1alpha1.SecretKeyReference{Name: secret, Key: "dkim.key"}}
			}
			p.relays = append(p.relays, rd)
		}
	}
	return p, nil
}

// create creates the plan's groups in order, each with a pool of workers.
func (p *plan) create(ctx context.Context, c client.Client, workers int) error {
	for _, group := range [][]client.Object{p.namespaces, p.inputs, p.relays} {
		if err := createAll(ctx, c, group, workers); err != nil {
			return err
		}
	}
	return nil
}

// createAll creates objs with that many concurrent requests and stops at the first
// error.
func createAll(ctx context.Context, c client.Client, objs []client.Object, workers int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for range min(workers, len(objs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(objs) || ctx.Err() != nil {
					return
				}
				o := objs[i]
				if err := c.Create(ctx, o); err != nil {
					once.Do(func() {
						firstErr = fmt.Errorf("creating %T %s/%s: %w", o, o.GetNamespace(), o.GetName(), err)
						cancel()
					})
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// upstreamObjects are a namespace's Smarthost and its credentials.
func upstreamObjects(ns string) []client.Object {
	return []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "upstream-credentials", Namespace: ns}, Type: corev1.SecretTypeBasicAuth,
			StringData: map[string]string{"username": "AKIAEXAMPLE", "password": "upstream-password-" + ns}},
		&relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Name: smarthostName, Namespace: ns}, Spec: relayv1alpha1.SmarthostSpec{
			Endpoints: []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.upstream.example.net", Port: 587}},
			Auth:      &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "upstream-credentials"}}}},
	}
}
