package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
)

// mapper turns a change to one object into requests for the objects that depend on
// it, through the field indexes, so exactly the affected ones are reconciled. On an
// update controller-runtime maps both the old and the new object, so a reference that
// moves enqueues both its old and its new target.
type mapper struct {
	client.Client
}

// list lists objects whose index field holds the "namespace/name" of o.
func (m *mapper) list(ctx context.Context, list client.ObjectList, field string, o client.Object) bool {
	if err := m.List(ctx, list, client.MatchingFields{field: key(o.GetNamespace(), o.GetName())}); err != nil {
		log.FromContext(ctx).Error(err, "listing dependents to enqueue", "field", field)
		return false
	}
	return true
}

func request(ns, name string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}
}

// domainRelay: a RelayDomain enqueues the relay it names.
func (m *mapper) domainRelay(_ context.Context, o client.Object) []reconcile.Request {
	d, ok := o.(*relayv1alpha1.RelayDomain)
	if !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: domainRelay(d)}}
}

// naming lists the objects of list's kind whose index field names o, and enqueues
// each of them.
func (m *mapper) naming(ctx context.Context, list client.ObjectList, field string, o client.Object) []reconcile.Request {
	if !m.list(ctx, list, field, o) {
		return nil
	}
	var reqs []reconcile.Request
	_ = apimeta.EachListItem(list, func(item runtime.Object) error {
		if obj, ok := item.(client.Object); ok {
			reqs = append(reqs, request(obj.GetNamespace(), obj.GetName()))
		}
		return nil
	})
	return reqs
}

// relaysOfDomainsNaming enqueues the relays of the domains whose index field names o.
func (m *mapper) relaysOfDomainsNaming(ctx context.Context, field string, o client.Object) []reconcile.Request {
	var list relayv1alpha1.RelayDomainList
	if !m.list(ctx, &list, field, o) {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: domainRelay(&list.Items[i])})
	}
	return reqs
}

// smarthostRelays: a Smarthost enqueues the relays that route through it, by default
// or for one of their domains.
func (m *mapper) smarthostRelays(ctx context.Context, o client.Object) []reconcile.Request {
	return append(m.naming(ctx, &relayv1alpha1.SmtpRelayList{}, indexRelaySmarthost, o), m.relaysOfDomainsNaming(ctx, indexDomainSmarthost, o)...)
}

// secretRelays: a Secret enqueues the relays that read it, directly, through a DKIM
// key of one of their domains, as a client's credentials, or through a Smarthost they
// use.
func (m *mapper) secretRelays(ctx context.Context, o client.Object) []reconcile.Request {
	reqs := append(m.naming(ctx, &relayv1alpha1.SmtpRelayList{}, indexRelaySecret, o), m.relaysOfDomainsNaming(ctx, indexDomainSecret, o)...)
	reqs = append(reqs, m.clientSecretRelay(ctx, o)...)
	var shs relayv1alpha1.SmarthostList
	if !m.list(ctx, &shs, indexSmarthostSecret, o) {
		return reqs
	}
	for i := range shs.Items {
		reqs = append(reqs, m.smarthostRelays(ctx, &shs.Items[i])...)
	}
	return reqs
}

// crossNamespaceDomains are the domains in namespace ns that name a relay in another
// namespace: whether they may attach depends on ns's labels.
func (m *mapper) crossNamespaceDomains(ctx context.Context, ns string) []relayv1alpha1.RelayDomain {
	var list relayv1alpha1.RelayDomainList
	if err := m.List(ctx, &list, client.InNamespace(ns)); err != nil {
		log.FromContext(ctx).Error(err, "listing domains to enqueue", "namespace", ns)
		return nil
	}
	var out []relayv1alpha1.RelayDomain
	for _, d := range list.Items {
		if domainRelay(&d).Namespace != ns {
			out = append(out, d)
		}
	}
	return out
}

// crossNamespaceClients are the clients in namespace ns that name a relay in another
// namespace.
func (m *mapper) crossNamespaceClients(ctx context.Context, ns string) []relayv1alpha1.RelayClient {
	var list relayv1alpha1.RelayClientList
	if err := m.List(ctx, &list, client.InNamespace(ns)); err != nil {
		log.FromContext(ctx).Error(err, "listing clients to enqueue", "namespace", ns)
		return nil
	}
	var out []relayv1alpha1.RelayClient
	for _, c := range list.Items {
		if clientRelay(&c).Namespace != ns {
			out = append(out, c)
		}
	}
	return out
}

