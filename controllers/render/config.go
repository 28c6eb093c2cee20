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

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/dkim"
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
}

// smarthostSource is a Smarthost with the contents of the Secrets it references.
type smarthostSource struct {
	key      types.NamespacedName
	spec     *relayv1alpha1.SmarthostSpec
	username []byte
	password []byte
	ca       []byte
	err      *Error
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

// users reads the clients' credentials and hashes their passwords.
func (r *renderer) users(cfg *config.Config) error {
	auth := r.relay.Spec.Auth
	if auth == nil {
		return nil
	}
	byName := map[string]string{}
	for i, u := range auth.Users {
		what := fmt.Sprintf("spec.auth.users[%d].secretRef of SmtpRelay %s", i, r.relayKey)
		s, err := r.secret(r.relay.Namespace, u.SecretRef.Name, what, "a Secret of type kubernetes.io/basic-auth")
		if err != nil {
			return err
		}
		rawUser, err := secretKey(s, basicAuthUsername, what)
		if err != nil {
			return err
		}
		rawPass, err := secretKey(s, basicAuthPassword, what)
		if err != nil {
			return err
		}
		// A trailing newline (echo, an editor) is not part of the credential, as for
		// the smarthost credentials the relay reads.
		username := string(trimNewline(rawUser))
		password := trimNewline(rawPass)
		invalid := func(format string, args ...any) *Error {
			return &Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf("Secret %s/%s (%s): ", s.Namespace, s.Name, what) + fmt.Sprintf(format, args...)}
		}
		switch {
		case username == "":
			return invalid("%s is empty", basicAuthUsername)
		case strings.ContainsAny(username, "\x00\r\n"):
			return invalid("%s may not contain NUL, CR or LF", basicAuthUsername)
		case len(password) == 0:
			return invalid("%s is empty", basicAuthPassword)
		case len(password) > maxPasswordBytes:
			return invalid("%s is longer than %d bytes, which bcrypt cannot hash: use a shorter password", basicAuthPassword, maxPasswordBytes)
		}
		if other, ok := byName[username]; ok {
			return invalid("user name %q is also the user name in Secret %s/%s: each user needs a distinct user name", username, s.Namespace, other)
		}
		byName[username] = s.Name

		if r.in.Hasher == nil {
			return errors.New("render: Inputs.Hasher is nil but the relay has users")
		}
		file := secretFileName("user", s.Name, "bcrypt")
		hash, herr := r.in.Hasher.Hash(hasherKey(r.relayKey, s.Name), password, r.in.Previous[file])
		if herr != nil {
			return fmt.Errorf("hashing the password in Secret %s/%s: %w", s.Namespace, s.Name, herr)
		}
		user := config.User{Username: username, PasswordHashFile: file, AllowedSenders: sortedSet(u.AllowedSenders)}
		if err := fieldsAt(user.Validate(), fmt.Sprintf("spec.auth.users[%d].", i)); err != nil {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed, Message: fmt.Sprintf("SmtpRelay %s: %v", r.relayKey, err)}
		}
		cfg.Users = append(cfg.Users, user)
		r.files[file] = hash
	}
	sort.Slice(cfg.Users, func(i, j int) bool { return cfg.Users[i].Username < cfg.Users[j].Username })
	return nil
}

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
	p := &pendingDomain{cfg: config.Domain{Domain: name, AllowedSenders: sortedSet(d.Spec.AllowedSenders)}}

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
	if k := d.Spec.DKIM; k != nil {
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

// smarthost resolves a Smarthost and the Secrets it references, once per render.
// field is the reference's field in the referring object, for messages.
func (r *renderer) smarthost(key types.NamespacedName, field string) (*smarthostSource, *Error) {
	sh := r.in.Smarthosts[key]
	if sh == nil {
		return nil, &Error{Reason: relayv1alpha1.ReasonSmarthostNotFound, Message: fmt.Sprintf(
			"Smarthost %s (%s) not found: create it or point %s at an existing Smarthost in namespace %s", key, field, field, key.Namespace)}
	}
	if src, ok := r.smarthosts[key]; ok {
		return src, copyErr(src.err)
	}
	src := &smarthostSource{key: key, spec: &sh.Spec}
	src.err = r.resolveSmarthost(src)
	r.smarthosts[key] = src
	return src, copyErr(src.err)
}

func (r *renderer) resolveSmarthost(src *smarthostSource) *Error {
	spec, ns := src.spec, src.key.Namespace
	prefix := fmt.Sprintf("Smarthost %s: ", src.key)
	wrap := func(e *Error) *Error {
		e.Message = prefix + e.Message
		return e
	}
	if a := spec.Auth; a != nil {
		what := "spec.auth.secretRef"
		s, err := r.secret(ns, a.SecretRef.Name, what, "a Secret of type kubernetes.io/basic-auth")
		if err != nil {
			return wrap(err)
		}
		if src.username, err = secretKey(s, basicAuthUsername, what); err != nil {
			return wrap(err)
		}
		if src.password, err = secretKey(s, basicAuthPassword, what); err != nil {
			return wrap(err)
		}
		for _, k := range []struct {
			key string
			val []byte
		}{{basicAuthUsername, src.username}, {basicAuthPassword, src.password}} {
			if len(trimNewline(k.val)) == 0 {
				return wrap(&Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf("Secret %s/%s (%s): %s is empty", ns, s.Name, what, k.key)})
			}
		}
	}
	if ca := spec.TLS.CASecretRef; ca != nil {
		keyName := ca.Key
		if keyName == "" {
			keyName = defaultCAKey
		}
		what := "spec.tls.caSecretRef"
		b, err := r.secretKeyOf(ns, ca.Name, keyName, what, "a Secret holding PEM CA certificates")
		if err != nil {
			return wrap(err)
		}
		if !hasPEMCertificate(b) {
			return wrap(&Error{Reason: relayv1alpha1.ReasonInvalidSecret, Message: fmt.Sprintf(
				"Secret %s/%s key %s (%s) holds no PEM certificate", ns, ca.Name, keyName, what)})
		}
		src.ca = b
	}
	// The Smarthost's fields, checked by the relay's rules on their own.
	probe, _ := upstreamConfig("probe", src)
	if err := fieldsAt(probe.WithDefaults().Validate(), "spec."); err != nil {
		return &Error{Reason: relayv1alpha1.ReasonSmarthostNotReady, Message: prefix + err.Error()}
	}
	return nil
}

