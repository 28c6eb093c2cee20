package render

import (
	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"

	"fmt"
	"sort"

	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/dkim"
	"k8s.io/apimachinery/pkg/types"
)

// domains decides which domains are rendered. Of several RelayDomains claiming one
// domain the oldest wins, whatever its state, so a domain's owner does not flip when
// the other one breaks or is fixed.
func (r *renderer) domains(haveDefault bool) (map[types.NamespacedName]DomainResult, []*pendingDomain) {
	results := make(map[types.NamespacedName]DomainResult, len(r.in.Domains))
	ordered := make([]*relayv1alpha1.RelayDomain, 0, len(r.in.Domains))
	for i := range r.in.Domains {
		ordered = append(ordered, &r.in.Domains[i])
	}
	sort.SliceStable(ordered, func(i, j int) bool {
		a, b := ordered[i], ordered[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	owners := map[string]types.NamespacedName{}
	var pending []*pendingDomain
	for _, d := range ordered {
		key := types.NamespacedName{Namespace: d.Namespace, Name: d.Name}
		name := config.NormalizeDomain(d.Spec.Domain)
		if owner, ok := owners[name]; ok {
			if owner != key {
				results[key] = DomainResult{Reason: relayv1alpha1.ReasonDomainConflict, Message: fmt.Sprintf(
					"domain %s is already served by RelayDomain %s, which was created first: delete one of the two RelayDomains", name, owner)}
			}
			continue
		}
		owners[name] = key
		res, p := r.domain(d, name, haveDefault)
		results[key] = res
		if p != nil {
			pending = append(pending, p)
		}
	}
	return results, pending
}

// domain renders one RelayDomain, or says why it cannot be.
func (r *renderer) domain(d *relayv1alpha1.RelayDomain, name string, haveDefault bool) (DomainResult, *pendingDomain) {
	var res DomainResult
	var problem *Error
	p := &pendingDomain{cfg: config.Domain{Domain: name, AllowedSenders: sortedSet(d.Spec.AllowedSenders),
		RateLimits: podRateLimits(d.Spec.Limits, 0, r.in.FleetSize), Capture: r.capturedNamespace(d.Namespace)}}

	switch ref := d.Spec.SmarthostRef; {
	case ref != nil:
		key := types.NamespacedName{Namespace: d.Namespace, Name: ref.Name}
		if src, err := r.smarthost(key, "spec.smarthostRef"); err != nil {
			problem = err
		} else {
			p.smarthost = &src.key
		}
	case !haveDefault:
		problem = &Error{Reason: relayv1alpha1.ReasonNoSmarthost, Message: fmt.Sprintf(
			"no smarthost to deliver mail from %s through: set spec.smarthostRef on this RelayDomain or on SmtpRelay %s", name, r.relayKey)}
	}

	var dkimKey []byte
	if k := d.Spec.DKIM; k != nil && k.Generate != nil {
		selector, pemBytes, st, err := r.generatedDKIM(d, name)
		if err != nil && problem == nil {
			problem = err
		}
		res.DKIM = st
		if selector != "" {
			res.DKIMRecord = &st.Records[0].DKIMRecord
			dkimKey = pemBytes
			p.cfg.DKIM = &config.DKIM{Selector: selector, PrivateKeyFile: secretFileName("dkim", name, "key")}
		}
	} else if k != nil {
		keyName := k.PrivateKeySecretRef.Key
		if keyName == "" {
			keyName = defaultDKIMKey
		}
		what := "spec.dkim.privateKeySecretRef"
		pemBytes, err := r.secretKeyOf(d.Namespace, k.PrivateKeySecretRef.Name, keyName, what, "a Secret holding the PEM private key")
		if err == nil {
			signer, perr := config.ParsePrivateKey(pemBytes)
			if perr == nil {
				var value string
				if value, perr = dkim.TXTRecord(signer); perr == nil {
					res.DKIMRecord = &relayv1alpha1.DKIMRecord{Name: k.Selector + "._domainkey." + name, Value: value}
					res.DKIM = &relayv1alpha1.DKIMStatus{SigningSelector: k.Selector, Records: []relayv1alpha1.DKIMKeyRecord{
						{DKIMRecord: *res.DKIMRecord, Selector: k.Selector, State: DKIMStateSigning}}}
				}
			}
			if perr != nil {
				err = &Error{Reason: relayv1alpha1.ReasonInvalidDKIMKey, Message: fmt.Sprintf(
					"Secret %s/%s key %s (%s) is not a usable DKIM key: %v; it must be a PEM RSA (at least 1024 bits) or Ed25519 private key, PKCS#1 or PKCS#8",
					d.Namespace, k.PrivateKeySecretRef.Name, keyName, what, perr)}
			}
		}
		if err != nil && problem == nil {
			problem = err
		}
		dkimKey = pemBytes
		p.cfg.DKIM = &config.DKIM{Selector: k.Selector, PrivateKeyFile: secretFileName("dkim", name, "key")}
	}

	if problem == nil {
		// The domain's own fields, checked by the relay's rules on their own so that a
		// RelayDomain admission did not catch cannot break the whole relay.
		probe := p.cfg
		probe.Upstream = "probe"
		probe.Domain = d.Spec.Domain
		if err := fieldsAt(probe.WithDefaults().Validate(), "spec."); err != nil {
			problem = &Error{Reason: relayv1alpha1.ReasonRenderFailed, Message: err.Error()}
		}
	}
	if problem != nil {
		res.Reason, res.Message = problem.Reason, problem.Message
		return res, nil
	}
	if p.cfg.DKIM != nil {
		r.files[p.cfg.DKIM.PrivateKeyFile] = dkimKey
	}
	res.Included = true
	return res, p
}
