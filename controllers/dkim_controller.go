package controllers

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers/render"
)

// DKIM rotation pacing.
const (
	defaultDKIMRetireAfter = 7 * 24 * time.Hour
	defaultDKIMRSABits     = 2048
	// A pending key's record is looked for every dkimDNSFast for dkimDNSFastFor after
	// the key was made (records are often published right away), then every
	// dkimDNSSlow.
	dkimDNSFast    = 10 * time.Second
	dkimDNSFastFor = 10 * time.Minute
	dkimDNSSlow    = 2 * time.Minute
	dkimDNSTimeout = 5 * time.Second
)

// DKIMKeyReconciler makes, rotates and retires the DKIM keys of RelayDomains with
// spec.dkim.generate, in a Secret each domain owns. The relay's reconciler signs
// with the key the Secret names and writes the domain's status from it.
type DKIMKeyReconciler struct {
	client.Client
	// APIReader reads the key Secrets straight from the API server, so the cache
	// never holds Secret data.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// LookupTXT looks up the TXT records of name at resolver (host:port, "" for the
	// system's); nil uses the Go resolver.
	LookupTXT func(ctx context.Context, resolver, name string) ([]string, error)
}

func (r *DKIMKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	d := &relayv1alpha1.RelayDomain{}
	if err := r.Get(ctx, req.NamespacedName, d); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !d.DeletionTimestamp.IsZero() || d.Spec.DKIM == nil || d.Spec.DKIM.Generate == nil {
		return ctrl.Result{}, nil
	}
	g := d.Spec.DKIM.Generate
	now := time.Now().UTC().Truncate(time.Second)
	sec := &corev1.Secret{}
	key := types.NamespacedName{Namespace: d.Namespace, Name: render.GeneratedDKIMSecretName(d)}
	switch err := r.APIReader.Get(ctx, key, sec); {
	case apierrors.IsNotFound(err):
		selector, pemBytes, err := newDKIMKey(g, now, nil)
		if err != nil {
			return ctrl.Result{}, err
		}
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, Labels: render.CommonLabels()},
			Type: corev1.SecretTypeOpaque, Data: map[string][]byte{render.DKIMKeyData(selector): pemBytes}}
		// Even the first key waits for its record: mail signed with a key receivers
		// cannot find fails DKIM, which is worse than no signature.
		render.DKIMKeys{Pending: selector, PendingSince: now, Handled: d.Annotations[render.RotateDKIMAnnotation]}.Annotate(sec)
		if err := controllerutil.SetControllerReference(d, sec, r.Scheme()); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.Create(ctx, sec); err != nil {
			return ctrl.Result{}, client.IgnoreAlreadyExists(err)
		}
		r.Recorder.Eventf(d, nil, corev1.EventTypeNormal, "DKIMKeyGenerated", "Generate",
			"Generated DKIM key %s; publish the TXT record in status.dkim.records: mail is signed with it once it is seen in DNS", selector)
		// The Secret's creation brings the next pass, which looks the record up.
		return ctrl.Result{}, nil
	case err != nil:
		return ctrl.Result{}, err
	}
	if !metav1.IsControlledBy(sec, d) {
		// Someone else's Secret: the relay's reconciler says so on the domain.
		return ctrl.Result{}, nil
	}
	base := sec.DeepCopy()
	keys := render.ReadDKIMKeys(sec)
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	if keys.Signing != "" && sec.Data[render.DKIMKeyData(keys.Signing)] == nil {
		// The signing key was removed by hand: mail goes unsigned until a new key's
		// record is seen, never signed with a key nobody published.
		keys.Signing = ""
	}
	if keys.Pending != "" && sec.Data[render.DKIMKeyData(keys.Pending)] == nil {
		keys.Pending, keys.PendingSince = "", time.Time{}
	}
	if keys.Retiring != "" && !now.Before(keys.RetireAt) {
		delete(sec.Data, render.DKIMKeyData(keys.Retiring))
		keys.Retiring, keys.RetireAt = "", time.Time{}
	}
	asked := d.Annotations[render.RotateDKIMAnnotation]
	// Removing the annotation asks for nothing.
	due := keys.Signing == "" || asked != "" && asked != keys.Handled ||
		g.RotateEvery != nil && now.Sub(keys.RotatedAt) >= g.RotateEvery.Duration
	if keys.Pending == "" && due {
		selector, pemBytes, err := newDKIMKey(g, now, sec.Data)
		if err != nil {
			return ctrl.Result{}, err
		}
		sec.Data[render.DKIMKeyData(selector)] = pemBytes
		keys.Pending, keys.PendingSince = selector, now
		if asked != "" {
			keys.Handled = asked
		}
		current := keys.Signing
		if current == "" {
			current = "no key (unsigned)"
		}
		r.Recorder.Eventf(d, nil, corev1.EventTypeNormal, "DKIMKeyPending", "Rotate",
			"New DKIM key %s made; publish its TXT record (status.dkim.records): mail is signed with %s until it is seen in DNS", selector, current)
	}
	poll := time.Duration(0)
	if keys.Pending != "" {
		seen, why := g.SkipDNSCheck, ""
		if !seen {
			seen, why = r.published(ctx, g.Resolver, keys.Pending+"._domainkey."+d.Spec.Domain, sec.Data[render.DKIMKeyData(keys.Pending)])
		}
		if seen {
			if keys.Signing != "" {
				if keys.Retiring != "" {
					// A rotation before the last one's key retired: that key goes now.
					delete(sec.Data, render.DKIMKeyData(keys.Retiring))
				}
				retire := defaultDKIMRetireAfter
				if g.RetireAfter != nil {
					retire = g.RetireAfter.Duration
				}
				keys.Retiring, keys.RetireAt = keys.Signing, now.Add(retire)
			}
			keys.Signing, keys.RotatedAt = keys.Pending, now
			keys.Pending, keys.PendingSince = "", time.Time{}
			r.Recorder.Eventf(d, nil, corev1.EventTypeNormal, "DKIMKeySwitched", "Rotate",
				"Mail is signed with DKIM key %s; %s is kept until %s", keys.Signing, keys.Retiring, keys.RetireAt.Format(time.RFC3339))
		} else {
			log.FromContext(ctx).V(1).Info("new DKIM key's record not seen yet", "selector", keys.Pending, "why", why)
			poll = dkimDNSSlow
			if now.Sub(keys.PendingSince) < dkimDNSFastFor {
				poll = dkimDNSFast
			}
		}
	}
	keys.Annotate(sec)
	if !equality.Semantic.DeepEqual(base.Data, sec.Data) || !equality.Semantic.DeepEqual(base.Annotations, sec.Annotations) {
		if err := r.Update(ctx, sec); err != nil {
			return requeueOnConflict(err)
		}
	}
	return ctrl.Result{RequeueAfter: nextDKIMChange(g, keys, now, poll)}, nil
}

