package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// SmtpRelaySpec declares a fleet of relay pods, how clients reach it and who may relay
// through it.
// +kubebuilder:validation:XValidation:rule="!has(self.listeners) || self.listeners.all(l, !has(l.requireAuth) || !l.requireAuth || (has(l.tls) && l.tls != 'None') || (!has(l.tls) && has(self.tls)))",message="a listener with requireAuth needs TLS: set its tls to STARTTLS or Implicit (and spec.tls.secretRef), since AUTH is only offered over TLS"
// +kubebuilder:validation:XValidation:rule="!has(self.listeners) || has(self.tls) || self.listeners.all(l, !has(l.tls) || l.tls == 'None')",message="a listener with tls STARTTLS or Implicit needs a certificate: set spec.tls.secretRef"
// +kubebuilder:validation:XValidation:rule="!has(self.nullSender) || self.nullSender != 'Allow' || has(self.smarthostRef)",message="nullSender Allow relays bounces through spec.smarthostRef: set it, or keep nullSender Reject"
type SmtpRelaySpec struct {
	// replicas is the number of relay pods. Default: 2.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Replicas *int32 `json:"replicas,omitempty"`

	// listeners are the SMTP ports the relay serves. Default: smtp on port 25 (STARTTLS
	// offered when spec.tls is set), and, when spec.tls is set, submission on port 587
	// (STARTTLS, AUTH required), where spec.auth.users and RelayClients log in.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:XValidation:rule="self.all(l, self.exists_one(m, m.port == l.port))",message="listener ports must be unique"
	// +kubebuilder:validation:XValidation:rule="self.all(l, !has(l.containerPort) || self.exists_one(m, has(m.containerPort) && m.containerPort == l.containerPort))",message="listener containerPorts must be unique"
	Listeners []Listener `json:"listeners,omitempty"`

	// tls is the relay's server certificate, for STARTTLS and Implicit listeners.
	// +optional
	TLS *RelayTLS `json:"tls,omitempty"`

	// auth lists the users that may log in (AUTH PLAIN or LOGIN, over TLS only) and
	// relay.
	// +optional
	Auth *RelayAuth `json:"auth,omitempty"`

	// allowedNetworks are client networks (CIDRs, e.g. 10.0.0.0/8) that may relay
	// without logging in, on listeners that do not require AUTH. Empty means none:
	// the relay is closed by default and never an open relay, so 0.0.0.0/0 and ::/0
	// are refused.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="allowedNetworks entries must be CIDRs such as 10.0.0.0/8 or fd00::/8"
	// +kubebuilder:validation:items:XValidation:rule="!isCIDR(self) || cidr(self).prefixLength() > 0",message="0.0.0.0/0 and ::/0 would make an open relay that anyone can abuse: list the client networks instead, or use spec.auth"
	// +listType=set
	AllowedNetworks []string `json:"allowedNetworks,omitempty"`

	// smarthostRef names the Smarthost (in this namespace) that mail is delivered
	// through unless its RelayDomain names another. Without it, only domains with
	// their own smarthostRef are relayed.
	// +optional
	SmarthostRef *LocalObjectReference `json:"smarthostRef,omitempty"`

	// domains says which namespaces' RelayDomains may attach to this relay.
	// +optional
	// +kubebuilder:default={namespaces:{from:Same}}
	Domains DomainAttachment `json:"domains,omitzero"`

	// nullSender is what happens to mail with the null sender (MAIL FROM:<>, used by
	// bounces): Reject (default) or Allow (relayed through spec.smarthostRef).
	// +optional
	// +kubebuilder:default=Reject
	// +kubebuilder:validation:Enum=Reject;Allow
	NullSender string `json:"nullSender,omitempty"`

	// limits bound what a client can make the relay do. Each has a default.
	// +optional
	// +kubebuilder:default={}
	Limits *RelayLimits `json:"limits,omitempty"`

	// delivery says when a client is answered 250: once the smarthost accepted its
	// message (PassThrough, the default), or once the message is stored on the relay's
	// own volume (Queue), so mail waits out a smarthost outage in the relay instead of
	// in every application. Queue mode runs the relay as a StatefulSet with a
	// PersistentVolumeClaim per pod and a headless Service. Switching modes replaces
	// the pods: drain the queue first (docs/queue.md).
	// +optional
	// +kubebuilder:default={}
	Delivery *DeliverySpec `json:"delivery,omitempty"`

	// capture sends mail to the relay's built-in capture sink instead of the
	// smarthost, for staging and development: nobody real is ever mailed. Without
	// namespaceSelector all mail the relay accepts is captured; with it, the mail of
	// RelayClients and RelayDomains in the namespaces it selects (a RelayClient can
	// also ask for it with its spec.capture). Each relay pod keeps what it captured in
	// memory, within maxMessages and maxSize (the oldest goes first; a restart empties
	// it), and serves it on its HTTP port under /capture/: a web UI and a JSON API
	// (docs/capture.md).
	// +optional
	Capture *CaptureSpec `json:"capture,omitempty"`

	// image runs the relay pods on another image than the operator's own.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image,omitempty"`

	// resources of the relay container. Default: requests of 50m CPU and 64Mi memory,
	// a 256Mi memory limit.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// nodeSelector, tolerations, affinity, topologySpreadConstraints and
	// priorityClassName place the relay pods as on any pod. Default: pods spread
	// across nodes (preferred).
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// +optional
	// +listType=atomic
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxLength=253
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// podDisruptionBudget keeps relay pods available during voluntary disruptions.
	// Default: maxUnavailable 1 when replicas > 1; none with a single replica.
	// +optional
	PodDisruptionBudget *PodDisruptionBudgetSpec `json:"podDisruptionBudget,omitempty"`

	// service is how clients reach the relay.
	// +optional
	Service *ServiceSpec `json:"service,omitempty"`
}

