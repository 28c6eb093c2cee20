// Package config defines the relay's configuration format: the relay.yaml file the
// relay reads from its config directory and the secret files it references in its
// secrets directory. It is the only definition of that format; the operator imports it
// to render configuration, and the relay uses it to parse and validate what it loads.
//
// A configuration is versioned by apiVersion and kind. Every path to a secret file is
// relative to the secrets directory, so relay.yaml itself never holds a secret value.
package config

import (
	"encoding/json"
	"fmt"
	"time"
)

const (
	// APIVersion is the only configuration version this package understands.
	APIVersion = "relay.kuberelay.io/v1alpha1"
	// Kind is the kind of a relay configuration document.
	Kind = "RelayConfig"
	// FileName is the name of the configuration file in the config directory.
	FileName = "relay.yaml"
)

// Config is the whole configuration of one relay process.
type Config struct {
	// apiVersion must be "relay.kuberelay.io/v1alpha1".
	APIVersion string `json:"apiVersion"`
	// kind must be "RelayConfig".
	Kind string `json:"kind"`

	// hostname is the name the relay gives in its greeting, in EHLO to upstreams and in
	// the Received header it adds. Default: the host name of the machine (the pod name).
	Hostname string `json:"hostname,omitempty"`

	// listeners are the addresses the relay accepts SMTP on. At least one is required;
	// names and addresses must be unique. Listeners are bound at start-up: a change to
	// them is reported by the reload and takes effect at the next restart.
	Listeners []Listener `json:"listeners"`

	// tls is the certificate served on STARTTLS and Implicit listeners. Required when a
	// listener uses TLS. A renewed certificate is picked up by the next handshake.
	TLS *ServerTLS `json:"tls,omitempty"`

	// allowedNetworks are the client networks (CIDRs, or single addresses) that may relay
	// without authenticating. Empty means no network may: the relay is closed by default.
	// 0.0.0.0/0 and ::/0 are refused, as they would make an open relay.
	AllowedNetworks []string `json:"allowedNetworks,omitempty"`

	// users are the clients that may relay after AUTH PLAIN or LOGIN over TLS.
	Users []User `json:"users,omitempty"`

	// nullSender says what happens to MAIL FROM:<> (bounces and auto-replies), which has
	// no domain to check: "Reject" (default) refuses it with 550; "Allow" relays it,
	// for permitted clients only, through defaultUpstream.
	NullSender NullSenderPolicy `json:"nullSender,omitempty"`

	// domains are the sender domains the relay relays for. The envelope sender's domain
	// must be one of them. Empty means no sender is accepted.
	Domains []Domain `json:"domains,omitempty"`

	// defaultUpstream names the upstream for domains that name none (and for the null
	// sender). Required when any domain names no upstream.
	DefaultUpstream string `json:"defaultUpstream,omitempty"`

	// upstreams are the smarthosts mail is delivered through.
	Upstreams []Upstream `json:"upstreams,omitempty"`

	// limits bound what a client can make the relay do.
	Limits Limits `json:"limits,omitzero"`

	// delivery says when a client's message is answered 250: after the upstream took
	// it (PassThrough, the default) or once it is stored in the relay's queue (Queue).
	Delivery Delivery `json:"delivery,omitzero"`

	// capture routes mail to the relay's capture sink instead of its upstreams: all
	// of it, or that of the users and domains marked capture. The sink keeps messages
	// in memory within its cap, readable on the HTTP port under /capture/. Optional.
	Capture *Capture `json:"capture,omitempty"`
}

// Capture is the capture sink's scope and cap.
type Capture struct {
	// all captures every message the relay accepts. Otherwise only the mail of users
	// and sender domains marked capture is captured.
	All bool `json:"all,omitempty"`
	// maxMessages and maxBytes cap what the sink keeps; the oldest messages are
	// dropped to make room. Default 1000 messages, 32 MiB.
	MaxMessages int   `json:"maxMessages,omitempty"`
	MaxBytes    int64 `json:"maxBytes,omitempty"`
}

// DeliveryMode is when a message is answered 250.
type DeliveryMode string

const (
	// PassThrough relays each message while its client waits: 250 only after the
	// upstream's 250; nothing is stored.
	PassThrough DeliveryMode = "PassThrough"
	// Queue stores each message durably, answers 250, then delivers it with retries.
	Queue DeliveryMode = "Queue"
)

