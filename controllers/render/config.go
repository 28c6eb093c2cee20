package render

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing/fstest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// Inputs is everything the rendering of one relay's configuration depends on, fetched
// by the reconciler.
type Inputs struct {
	// Relay is the SmtpRelay to render.
	Relay *relayv1alpha1.SmtpRelay
	// Domains are the RelayDomains attached to the relay (the caller decides
	// attachment), in any order.
	Domains []relayv1alpha1.RelayDomain
	// Smarthosts holds every Smarthost referenced: the relay's spec.smarthostRef in
	// the relay's namespace and each domain's in the domain's namespace. A missing
	// entry means the Smarthost does not exist.
	Smarthosts map[types.NamespacedName]*relayv1alpha1.Smarthost
	// Secrets holds every Secret referenced by the relay, the domains and the
	// Smarthosts. A missing entry means the Secret does not exist.
	Secrets map[types.NamespacedName]*corev1.Secret
	// Previous is the data of the operator-owned Secret as it is now (nil if it does
	// not exist yet). Client password hashes that still match are taken from it, so a
	// restarted operator renders the same Secret.
	Previous map[string][]byte
	// Hasher hashes client passwords. Required when the relay has users.
	Hasher PasswordHasher
	// Clients are the RelayClients attached to the relay (the caller decides
	// attachment), in any order; their Secrets are in Secrets.
	Clients []relayv1alpha1.RelayClient
	// Now decides whether a rotation's previous password still works.
	Now time.Time
	// CaptureNamespaces are the namespaces of attached domains and clients that the
	// relay's spec.capture.namespaceSelector selects.
	CaptureNamespaces map[string]bool
	// FleetSize is how many pods share the fleet's rate-limit budgets: the larger of
	// the replicas wanted and the pods running (0 counts as 1).
	FleetSize int32
}

// Result is a rendered relay configuration.
type Result struct {
	// Config is the configuration as rendered, before the relay's defaults.
	Config *config.Config
	// ConfigYAML is relay.yaml, the content of the ConfigMap.
	ConfigYAML []byte
	// SecretData are the files relay.yaml references, the content of the
	// operator-owned Secret. Keys are valid Secret keys.
	SecretData map[string][]byte
	// Hash identifies ConfigYAML and SecretData (config.Hash); each relay pod reports
	// the hash of the configuration it runs.
	Hash string
	// DomainResults says, for every input domain, whether it is in the configuration
	// and if not, why.
	DomainResults map[types.NamespacedName]DomainResult
	// ClientResults says, for every input client, whether it can log in and if not,
	// why.
	ClientResults map[types.NamespacedName]ClientResult
	// NextChange is when the rendering changes by itself (a previous password
	// expires); zero if never.
	NextChange time.Time
	// Upstreams maps each upstream's name in relay.yaml to its Smarthost.
	Upstreams map[string]types.NamespacedName
}

// DomainResult is what became of one RelayDomain.
type DomainResult struct {
	// Included is true when the domain is in the configuration.
	Included bool
	// Reason (a v1alpha1 Reason constant) and Message say why a domain was left out.
	Reason  string
	Message string
	// DKIMRecord is the DNS record publishing the domain's DKIM key, whenever the key
	// could be read (even if the domain was left out for another reason).
	DKIMRecord *relayv1alpha1.DKIMRecord
	// DKIM is the state of its keys, for status.dkim.
	DKIM *relayv1alpha1.DKIMStatus
}