// CaptureSpec is what the capture sink takes and how much it keeps.
type CaptureSpec struct {
	// namespaceSelector captures only the mail of RelayClients and RelayDomains in
	// the namespaces it selects (a domain's mail from any client). Absent: all mail
	// the relay accepts is captured.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// maxMessages is how many messages each relay pod keeps; the oldest are dropped
	// to make room. Default: 1000.
	// +optional
	// +kubebuilder:default=1000
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	MaxMessages *int32 `json:"maxMessages,omitempty"`

	// maxSize is how many bytes of messages each relay pod keeps, in the relay
	// container's memory (its limit must leave room for it); the oldest are dropped to
	// make room. Default: 32Mi.
	// +optional
	// +kubebuilder:default="32Mi"
	MaxSize *resource.Quantity `json:"maxSize,omitempty"`
}

// Listener is one SMTP port of the relay.
type Listener struct {
	// name of the listener (a DNS label, e.g. smtp, submission, smtps); also the
	// name of its Service and container port.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:Pattern=`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`
	// +kubebuilder:validation:XValidation:rule="self != 'http'",message="the listener name http is taken by the relay's metrics and health port"
	Name string `json:"name"`

	// port is the Service port clients connect to, e.g. 25, 587 or 465.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`

	// containerPort is the port the relay listens on inside the pod, which runs
	// without privileges. Default: port + 10000 when port is below 1024 (25 -> 10025),
	// port otherwise.
	// +optional
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=65535
	ContainerPort *int32 `json:"containerPort,omitempty"`

	// tls is None (plain SMTP), STARTTLS (offered, and required before AUTH) or
	// Implicit (TLS from the first byte). Default: STARTTLS when spec.tls is set, None
	// otherwise.
	// +optional
	TLS TLSMode `json:"tls,omitempty"`

	// requireAuth refuses mail from clients that have not logged in, even from
	// allowedNetworks. Default: false.
	// +optional
	RequireAuth bool `json:"requireAuth,omitempty"`

	// maxConnections is the most concurrent connections this listener takes per relay
	// pod; the next client is answered 421. A change reaches running pods without a
	// restart. Default: no limit of its own, only spec.limits'.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	MaxConnections *int32 `json:"maxConnections,omitempty"`
}

// RelayTLS is the relay's server certificate.
type RelayTLS struct {
	// secretRef names a Secret of type kubernetes.io/tls (keys tls.crt and tls.key)
	// in the relay's namespace, e.g. one cert-manager keeps renewed. A renewed
	// certificate is used without restarting the pods.
	// +required
	SecretRef LocalObjectReference `json:"secretRef"`
}