// Delivery configures how messages reach the upstreams.
type Delivery struct {
	// mode is PassThrough (default) or Queue.
	Mode DeliveryMode `json:"mode,omitempty"`
	// queue configures Queue mode.
	Queue QueueConfig `json:"queue,omitzero"`
}

// QueueConfig configures the durable queue of Queue mode.
type QueueConfig struct {
	// dir is the spool directory, on storage that outlives the process (a
	// PersistentVolume in a pod). Default: /var/spool/kuberelay.
	Dir string `json:"dir,omitempty"`
	// maxAge is how long delivery is tried before the message is returned to its sender
	// (RFC 5321 section 4.5.4.1 asks for at least 4-5 days). Default: 120h.
	MaxAge Duration `json:"maxAge,omitzero"`
	// retry spaces the delivery attempts of a message.
	Retry RetryConfig `json:"retry,omitzero"`
	// maxMessages and maxBytes bound the queue; a full queue answers new messages with
	// 452 4.3.1, so nothing is dropped. Defaults: 100000 messages, 10 GiB.
	MaxMessages int   `json:"maxMessages,omitempty"`
	MaxBytes    int64 `json:"maxBytes,omitempty"`
	// concurrency is how many messages are delivered at once. Default: 20.
	Concurrency int `json:"concurrency,omitempty"`
}

// RetryConfig spaces delivery attempts: first, then growing by backoff up to
// maxInterval, each with up to 10% of random jitter so a fleet does not retry in step.
// RFC 5321 section 4.5.4.1 asks for retries at least 30 minutes apart in general; a
// relay whose only next hop is its smarthost retries sooner at first, since it knows
// the reason is that smarthost.
type RetryConfig struct {
	// first is the wait before the second attempt. Default: 1m.
	First Duration `json:"first,omitzero"`
	// backoff multiplies the wait after each failed attempt. Default: 2.
	Backoff float64 `json:"backoff,omitempty"`
	// maxInterval caps the wait. Default: 30m.
	MaxInterval Duration `json:"maxInterval,omitzero"`
}

// TLSMode says how TLS is used on a connection.
type TLSMode string

const (
	// TLSNone is plain SMTP. On a listener it never offers STARTTLS; to an upstream it
	// sends everything, credentials included, in clear text.
	TLSNone TLSMode = "None"
	// TLSStartTLS upgrades a plain connection with the STARTTLS command (RFC 3207).
	// Towards an upstream it is mandatory: the relay never falls back to plain text.
	TLSStartTLS TLSMode = "STARTTLS"
	// TLSImplicit starts TLS before any SMTP is spoken (port 465 style, RFC 8314).
	TLSImplicit TLSMode = "Implicit"
)

// Listener is one address the relay accepts SMTP connections on.
type Listener struct {
	// name identifies the listener in logs and metrics, e.g. "smtp" or "submission".
	// Required; lowercase letters, digits and dashes.
	Name string `json:"name"`
	// address is host:port to listen on, e.g. ":2525" or "127.0.0.1:2587". Required.
	Address string `json:"address"`
	// tls is "None", "STARTTLS" (default) or "Implicit". STARTTLS and Implicit need
	// the top-level tls certificate.
	TLS TLSMode `json:"tls,omitempty"`
	// requireAuth refuses mail from clients that have not authenticated, even from an
	// allowed network. Requires a TLS mode other than None, as AUTH is only offered
	// over TLS.
	RequireAuth bool `json:"requireAuth,omitempty"`
	// maxConnections is the most concurrent connections this listener takes; the next
	// one is answered 421 and closed. Default: no limit of its own, only limits'. It
	// changes without a restart.
	MaxConnections int `json:"maxConnections,omitempty"`
}

// ServerTLS is the certificate the relay presents to its clients.
type ServerTLS struct {
	// certFile is the PEM certificate chain, relative to the secrets directory. Required.
	CertFile string `json:"certFile"`
	// keyFile is the PEM private key, relative to the secrets directory. Required.
	KeyFile string `json:"keyFile"`
}