// Error is a problem with the relay itself that the user must fix; nothing is
// rendered until then. Reason is a v1alpha1 Reason constant; Message names the object
// and key to fix and never contains a secret value. Config returns other errors only
// for failures that are not the user's (the Hasher failing), which may be retried.
type Error struct {
	Reason  string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Keys and defaults of referenced Secrets, as documented on the API types.
const (
	basicAuthUsername = corev1.BasicAuthUsernameKey
	basicAuthPassword = corev1.BasicAuthPasswordKey
	defaultCAKey      = "ca.crt"
	defaultDKIMKey    = "dkim.key"
	// Keys of a Smarthost's OAuth 2.0 client Secret.
	oauthClientIDKey       = "client-id"
	oauthClientSecretKey   = "client-secret"
	oauthServiceAccountKey = "service-account.json"
	// maxPasswordBytes is bcrypt's limit: it ignores (and x/crypto refuses) more.
	maxPasswordBytes = 72
)

// Config renders the relay configuration of in.Relay. It returns an *Error when the
// relay itself cannot be rendered; problems of single domains are reported in
// Result.DomainResults instead.
func Config(in Inputs) (*Result, error) {
	if in.Relay == nil {
		return nil, errors.New("render: Inputs.Relay is nil")
	}
	r := &renderer{
		in:         in,
		relay:      in.Relay,
		relayKey:   types.NamespacedName{Namespace: in.Relay.Namespace, Name: in.Relay.Name},
		files:      map[string][]byte{},
		smarthosts: map[types.NamespacedName]*smarthostSource{},
		usernames:  map[string]string{},
	}
	return r.render()
}

// CheckSmarthost says whether a Smarthost can be used: the Secrets it names (from
// secrets, by namespace/name) exist and hold what they must, and the relay accepts its
// settings. It returns nil when it can, and never puts a secret value in the Error.
func CheckSmarthost(sh *relayv1alpha1.Smarthost, secrets map[types.NamespacedName]*corev1.Secret) *Error {
	r := &renderer{in: Inputs{Secrets: secrets}}
	return r.resolveSmarthost(&smarthostSource{key: types.NamespacedName{Namespace: sh.Namespace, Name: sh.Name}, spec: &sh.Spec})
}

type renderer struct {
	in       Inputs
	relay    *relayv1alpha1.SmtpRelay
	relayKey types.NamespacedName
	// files are the operator-owned Secret's files, by name.
	files map[string][]byte
	// smarthosts caches resolved Smarthosts, by namespace/name.
	smarthosts map[types.NamespacedName]*smarthostSource
	// usernames are the user names taken, with what took each.
	usernames map[string]string
	// nextChange: see Result.NextChange.
	nextChange time.Time
}

// smarthostSource is a Smarthost with the contents of the Secrets it references.
type smarthostSource struct {
	key      types.NamespacedName
	spec     *relayv1alpha1.SmarthostSpec
	username []byte
	password []byte
	// clientID and clientSecret are an OAuth 2.0 client's (spec.auth.oauth2).
	clientID     []byte
	clientSecret []byte
	// clientCert and clientKey sign client assertions instead of a secret.
	clientCert []byte
	clientKey  []byte
	// serviceAccount is a Google service account's JSON key.
	serviceAccount []byte
	ca             []byte
	err            *Error
}

// pendingDomain is a domain that will be rendered once upstream names are known.
type pendingDomain struct {
	cfg       config.Domain
	smarthost *types.NamespacedName // nil: the relay's default
}

func (r *renderer) render() (*Result, error) {
	if errs := validation.IsDNS1035Label(r.relay.Name); len(errs) > 0 {
		return nil, &Error{Reason: relayv1alpha1.ReasonRenderFailed, Message: fmt.Sprintf(
			"SmtpRelay name %q cannot name its Service and labels (%s): recreate the relay with a name of at most 63 lowercase letters, digits and dashes that starts with a letter",
			r.relay.Name, strings.Join(errs, "; "))}
	}
	spec := &r.relay.Spec
	cfg := &config.Config{APIVersion: config.APIVersion, Kind: config.Kind}

	listeners := Listeners(r.relay)
	if err := checkListeners(listeners); err != nil {
		return nil, err
	}
	for _, l := range listeners {
		cfg.Listeners = append(cfg.Listeners, configListener(l))
	}

	if spec.TLS != nil {
		if err := r.serverTLS(cfg); err != nil {
			return nil, err
		}
	}
	cfg.AllowedNetworks = sortedSet(spec.AllowedNetworks)
	if err := r.users(cfg); err != nil {
		return nil, err
	}
	cfg.NullSender = config.NullSenderPolicy(spec.NullSender)
	cfg.Limits = limits(spec.Limits)
	cfg.Delivery = delivery(r.relay)
	if err := r.capture(cfg); err != nil {
		return nil, err
	}

	var defaultSmarthost *types.NamespacedName
	if ref := spec.SmarthostRef; ref != nil {
		key := types.NamespacedName{Namespace: r.relay.Namespace, Name: ref.Name}
		src, err := r.smarthost(key, "spec.smarthostRef")
		if err != nil {
			err.Message = fmt.Sprintf("SmtpRelay %s: %s", r.relayKey, err.Message)
			return nil, err
		}
		defaultSmarthost = &src.key
	} else if cfg.NullSender == config.NullSenderAllow {
		return nil, &Error{Reason: relayv1alpha1.ReasonNoSmarthost, Message: fmt.Sprintf(
			"SmtpRelay %s: spec.nullSender is Allow, which delivers bounces through spec.smarthostRef, but no smarthostRef is set: set one or set nullSender to Reject",
			r.relayKey)}
	}

	results, pending := r.domains(defaultSmarthost != nil)
	clientResults := r.clients(cfg, results)

	// Upstreams: the relay's default and those of the included domains.
	used := map[types.NamespacedName]bool{}
	if defaultSmarthost != nil {
		used[*defaultSmarthost] = true
	}
	for _, p := range pending {
		if p.smarthost != nil {
			used[*p.smarthost] = true
		}
	}
	keys := make([]types.NamespacedName, 0, len(used))
	for k := range used {
		keys = append(keys, k)
	}
	names := upstreamNames(r.relay.Namespace, keys)
	for _, k := range keys {
		cfg.Upstreams = append(cfg.Upstreams, r.upstream(names[k], r.smarthosts[k]))
	}
	sort.Slice(cfg.Upstreams, func(i, j int) bool { return cfg.Upstreams[i].Name < cfg.Upstreams[j].Name })
	if defaultSmarthost != nil {
		cfg.DefaultUpstream = names[*defaultSmarthost]
	}
	for _, p := range pending {
		if p.smarthost != nil {
			p.cfg.Upstream = names[*p.smarthost]
		}
		cfg.Domains = append(cfg.Domains, p.cfg)
	}
	sort.Slice(cfg.Domains, func(i, j int) bool { return cfg.Domains[i].Domain < cfg.Domains[j].Domain })

	raw, err := config.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("marshalling relay.yaml: %w", err)
	}
	res := &Result{
		Config:        cfg,
		ConfigYAML:    raw,
		SecretData:    r.files,
		Hash:          config.Hash(raw, r.files),
		DomainResults: results,
		ClientResults: clientResults,
		NextChange:    r.nextChange,
		Upstreams:     map[string]types.NamespacedName{},
	}
	for k, n := range names {
		res.Upstreams[n] = k
	}
	// Load what was rendered exactly as a relay pod will: whatever slipped past the
	// checks above is caught here rather than in every pod.
	fsys := fstest.MapFS{}
	for name, b := range r.files {
		fsys[name] = &fstest.MapFile{Data: b}
	}
	loaded, err := config.LoadBytes(raw, fsys)
	if err != nil {
		return nil, &Error{Reason: relayv1alpha1.ReasonRenderFailed, Message: fmt.Sprintf(
			"SmtpRelay %s: the rendered relay configuration is invalid: %s", r.relayKey, oneLine(err))}
	}
	if loaded.Hash != res.Hash {
		return nil, fmt.Errorf("render: the relay would compute hash %s for a configuration rendered as %s", loaded.Hash, res.Hash)
	}
	return res, nil
}