// upstream renders a resolved Smarthost as the upstream name and adds its files.
func (r *renderer) upstream(name string, src *smarthostSource) config.Upstream {
	u, files := upstreamConfig(name, src)
	for k, v := range files {
		r.files[k] = v
	}
	return u
}

// upstreamConfig maps a Smarthost onto relay.yaml. Unset fields stay unset where the
// relay's defaults are the API's.
func upstreamConfig(name string, src *smarthostSource) (config.Upstream, map[string][]byte) {
	spec := src.spec
	files := map[string][]byte{}
	u := config.Upstream{
		Name: name,
		TLS: config.UpstreamTLS{
			Mode:               tlsMode(spec.TLS.Mode),
			ServerName:         spec.TLS.ServerName,
			InsecureSkipVerify: spec.TLS.InsecureSkipVerify,
		},
		MaxConnections:           int(spec.MaxConnections),
		MaxMessagesPerConnection: int(spec.MaxMessagesPerConnection),
	}
	for _, e := range spec.Endpoints {
		u.Endpoints = append(u.Endpoints, config.Endpoint{Host: e.Host, Port: int(e.Port)})
	}
	if src.ca != nil {
		u.TLS.CAFile = secretFileName("upstream", name, "ca.crt")
		files[u.TLS.CAFile] = src.ca
	}
	if a := spec.Auth; a != nil {
		u.Auth = &config.UpstreamAuth{
			Mechanism:    a.Mechanism,
			UsernameFile: secretFileName("upstream", name, "username"),
			PasswordFile: secretFileName("upstream", name, "password"),
		}
		files[u.Auth.UsernameFile] = src.username
		files[u.Auth.PasswordFile] = src.password
	}
	t := relayv1alpha1.SmarthostTimeouts{}
	if spec.Timeouts != nil {
		t = *spec.Timeouts
	}
	u.Timeouts = config.UpstreamTimeouts{
		Connect: duration(t.Connect),
		Command: duration(t.Command),
		Data:    duration(t.Data),
		Idle:    duration(t.Idle),
	}
	return u, files
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

// secret looks up a Secret; what names the reference and kind describes the expected
// Secret, for the message.
func (r *renderer) secret(ns, name, what, kind string) (*corev1.Secret, *Error) {
	s := r.in.Secrets[types.NamespacedName{Namespace: ns, Name: name}]
	if s == nil {
		return nil, &Error{Reason: relayv1alpha1.ReasonSecretNotFound, Message: fmt.Sprintf(
			"Secret %s/%s (%s) not found: create %s named %s in namespace %s", ns, name, what, kind, name, ns)}
	}
	return s, nil
}

// secretKeyOf looks up one key of a Secret.
func (r *renderer) secretKeyOf(ns, name, key, what, kind string) ([]byte, *Error) {
	s, err := r.secret(ns, name, what, kind)
	if err != nil {
		return nil, err
	}
	return secretKey(s, key, what)
}

func secretKey(s *corev1.Secret, key, what string) ([]byte, *Error) {
	b, ok := s.Data[key]
	if !ok {
		return nil, &Error{Reason: relayv1alpha1.ReasonSecretKeyMissing, Message: fmt.Sprintf(
			"Secret %s/%s (%s) has no key %q: add it", s.Namespace, s.Name, what, key)}
	}
	return b, nil
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
