package render

import (
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/dkim"
)

// Annotations of a generated DKIM Secret: the state of its keys. Each key is the data
// key <selector>.key (PEM, PKCS#8).
const (
	DKIMSigningAnnotation   = "relay.kuberelay.io/dkim-signing"
	DKIMPendingAnnotation   = "relay.kuberelay.io/dkim-pending"
	DKIMRetiringAnnotation  = "relay.kuberelay.io/dkim-retiring"
	DKIMRetireAtAnnotation  = "relay.kuberelay.io/dkim-retire-at"
	DKIMRotatedAtAnnotation = "relay.kuberelay.io/dkim-rotated-at"
	// DKIMPendingSinceAnnotation is when the pending key was made.
	DKIMPendingSinceAnnotation = "relay.kuberelay.io/dkim-pending-since"
	// DKIMRotationHandledAnnotation is the value of the domain's rotate-dkim
	// annotation the pending or signing key answers.
	DKIMRotationHandledAnnotation = "relay.kuberelay.io/dkim-rotation-handled"
	// RotateDKIMAnnotation on a RelayDomain asks for a rotation: any new value.
	RotateDKIMAnnotation = "relay.kuberelay.io/rotate-dkim"
)

// DKIM key states in status.dkim.records.
const (
	DKIMStateSigning  = "Signing"
	DKIMStatePending  = "Pending"
	DKIMStateRetiring = "Retiring"
)

// GeneratedDKIMSecretName is the Secret holding a RelayDomain's generated keys.
func GeneratedDKIMSecretName(d *relayv1alpha1.RelayDomain) string { return d.Name + "-dkim" }

// DKIMKeyData is the data key of a selector's private key.
func DKIMKeyData(selector string) string { return selector + ".key" }

// DKIMKeys is the state of a generated DKIM Secret.
type DKIMKeys struct {
	Signing, Pending, Retiring string
	RetireAt, RotatedAt        time.Time
	PendingSince               time.Time
	Handled                    string
}

// ReadDKIMKeys reads the state from a generated DKIM Secret's annotations.
func ReadDKIMKeys(s *corev1.Secret) DKIMKeys {
	a := s.Annotations
	t := func(k string) time.Time {
		v, _ := time.Parse(time.RFC3339, a[k])
		return v
	}
	return DKIMKeys{Signing: a[DKIMSigningAnnotation], Pending: a[DKIMPendingAnnotation], Retiring: a[DKIMRetiringAnnotation],
		RetireAt: t(DKIMRetireAtAnnotation), RotatedAt: t(DKIMRotatedAtAnnotation), PendingSince: t(DKIMPendingSinceAnnotation),
		Handled: a[DKIMRotationHandledAnnotation]}
}

// Annotate writes the state onto s's annotations.
func (k DKIMKeys) Annotate(s *corev1.Secret) {
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	set := func(name, v string) {
		if v == "" {
			delete(s.Annotations, name)
		} else {
			s.Annotations[name] = v
		}
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	set(DKIMSigningAnnotation, k.Signing)
	set(DKIMPendingAnnotation, k.Pending)
	set(DKIMRetiringAnnotation, k.Retiring)
	set(DKIMRetireAtAnnotation, ts(k.RetireAt))
	set(DKIMRotatedAtAnnotation, ts(k.RotatedAt))
	set(DKIMPendingSinceAnnotation, ts(k.PendingSince))
	set(DKIMRotationHandledAnnotation, k.Handled)
}

// DKIMRecordValue is the TXT record value publishing the public half of a PEM key.
func DKIMRecordValue(pemBytes []byte) (string, error) {
	signer, err := config.ParsePrivateKey(pemBytes)
	if err != nil {
		return "", err
	}
	return dkim.TXTRecord(signer)
}

// generatedDKIM reads a domain's generated keys: the signing key's PEM and the status
// listing every live key's record.
func (r *renderer) generatedDKIM(d *relayv1alpha1.RelayDomain, name string) (string, []byte, *relayv1alpha1.DKIMStatus, *Error) {
	secName := GeneratedDKIMSecretName(d)
	s := r.in.Secrets[types.NamespacedName{Namespace: d.Namespace, Name: secName}]
	if s == nil {
		// The key is being made: the domain's mail flows unsigned meanwhile.
		return "", nil, nil, nil
	}
	if !metav1.IsControlledBy(s, d) {
		return "", nil, nil, &Error{Reason: relayv1alpha1.ReasonSecretConflict, Message: fmt.Sprintf(
			"Secret %s/%s exists and is not this RelayDomain's: delete or rename it, so the operator can keep the generated DKIM keys there", d.Namespace, secName)}
	}
	keys := ReadDKIMKeys(s)
	signing := s.Data[DKIMKeyData(keys.Signing)]
	if signing == nil {
		// No key is published yet: unsigned until the pending one's record is seen.
		keys.Signing = ""
	}
	st := &relayv1alpha1.DKIMStatus{SigningSelector: keys.Signing, PendingSelector: keys.Pending}
	if !keys.RotatedAt.IsZero() {
		st.RotatedAt = &metav1.Time{Time: keys.RotatedAt}
	}
	for _, k := range []struct{ selector, state string }{{keys.Signing, DKIMStateSigning}, {keys.Pending, DKIMStatePending}, {keys.Retiring, DKIMStateRetiring}} {
		b := s.Data[DKIMKeyData(k.selector)]
		if k.selector == "" || b == nil {
			continue
		}
		value, err := DKIMRecordValue(b)
		if err != nil {
			return "", nil, nil, &Error{Reason: relayv1alpha1.ReasonInvalidDKIMKey, Message: fmt.Sprintf(
				"Secret %s/%s key %s is not a usable DKIM key: %v; delete the Secret to have new keys generated", d.Namespace, secName, DKIMKeyData(k.selector), err)}
		}
		rec := relayv1alpha1.DKIMKeyRecord{DKIMRecord: relayv1alpha1.DKIMRecord{Name: k.selector + "._domainkey." + name, Value: value}, Selector: k.selector, State: k.state}
		if k.state == DKIMStateRetiring && !keys.RetireAt.IsZero() {
			rec.RetireAt = &metav1.Time{Time: keys.RetireAt}
		}
		st.Records = append(st.Records, rec)
	}
	sort.SliceStable(st.Records, func(i, j int) bool { return stateOrder[st.Records[i].State] < stateOrder[st.Records[j].State] })
	return keys.Signing, signing, st, nil
}

var stateOrder = map[string]int{DKIMStateSigning: 0, DKIMStatePending: 1, DKIMStateRetiring: 2}