// User is a client that may authenticate.
type User struct {
	// username is the AUTH identity. Required and unique.
	Username string `json:"username"`
	// passwordHashFile holds the bcrypt hash of the user's password, relative to the
	// secrets directory. Required.
	PasswordHashFile string `json:"passwordHashFile"`
	// previousPasswordHashFile holds the bcrypt hash of a password that also works,
	// for a while after a rotation, relative to the secrets directory. Optional.
	PreviousPasswordHashFile string `json:"previousPasswordHashFile,omitempty"`
	// allowedSenders restricts the envelope senders this user may use. Each entry is an
	// address ("noreply@example.com", where "*" in the local part matches any run of
	// characters) or a domain ("example.com", any address at it). Empty means any
	// sender the relay domains allow.
	AllowedSenders []string `json:"allowedSenders,omitempty"`
	// rateLimits bound what the user sends through this relay process. Optional.
	RateLimits *RateLimits `json:"rateLimits,omitempty"`
	// capture sends the user's mail to the capture sink, never to an upstream.
	Capture bool `json:"capture,omitempty"`
}

// RateLimits bound the messages and recipients sent in each window aligned to the
// clock (the minute, the hour, the UTC day), and the concurrent sessions, of one user,
// sender domain or upstream, in one relay process; 0 or absent is no limit. A message
// over a limit is answered 451 4.7.1 at MAIL, a recipient 452 4.5.3 at RCPT, a
// session 454 4.7.0 at AUTH: the client tries again later. A fleet's operator gives
// each pod its share of a fleet-wide budget.
type RateLimits struct {
	MessagesPerMinute   int64 `json:"messagesPerMinute,omitempty"`
	MessagesPerHour     int64 `json:"messagesPerHour,omitempty"`
	MessagesPerDay      int64 `json:"messagesPerDay,omitempty"`
	RecipientsPerMinute int64 `json:"recipientsPerMinute,omitempty"`
	RecipientsPerHour   int64 `json:"recipientsPerHour,omitempty"`
	RecipientsPerDay    int64 `json:"recipientsPerDay,omitempty"`
	// maxSessions bounds a user's concurrent authenticated sessions (users only).
	MaxSessions int `json:"maxSessions,omitempty"`
}

// NullSenderPolicy is what the relay does with the null reverse-path.
type NullSenderPolicy string

const (
	// NullSenderReject refuses MAIL FROM:<>.
	NullSenderReject NullSenderPolicy = "Reject"
	// NullSenderAllow relays MAIL FROM:<> from permitted clients via the default upstream.
	NullSenderAllow NullSenderPolicy = "Allow"
)

// Domain is a sender domain the relay relays for.
type Domain struct {
	// domain is the domain of the envelope sender, e.g. "example.com". Required, unique,
	// compared case-insensitively. Subdomains are separate domains.
	Domain string `json:"domain"`
	// upstream names the upstream mail from this domain is delivered through. Default:
	// defaultUpstream.
	Upstream string `json:"upstream,omitempty"`
	// allowedSenders are the local parts that may send from this domain ("noreply",
	// "alerts-*"; "*" matches any run of characters, comparison ignores case). Empty
	// means any local part.
	AllowedSenders []string `json:"allowedSenders,omitempty"`
	// dkim signs mail from this domain. Optional.
	DKIM *DKIM `json:"dkim,omitempty"`
	// rateLimits bound the mail sent from this domain through this relay process.
	// Optional.
	RateLimits *RateLimits `json:"rateLimits,omitempty"`
	// capture sends mail from this domain to the capture sink, never to an upstream.
	Capture bool `json:"capture,omitempty"`
}

// DKIM is a DKIM signing key (RFC 6376).
type DKIM struct {
	// selector is the DNS selector of the key: the public key is published at
	// <selector>._domainkey.<domain>. Required.
	Selector string `json:"selector"`
	// privateKeyFile is a PEM private key (RSA of at least 1024 bits, or Ed25519, in
	// PKCS#1 or PKCS#8), relative to the secrets directory. Required.
	PrivateKeyFile string `json:"privateKeyFile"`
	// headers are the header fields to sign. Default: From, To, Cc, Subject, Date,
	// Message-ID, Reply-To, In-Reply-To, References, MIME-Version, Content-Type,
	// Content-Transfer-Encoding. "From" is always signed.
	Headers []string `json:"headers,omitempty"`
}

