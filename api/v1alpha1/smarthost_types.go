package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SmarthostSpec describes an upstream SMTP server (SES, SendGrid, Mailgun, Microsoft
// 365, a corporate MTA) that relays deliver through.
// +kubebuilder:validation:XValidation:rule="!has(self.auth) || self.tls.mode != 'None'",message="auth needs TLS: with tls.mode None the password or token would cross the network in plain text; use STARTTLS or Implicit"
// +kubebuilder:validation:XValidation:rule="!has(self.tls.caSecretRef) || !has(self.tls.insecureSkipVerify) || !self.tls.insecureSkipVerify",message="tls.caSecretRef and tls.insecureSkipVerify contradict each other: set one"
// +kubebuilder:validation:XValidation:rule="has(self.endpoints) || has(self.provider)",message="endpoints are required unless provider names a known service"
// +kubebuilder:validation:XValidation:rule="!has(self.provider) || self.provider != 'SES' || has(self.region) || has(self.endpoints)",message="provider SES needs region (the AWS region of your SES account, e.g. eu-west-1)"
// +kubebuilder:validation:XValidation:rule="!has(self.region) || has(self.provider) && self.provider in ['SES', 'Mailgun']",message="region is only for provider SES (an AWS region) or Mailgun (us or eu)"
// +kubebuilder:validation:XValidation:rule="!has(self.region) || !has(self.provider) || self.provider != 'Mailgun' || self.region in ['us', 'eu']",message="Mailgun's region is us or eu"
type SmarthostSpec struct {
	// provider fills in what a known service needs: endpoints, port, TLS mode, the
	// login mechanism, and for Microsoft 365 the OAuth 2.0 token endpoint and scope and
	// its published sending limits (docs/smarthosts.md lists each). Fields set here
	// win over the provider's.
	// +optional
	// +kubebuilder:validation:Enum=SES;SendGrid;Mailgun;Microsoft365;GoogleWorkspace;Postmark
	Provider string `json:"provider,omitempty"`

	// region selects the provider's regional endpoint: for SES the AWS region
	// (required, e.g. eu-west-1), for Mailgun us (default) or eu.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^[a-z0-9]+(-[a-z0-9]+)*$`
	Region string `json:"region,omitempty"`

	// endpoints are tried in order: the next one only when the previous one cannot
	// take the message (connection, TLS or AUTH failure, a 421, or a 4xx before DATA).
	// A message is never sent to more than one endpoint. Required unless provider is
	// set, whose endpoint they replace.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	Endpoints []SmarthostEndpoint `json:"endpoints,omitempty"`

	// tls says how connections to the endpoints are protected. Default: STARTTLS,
	// required and verified against the system roots.
	// +optional
	// +kubebuilder:default={}
	TLS SmarthostTLS `json:"tls,omitzero"`

	// auth logs in to the smarthost with a user name and password.
	// +optional
	Auth *SmarthostAuth `json:"auth,omitempty"`

	// maxConnections bounds the connections each relay replica keeps open to this
	// smarthost (its connection pool). Messages beyond it wait briefly, then get a
	// 4xx so the client retries. Default: 10.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	MaxConnections int32 `json:"maxConnections,omitempty"`

	// limits bound what each relay fleet that routes through this smarthost sends
	// through it, e.g. the provider's sending quota (see RateLimits; each relay using
	// the Smarthost gets the whole budget for its own fleet). Optional.
	// +optional
	Limits *RateLimits `json:"limits,omitempty"`

	// maxMessagesPerConnection retires a pooled connection after this many messages.
	// Default: 100.
	// +optional
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	MaxMessagesPerConnection int32 `json:"maxMessagesPerConnection,omitempty"`

	// check says how often a relay fleet checks this smarthost: one of its pods
	// connects to each endpoint as a delivery would (TLS and AUTH included, no mail)
	// and the results become the Reachable and AuthAccepted conditions. It also checks
	// after each configuration change.
	// +optional
	// +kubebuilder:default={}
	Check *SmarthostCheck `json:"check,omitempty"`

	// timeouts for talking to the smarthost. Each has a default.
	// +optional
	// +kubebuilder:default={}
	Timeouts *SmarthostTimeouts `json:"timeouts,omitempty"`
}

// SmarthostEndpoint is one address of a smarthost.
type SmarthostEndpoint struct {
	// host is the smarthost's DNS name or IP address, e.g. email-smtp.eu-west-1.amazonaws.com.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\\\\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\\\\.?$') || isIP(self)",message="host must be a DNS name or an IP address, without port or scheme"
	Host string `json:"host"`

	// port on the host. Default: 587 (submission with STARTTLS); use 465 for Implicit
	// TLS and 25 for a plain MTA.
	// +optional
	// +kubebuilder:default=587
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
}

// SmarthostTLS says how connections to a smarthost are protected.
type SmarthostTLS struct {
	// mode is STARTTLS (default), Implicit (TLS from the first byte, port 465) or None
	// (plain text: only for a trusted network).
	// +optional
	// +kubebuilder:default=STARTTLS
	Mode TLSMode `json:"mode,omitempty"`

	// serverName is the name the smarthost's certificate must carry. Default: the
	// endpoint's host.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	ServerName string `json:"serverName,omitempty"`

	// caSecretRef names a Secret key holding the PEM CA certificates that verify the
	// smarthost (key default: ca.crt). Default: the system roots.
	// +optional
	CASecretRef *SecretKeyReference `json:"caSecretRef,omitempty"`

	// insecureSkipVerify accepts any certificate. Only for tests: it lets anyone in
	// the path read the mail and the password.
	// +optional
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`
}

// SmarthostAuth logs in to a smarthost: with a password (secretRef) or with OAuth 2.0
// access tokens (oauth2).
// +kubebuilder:validation:XValidation:rule="has(self.secretRef) != has(self.oauth2)",message="set secretRef (a user name and password) or oauth2 (access tokens), one of them"
// +kubebuilder:validation:XValidation:rule="!has(self.oauth2) || !has(self.mechanism) || self.mechanism in ['XOAUTH2', 'OAUTHBEARER']",message="oauth2 logs in with XOAUTH2 or OAUTHBEARER"
// +kubebuilder:validation:XValidation:rule="has(self.oauth2) || !has(self.mechanism) || self.mechanism in ['PLAIN', 'LOGIN']",message="XOAUTH2 and OAUTHBEARER need oauth2; a password logs in with PLAIN or LOGIN"
type SmarthostAuth struct {
	// secretRef names a Secret of type kubernetes.io/basic-auth (keys username and
	// password) in the Smarthost's namespace.
	// +optional
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`

	// oauth2 obtains access tokens with the OAuth 2.0 client credentials grant and
	// logs in with them: Microsoft 365 (Exchange Online retires basic-auth SMTP AUTH)
	// and Google Workspace. Tokens are cached and replaced 5 minutes before they
	// expire; a token endpoint that fails makes clients retry (4xx).
	// +optional
	OAuth2 *SmarthostOAuth2 `json:"oauth2,omitempty"`

	// mechanism is the SASL mechanism: PLAIN (default with secretRef) or LOGIN, and
	// with oauth2 XOAUTH2 (default; Microsoft's and Google's) or OAUTHBEARER (RFC 7628).
	// +optional
	// +kubebuilder:validation:Enum=PLAIN;LOGIN;XOAUTH2;OAUTHBEARER
	Mechanism string `json:"mechanism,omitempty"`
}

// SmarthostOAuth2 is the OAuth 2.0 client a relay obtains access tokens with.
type SmarthostOAuth2 struct {
	// tokenURL is the token endpoint, e.g.
	// https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token. Required, but with
	// provider Microsoft365 and tenantID, and with a Google service account key.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="tokenURL must be https: the client secret is sent to it"
	TokenURL string `json:"tokenURL,omitempty"`

	// tenantID is the Microsoft Entra tenant (its ID or a verified domain) whose token
	// endpoint provider Microsoft365 uses when tokenURL is not set.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9.-]+$`
	TenantID string `json:"tenantID,omitempty"`

	// scopes are asked for, e.g. https://outlook.office365.com/.default (provider
	// Microsoft365's default) or https://mail.google.com/ (GoogleWorkspace's).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:items:Pattern=`^[^\s]+$`
	Scopes []string `json:"scopes,omitempty"`

	// clientSecretRef names a Secret in the Smarthost's namespace with the key
	// client-id and either client-secret, or tls.crt and tls.key: a certificate
	// registered with the client and its RSA key, with which the relay signs a client
	// assertion (RFC 7523) instead of sending a secret (Microsoft Entra ID's
	// certificate credentials). For Google, the key service-account.json instead: a
	// service account's JSON key with domain-wide delegation; tokens are then asked
	// for username with a JWT signed by it, from the key's token_uri.
	// +required
	ClientSecretRef LocalObjectReference `json:"clientSecretRef"`

	// username is the mailbox the tokens log in as (XOAUTH2's user), e.g.
	// relay@corp.example.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=320
	Username string `json:"username"`
}

// SmarthostCheck paces the checks of a smarthost.
type SmarthostCheck struct {
	// interval between two checks by a relay fleet: one check per endpoint per fleet
	// per interval, whatever the number of pods. 0s turns checks off. Default: 5m.
	// +optional
	// +kubebuilder:default="5m0s"
	// +kubebuilder:validation:XValidation:rule="duration(self) == duration('0s') || duration(self) >= duration('30s')",message="interval must be 0s (off) or at least 30s, so a fleet never hammers a provider"
	Interval *metav1.Duration `json:"interval,omitempty"`
}

// SmarthostTimeouts bound each step of talking to a smarthost.
type SmarthostTimeouts struct {
	// connect bounds connecting, TLS, greeting and AUTH. Default: 30s.
	// +optional
	// +kubebuilder:default="30s"
	Connect *metav1.Duration `json:"connect,omitempty"`
	// command bounds the wait for the reply to each command. Default: 5m (RFC 5321 4.5.3.2).
	// +optional
	// +kubebuilder:default="5m0s"
	Command *metav1.Duration `json:"command,omitempty"`
	// data bounds sending a message and the wait for the reply to its final dot.
	// Default: 10m.
	// +optional
	// +kubebuilder:default="10m0s"
	Data *metav1.Duration `json:"data,omitempty"`
	// idle closes a pooled connection unused for this long. Default: 1m.
	// +optional
	// +kubebuilder:default="1m0s"
	Idle *metav1.Duration `json:"idle,omitempty"`
}

// SmarthostStatus is what the operator last saw of a Smarthost.
type SmarthostStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready (its referenced Secrets exist and hold what they must),
	// Reachable and AuthAccepted (the relay fleets' last checks; absent until one
	// ran), Reconciling and Stalled.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Smarthost is an upstream SMTP server that relays deliver through.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=smarthost;sh,categories=kuberelay
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reachable",type=string,JSONPath=`.status.conditions[?(@.type=="Reachable")].status`
// +kubebuilder:printcolumn:name="AuthAccepted",type=string,JSONPath=`.status.conditions[?(@.type=="AuthAccepted")].status`
// +kubebuilder:printcolumn:name="Provider",type=string,JSONPath=`.spec.provider`
// +kubebuilder:printcolumn:name="TLS",type=string,JSONPath=`.spec.tls.mode`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.spec.endpoints[0].host`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Smarthost struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec describes the smarthost.
	// +required
	Spec SmarthostSpec `json:"spec"`

	// status is what the operator last saw.
	// +optional
	Status SmarthostStatus `json:"status,omitzero"`
}

// SmarthostList is a list of Smarthosts.
// +kubebuilder:object:root=true
type SmarthostList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Smarthost `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Smarthost{}, &SmarthostList{})
}