// serverTLS reads the relay's certificate.
func (r *renderer) serverTLS(cfg *config.Config) *Error {
	ref := r.relay.Spec.TLS.SecretRef.Name
	what := fmt.Sprintf("spec.tls.secretRef of SmtpRelay %s", r.relayKey)
	s, err := r.secret(r.relay.Namespace, ref, what, "a Secret of type kubernetes.io/tls")
	if err != nil {
		return err
	}
	cert, err := secretKey(s, corev1.TLSCertKey, what)
	if err != nil {
		return err
	}
	key, err := secretKey(s, corev1.TLSPrivateKeyKey, what)
	if err != nil {
		return err
	}
	if _, e := tlsKeyPair(cert, key); e != nil {
		return &Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf(
			"Secret %s/%s (%s): %s and %s are not a matching PEM certificate and private key: %v",
			s.Namespace, s.Name, what, corev1.TLSCertKey, corev1.TLSPrivateKeyKey, e)}
	}
	cfg.TLS = &config.ServerTLS{CertFile: corev1.TLSCertKey, KeyFile: corev1.TLSPrivateKeyKey}
	r.files[corev1.TLSCertKey] = cert
	r.files[corev1.TLSPrivateKeyKey] = key
	return nil
}

// limits copies the relay's limits; unset ones are left to the relay's defaults, which
// are the ones the API documents.
func limits(l *relayv1alpha1.RelayLimits) config.Limits {
	var c config.Limits
	if l == nil {
		return c
	}
	if l.MaxMessageBytes != nil {
		c.MaxMessageBytes = *l.MaxMessageBytes
	}
	if l.MaxRecipients != nil {
		c.MaxRecipients = int(*l.MaxRecipients)
	}
	if l.MaxConnections != nil {
		c.MaxConnections = int(*l.MaxConnections)
	}
	if l.MaxErrors != nil {
		c.MaxErrors = int(*l.MaxErrors)
	}
	if l.MaxConnectionsPerClient != nil {
		c.MaxConnectionsPerClient = int(*l.MaxConnectionsPerClient)
	}
	if l.ReservedAuthConnections != nil {
		c.ReservedAuthConnections = int(*l.ReservedAuthConnections)
	}
	if a := l.Auth; a != nil {
		if a.MaxFailuresPerClient != nil {
			c.Auth.MaxFailuresPerClient = int(*a.MaxFailuresPerClient)
		}
		if a.MaxFailuresPerUser != nil {
			c.Auth.MaxFailuresPerUser = int(*a.MaxFailuresPerUser)
		}
		for _, d := range []struct {
			from *metav1.Duration
			to   *config.Duration
		}{{a.FailureWindow, &c.Auth.FailureWindow}, {a.UserLockout, &c.Auth.UserLockout}, {a.FailureDelay, &c.Auth.FailureDelay}} {
			if d.from != nil {
				d.to.Duration = d.from.Duration
			}
		}
	}
	if l.CommandTimeout != nil {
		c.CommandTimeout = config.Duration{Duration: l.CommandTimeout.Duration}
	}
	if l.DataTimeout != nil {
		c.DataTimeout = config.Duration{Duration: l.DataTimeout.Duration}
	}
	return c
}

// fieldsAt names the fields of a section's validation errors (relay.yaml paths relative
// to the section) from the API object's field path prefix, on one line.
func fieldsAt(err error, prefix string) error {
	if err == nil {
		return nil
	}
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return errors.New(strings.Join(lines, "; "))
}

// duration copies a duration; unset, it is left to the relay's default, which is the
// API's (+kubebuilder:default).
func duration(d *metav1.Duration) config.Duration {
	if d == nil {
		return config.Duration{}
	}
	return config.Duration{Duration: d.Duration}
}

// sortedSet sorts and de-duplicates a list with set semantics, so reordering it in
// the spec does not change the rendered configuration.
func sortedSet(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

func trimNewline(b []byte) []byte { return bytes.TrimRight(b, "\r\n") }

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func copyErr(e *Error) *Error {
	if e == nil {
		return nil
	}
	c := *e
	return &c
}

func tlsKeyPair(cert, key []byte) (tls.Certificate, error) { return tls.X509KeyPair(cert, key) }

func hasPEMCertificate(b []byte) bool { return x509.NewCertPool().AppendCertsFromPEM(b) }
