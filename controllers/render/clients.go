package render

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// Annotations the operator keeps on a RelayClient's Secret: the rotation's state.
const (
	// PreviousHashAnnotation holds the bcrypt hash of the password the last rotation
	// replaced; it works until PreviousExpiresAnnotation (RFC 3339).
	PreviousHashAnnotation    = "relay.kuberelay.io/previous-password-hash"
	PreviousExpiresAnnotation = "relay.kuberelay.io/previous-password-expires"
	// RotatedAtAnnotation is when the current password was made (RFC 3339).
	RotatedAtAnnotation = "relay.kuberelay.io/rotated-at"
	// RotationHandledAnnotation is the value of the RelayClient's rotate annotation
	// the current password answers.
	RotationHandledAnnotation = "relay.kuberelay.io/rotation-handled"
)

// Keys of a RelayClient's Secret.
const (
	ClientKeyHost     = "host"
	ClientKeyPort     = "port"
	ClientKeyUsername = "username"
	ClientKeyPassword = "password"
	ClientKeyURL      = "url"
)

// ClientResult is what became of one RelayClient.
type ClientResult struct {
	// Included is true when the client can log in to the relay.
	Included bool
	// Reason (a v1alpha1 Reason constant) and Message say why a client was left out.
	Reason  string
	Message string
}

// ClientUsername is a RelayClient's AUTH user name. Namespaces hold no dots, so it
// names one client of the cluster.
func ClientUsername(c *relayv1alpha1.RelayClient) string { return c.Namespace + "." + c.Name }

// ClientSecretName is the Secret a RelayClient's credentials are written to.
func ClientSecretName(c *relayv1alpha1.RelayClient) string {
	if c.Spec.SecretName != "" {
		return c.Spec.SecretName
	}
	return c.Name
}

// clients adds each attached RelayClient whose Secret is in place as a user. domains
// are the results of the domains, for the senders a client may use.
func (r *renderer) clients(cfg *config.Config, domains map[types.NamespacedName]DomainResult) map[types.NamespacedName]ClientResult {
	out := make(map[types.NamespacedName]ClientResult, len(r.in.Clients))
	if len(r.in.Clients) == 0 {
		return out
	}
	// The namespace each relayed domain comes from.
	domainNS := map[string]string{}
	for _, d := range r.in.Domains {
		if domains[types.NamespacedName{Namespace: d.Namespace, Name: d.Name}].Included {
			domainNS[config.NormalizeDomain(d.Spec.Domain)] = d.Namespace
		}
	}
	ordered := make([]*relayv1alpha1.RelayClient, 0, len(r.in.Clients))
	for i := range r.in.Clients {
		ordered = append(ordered, &r.in.Clients[i])
	}
	sort.Slice(ordered, func(i, j int) bool { return ClientUsername(ordered[i]) < ClientUsername(ordered[j]) })
	r.prehashClients(ordered)
	for _, c := range ordered {
		key := types.NamespacedName{Namespace: c.Namespace, Name: c.Name}
		res := r.client(cfg, c, domainNS)
		out[key] = res
	}
	sort.Slice(cfg.Users, func(i, j int) bool { return cfg.Users[i].Username < cfg.Users[j].Username })
	return out
}

// prehashClients hashes the passwords of the clients whose Secrets are in place on
// every core: bcrypt is most of a render's time when many clients are new, and the
// Hasher returns the same hashes again (it caches them) when client asks for them in
// order. A client left out later only cost its hash.
func (r *renderer) prehashClients(clients []*relayv1alpha1.RelayClient) {
	if r.in.Hasher == nil {
		return
	}
	type job struct {
		key                string
		password, previous []byte
	}
	var jobs []job
	for _, c := range clients {
		s := r.in.Secrets[types.NamespacedName{Namespace: c.Namespace, Name: ClientSecretName(c)}]
		if s == nil || !metav1.IsControlledBy(s, c) {
			continue
		}
		password := s.Data[ClientKeyPassword]
		if len(password) == 0 || len(password) > maxPasswordBytes {
			continue
		}
		key, file := r.clientHash(c)
		jobs = append(jobs, job{key: key, password: password, previous: r.in.Previous[file]})
	}
	if len(jobs) < 2 {
		return
	}
	work := make(chan job)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				// Errors come again, and are reported, from the ordered pass.
				_, _ = r.in.Hasher.Hash(j.key, j.password, j.previous)
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
}

// clientHash is a client's Hasher key and the file of its password hash.
func (r *renderer) clientHash(c *relayv1alpha1.RelayClient) (key, file string) {
	id := c.Namespace + "." + c.Name
	return hasherKey(r.relayKey, "relayclient:"+id), secretFileName("client", id, "bcrypt")
}

