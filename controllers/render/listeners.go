package render

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// Listener is one SMTP listener of a relay with every default resolved.
type Listener struct {
	// Name of the listener, also the name of its Service port and container port.
	Name string
	// Port is the Service port clients connect to.
	Port int32
	// ContainerPort is the unprivileged port the relay listens on in the pod.
	ContainerPort int32
	// TLS is None, STARTTLS or Implicit; never empty.
	TLS relayv1alpha1.TLSMode
	// RequireAuth refuses mail from clients that have not logged in.
	RequireAuth bool
	// MaxConnections is the listener's own connection limit; 0 for none.
	MaxConnections int32
}

// Default listeners, as documented on SmtpRelaySpec.Listeners.
const (
	defaultSMTPPort       = 25
	defaultSubmissionPort = 587
	// privilegedPortOffset moves a privileged Service port to an unprivileged
	// container port (25 -> 10025), since the relay runs without privileges.
	privilegedPortOffset = 10000
)

// Listeners returns the relay's listeners with the defaults of SmtpRelaySpec.Listeners
// and Listener applied, in spec order. It depends on the spec only (not on Secrets),
// so the Service, the Deployment and relay.yaml always agree.
func Listeners(relay *relayv1alpha1.SmtpRelay) []Listener {
	spec := &relay.Spec
	hasTLS := spec.TLS != nil
	src := spec.Listeners
	if len(src) == 0 {
		src = []relayv1alpha1.Listener{{Name: "smtp", Port: defaultSMTPPort}}
		// With a certificate, clients can log in: spec.auth.users, and RelayClients,
		// which attach without a change to the pods.
		if hasTLS {
			src = append(src, relayv1alpha1.Listener{
				Name: "submission", Port: defaultSubmissionPort, TLS: relayv1alpha1.TLSStartTLS, RequireAuth: true,
			})
		}
	}
	out := make([]Listener, 0, len(src))
	for _, l := range src {
		r := Listener{Name: l.Name, Port: l.Port, TLS: l.TLS, RequireAuth: l.RequireAuth}
		if l.MaxConnections != nil {
			r.MaxConnections = *l.MaxConnections
		}
		switch {
		case l.ContainerPort != nil:
			r.ContainerPort = *l.ContainerPort
		case l.Port < 1024:
			r.ContainerPort = l.Port + privilegedPortOffset
		default:
			r.ContainerPort = l.Port
		}
		if r.TLS == "" {
			r.TLS = relayv1alpha1.TLSNone
			if hasTLS {
				r.TLS = relayv1alpha1.TLSStartTLS
			}
		}
		out = append(out, r)
	}
	return out
}

// checkListeners catches what admission cannot: defaulted container ports that collide
// with each other or with the metrics port, and names Kubernetes refuses as port names.
func checkListeners(ls []Listener) *Error {
	ports := map[int32]string{HTTPPort: "the relay's http port"}
	svcPorts := map[int32]string{}
	names := map[string]bool{}
	for i, l := range ls {
		f := fmt.Sprintf("listener %q (spec.listeners[%d])", l.Name, i)
		if errs := validation.IsValidPortName(l.Name); len(errs) > 0 {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed,
				Message: fmt.Sprintf("%s: the name is not a valid port name: %s", f, strings.Join(errs, "; "))}
		}
		if l.Name == HTTPPortName {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed,
				Message: fmt.Sprintf("%s: the name %q is reserved for the relay's health and metrics port: rename the listener", f, HTTPPortName)}
		}
		if names[l.Name] {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed, Message: fmt.Sprintf("%s: the name is used by another listener", f)}
		}
		names[l.Name] = true
		if other, ok := svcPorts[l.Port]; ok {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed,
				Message: fmt.Sprintf("%s: port %d is also used by %s", f, l.Port, other)}
		}
		svcPorts[l.Port] = fmt.Sprintf("listener %q", l.Name)
		if other, ok := ports[l.ContainerPort]; ok {
			return &Error{Reason: relayv1alpha1.ReasonRenderFailed,
				Message: fmt.Sprintf("%s: container port %d is also used by %s: set spec.listeners[%d].containerPort to a free port", f, l.ContainerPort, other, i)}
		}
		ports[l.ContainerPort] = fmt.Sprintf("listener %q", l.Name)
	}
	return nil
}

// configListener is the relay.yaml form of a listener: the relay binds the container
// port on every interface.
func configListener(l Listener) config.Listener {
	return config.Listener{
		Name:           l.Name,
		Address:        fmt.Sprintf(":%d", l.ContainerPort),
		TLS:            tlsMode(l.TLS),
		RequireAuth:    l.RequireAuth,
		MaxConnections: int(l.MaxConnections),
	}
}

// tlsMode maps the API's TLS mode onto the relay's, value by value: a mode one side
// gains is not passed on as a string the other may not know. Empty stays empty (the
// relay's default, STARTTLS, which is also the API's).
func tlsMode(m relayv1alpha1.TLSMode) config.TLSMode {
	switch m {
	case relayv1alpha1.TLSNone:
		return config.TLSNone
	case relayv1alpha1.TLSStartTLS:
		return config.TLSStartTLS
	case relayv1alpha1.TLSImplicit:
		return config.TLSImplicit
	case "":
		return ""
	}
	// The CRD's enum refuses anything else; the relay's validation names it if not.
	return config.TLSMode("unknown:" + string(m))
}

// listenersSummary is a stable one-line description of the listeners as the relay
// binds them. The relay binds listeners once at start-up and cannot change them on
// reload, so this goes into the pod template: a listener change rolls the pods.
func listenersSummary(ls []Listener) string {
	parts := make([]string, 0, len(ls))
	for _, l := range ls {
		s := fmt.Sprintf("%s=%d/%s", l.Name, l.ContainerPort, l.TLS)
		if l.RequireAuth {
			s += "/requireAuth"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ",")
}
