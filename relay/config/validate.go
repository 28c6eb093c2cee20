package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Defaults applied by SetDefaults. Those the API also has are its +kubebuilder:default
// markers too; a test keeps the two equal.
const (
	DefaultMaxMessageBytes         = 25 << 20
	DefaultMaxRecipients           = 100
	DefaultMaxLineLength           = 2000
	DefaultMaxConnections          = 1000
	DefaultMaxErrors               = 10
	DefaultMaxConnectionsPerClient = 100
	DefaultAuthFailuresPerClient   = 10
	DefaultAuthFailuresPerUser     = 30
	DefaultAuthFailureWindow       = 15 * time.Minute
	DefaultAuthUserLockout         = time.Minute
	DefaultAuthFailureDelay        = time.Second
	// MaxAuthFailureDelay caps the growing delay of failureDelay.
	MaxAuthFailureDelay             = 30 * time.Second
	DefaultCommandTimeout           = 5 * time.Minute
	DefaultDataTimeout              = 3 * time.Minute
	DefaultUpstreamMaxConnections   = 10
	DefaultMaxMessagesPerConnection = 100
	DefaultUpstreamConnectTimeout   = 30 * time.Second
	DefaultUpstreamCommandTimeout   = 5 * time.Minute  // RFC 5321 section 4.5.3.2
	DefaultUpstreamDataTimeout      = 10 * time.Minute // the wait for the final reply, ibid.
	DefaultUpstreamIdleTimeout      = time.Minute
	DefaultUpstreamAcquireTimeout   = 5 * time.Second
	DefaultQueueDir                 = "/var/spool/kuberelay"
	DefaultQueueMaxAge              = 120 * time.Hour
	DefaultQueueMaxMessages         = 100000
	DefaultQueueMaxBytes            = 10 << 30
	DefaultQueueConcurrency         = 20
	DefaultRetryFirst               = time.Minute
	DefaultRetryBackoff             = 2.0
	DefaultRetryMaxInterval         = 30 * time.Minute
)

// DefaultDKIMHeaders are the header fields signed when a DKIM key names none.
var DefaultDKIMHeaders = []string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To",
	"References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// Parse reads a relay.yaml document strictly: unknown fields are errors, so a
// misspelt option is reported instead of silently ignored. It does not apply defaults
// or validate; see SetDefaults and Validate.
func Parse(data []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", FileName, err)
	}
	return &c, nil
}

// Marshal writes the configuration as YAML, the inverse of Parse.
func Marshal(c *Config) ([]byte, error) {
	return yaml.Marshal(c)
}