func (r *renderer) client(cfg *config.Config, c *relayv1alpha1.RelayClient, domainNS map[string]string) ClientResult {
	fail := func(reason, format string, args ...any) ClientResult {
		return ClientResult{Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	if ClientEndpoint(r.relay).Port == 0 {
		return fail(relayv1alpha1.ReasonNoSubmissionListener,
			"SmtpRelay %s has no listener with TLS to log in on (AUTH needs TLS): give it spec.tls, and a STARTTLS or Implicit listener if spec.listeners is set", r.relayKey)
	}
	username := ClientUsername(c)
	if other, ok := r.usernames[username]; ok {
		return fail(relayv1alpha1.ReasonUserConflict, "user name %s is also the user name in Secret %s/%s of the relay's spec.auth.users: rename one of them", username, r.relay.Namespace, other)
	}
	for i, s := range c.Spec.AllowedSenders {
		dom := s
		if _, d, ok := strings.Cut(s, "@"); ok {
			dom = d
		}
		ns, ok := domainNS[config.NormalizeDomain(dom)]
		switch {
		case !ok:
			return fail(relayv1alpha1.ReasonInvalidSender,
				"spec.allowedSenders[%d] %q: domain %s is not relayed by SmtpRelay %s: add a RelayDomain for it, in namespace %s, attached to the relay", i, s, dom, r.relayKey, c.Namespace)
		case ns != c.Namespace && ns != r.relay.Namespace:
			return fail(relayv1alpha1.ReasonInvalidSender,
				"spec.allowedSenders[%d] %q: domain %s belongs to a RelayDomain in namespace %s; a client may send only from its own namespace's domains or the relay's", i, s, dom, ns)
		}
	}
	id := c.Namespace + "." + c.Name
	hashKey, file := r.clientHash(c)
	user := config.User{Username: username, PasswordHashFile: file, AllowedSenders: sortedSet(c.Spec.AllowedSenders),
		RateLimits: clientRateLimits(c.Spec.Limits, r.in.FleetSize),
		// All mail captured needs no mark on each user.
		Capture: ClientCaptured(r.relay, c, r.in.CaptureNamespaces) && (r.relay.Spec.Capture == nil || r.relay.Spec.Capture.NamespaceSelector != nil)}
	if err := fieldsAt(user.Validate(), "spec."); err != nil {
		return fail(relayv1alpha1.ReasonInvalidSender, "RelayClient %s/%s: %v", c.Namespace, c.Name, err)
	}
	secretName := ClientSecretName(c)
	s := r.in.Secrets[types.NamespacedName{Namespace: c.Namespace, Name: secretName}]
	switch {
	case s == nil:
		return fail(relayv1alpha1.ReasonProgressing, "waiting for the operator to write Secret %s/%s", c.Namespace, secretName)
	case !metav1.IsControlledBy(s, c):
		return fail(relayv1alpha1.ReasonSecretConflict,
			"Secret %s/%s exists and is not this RelayClient's: delete it, or set spec.secretName to a name not in use", c.Namespace, secretName)
	}
	password := s.Data[ClientKeyPassword]
	if len(password) == 0 || len(password) > maxPasswordBytes {
		return fail(relayv1alpha1.ReasonProgressing, "waiting for the operator to write the password into Secret %s/%s", c.Namespace, secretName)
	}
	if r.in.Hasher == nil {
		return fail(relayv1alpha1.ReasonRenderFailed, "render: Inputs.Hasher is nil but the relay has clients")
	}
	hash, err := r.in.Hasher.Hash(hashKey, password, r.in.Previous[file])
	if err != nil {
		return fail(relayv1alpha1.ReasonRenderFailed, "hashing the password of RelayClient %s/%s failed; it is retried", c.Namespace, c.Name)
	}
	r.files[file] = hash
	if prev, until, ok := previousHash(s); ok && until.After(r.in.Now) {
		pfile := secretFileName("client", id, "previous.bcrypt")
		user.PreviousPasswordHashFile = pfile
		r.files[pfile] = prev
		if r.nextChange.IsZero() || until.Before(r.nextChange) {
			r.nextChange = until
		}
	}
	r.usernames[username] = "RelayClient " + c.Namespace + "/" + c.Name
	cfg.Users = append(cfg.Users, user)
	return ClientResult{Included: true}
}

// previousHash reads the rotation's previous password hash from a client's Secret.
func previousHash(s *corev1.Secret) ([]byte, time.Time, bool) {
	h, until := s.Annotations[PreviousHashAnnotation], s.Annotations[PreviousExpiresAnnotation]
	t, err := time.Parse(time.RFC3339, until)
	if h == "" || err != nil {
		return nil, time.Time{}, false
	}
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return nil, time.Time{}, false
	}
	return []byte(h), t, true
}

// Endpoint is where a relay's clients log in.
type Endpoint struct {
	Host string
	Port int32
	// Implicit is TLS from the first byte (smtps); otherwise STARTTLS.
	Implicit bool
}

// ClientEndpoint is the relay's Service address for clients that log in: its first
// listener that requires AUTH over STARTTLS or implicit TLS, else its first with TLS.
// Port is 0 when the relay has no TLS listener.
func ClientEndpoint(relay *relayv1alpha1.SmtpRelay) Endpoint {
	host := relay.Name + "." + relay.Namespace + ".svc"
	if relay.Spec.TLS == nil {
		return Endpoint{Host: host}
	}
	var first *Listener
	ls := Listeners(relay)
	for i := range ls {
		l := &ls[i]
		if l.TLS == relayv1alpha1.TLSNone {
			continue
		}
		if l.RequireAuth {
			return Endpoint{Host: host, Port: l.Port, Implicit: l.TLS == relayv1alpha1.TLSImplicit}
		}
		if first == nil {
			first = l
		}
	}
	if first == nil {
		return Endpoint{Host: host}
	}
	return Endpoint{Host: host, Port: first.Port, Implicit: first.TLS == relayv1alpha1.TLSImplicit}
}
