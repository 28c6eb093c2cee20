package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RelayDomainSpec declares a sender domain a relay may relay mail for.
type RelayDomainSpec struct {
	// domain is the sender domain, e.g. example.com: mail whose envelope sender is
	// in this domain may be relayed. Lower case; no wildcards.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\\\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')",message="domain must be a lower-case DNS domain name with at least two labels, such as example.com (no wildcard, no trailing dot, no port)"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="domain cannot be changed: create a new RelayDomain"
	Domain string `json:"domain"`

	// relayRef names the SmtpRelay that serves this domain. It may live in another
	// namespace only if that relay's spec.domains.namespaces allows this one.
	// +required
	RelayRef RelayReference `json:"relayRef"`

	// smarthostRef names a Smarthost in this namespace to route this domain's mail
	// through. Default: the relay's spec.smarthostRef.
	// +optional
	SmarthostRef *LocalObjectReference `json:"smarthostRef,omitempty"`

	// allowedSenders restricts the local parts (before the @) that may send from this
	// domain: names such as noreply, or patterns such as alerts-* where "*" matches any
	// run of characters; case is ignored. Default: any local part.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:Pattern=`^(\*|[A-Za-z0-9!#$%&'*+/=?^_{|}~.-]+)$`
	// +listType=set
	AllowedSenders []string `json:"allowedSenders,omitempty"`

	// limits bound the mail sent from this domain, by any client, over the whole
	// relay fleet (see RateLimits). Optional.
	// +optional
	Limits *RateLimits `json:"limits,omitempty"`

	// dkim signs the domain's outgoing mail with DKIM (RFC 6376).
	// +optional
	DKIM *DKIMSigning `json:"dkim,omitempty"`
}

// RelayReference names an SmtpRelay.
type RelayReference struct {
	// name of the SmtpRelay.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// namespace of the SmtpRelay. Default: the RelayDomain's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`
}

// DKIMSigning configures the DKIM signature of a domain's mail: a key you manage
// (selector and privateKeySecretRef), or one the operator generates and rotates
// (generate).
// +kubebuilder:validation:XValidation:rule="has(self.generate) || has(self.selector) && has(self.privateKeySecretRef)",message="set selector and privateKeySecretRef (a key you manage), or generate (the operator makes and rotates the key)"
// +kubebuilder:validation:XValidation:rule="!has(self.generate) || !has(self.selector) && !has(self.privateKeySecretRef)",message="generate makes its own selectors and keys: remove selector and privateKeySecretRef"
type DKIMSigning struct {
	// selector names the key in DNS: the public key is published at
	// <selector>._domainkey.<domain>.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Selector string `json:"selector,omitempty"`

	// privateKeySecretRef names the Secret key holding the private key, PEM encoded,
	// RSA (at least 1024 bits; 2048 recommended) or Ed25519, PKCS#1 or PKCS#8 (key default: dkim.key).
	// +optional
	PrivateKeySecretRef SecretKeyReference `json:"privateKeySecretRef,omitzero"`

	// generate has the operator make the key, keep it in a Secret it owns
	// (<name>-dkim, in the domain's namespace) and rotate it: a rotation (the
	// relay.kuberelay.io/rotate-dkim annotation, or rotateEvery) makes a key with a new
	// selector, keeps signing with the current one until the new record is seen in
	// DNS, then switches, and drops the old key after retireAfter. status.dkim says
	// which selector signs and which records to publish.
	// +optional
	Generate *DKIMGenerate `json:"generate,omitempty"`
}

