package controllers

import (
	"context"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
)

// Field indexes map what an object references to the object, so a change to a
// referenced object enqueues exactly the relays that use it.
const (
	// indexDomainRelay indexes RelayDomains by "namespace/name" of their relay.
	indexDomainRelay = "relaydomain.relayRef"
	// indexDomainSmarthost indexes RelayDomains by "namespace/name" of their smarthost.
	indexDomainSmarthost = "relaydomain.smarthostRef"
	// indexDomainSecret indexes RelayDomains by "namespace/name" of their DKIM Secret.
	indexDomainSecret = "relaydomain.secretRefs"
	// indexRelaySmarthost indexes SmtpRelays by "namespace/name" of their smarthost.
	indexRelaySmarthost = "smtprelay.smarthostRef"
	// indexRelaySecret indexes SmtpRelays by "namespace/name" of every Secret they name.
	indexRelaySecret = "smtprelay.secretRefs"
	// indexSmarthostSecret indexes Smarthosts by "namespace/name" of every Secret they name.
	indexSmarthostSecret = "smarthost.secretRefs"
	// indexClientRelay indexes RelayClients by "namespace/name" of their relay.
	indexClientRelay = "relayclient.relayRef"
)

// key is the index value of an object: its "namespace/name".
func key(namespace, name string) string {
	return types.NamespacedName{Namespace: namespace, Name: name}.String()
}

// domainRelay is the relay a RelayDomain names (its own namespace by default).
func domainRelay(d *relayv1alpha1.RelayDomain) types.NamespacedName {
	ns := d.Spec.RelayRef.Namespace
	if ns == "" {
		ns = d.Namespace
	}
	return types.NamespacedName{Namespace: ns, Name: d.Spec.RelayRef.Name}
}

// relaySecrets are the Secrets an SmtpRelay names: its certificate and its users.
func relaySecrets(r *relayv1alpha1.SmtpRelay) []types.NamespacedName {
	var refs []types.NamespacedName
	if r.Spec.TLS != nil {
		refs = append(refs, types.NamespacedName{Namespace: r.Namespace, Name: r.Spec.TLS.SecretRef.Name})
	}
	if r.Spec.Auth != nil {
		for _, u := range r.Spec.Auth.Users {
			refs = append(refs, types.NamespacedName{Namespace: r.Namespace, Name: u.SecretRef.Name})
		}
	}
	return refs
}

// smarthostSecrets are the Secrets a Smarthost names: its credentials (a password or
// an OAuth 2.0 client) and its CA.
func smarthostSecrets(s *relayv1alpha1.Smarthost) []types.NamespacedName {
	var refs []types.NamespacedName
	if a := s.Spec.Auth; a != nil && a.SecretRef != nil {
		refs = append(refs, types.NamespacedName{Namespace: s.Namespace, Name: a.SecretRef.Name})
	}
	if a := s.Spec.Auth; a != nil && a.OAuth2 != nil {
		refs = append(refs, types.NamespacedName{Namespace: s.Namespace, Name: a.OAuth2.ClientSecretRef.Name})
	}
	if s.Spec.TLS.CASecretRef != nil {
		refs = append(refs, types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.TLS.CASecretRef.Name})
	}
	return refs
}

func keys(refs []types.NamespacedName) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.String()
	}
	return out
}

// setupIndexes registers the field indexes with the manager's cache.
func setupIndexes(ctx context.Context, idx client.FieldIndexer) error {
	indexes := []struct {
		obj   client.Object
		field string
		fn    client.IndexerFunc
	}{
		{&relayv1alpha1.RelayDomain{}, indexDomainRelay, func(o client.Object) []string {
			return []string{domainRelay(o.(*relayv1alpha1.RelayDomain)).String()}
		}},
		{&relayv1alpha1.RelayDomain{}, indexDomainSmarthost, func(o client.Object) []string {
			d := o.(*relayv1alpha1.RelayDomain)
			if d.Spec.SmarthostRef == nil {
				return nil
			}
			return []string{key(d.Namespace, d.Spec.SmarthostRef.Name)}
		}},
		{&relayv1alpha1.RelayDomain{}, indexDomainSecret, func(o client.Object) []string {
			d := o.(*relayv1alpha1.RelayDomain)
			switch k := d.Spec.DKIM; {
			case k == nil:
				return nil
			case k.Generate != nil:
				return []string{key(d.Namespace, render.GeneratedDKIMSecretName(d))}
			}
			return []string{key(d.Namespace, d.Spec.DKIM.PrivateKeySecretRef.Name)}
		}},
		{&relayv1alpha1.SmtpRelay{}, indexRelaySmarthost, func(o client.Object) []string {
			r := o.(*relayv1alpha1.SmtpRelay)
			if r.Spec.SmarthostRef == nil {
				return nil
			}
			return []string{key(r.Namespace, r.Spec.SmarthostRef.Name)}
		}},
		{&relayv1alpha1.SmtpRelay{}, indexRelaySecret, func(o client.Object) []string {
			return keys(relaySecrets(o.(*relayv1alpha1.SmtpRelay)))
		}},
		{&relayv1alpha1.RelayClient{}, indexClientRelay, func(o client.Object) []string {
			return []string{clientRelay(o.(*relayv1alpha1.RelayClient)).String()}
		}},
		{&relayv1alpha1.Smarthost{}, indexSmarthostSecret, func(o client.Object) []string {
			return keys(smarthostSecrets(o.(*relayv1alpha1.Smarthost)))
		}},
	}
	for _, i := range indexes {
		if err := idx.IndexField(ctx, i.obj, i.field, i.fn); err != nil {
			return err
		}
	}
	return nil
}
