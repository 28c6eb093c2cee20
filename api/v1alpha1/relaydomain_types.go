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

// DKIMSigning configures the DKIM signature of a domain's mail.
type DKIMSigning struct {
	// selector names the key in DNS: the public key is published at
	// <selector>._domainkey.<domain>.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Selector string `json:"selector"`

	// privateKeySecretRef names the Secret key holding the private key, PEM encoded,
	// RSA (at least 1024 bits; 2048 recommended) or Ed25519, PKCS#1 or PKCS#8 (key default: dkim.key).
	// +required
	PrivateKeySecretRef SecretKeyReference `json:"privateKeySecretRef"`
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

	// dkimRecord is the DNS TXT record to publish for the DKIM key.
	// +optional
	DKIMRecord *DKIMRecord `json:"dkimRecord,omitempty"`
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
// +kubebuilder:printcolumn:name="DKIM",type=string,JSONPath=`.spec.dkim.selector`
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