// DKIMGenerate is how the operator makes and rotates a domain's DKIM keys.
// +kubebuilder:validation:XValidation:rule="!has(self.bits) || self.algorithm == 'RSA'",message="bits is for RSA keys only"
type DKIMGenerate struct {
	// algorithm of the keys: RSA (default; every receiver verifies it) or Ed25519
	// (RFC 8463; short records, not verified by every receiver).
	// +optional
	// +kubebuilder:default=RSA
	// +kubebuilder:validation:Enum=RSA;Ed25519
	Algorithm string `json:"algorithm,omitempty"`

	// bits of an RSA key. Default: 2048.
	// +optional
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=4096
	Bits *int32 `json:"bits,omitempty"`

	// rotateEvery rotates the key on a schedule, counted from the last switch, e.g.
	// 2160h (90 days). Default: only when asked with the relay.kuberelay.io/rotate-dkim
	// annotation.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="rotateEvery must be at least 1h"
	RotateEvery *metav1.Duration `json:"rotateEvery,omitempty"`

	// retireAfter is how long the previous key is kept, and its record listed, after
	// the switch: mail signed just before it may still be verified by receivers
	// then. Default: 168h (7 days).
	// +optional
	// +kubebuilder:default="168h0m0s"
	RetireAfter *metav1.Duration `json:"retireAfter,omitempty"`

	// resolver is the DNS server (host:port) asked for a new selector's record before
	// the switch. Default: the resolvers of the operator's pod.
	// +optional
	// +kubebuilder:validation:MaxLength=261
	Resolver string `json:"resolver,omitempty"`

	// skipDNSCheck switches to a new key at once, without looking for its record:
	// publish it first, or receivers fail mail signed with it.
	// +optional
	SkipDNSCheck bool `json:"skipDNSCheck,omitempty"`
}

// RelayDomainStatus is what the operator last saw of a RelayDomain.
type RelayDomainStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Accepted (attached to its relay), Ready (attached, and everything
	// it references is usable), Reconciling and Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// dkimRecord is the DNS TXT record to publish for the DKIM key that signs.
	// +optional
	DKIMRecord *DKIMRecord `json:"dkimRecord,omitempty"`

	// dkim says which selector signs and, with spec.dkim.generate, every record to
	// publish: the signing key's, a new key's waiting for its record, and the
	// previous key's until it retires.
	// +optional
	DKIM *DKIMStatus `json:"dkim,omitempty"`
}

// DKIMStatus is the state of a domain's DKIM keys.
type DKIMStatus struct {
	// signingSelector is the selector mail is signed with.
	// +optional
	SigningSelector string `json:"signingSelector,omitempty"`
	// pendingSelector is a new key's selector, which signs once its record is seen
	// in DNS.
	// +optional
	PendingSelector string `json:"pendingSelector,omitempty"`
	// records are the TXT records to publish, one per live key.
	// +optional
	// +listType=atomic
	Records []DKIMKeyRecord `json:"records,omitempty"`
	// rotatedAt is when the signing key started signing (generated keys).
	// +optional
	RotatedAt *metav1.Time `json:"rotatedAt,omitempty"`
}

// DKIMKeyRecord is one key's DNS record and what the key does.
type DKIMKeyRecord struct {
	DKIMRecord `json:",inline"`
	// selector of the key.
	Selector string `json:"selector"`
	// state is Signing, Pending (publish this record: the switch waits for it) or
	// Retiring (kept until retireAt for mail signed before the switch).
	State string `json:"state"`
	// retireAt is when a Retiring key is dropped.
	// +optional
	RetireAt *metav1.Time `json:"retireAt,omitempty"`
}

// DKIMRecord is a DNS TXT record that publishes a DKIM public key.
type DKIMRecord struct {
	// name is the record's name, <selector>._domainkey.<domain>.
	Name string `json:"name"`
	// value is the record's text, "v=DKIM1; k=...; p=...".
	Value string `json:"value"`
}

// RelayDomain is a sender domain attached to an SmtpRelay.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=relaydomain;rd,categories=kuberelay
// +kubebuilder:printcolumn:name="Domain",type=string,JSONPath=`.spec.domain`
// +kubebuilder:printcolumn:name="Relay",type=string,JSONPath=`.spec.relayRef.name`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="DKIM",type=string,JSONPath=`.status.dkim.signingSelector`
// +kubebuilder:printcolumn:name="Pending",type=string,JSONPath=`.status.dkim.pendingSelector`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RelayDomain struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec declares the domain.
	// +required
	Spec RelayDomainSpec `json:"spec"`

	// status is what the operator last saw.
	// +optional
	Status RelayDomainStatus `json:"status,omitzero"`
}

// RelayDomainList is a list of RelayDomains.
// +kubebuilder:object:root=true
type RelayDomainList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RelayDomain `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RelayDomain{}, &RelayDomainList{})
}