// published looks for the key's record: a TXT record at name whose p= is the key's.
func (r *DKIMKeyReconciler) published(ctx context.Context, resolver, name string, pemBytes []byte) (bool, string) {
	want, err := render.DKIMRecordValue(pemBytes)
	if err != nil {
		return false, err.Error()
	}
	lookup := r.LookupTXT
	if lookup == nil {
		lookup = lookupTXT
	}
	ctx, cancel := context.WithTimeout(ctx, dkimDNSTimeout)
	defer cancel()
	txts, err := lookup(ctx, resolver, name)
	if err != nil {
		return false, err.Error()
	}
	for _, t := range txts {
		if dkimTag(t, "p") != "" && dkimTag(t, "p") == dkimTag(want, "p") {
			return true, ""
		}
	}
	return false, fmt.Sprintf("%d TXT records at %s, none with the key", len(txts), name)
}

// lookupTXT asks resolver (or the system's resolvers) for name's TXT records; name is
// made absolute, so no search domain is tried.
func lookupTXT(ctx context.Context, resolver, name string) ([]string, error) {
	res := net.DefaultResolver
	if resolver != "" {
		res = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, resolver)
		}}
	}
	return res.LookupTXT(ctx, strings.TrimSuffix(name, ".")+".")
}

// dkimTag is the value of tag in a DKIM record ("v=DKIM1; k=rsa; p=..."), with the
// white space DNS tools put into long values removed.
func dkimTag(record, tag string) string {
	for _, part := range strings.Split(record, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok && strings.TrimSpace(k) == tag {
			return strings.Join(strings.Fields(v), "")
		}
	}
	return ""
}

// newDKIMKey makes a key as g says, with a selector not among the keys in data.
func newDKIMKey(g *relayv1alpha1.DKIMGenerate, now time.Time, data map[string][]byte) (string, []byte, error) {
	var signer crypto.Signer
	var err error
	if g.Algorithm == "Ed25519" {
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	} else {
		bits := defaultDKIMRSABits
		if g.Bits != nil {
			bits = int(*g.Bits)
		}
		signer, err = rsa.GenerateKey(rand.Reader, bits)
	}
	if err != nil {
		return "", nil, fmt.Errorf("generating a DKIM key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return "", nil, err
	}
	for {
		b := make([]byte, 2)
		_, _ = rand.Read(b)
		// Readable in DNS: the day it was made, and a suffix for several in a day.
		selector := "k" + now.Format("20060102") + "-" + hex.EncodeToString(b)
		if data[render.DKIMKeyData(selector)] == nil {
			return selector, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
		}
	}
}

// nextDKIMChange is when the keys need looking at again: poll (a pending record),
// the retiring key's end, or the next scheduled rotation; 0 for none.
func nextDKIMChange(g *relayv1alpha1.DKIMGenerate, k render.DKIMKeys, now time.Time, poll time.Duration) time.Duration {
	next := poll
	consider := func(t time.Time) {
		if d := t.Sub(now) + time.Second; d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	if k.Retiring != "" {
		consider(k.RetireAt)
	}
	if g.RotateEvery != nil && k.Pending == "" {
		consider(k.RotatedAt.Add(g.RotateEvery.Duration))
	}
	return next
}

// SetupWithManager registers the reconciler: domains' spec and annotations (the
// rotate-dkim request), and the Secrets they own.
func (r *DKIMKeyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&relayv1alpha1.RelayDomain{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&corev1.Secret{}, builder.OnlyMetadata).
		Named("dkimkey").
		Complete(r)
}