// Upstream is a smarthost the relay delivers through.
type Upstream struct {
	// name identifies the upstream in domains, logs and metrics. Required and unique.
	Name string `json:"name"`
	// endpoints are tried in order: the next one only when the previous one cannot take
	// the message (connection, TLS or AUTH failure, a 421, or a 4xx before DATA). Mail
	// is never copied to more than one. At least one is required.
	Endpoints []Endpoint `json:"endpoints"`
	// tls says how the connection is secured. Default mode: STARTTLS.
	TLS UpstreamTLS `json:"tls,omitzero"`
	// auth authenticates the relay to the upstream. Optional; needs a TLS mode other
	// than None.
	Auth *UpstreamAuth `json:"auth,omitempty"`
	// maxConnections bounds the connections this relay process keeps to the upstream
	// (idle and in use). When all are busy a message waits up to acquireTimeout, then is
	// answered with a 4xx. Default 10.
	MaxConnections int `json:"maxConnections,omitempty"`
	// maxMessagesPerConnection closes a pooled connection after this many messages;
	// 0 means no bound. Default 100.
	MaxMessagesPerConnection int `json:"maxMessagesPerConnection,omitempty"`
	// timeouts bound each step of talking to the upstream.
	Timeouts UpstreamTimeouts `json:"timeouts,omitzero"`
	// rateLimits bound the mail this relay process sends through the upstream (a
	// provider's sending quota). Optional.
	RateLimits *RateLimits `json:"rateLimits,omitempty"`
}

// Endpoint is one address of an upstream.
type Endpoint struct {
	// host is a DNS name or IP address. Required.
	Host string `json:"host"`
	// port is the TCP port, 1-65535. Default: 465 for Implicit TLS, 587 otherwise.
	Port int `json:"port,omitempty"`
}

