package v1alpha1

// TLSMode says how a connection is protected.
// +kubebuilder:validation:Enum=None;STARTTLS;Implicit
type TLSMode string

const (
	// TLSNone is plain SMTP with no encryption.
	TLSNone TLSMode = "None"
	// TLSStartTLS upgrades a plain connection with STARTTLS (RFC 3207). An upstream in
	// this mode must offer it: the relay never falls back to plain text.
	TLSStartTLS TLSMode = "STARTTLS"
	// TLSImplicit starts TLS as soon as the connection opens ("SMTPS", port 465).
	TLSImplicit TLSMode = "Implicit"
)

// LocalObjectReference names an object in the referencing object's namespace.
type LocalObjectReference struct {
	// name of the object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// SecretKeyReference names one key of a Secret in the referencing object's namespace.
type SecretKeyReference struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key in the Secret's data. Each reference documents its default.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// Condition types shared by the kinds. Ready, Reconciling and Stalled follow kstatus,
// so tools such as kubectl wait, Flux and Argo CD understand them.
const (
	// ReadyCondition is True when the object is fully working.
	ReadyCondition = "Ready"
	// ReconcilingCondition is True while the operator is still making changes or
	// waiting for them to converge.
	ReconcilingCondition = "Reconciling"
	// StalledCondition is True when progress needs a change from the user.
	StalledCondition = "Stalled"
	// ConfigAppliedCondition (SmtpRelay) is True when every ready pod runs the
	// configuration the operator last rendered.
	ConfigAppliedCondition = "ConfigApplied"
	// AcceptedCondition (RelayDomain, RelayClient) is True when the object is attached
	// to its relay.
	AcceptedCondition = "Accepted"
	// ReachableCondition (Smarthost) is True when the last checks from the relay
	// fleets that use it reached every endpoint (TCP, greeting, EHLO, TLS).
	ReachableCondition = "Reachable"
	// AuthAcceptedCondition (Smarthost) is True when every endpoint reached took the
	// login (password or OAuth 2.0 token).
	AuthAcceptedCondition = "AuthAccepted"
)

// Condition reasons. They say, in one word, what happened or what is missing; the
// condition's message says what to do about it.
const (
	ReasonSucceeded           = "Succeeded"
	ReasonProgressing         = "Progressing"
	ReasonSecretNotFound      = "SecretNotFound"
	ReasonSecretKeyMissing    = "SecretKeyMissing"
	ReasonInvalidSecret       = "InvalidSecret"
	ReasonSmarthostNotFound   = "SmarthostNotFound"
	ReasonSmarthostNotReady   = "SmarthostNotReady"
	ReasonRelayNotFound       = "RelayNotFound"
	ReasonNamespaceNotAllowed = "NamespaceNotAllowed"
	ReasonDomainConflict      = "DomainConflict"
	ReasonInvalidDKIMKey      = "InvalidDKIMKey"
	ReasonNoSmarthost         = "NoSmarthost"
	ReasonRenderFailed        = "RenderFailed"
	ReasonRolloutInProgress   = "RolloutInProgress"
	ReasonConfigPending       = "ConfigPending"
	ReasonConfigApplied       = "ConfigApplied"
	ReasonNoReadyPods         = "NoReadyPods"
	// ReasonDraining: a Queue-mode scale-down waits for the leaving pods to deliver
	// their queues before they are removed.
	ReasonDraining = "Draining"
	// ReasonSecretConflict: a RelayClient's Secret exists and is not the client's.
	ReasonSecretConflict = "SecretConflict"
	// ReasonInvalidSender: a RelayClient's allowed sender is not in a domain it may use.
	ReasonInvalidSender = "InvalidSender"
	// ReasonUserConflict: two clients of a relay have the same user name.
	ReasonUserConflict = "UserConflict"
	// ReasonNoSubmissionListener: the relay has no TLS listener a client can log in on.
	ReasonNoSubmissionListener = "NoSubmissionListener"
	// ReasonEndpointUnreachable: a check could not connect to an endpoint, secure it
	// or get through EHLO.
	ReasonEndpointUnreachable = "EndpointUnreachable"
	// ReasonAuthRefused: an endpoint refused the login, or no token could be obtained.
	ReasonAuthRefused = "AuthRefused"
)

// RateLimits are budgets for a whole relay fleet, in windows aligned to the clock (the
// minute, the hour, the UTC day); 0 or absent is no limit. The operator gives each
// relay pod an equal share, rounded down and at least 1, dividing by the larger of
// spec.replicas and the pods running, and shares again when that changes, so the pods
// together never send more than the budget (a budget smaller than the number of pods is
// the exception: each pod still sends 1). Over a limit, a message is answered 451
// 4.7.1, a recipient 452 4.5.3, a session 454 4.7.0: the client tries again later.
type RateLimits struct {
	// messagesPerMinute, messagesPerHour and messagesPerDay bound messages.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MessagesPerMinute int64 `json:"messagesPerMinute,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	MessagesPerHour int64 `json:"messagesPerHour,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	MessagesPerDay int64 `json:"messagesPerDay,omitempty"`
	// recipientsPerMinute, recipientsPerHour and recipientsPerDay bound recipients.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RecipientsPerMinute int64 `json:"recipientsPerMinute,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	RecipientsPerHour int64 `json:"recipientsPerHour,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	RecipientsPerDay int64 `json:"recipientsPerDay,omitempty"`
}

// ClientRateLimits are a RelayClient's budgets: RateLimits and concurrent sessions.
type ClientRateLimits struct {
	RateLimits `json:",inline"`
	// maxSessions bounds the client's concurrent sessions over the fleet, shared as
	// the other budgets are.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxSessions int32 `json:"maxSessions,omitempty"`
}