// namespaceRelays: a Namespace's labels decide which relays with a namespace
// selector accept its domains and clients, and which capture their mail, so it
// enqueues the relays its domains and clients name (its own namespace's relays too:
// a capture selector applies to them).
func (m *mapper) namespaceRelays(ctx context.Context, o client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	var domains relayv1alpha1.RelayDomainList
	if err := m.List(ctx, &domains, client.InNamespace(o.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "listing domains to enqueue", "namespace", o.GetName())
	}
	for _, d := range domains.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: domainRelay(&d)})
	}
	var clients relayv1alpha1.RelayClientList
	if err := m.List(ctx, &clients, client.InNamespace(o.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "listing clients to enqueue", "namespace", o.GetName())
	}
	for _, c := range clients.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: clientRelay(&c)})
	}
	return reqs
}

// namespaceClients: a Namespace enqueues its clients that name a relay elsewhere.
func (m *mapper) namespaceClients(ctx context.Context, o client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	for _, c := range m.crossNamespaceClients(ctx, o.GetName()) {
		reqs = append(reqs, request(c.Namespace, c.Name))
	}
	return reqs
}

// clientRelay: a RelayClient enqueues the relay it names.
func (m *mapper) clientRelay(_ context.Context, o client.Object) []reconcile.Request {
	c, ok := o.(*relayv1alpha1.RelayClient)
	if !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: clientRelay(c)}}
}

// relayClients: an SmtpRelay enqueues the clients that name it.
func (m *mapper) relayClients(ctx context.Context, o client.Object) []reconcile.Request {
	return m.naming(ctx, &relayv1alpha1.RelayClientList{}, indexClientRelay, o)
}

// clientSecretRelay: a RelayClient's Secret enqueues the relay of the client that
// controls it.
func (m *mapper) clientSecretRelay(ctx context.Context, o client.Object) []reconcile.Request {
	ref := metav1.GetControllerOf(o)
	if ref == nil || ref.Kind != "RelayClient" || ref.APIVersion != relayv1alpha1.GroupVersion.String() {
		return nil
	}
	c := &relayv1alpha1.RelayClient{}
	if err := m.Get(ctx, types.NamespacedName{Namespace: o.GetNamespace(), Name: ref.Name}, c); err != nil {
		return nil
	}
	return []reconcile.Request{{NamespacedName: clientRelay(c)}}
}

// namespaceDomains: a Namespace enqueues its domains that name a relay elsewhere.
func (m *mapper) namespaceDomains(ctx context.Context, o client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	for _, d := range m.crossNamespaceDomains(ctx, o.GetName()) {
		reqs = append(reqs, request(d.Namespace, d.Name))
	}
	return reqs
}

// relayDomains: an SmtpRelay enqueues the domains that name it.
func (m *mapper) relayDomains(ctx context.Context, o client.Object) []reconcile.Request {
	return m.naming(ctx, &relayv1alpha1.RelayDomainList{}, indexDomainRelay, o)
}

// smarthostsNaming: a Secret enqueues the Smarthosts that name it.
func (m *mapper) smarthostsNaming(ctx context.Context, o client.Object) []reconcile.Request {
	return m.naming(ctx, &relayv1alpha1.SmarthostList{}, indexSmarthostSecret, o)
}

// podRelay: a relay pod enqueues its relay, found by its instance label.
func podRelay(_ context.Context, o client.Object) []reconcile.Request {
	l := o.GetLabels()
	if l[render.LabelName] != render.CommonLabels()[render.LabelName] || l[render.LabelInstance] == "" {
		return nil
	}
	return []reconcile.Request{request(o.GetNamespace(), l[render.LabelInstance])}
}

// podServingChanged passes pod events that change which pods the operator asks for
// their configuration: a pod that appears, goes, becomes ready or not, or moves.
var podServingChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		old, okOld := e.ObjectOld.(*corev1.Pod)
		cur, okNew := e.ObjectNew.(*corev1.Pod)
		if !okOld || !okNew {
			return true
		}
		return podReady(old) != podReady(cur) || old.Status.PodIP != cur.Status.PodIP
	},
}