// SetDefaults fills every unset field that has a default. The sections' own defaults
// are their WithDefaults, which other code can use on a section alone.
func (c *Config) SetDefaults() {
	for i := range c.Listeners {
		if c.Listeners[i].TLS == "" {
			c.Listeners[i].TLS = TLSStartTLS
		}
	}
	if c.NullSender == "" {
		c.NullSender = NullSenderReject
	}
	for i := range c.Domains {
		c.Domains[i] = c.Domains[i].WithDefaults()
	}
	for i := range c.Upstreams {
		c.Upstreams[i] = c.Upstreams[i].WithDefaults()
	}
	l := &c.Limits
	if l.MaxMessageBytes == 0 {
		l.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if l.MaxRecipients == 0 {
		l.MaxRecipients = DefaultMaxRecipients
	}
	if l.MaxLineLength == 0 {
		l.MaxLineLength = DefaultMaxLineLength
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxErrors == 0 {
		l.MaxErrors = DefaultMaxErrors
	}
	if l.MaxConnectionsPerClient == 0 {
		l.MaxConnectionsPerClient = DefaultMaxConnectionsPerClient
	}
	if l.ReservedAuthConnections == 0 {
		l.ReservedAuthConnections = max(1, l.MaxConnections/10)
	}
	a := &l.Auth
	if a.MaxFailuresPerClient == 0 {
		a.MaxFailuresPerClient = DefaultAuthFailuresPerClient
	}
	if a.MaxFailuresPerUser == 0 {
		a.MaxFailuresPerUser = DefaultAuthFailuresPerUser
	}
	defaultDuration(&a.FailureWindow, DefaultAuthFailureWindow)
	defaultDuration(&a.UserLockout, DefaultAuthUserLockout)
	defaultDuration(&a.FailureDelay, DefaultAuthFailureDelay)
	defaultDuration(&l.CommandTimeout, DefaultCommandTimeout)
	defaultDuration(&l.DataTimeout, DefaultDataTimeout)
	c.Delivery = c.Delivery.WithDefaults()
}

// WithDefaults returns the delivery settings with every unset field filled in.
func (d Delivery) WithDefaults() Delivery {
	if d.Mode == "" {
		d.Mode = PassThrough
	}
	q := &d.Queue
	if q.Dir == "" {
		q.Dir = DefaultQueueDir
	}
	defaultDuration(&q.MaxAge, DefaultQueueMaxAge)
	if q.MaxMessages == 0 {
		q.MaxMessages = DefaultQueueMaxMessages
	}
	if q.MaxBytes == 0 {
		q.MaxBytes = DefaultQueueMaxBytes
	}
	if q.Concurrency == 0 {
		q.Concurrency = DefaultQueueConcurrency
	}
	defaultDuration(&q.Retry.First, DefaultRetryFirst)
	if q.Retry.Backoff == 0 {
		q.Retry.Backoff = DefaultRetryBackoff
	}
	defaultDuration(&q.Retry.MaxInterval, DefaultRetryMaxInterval)
	return d
}

// WithDefaults returns the upstream with every unset field that has a default filled
// in. It never writes through the receiver's pointers or slices.
func (u Upstream) WithDefaults() Upstream {
	if u.TLS.Mode == "" {
		u.TLS.Mode = TLSStartTLS
	}
	u.Endpoints = slices.Clone(u.Endpoints)
	for j := range u.Endpoints {
		if u.Endpoints[j].Port == 0 {
			u.Endpoints[j].Port = 587
			if u.TLS.Mode == TLSImplicit {
				u.Endpoints[j].Port = 465
			}
		}
	}
	if u.Auth != nil && u.Auth.Mechanism == "" {
		a := *u.Auth
		a.Mechanism = "PLAIN"
		if a.OAuth2 != nil {
			a.Mechanism = MechanismXOAuth2
		}
		u.Auth = &a
	}
	if u.MaxConnections == 0 {
		u.MaxConnections = DefaultUpstreamMaxConnections
	}
	if u.MaxMessagesPerConnection == 0 {
		u.MaxMessagesPerConnection = DefaultMaxMessagesPerConnection
	}
	defaultDuration(&u.Timeouts.Connect, DefaultUpstreamConnectTimeout)
	defaultDuration(&u.Timeouts.Command, DefaultUpstreamCommandTimeout)
	defaultDuration(&u.Timeouts.Data, DefaultUpstreamDataTimeout)
	defaultDuration(&u.Timeouts.Idle, DefaultUpstreamIdleTimeout)
	defaultDuration(&u.Timeouts.Acquire, DefaultUpstreamAcquireTimeout)
	return u
}

// WithDefaults returns the domain normalised and with its defaults filled in. It never
// writes through the receiver's pointers.
func (d Domain) WithDefaults() Domain {
	d.Domain = NormalizeDomain(d.Domain)
	if d.DKIM != nil && len(d.DKIM.Headers) == 0 {
		k := *d.DKIM
		k.Headers = slices.Clone(DefaultDKIMHeaders)
		d.DKIM = &k
	}
	return d
}

func defaultDuration(d *Duration, v time.Duration) {
	if d.Duration == 0 {
		d.Duration = v
	}
}

// fieldErrors collects validation errors, each naming the field it is about.
type fieldErrors []error

func (e *fieldErrors) add(field, format string, args ...any) {
	*e = append(*e, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

var (
	// nameRE and labelRE are the same RFC 1123 label; two names say which use is meant.
	nameRE     = labelRE
	labelRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	selectorRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
	// localPartRE is the dot-atom of RFC 5321 section 4.1.2 plus "*" as a wildcard.
	localPartRE = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
	headerRE    = regexp.MustCompile(`^[!-9;-~]+$`)
)

// IsDomain reports whether s is a syntactically valid lowercase DNS domain name with at
// least two labels, as used for sender domains.
func IsDomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !labelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// Validate checks a configuration (after SetDefaults) and returns every problem found,
// each naming the field and saying what is wrong. It does not read secret files; Load
// does that.
func (c *Config) Validate() error {
	var errs fieldErrors
	if c.APIVersion != APIVersion {
		errs.add("apiVersion", "must be %q, got %q", APIVersion, c.APIVersion)
	}
	if c.Kind != Kind {
		errs.add("kind", "must be %q, got %q", Kind, c.Kind)
	}
	if c.Hostname != "" && !isHostname(c.Hostname) {
		errs.add("hostname", "%q is not a valid host name", c.Hostname)
	}
	c.validateListeners(&errs)
	c.validateClients(&errs)
	upstreams := c.validateUpstreams(&errs)
	c.validateDomains(&errs, upstreams)
	c.validateLimits(&errs)
	c.Delivery.validate(&errs, "delivery.")
	if cp := c.Capture; cp != nil {
		if cp.MaxMessages < 0 {
			errs.add("capture.maxMessages", "%d must not be negative (0 means the default, %d)", cp.MaxMessages, 1000)
		}
		if cp.MaxBytes < 0 {
			errs.add("capture.maxBytes", "%d must not be negative (0 means the default, 32 MiB)", cp.MaxBytes)
		}
	}
	return errors.Join(errs...)
}

func (c *Config) validateListeners(errs *fieldErrors) {
	if len(c.Listeners) == 0 {
		errs.add("listeners", "at least one listener is required")
	}
	names := map[string]bool{}
	addrs := map[string]bool{}
	needTLS := false
	for i, l := range c.Listeners {
		f := fmt.Sprintf("listeners[%d]", i)
		if !nameRE.MatchString(l.Name) {
			errs.add(f+".name", "%q must be lowercase letters, digits and dashes", l.Name)
		} else if names[l.Name] {
			errs.add(f+".name", "%q is used by another listener", l.Name)
		}
		names[l.Name] = true
		if l.MaxConnections < 0 {
			errs.add(f+".maxConnections", "%d must not be negative (0 means no limit of the listener's own)", l.MaxConnections)
		}
		if _, port, err := net.SplitHostPort(l.Address); err != nil {
			errs.add(f+".address", "%q is not host:port (for all interfaces write \":2525\")", l.Address)
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			errs.add(f+".address", "%q has an invalid port", l.Address)
		} else if p > 0 && addrs[port] {
			errs.add(f+".address", "port %d is used by another listener", p)
		} else {
			// Port 0 asks the system for a free port (tests, local runs): never a clash.
			addrs[port] = p > 0
		}
		switch l.TLS {
		case TLSNone:
			if l.RequireAuth {
				errs.add(f+".requireAuth", "AUTH is only offered over TLS: set tls to STARTTLS or Implicit, or requireAuth to false")
			}
		case TLSStartTLS, TLSImplicit:
			needTLS = true
		default:
			errs.add(f+".tls", "%q is not one of None, STARTTLS, Implicit", l.TLS)
		}
	}
	if c.TLS != nil {
		if err := checkSecretPath(c.TLS.CertFile); err != nil {
			errs.add("tls.certFile", "%v", err)
		}
		if err := checkSecretPath(c.TLS.KeyFile); err != nil {
			errs.add("tls.keyFile", "%v", err)
		}
	} else if needTLS {
		errs.add("tls", "a listener uses STARTTLS or Implicit TLS, so a certificate (tls.certFile and tls.keyFile) is required")
	}
}

func (c *Config) validateClients(errs *fieldErrors) {
	for i, n := range c.AllowedNetworks {
		f := fmt.Sprintf("allowedNetworks[%d]", i)
		p, err := ParseNetwork(n)
		if err != nil {
			errs.add(f, "%v", err)
			continue
		}
		if p.Bits() == 0 {
			errs.add(f, "%q allows every address and would make an open relay; list the networks of your clients", n)
		}
	}
	users := map[string]bool{}
	for i, u := range c.Users {
		f := fmt.Sprintf("users[%d].", i)
		u.validate(errs, f)
		if u.Username != "" && users[u.Username] {
			errs.add(f+"username", "%q is used by another user", u.Username)
		}
		users[u.Username] = true
	}
	switch c.NullSender {
	case NullSenderReject:
	case NullSenderAllow:
		if c.DefaultUpstream == "" {
			errs.add("nullSender", "Allow needs defaultUpstream to deliver through")
		}
	default:
		errs.add("nullSender", "%q is not one of Reject, Allow", c.NullSender)
	}
}

// Validate checks a user on its own: everything but its name being unique. Fields are
// named relative to the user.
func (u User) Validate() error {
	var errs fieldErrors
	u.validate(&errs, "")
	return errors.Join(errs...)
}

func (u User) validate(errs *fieldErrors, f string) {
	u.RateLimits.validate(errs, f+"rateLimits.", true)
	if u.Username == "" || strings.ContainsAny(u.Username, "\x00\r\n") {
		errs.add(f+"username", "is required and may not contain NUL, CR or LF")
	}
	if err := checkSecretPath(u.PasswordHashFile); err != nil {
		errs.add(f+"passwordHashFile", "%v", err)
	}
	if u.PreviousPasswordHashFile != "" {
		if err := checkSecretPath(u.PreviousPasswordHashFile); err != nil {
			errs.add(f+"previousPasswordHashFile", "%v", err)
		}
	}
	for j, s := range u.AllowedSenders {
		if err := checkSenderPattern(s); err != nil {
			errs.add(fmt.Sprintf("%sallowedSenders[%d]", f, j), "%v", err)
		}
	}
}

func (c *Config) validateUpstreams(errs *fieldErrors) map[string]bool {
	names := map[string]bool{}
	for i, u := range c.Upstreams {
		f := fmt.Sprintf("upstreams[%d].", i)
		u.validate(errs, f)
		if nameRE.MatchString(u.Name) && names[u.Name] {
			errs.add(f+"name", "%q is used by another upstream", u.Name)
		}
		names[u.Name] = true
	}
	if c.DefaultUpstream != "" && !names[c.DefaultUpstream] {
		errs.add("defaultUpstream", "%q names no upstream in upstreams", c.DefaultUpstream)
	}
	return names
}

// Validate checks an upstream on its own: everything but its name being unique.
// Fields are named relative to the upstream.
func (u Upstream) Validate() error {
	var errs fieldErrors
	u.validate(&errs, "")
	return errors.Join(errs...)
}

func (u Upstream) validate(errs *fieldErrors, f string) {
	u.RateLimits.validate(errs, f+"rateLimits.", false)
	if !nameRE.MatchString(u.Name) {
		errs.add(f+"name", "%q must be lowercase letters, digits and dashes", u.Name)
	}
	if len(u.Endpoints) == 0 {
		errs.add(f+"endpoints", "at least one endpoint is required")
	}
	for j, e := range u.Endpoints {
		ef := fmt.Sprintf("%sendpoints[%d]", f, j)
		if !isHostname(e.Host) {
			errs.add(ef+".host", "%q is not a host name or IP address", e.Host)
		}
		if e.Port < 1 || e.Port > 65535 {
			errs.add(ef+".port", "%d is not a port between 1 and 65535", e.Port)
		}
	}
	switch u.TLS.Mode {
	case TLSStartTLS, TLSImplicit:
	case TLSNone:
		if u.Auth != nil {
			errs.add(f+"auth", "would send the password in clear text: set tls.mode to STARTTLS or Implicit")
		}
		if u.TLS.CAFile != "" || u.TLS.InsecureSkipVerify || u.TLS.ServerName != "" {
			errs.add(f+"tls", "serverName, caFile and insecureSkipVerify need mode STARTTLS or Implicit")
		}
	default:
		errs.add(f+"tls.mode", "%q is not one of STARTTLS, Implicit, None", u.TLS.Mode)
	}
	if u.TLS.ServerName != "" && !isHostname(u.TLS.ServerName) {
		errs.add(f+"tls.serverName", "%q is not a host name", u.TLS.ServerName)
	}
	if u.TLS.CAFile != "" {
		if err := checkSecretPath(u.TLS.CAFile); err != nil {
			errs.add(f+"tls.caFile", "%v", err)
		}
	}
	if a := u.Auth; a != nil {
		oauth := a.Mechanism == MechanismXOAuth2 || a.Mechanism == MechanismOAuthBearer
		switch {
		case a.Mechanism != "PLAIN" && a.Mechanism != "LOGIN" && !oauth:
			errs.add(f+"auth.mechanism", "%q is not one of PLAIN, LOGIN, XOAUTH2, OAUTHBEARER", a.Mechanism)
		case oauth && a.OAuth2 == nil:
			errs.add(f+"auth.oauth2", "is required by mechanism %s: the token endpoint and client to obtain tokens with", a.Mechanism)
		case !oauth && a.OAuth2 != nil:
			errs.add(f+"auth.mechanism", "%s sends a password: with oauth2 use XOAUTH2 or OAUTHBEARER", a.Mechanism)
		}
		if err := checkSecretPath(a.UsernameFile); err != nil {
			errs.add(f+"auth.usernameFile", "%v", err)
		}
		if a.OAuth2 == nil || a.PasswordFile != "" {
			if err := checkSecretPath(a.PasswordFile); err != nil {
				errs.add(f+"auth.passwordFile", "%v", err)
			}
		}
		if o := a.OAuth2; o != nil {
			if a.PasswordFile != "" {
				errs.add(f+"auth.passwordFile", "is not used with oauth2: remove it")
			}
			if o.TokenURL != "" || o.ServiceAccountFile == "" {
				if err := checkTokenURL(o.TokenURL); err != nil {
					errs.add(f+"auth.oauth2.tokenURL", "%v", err)
				}
			}
			if o.ServiceAccountFile != "" {
				if err := checkSecretPath(o.ServiceAccountFile); err != nil {
					errs.add(f+"auth.oauth2.serviceAccountFile", "%v", err)
				}
				if o.ClientIDFile != "" || o.ClientSecretFile != "" || o.ClientCertificateFile != "" || o.ClientKeyFile != "" {
					errs.add(f+"auth.oauth2.serviceAccountFile", "a service account key replaces clientIDFile, clientSecretFile, clientCertificateFile and clientKeyFile: remove them")
				}
			} else if err := checkSecretPath(o.ClientIDFile); err != nil {
				errs.add(f+"auth.oauth2.clientIDFile", "%v", err)
			}
			switch cert := o.ClientCertificateFile != "" || o.ClientKeyFile != ""; {
			case o.ServiceAccountFile != "":
			case cert && o.ClientSecretFile != "":
				errs.add(f+"auth.oauth2.clientSecretFile", "a client secret and a client certificate together: keep one")
			case cert:
				if err := checkSecretPath(o.ClientCertificateFile); err != nil {
					errs.add(f+"auth.oauth2.clientCertificateFile", "%v", err)
				}
				if err := checkSecretPath(o.ClientKeyFile); err != nil {
					errs.add(f+"auth.oauth2.clientKeyFile", "%v", err)
				}
			default:
				if err := checkSecretPath(o.ClientSecretFile); err != nil {
					errs.add(f+"auth.oauth2.clientSecretFile", "%v (or set clientCertificateFile and clientKeyFile)", err)
				}
			}
			for i, sc := range o.Scopes {
				if sc == "" || strings.ContainsAny(sc, " \t\r\n") {
					errs.add(fmt.Sprintf("%sauth.oauth2.scopes[%d]", f, i), "%q must be one scope, without spaces", sc)
				}
			}
		}
	}
	if u.MaxConnections < 1 || u.MaxConnections > 10000 {
		errs.add(f+"maxConnections", "%d must be between 1 and 10000", u.MaxConnections)
	}
	if u.MaxMessagesPerConnection < 0 {
		errs.add(f+"maxMessagesPerConnection", "%d must not be negative", u.MaxMessagesPerConnection)
	}
	for name, d := range map[string]Duration{"connect": u.Timeouts.Connect, "command": u.Timeouts.Command,
		"data": u.Timeouts.Data, "idle": u.Timeouts.Idle, "acquire": u.Timeouts.Acquire} {
		if d.Duration <= 0 {
			errs.add(f+"timeouts."+name, "%s must be positive", d.Duration)
		}
	}
}

func (c *Config) validateDomains(errs *fieldErrors, upstreams map[string]bool) {
	seen := map[string]bool{}
	for i, d := range c.Domains {
		f := fmt.Sprintf("domains[%d].", i)
		d.validate(errs, f)
		if IsDomain(d.Domain) && seen[d.Domain] {
			errs.add(f+"domain", "%q is listed twice", d.Domain)
		}
		seen[d.Domain] = true
		switch {
		case d.Upstream == "" && c.DefaultUpstream == "":
			errs.add(f+"upstream", "is empty and there is no defaultUpstream: name the upstream that delivers mail from %s", d.Domain)
		case d.Upstream != "" && !upstreams[d.Upstream]:
			errs.add(f+"upstream", "%q names no upstream in upstreams", d.Upstream)
		}
	}
}

// Validate checks a domain on its own: everything but its being listed once and its
// upstream existing. Fields are named relative to the domain.
func (d Domain) Validate() error {
	var errs fieldErrors
	d.validate(&errs, "")
	return errors.Join(errs...)
}

func (d Domain) validate(errs *fieldErrors, f string) {
	d.RateLimits.validate(errs, f+"rateLimits.", false)
	if !IsDomain(d.Domain) {
		errs.add(f+"domain", "%q is not a domain name such as example.com", d.Domain)
	}
	for j, s := range d.AllowedSenders {
		if !localPartRE.MatchString(s) {
			errs.add(fmt.Sprintf("%sallowedSenders[%d]", f, j), "%q is not a local part (the part before @), e.g. \"noreply\" or \"alerts-*\"", s)
		}
	}
	if k := d.DKIM; k != nil {
		if !selectorRE.MatchString(k.Selector) {
			errs.add(f+"dkim.selector", "%q is not a DNS label such as \"s1\" or \"2024\"", k.Selector)
		}
		if err := checkSecretPath(k.PrivateKeyFile); err != nil {
			errs.add(f+"dkim.privateKeyFile", "%v", err)
		}
		from := false
		for j, h := range k.Headers {
			if !headerRE.MatchString(h) {
				errs.add(fmt.Sprintf("%sdkim.headers[%d]", f, j), "%q is not a header field name", h)
			}
			from = from || strings.EqualFold(h, "From")
		}
		if !from {
			errs.add(f+"dkim.headers", "must include From (RFC 6376 section 5.4)")
		}
	}
}

func (c *Config) validateLimits(errs *fieldErrors) {
	l := c.Limits
	if l.MaxMessageBytes < 1024 {
		errs.add("limits.maxMessageBytes", "%d is below the minimum of 1024", l.MaxMessageBytes)
	}
	if l.MaxRecipients < 1 || l.MaxRecipients > 100000 {
		errs.add("limits.maxRecipients", "%d must be between 1 and 100000 (RFC 5321 section 4.5.3.1.8 asks for at least 100)", l.MaxRecipients)
	}
	if l.MaxLineLength < 1000 || l.MaxLineLength > 1<<20 {
		errs.add("limits.maxLineLength", "%d must be between 1000 (RFC 5321 section 4.5.3.1.6) and 1048576", l.MaxLineLength)
	}
	if l.MaxConnections < 1 {
		errs.add("limits.maxConnections", "%d must be at least 1", l.MaxConnections)
	}
	if l.MaxErrors < 1 {
		errs.add("limits.maxErrors", "%d must be at least 1", l.MaxErrors)
	}
	if l.MaxConnectionsPerClient < 1 {
		errs.add("limits.maxConnectionsPerClient", "%d must be at least 1", l.MaxConnectionsPerClient)
	}
	if l.ReservedAuthConnections < 1 || l.ReservedAuthConnections >= l.MaxConnections {
		errs.add("limits.reservedAuthConnections", "%d must be at least 1 and below limits.maxConnections (%d)",
			l.ReservedAuthConnections, l.MaxConnections)
	}
	a := l.Auth
	if a.MaxFailuresPerClient < 1 {
		errs.add("limits.auth.maxFailuresPerClient", "%d must be at least 1", a.MaxFailuresPerClient)
	}
	if a.MaxFailuresPerUser < 1 {
		errs.add("limits.auth.maxFailuresPerUser", "%d must be at least 1", a.MaxFailuresPerUser)
	}
	if a.FailureWindow.Duration <= 0 {
		errs.add("limits.auth.failureWindow", "must be positive")
	}
	if a.UserLockout.Duration <= 0 || a.UserLockout.Duration > a.FailureWindow.Duration {
		errs.add("limits.auth.userLockout", "must be positive and at most limits.auth.failureWindow")
	}
	if a.FailureDelay.Duration <= 0 || a.FailureDelay.Duration > MaxAuthFailureDelay {
		errs.add("limits.auth.failureDelay", "must be positive and at most %s", MaxAuthFailureDelay)
	}
	if l.CommandTimeout.Duration <= 0 {
		errs.add("limits.commandTimeout", "must be positive")
	}
	if l.DataTimeout.Duration <= 0 {
		errs.add("limits.dataTimeout", "must be positive")
	}
}

func (d Delivery) validate(errs *fieldErrors, f string) {
	switch d.Mode {
	case PassThrough, Queue:
	default:
		errs.add(f+"mode", "%q is not one of PassThrough, Queue", d.Mode)
	}
	q, f := d.Queue, f+"queue."
	if !path.IsAbs(q.Dir) {
		errs.add(f+"dir", "%q must be an absolute path", q.Dir)
	}
	if q.MaxAge.Duration < time.Second {
		errs.add(f+"maxAge", "%s must be at least 1s", q.MaxAge.Duration)
	}
	if q.MaxMessages < 1 {
		errs.add(f+"maxMessages", "%d must be at least 1", q.MaxMessages)
	}
	if q.MaxBytes < 1<<20 {
		errs.add(f+"maxBytes", "%d must be at least 1048576 (1 MiB)", q.MaxBytes)
	}
	if q.Concurrency < 1 || q.Concurrency > 1000 {
		errs.add(f+"concurrency", "%d must be between 1 and 1000", q.Concurrency)
	}
	r := q.Retry
	if r.First.Duration <= 0 {
		errs.add(f+"retry.first", "must be positive")
	}
	if r.Backoff < 1 || r.Backoff > 10 {
		errs.add(f+"retry.backoff", "%g must be between 1 and 10", r.Backoff)
	}
	if r.MaxInterval.Duration < r.First.Duration {
		errs.add(f+"retry.maxInterval", "%s must be at least retry.first (%s)", r.MaxInterval.Duration, r.First.Duration)
	}
}

// ParseNetwork reads a CIDR ("10.0.0.0/8") or a single address ("10.1.2.3"). The
// prefix is masked, so "10.1.2.3/8" means 10.0.0.0/8.
func ParseNetwork(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8 or fd00::/8", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func checkSenderPattern(s string) error {
	local, domain, ok := strings.Cut(s, "@")
	if !ok {
		domain, local = s, ""
	} else if !localPartRE.MatchString(local) {
		return fmt.Errorf("%q: the local part must be a dot-atom, with * as a wildcard", s)
	}
	if !IsDomain(strings.ToLower(domain)) {
		return fmt.Errorf("%q is neither an address (noreply@example.com) nor a domain (example.com)", s)
	}
	return nil
}

func checkSecretPath(p string) error {
	switch {
	case p == "":
		return errors.New("is required")
	case path.IsAbs(p) || strings.HasPrefix(p, "\\"):
		return fmt.Errorf("%q must be relative to the secrets directory", p)
	case path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("%q must be a clean path inside the secrets directory (no \"..\", no \"./\")", p)
	}
	return nil
}

func isHostname(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(NormalizeDomain(s), ".") {
		if !labelRE.MatchString(l) {
			return false
		}
	}
	return true
}

func (r *RateLimits) validate(errs *fieldErrors, f string, sessions bool) {
	if r == nil {
		return
	}
	for _, l := range []struct {
		name string
		v    int64
	}{
		{"messagesPerMinute", r.MessagesPerMinute}, {"messagesPerHour", r.MessagesPerHour}, {"messagesPerDay", r.MessagesPerDay},
		{"recipientsPerMinute", r.RecipientsPerMinute}, {"recipientsPerHour", r.RecipientsPerHour}, {"recipientsPerDay", r.RecipientsPerDay},
	} {
		if l.v < 0 {
			errs.add(f+l.name, "must not be negative (0 or absent is no limit)")
		}
	}
	switch {
	case r.MaxSessions < 0:
		errs.add(f+"maxSessions", "must not be negative (0 or absent is no limit)")
	case r.MaxSessions > 0 && !sessions:
		errs.add(f+"maxSessions", "applies to users only")
	}
}

// Upstream AUTH mechanisms that send an OAuth 2.0 access token.
const (
	MechanismXOAuth2     = "XOAUTH2"
	MechanismOAuthBearer = "OAUTHBEARER"
)

// CheckTokenURL checks a token endpoint as tokenURL is checked.
func CheckTokenURL(raw string) error { return checkTokenURL(raw) }

// checkTokenURL requires an absolute https URL (http only to a loopback address,
// where nothing crosses a network): the client secret is sent to it.
func checkTokenURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return errors.New("is required")
	case err != nil || u.Host == "" || u.User != nil || u.Fragment != "":
		return fmt.Errorf("%q is not an absolute URL without credentials or fragment", raw)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http":
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() || u.Hostname() == "localhost" {
			return nil
		}
	}
	return fmt.Errorf("%q must be https: the client secret is sent to it", raw)
}
