package controllers

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kuberelay/kuberelay/api/v1alpha1"
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
)

func key(namespace, name string) string { return namespace + "/" + name }

// domainRelayKey is the relay a RelayDomain names (its own namespace by default).
func domainRelayKey(d *v1.RelayDomain) string {
	ns := d.Spec.RelayRef.Namespace
	if ns == "" {
		ns = d.Namespace
	}
	return key(ns, d.Spec.RelayRef.Name)
}

func relaySecretNames(r *v1.SmtpRelay) []string {
	var keys []string
	if r.Spec.TLS != nil {
		keys = append(keys, key(r.Namespace, r.Spec.TLS.SecretRef.Name))
	}
	if r.Spec.Auth != nil {
		for _, u := range r.Spec.Auth.Users {
			keys = append(keys, key(r.Namespace, u.SecretRef.Name))
		}
	}
	return keys
}

func smarthostSecretNames(s *v1.Smarthost) []string {
	var keys []string
	if s.Spec.Auth != nil {
		keys = append(keys, key(s.Namespace, s.Spec.Auth.SecretRef.Name))
	}
	if s.Spec.TLS.CASecretRef != nil {
		keys = append(keys, key(s.Namespace, s.Spec.TLS.CASecretRef.Name))
	}
	return keys
}

// setupIndexes registers the field indexes with the manager's cache.
func setupIndexes(ctx context.Context, idx client.FieldIndexer) error {
	indexes := []struct {
		obj   client.Object
		field string
		fn    client.IndexerFunc
	}{
		{&v1.RelayDomain{}, indexDomainRelay, func(o client.Object) []string {
			return []string{domainRelayKey(o.(*v1.RelayDomain))}
		}},
		{&v1.RelayDomain{}, indexDomainSmarthost, func(o client.Object) []string {
			d := o.(*v1.RelayDomain)
			if d.Spec.SmarthostRef == nil {
				return nil
			}
			return []string{key(d.Namespace, d.Spec.SmarthostRef.Name)}
		}},
		{&v1.RelayDomain{}, indexDomainSecret, func(o client.Object) []string {
			d := o.(*v1.RelayDomain)
			if d.Spec.DKIM == nil {
				return nil
			}
			return []string{key(d.Namespace, d.Spec.DKIM.PrivateKeySecretRef.Name)}
		}},
		{&v1.SmtpRelay{}, indexRelaySmarthost, func(o client.Object) []string {
			r := o.(*v1.SmtpRelay)
			if r.Spec.SmarthostRef == nil {
				return nil
			}
			return []string{key(r.Namespace, r.Spec.SmarthostRef.Name)}
		}},
		{&v1.SmtpRelay{}, indexRelaySecret, func(o client.Object) []string {
			return relaySecretNames(o.(*v1.SmtpRelay))
		}},
		{&v1.Smarthost{}, indexSmarthostSecret, func(o client.Object) []string {
			return smarthostSecretNames(o.(*v1.Smarthost))
		}},
	}
	for _, i := range indexes {
		if err := idx.IndexField(ctx, i.obj, i.field, i.fn); err != nil {
			return err
		}
	}
	return nil
}
