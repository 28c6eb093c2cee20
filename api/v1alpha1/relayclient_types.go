package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RotateAnnotation on a RelayClient asks for a new password: each new value rotates
// it once (kubectl annotate relayclient app relay.kuberelay.io/rotate="$(date +%s)"
// --overwrite). The previous password keeps working for spec.rotation.overlap.
const RotateAnnotation = "relay.kuberelay.io/rotate"

// RelayClientSpec declares one application's credentials for an SmtpRelay.
type RelayClientSpec struct {
	// relayRef names the SmtpRelay the application sends through. It may live in
	// another namespace only if that relay's spec.domains.namespaces allows this one.
	// +required
	RelayRef RelayReference `json:"relayRef"`

	// allowedSenders are the envelope senders the application may use: addresses
	// (noreply@example.com; "*" in the local part matches any run of characters) or
	// domains (example.com). Each must be in a RelayDomain attached to the relay from
	// this namespace or from the relay's own.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=320
	// +listType=set
	AllowedSenders []string `json:"allowedSenders"`

	// secretName is the Secret the operator writes in this namespace with the
	// credentials: host, port, username, password and url
	// (smtp://user:password@host:port). Default: the RelayClient's name. An existing
	// Secret the RelayClient does not own is never overwritten.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	SecretName string `json:"secretName,omitempty"`

	// limits are the client's budgets over the whole relay fleet (see RateLimits).
	// Optional.
	// +optional
	Limits *ClientRateLimits `json:"limits,omitempty"`

	// rotation says how a new password replaces the old one. A rotation is asked
	// for with the relay.kuberelay.io/rotate annotation.
	// +optional
	// +kubebuilder:default={}
	Rotation ClientRotation `json:"rotation,omitzero"`

	// capture sends the client's mail to its relay's capture sink instead of the
	// smarthost (see SmtpRelay spec.capture), so a staging application mails nobody
	// real. Mail is also captured when the relay's spec.capture selects the client's
	// namespace.
	// +optional
	Capture bool `json:"capture,omitempty"`
}

// ClientRotation says how a password rotation overlaps.
type ClientRotation struct {
	// overlap is how long the previous password keeps working after a rotation, so
	// applications can pick up the new Secret without failing. 0s ends it at once.
	// +optional
	// +kubebuilder:default="1h0m0s"
	Overlap *metav1.Duration `json:"overlap,omitempty"`
}

// RelayClientStatus is what the operator last saw of a RelayClient.
type RelayClientStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Accepted (attached to its relay), Ready (its credentials are in the
	// relay's configuration), Reconciling and Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// secretName is the Secret holding the credentials.
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// username is the AUTH user name: <namespace>.<name>.
	// +optional
	Username string `json:"username,omitempty"`

	// rotatedAt is when the current password was made.
	// +optional
	RotatedAt *metav1.Time `json:"rotatedAt,omitempty"`

	// previousPasswordExpiresAt is when the password replaced by the last rotation
	// stops working; absent when none does.
	// +optional
	PreviousPasswordExpiresAt *metav1.Time `json:"previousPasswordExpiresAt,omitempty"`

	// captured is true when the relay keeps the client's mail in its capture sink
	// instead of sending it (spec.capture, or the relay's spec.capture).
	// +optional
	Captured bool `json:"captured,omitempty"`

	// usage is what the client sent through the whole fleet in the current windows,
	// summed over the ready relay pods, for a client with spec.limits. It is
	// refreshed about every 30 seconds while the client sends (the minute's figure is
	// as of then).
	// +optional
	Usage *ClientUsage `json:"usage,omitempty"`
}

// ClientUsage is a client's use of its budgets.
type ClientUsage struct {
	// messages sent this minute, hour and UTC day.
	Messages WindowCounts `json:"messages"`
	// recipients sent to this minute, hour and UTC day.
	Recipients WindowCounts `json:"recipients"`
}

// WindowCounts are counts in the current windows aligned to the clock.
type WindowCounts struct {
	Minute int64 `json:"minute"`
	Hour   int64 `json:"hour"`
	Day    int64 `json:"day"`
}

// RelayClient is an application's credentials for an SmtpRelay, written to a Secret
// in the application's namespace.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rc,categories=kuberelay
// +kubebuilder:printcolumn:name="Relay",type=string,JSONPath=`.spec.relayRef.name`
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.status.secretName`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Captured",type=boolean,JSONPath=`.status.captured`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Rotated",type=date,JSONPath=`.status.rotatedAt`,priority=1
// +kubebuilder:printcolumn:name="Today",type=integer,JSONPath=`.status.usage.messages.day`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RelayClient struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec declares the client.
	// +required
	Spec RelayClientSpec `json:"spec"`

	// status is what the operator last saw.
	// +optional
	Status RelayClientStatus `json:"status,omitzero"`
}

// RelayClientList is a list of RelayClients.
// +kubebuilder:object:root=true
type RelayClientList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RelayClient `json:"items"`
}

func init() {
	SchemeBuilder.Register(&RelayClient{}, &RelayClientList{})
}