// UpstreamTLS says how the relay secures its connection to an upstream.
type UpstreamTLS struct {
	// mode is "STARTTLS" (default), "Implicit" or "None".
	Mode TLSMode `json:"mode,omitempty"`
	// serverName is the name the upstream's certificate must be valid for. Default: the
	// endpoint's host.
	ServerName string `json:"serverName,omitempty"`
	// caFile is a PEM bundle of CAs to verify the upstream with, relative to the secrets
	// directory. Default: the system's roots.
	CAFile string `json:"caFile,omitempty"`
	// insecureSkipVerify accepts any certificate. For tests only: it allows a
	// man in the middle to read the mail and the credentials.
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`
}

// UpstreamAuth is how the relay authenticates to an upstream.
type UpstreamAuth struct {
	// mechanism is "PLAIN" (default), "LOGIN", or with oauth2 "XOAUTH2" (default:
	// Microsoft's and Google's) or "OAUTHBEARER" (RFC 7628).
	Mechanism string `json:"mechanism,omitempty"`
	// usernameFile holds the user name (with oauth2, the mailbox the token acts
	// for), relative to the secrets directory. Required.
	UsernameFile string `json:"usernameFile"`
	// passwordFile holds the password, relative to the secrets directory. Required
	// unless oauth2 is set.
	PasswordFile string `json:"passwordFile,omitempty"`
	// oauth2 obtains access tokens with the client credentials grant (RFC 6749
	// section 4.4) and authenticates with them instead of a password.
	OAuth2 *OAuth2 `json:"oauth2,omitempty"`
}

// OAuth2 is an OAuth 2.0 client that obtains access tokens for an upstream.
type OAuth2 struct {
	// tokenURL is the token endpoint, e.g.
	// https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token. HTTPS, but for
	// loopback addresses. Required but with serviceAccountFile.
	TokenURL string `json:"tokenURL,omitempty"`
	// clientIDFile holds the client's id, relative to the secrets directory. Required
	// but with serviceAccountFile.
	ClientIDFile string `json:"clientIDFile,omitempty"`
	// serviceAccountFile holds a Google service account's JSON key: tokens are then
	// obtained with a JWT signed by its key (RFC 7523 section 2.1, Google's
	// domain-wide delegation), for the mailbox in usernameFile, from the key's
	// token_uri unless tokenURL is set. Instead of clientIDFile and a secret or
	// certificate.
	ServiceAccountFile string `json:"serviceAccountFile,omitempty"`
	// clientSecretFile holds the client's secret; or clientCertificateFile and
	// clientKeyFile hold a certificate (PEM) and its RSA key, with which the relay
	// signs a client assertion (RFC 7523) instead of sending a secret, as Microsoft
	// Entra ID allows. One of the two, relative to the secrets directory.
	ClientSecretFile      string `json:"clientSecretFile,omitempty"`
	ClientCertificateFile string `json:"clientCertificateFile,omitempty"`
	ClientKeyFile         string `json:"clientKeyFile,omitempty"`
	// scopes are asked for, e.g. https://outlook.office365.com/.default.
	Scopes []string `json:"scopes,omitempty"`
}

// UpstreamTimeouts bound the relay's conversation with an upstream.
type UpstreamTimeouts struct {
	// connect bounds the TCP connect, the TLS handshake and the greeting. Default 10s.
	Connect Duration `json:"connect,omitzero"`
	// command bounds the reply to each command. Default 60s.
	Command Duration `json:"command,omitzero"`
	// data bounds sending the message and the reply to its final dot. Default 5m.
	Data Duration `json:"data,omitzero"`
	// idle is how long an unused pooled connection is kept open. Default 30s.
	Idle Duration `json:"idle,omitzero"`
	// acquire is how long a message waits for a free connection when maxConnections
	// are in use before it is answered with a 4xx. Default 5s.
	Acquire Duration `json:"acquire,omitzero"`
}

// Limits bound what a client can make the relay do.
type Limits struct {
	// maxMessageBytes is the largest message accepted, advertised in EHLO SIZE.
	// Default 26214400 (25 MiB).
	MaxMessageBytes int64 `json:"maxMessageBytes,omitempty"`
	// maxRecipients is the most RCPT TO per message. Default 100.
	MaxRecipients int `json:"maxRecipients,omitempty"`
	// maxLineLength is the longest command or message line, CRLF included. A longer
	// command closes the connection. Default 2000 (RFC 5321 section 4.5.3.1.6 sets a
	// floor of 1000).
	MaxLineLength int `json:"maxLineLength,omitempty"`
	// maxConnections is the most concurrent client connections per relay process; the
	// next one is answered 421 and closed. Default 1000.
	MaxConnections int `json:"maxConnections,omitempty"`
	// maxConnectionsPerClient is the most concurrent connections from one client IP
	// address over all listeners; the next one is answered 421 4.7.0 and closed.
	// Default 100.
	MaxConnectionsPerClient int `json:"maxConnectionsPerClient,omitempty"`
	// reservedAuthConnections of maxConnections only listeners with requireAuth may
	// use, so that a flood of connections to an open listener (port 25) cannot shut
	// authenticated clients out. Default maxConnections/10, at least 1.
	ReservedAuthConnections int `json:"reservedAuthConnections,omitempty"`
	// auth bounds password guessing across connections.
	Auth AuthLimits `json:"auth,omitzero"`
	// maxErrors is how many rejected commands a session may collect before the relay
	// answers 421 and closes it. Default 10.
	MaxErrors int `json:"maxErrors,omitempty"`
	// commandTimeout is how long the relay waits for the client's next command; then it
	// answers 421 and closes the connection. Default 5m (RFC 5321 section 4.5.3.2.7).
	CommandTimeout Duration `json:"commandTimeout,omitzero"`
	// dataTimeout is how long the relay waits for more message data before it closes
	// the connection. Default 3m (RFC 5321 section 4.5.3.2.5).
	DataTimeout Duration `json:"dataTimeout,omitzero"`
}

// AuthLimits bound password guessing: failures are counted per client IP address and
// per username across connections, each failed AUTH is answered after a delay that
// grows, and a spent budget makes AUTH answer 421 4.7.0 and close the connection.
type AuthLimits struct {
	// maxFailuresPerClient is how many failed AUTH attempts one client IP address may
	// make within failureWindow; after that its AUTH commands are refused until
	// failureWindow has passed since its last failure. Default 10.
	MaxFailuresPerClient int `json:"maxFailuresPerClient,omitempty"`
	// maxFailuresPerUser is how many failed attempts one username may collect, from any
	// address, within failureWindow; after that the username is refused for
	// userLockout, except from addresses that authenticated as it within the last 24
	// hours. Default 30.
	MaxFailuresPerUser int `json:"maxFailuresPerUser,omitempty"`
	// failureWindow is how long failures are remembered after the last one. Default 15m.
	FailureWindow Duration `json:"failureWindow,omitzero"`
	// userLockout is how long a username whose budget is spent stays refused. Kept short
	// so that an attacker cannot keep a real user out for long. Default 1m.
	UserLockout Duration `json:"userLockout,omitzero"`
	// failureDelay is the delay before the reply to a failed AUTH; it doubles with each
	// further failure of the same client address, up to 30s. Default 1s.
	FailureDelay Duration `json:"failureDelay,omitzero"`
}

// Duration is a time.Duration written as a Go duration string ("30s", "5m").
type Duration struct {
	time.Duration
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(d.Duration.String())
}

// UnmarshalJSON reads a duration string such as "90s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration must be a string such as \"30s\" or \"5m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: use a number with a unit, such as \"30s\" or \"5m\"", s)
	}
	d.Duration = v
	return nil
}