// RelayAuth lists the users that may log in.
type RelayAuth struct {
	// users that may log in. Their passwords reach the pods only as bcrypt hashes.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:XValidation:rule="self.all(u, self.exists_one(v, v.secretRef.name == u.secretRef.name))",message="each user's secretRef must name a different Secret"
	// +listType=atomic
	Users []RelayUser `json:"users,omitempty"`
}

// RelayUser is one client that may log in.
type RelayUser struct {
	// secretRef names a Secret of type kubernetes.io/basic-auth (keys username and
	// password) in the relay's namespace.
	// +required
	SecretRef LocalObjectReference `json:"secretRef"`

	// allowedSenders restricts the envelope senders this user may use: addresses
	// (noreply@example.com; "*" in the local part matches any run of characters) or
	// domains (example.com). Default: any sender the relay's domains allow.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=320
	// +listType=set
	AllowedSenders []string `json:"allowedSenders,omitempty"`
}

// DomainAttachment says which RelayDomains may attach to a relay.
type DomainAttachment struct {
	// namespaces whose RelayDomains may attach.
	// +optional
	// +kubebuilder:default={from:Same}
	Namespaces DomainNamespaces `json:"namespaces,omitzero"`
}

// DomainNamespaces selects namespaces, as Gateway API's allowedRoutes does.
// +kubebuilder:validation:XValidation:rule="self.from != 'Selector' || has(self.selector)",message="namespaces.selector is required when namespaces.from is Selector"
type DomainNamespaces struct {
	// from is Same (only the relay's namespace; default), All, or Selector
	// (namespaces whose labels match selector).
	// +optional
	// +kubebuilder:default=Same
	// +kubebuilder:validation:Enum=Same;All;Selector
	From string `json:"from,omitempty"`

	// selector picks namespaces by label when from is Selector.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// DeliveryMode says when a client's message is answered 250.
// +kubebuilder:validation:Enum=PassThrough;Queue
type DeliveryMode string

const (
	// DeliveryPassThrough answers 250 after the smarthost's 250; nothing is stored.
	DeliveryPassThrough DeliveryMode = "PassThrough"
	// DeliveryQueue answers 250 once the message is stored durably, then delivers it
	// with retries.
	DeliveryQueue DeliveryMode = "Queue"
)

// DeliverySpec says how messages reach the smarthosts.
// +kubebuilder:validation:XValidation:rule="!has(self.queue) || self.mode == 'Queue'",message="queue settings need mode Queue"
type DeliverySpec struct {
	// mode is PassThrough (default) or Queue.
	// +optional
	// +kubebuilder:default=PassThrough
	Mode DeliveryMode `json:"mode,omitempty"`
	// queue configures Queue mode.
	// +optional
	Queue *QueueSpec `json:"queue,omitempty"`
}

// QueueSpec configures the durable queue of Queue mode. Each relay pod has its own
// queue on its own volume; the limits are per pod.
type QueueSpec struct {
	// storage is each pod's PersistentVolumeClaim, kept when the relay is scaled down
	// or deleted, so queued mail is never thrown away with a pod.
	// +optional
	Storage QueueStorage `json:"storage,omitzero"`
	// maxAge is how long delivery is tried before the sender gets a delivery status
	// notification (RFC 5321 section 4.5.4.1 asks for at least 4-5 days). Default: 120h.
	// +optional
	// +kubebuilder:default="120h0m0s"
	MaxAge *metav1.Duration `json:"maxAge,omitempty"`
	// retry spaces the delivery attempts of a message.
	// +optional
	// +kubebuilder:default={}
	Retry *QueueRetry `json:"retry,omitempty"`
	// maxMessages each pod's queue holds; a full queue answers 452 4.3.1, so clients
	// keep their mail. Default: 100000.
	// +optional
	// +kubebuilder:default=100000
	// +kubebuilder:validation:Minimum=1
	MaxMessages *int32 `json:"maxMessages,omitempty"`
	// maxBytes of message data each pod's queue holds; full as above. Default: 80% of
	// storage.size, leaving the filesystem its own room.
	// +optional
	MaxBytes *resource.Quantity `json:"maxBytes,omitempty"`
}

// QueueStorage is the volume a relay pod keeps its queue on.
type QueueStorage struct {
	// size of each pod's volume. Default: 10Gi.
	// +optional
	// +kubebuilder:default="10Gi"
	Size *resource.Quantity `json:"size,omitempty"`
	// storageClassName of the claims. Default: the cluster's default StorageClass.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
}

// QueueRetry spaces delivery attempts: first, then growing by backoff up to
// maxInterval, each shortened by up to 10% at random so the fleet does not retry in step.
type QueueRetry struct {
	// first is the wait before the second attempt. Default: 1m.
	// +optional
	// +kubebuilder:default="1m0s"
	First *metav1.Duration `json:"first,omitempty"`
	// backoff is the whole factor the wait grows by after each failed attempt. Default: 2.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	Backoff *int32 `json:"backoff,omitempty"`
	// maxInterval caps the wait. Default: 30m (RFC 5321 section 4.5.4.1's interval).
	// +optional
	// +kubebuilder:default="30m0s"
	MaxInterval *metav1.Duration `json:"maxInterval,omitempty"`
}

// RelayLimits bound what a client can make the relay do.
// +kubebuilder:validation:XValidation:rule="!has(self.reservedAuthConnections) || self.reservedAuthConnections < (has(self.maxConnections) ? self.maxConnections : 1000)",message="reservedAuthConnections must be below maxConnections (default 1000)"
type RelayLimits struct {
	// maxMessageBytes is the largest message accepted (advertised with SIZE).
	// Default: 26214400 (25 MiB).
	// +optional
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=1073741824
	// +kubebuilder:default=26214400
	MaxMessageBytes *int64 `json:"maxMessageBytes,omitempty"`
	// maxRecipients per message. Default: 100.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +kubebuilder:default=100
	MaxRecipients *int32 `json:"maxRecipients,omitempty"`
	// maxConnections per relay pod; the next client is answered 421. Default: 1000.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +kubebuilder:default=1000
	MaxConnections *int32 `json:"maxConnections,omitempty"`
	// maxConnectionsPerClient is the most concurrent connections from one client IP
	// address per relay pod, over all listeners; the next one is answered 421 4.7.0.
	// Default: 100.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +kubebuilder:default=100
	MaxConnectionsPerClient *int32 `json:"maxConnectionsPerClient,omitempty"`
	// reservedAuthConnections of maxConnections only listeners with requireAuth may
	// use, so a flood of connections to an open listener (port 25) cannot shut
	// authenticated clients out. Default: maxConnections/10, at least 1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=99999
	ReservedAuthConnections *int32 `json:"reservedAuthConnections,omitempty"`
	// auth bounds password guessing across connections.
	// +optional
	// +kubebuilder:default={}
	Auth *AuthLimits `json:"auth,omitempty"`
	// maxErrors a session may collect before the relay closes it. Default: 10.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:default=10
	MaxErrors *int32 `json:"maxErrors,omitempty"`
	// commandTimeout is how long the relay waits for a client's next command.
	// Default: 5m.
	// +optional
	// +kubebuilder:default="5m0s"
	CommandTimeout *metav1.Duration `json:"commandTimeout,omitempty"`
	// dataTimeout is how long the relay waits for more message data. Default: 3m.
	// +optional
	// +kubebuilder:default="3m0s"
	DataTimeout *metav1.Duration `json:"dataTimeout,omitempty"`
}

// AuthLimits bound password guessing. Failed AUTH attempts are counted per client IP
// address and per username in each relay pod, across connections; each failure is
// answered after a delay that doubles with every failure of the address, and a spent
// budget answers AUTH with 421 4.7.0 and closes the connection.
// +kubebuilder:validation:XValidation:rule="!has(self.userLockout) || !has(self.failureWindow) || duration(self.userLockout) <= duration(self.failureWindow)",message="userLockout must not be longer than failureWindow"
type AuthLimits struct {
	// maxFailuresPerClient is how many failed attempts one client address may make
	// within failureWindow; then its AUTH is refused, even with the right password,
	// until failureWindow has passed since its last failure. Default: 10.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +kubebuilder:default=10
	MaxFailuresPerClient *int32 `json:"maxFailuresPerClient,omitempty"`
	// maxFailuresPerUser is how many failed attempts one username may collect from any
	// address within failureWindow; then the username is refused for userLockout,
	// except from addresses that authenticated as it in the last 24 hours. Default: 30.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +kubebuilder:default=30
	MaxFailuresPerUser *int32 `json:"maxFailuresPerUser,omitempty"`
	// failureWindow is how long failures are remembered after the last one.
	// Default: 15m.
	// +optional
	// +kubebuilder:default="15m0s"
	FailureWindow *metav1.Duration `json:"failureWindow,omitempty"`
	// userLockout is how long a username whose budget is spent stays refused; short,
	// so an attacker cannot keep a real client out for long. Default: 1m.
	// +optional
	// +kubebuilder:default="1m0s"
	UserLockout *metav1.Duration `json:"userLockout,omitempty"`
	// failureDelay is the delay before the reply to a failed AUTH; it doubles with each
	// further failure of the same address, up to 30s. At most 30s. Default: 1s.
	// +optional
	// +kubebuilder:default="1s"
	FailureDelay *metav1.Duration `json:"failureDelay,omitempty"`
}

// PodDisruptionBudgetSpec sets the relay's PodDisruptionBudget.
// +kubebuilder:validation:XValidation:rule="!(has(self.minAvailable) && has(self.maxUnavailable))",message="set minAvailable or maxUnavailable, not both"
type PodDisruptionBudgetSpec struct {
	// enabled creates the PodDisruptionBudget. Default: true when replicas > 1.
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
	// minAvailable pods (a number or a percentage).
	// +optional
	MinAvailable *intstr.IntOrString `json:"minAvailable,omitempty"`
	// maxUnavailable pods (a number or a percentage). Default: 1.
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
}

// ServiceSpec shapes the relay's Service.
type ServiceSpec struct {
	// type of the Service: ClusterIP (default), NodePort or LoadBalancer.
	// +optional
	// +kubebuilder:default=ClusterIP
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	Type corev1.ServiceType `json:"type,omitempty"`
	// annotations added to the Service (e.g. for a cloud load balancer).
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
	// externalTrafficPolicy of a NodePort or LoadBalancer Service; Local keeps the
	// client's address, which allowedNetworks needs.
	// +optional
	// +kubebuilder:validation:Enum=Cluster;Local
	ExternalTrafficPolicy corev1.ServiceExternalTrafficPolicy `json:"externalTrafficPolicy,omitempty"`
}

// SmtpRelayStatus is what the operator last saw of a relay fleet.
type SmtpRelayStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled (kstatus) and ConfigApplied.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// replicas is the number of relay pods.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// readyReplicas is the number of relay pods ready to take mail.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// selector is the label selector of the relay pods (for the scale subresource).
	// +optional
	Selector string `json:"selector,omitempty"`

	// configHash identifies the configuration the operator last rendered; each pod
	// reports the hash it runs.
	// +optional
	ConfigHash string `json:"configHash,omitempty"`
	// configAppliedReplicas is the number of ready pods running configHash.
	// +optional
	ConfigAppliedReplicas int32 `json:"configAppliedReplicas,omitempty"`
	// attachedDomains is the number of RelayDomains attached to this relay.
	// +optional
	AttachedDomains int32 `json:"attachedDomains,omitempty"`
	// queuedMessages is the number of messages in the ready pods' queues (0 in
	// PassThrough mode, which stores nothing).
	// +optional
	QueuedMessages *int64 `json:"queuedMessages,omitempty"`
}

// SmtpRelay is a fleet of SMTP relay pods behind one Service.
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 53 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="an SmtpRelay name must be a DNS label of at most 53 characters starting with a letter: it names the relay's Service and, with a suffix, its other objects"
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=smtprelay;sr,categories=kuberelay
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Domains",type=integer,JSONPath=`.status.attachedDomains`
// +kubebuilder:printcolumn:name="Config",type=string,JSONPath=`.status.conditions[?(@.type=="ConfigApplied")].status`
// +kubebuilder:printcolumn:name="Queued",type=integer,JSONPath=`.status.queuedMessages`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SmtpRelay struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec declares the fleet. Every field has a default.
	// +optional
	// +kubebuilder:default={}
	Spec SmtpRelaySpec `json:"spec,omitzero"`

	// status is what the operator last saw.
	// +optional
	Status SmtpRelayStatus `json:"status,omitzero"`
}

// SmtpRelayList is a list of SmtpRelays.
// +kubebuilder:object:root=true
type SmtpRelayList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SmtpRelay `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SmtpRelay{}, &SmtpRelayList{})
}
