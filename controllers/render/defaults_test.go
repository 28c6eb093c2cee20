package render

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

// TestAPIDefaultsAreTheRelays: a field the renderer leaves unset when the user did is
// defaulted by the relay, so the API's +kubebuilder:default (what kubectl explain and
// docs/api.md show, and what the API server fills in) must be the relay's own default.
// Read from the generated CRDs, so a marker changed without the relay fails here.
func TestAPIDefaultsAreTheRelays(t *testing.T) {
	for _, tc := range []struct {
		crd, path string
		want      any
	}{
		{"smtprelays", "spec.limits.maxMessageBytes", config.DefaultMaxMessageBytes},
		{"smtprelays", "spec.limits.maxRecipients", config.DefaultMaxRecipients},
		{"smtprelays", "spec.limits.maxConnections", config.DefaultMaxConnections},
		{"smtprelays", "spec.limits.maxConnectionsPerClient", config.DefaultMaxConnectionsPerClient},
		{"smtprelays", "spec.limits.maxErrors", config.DefaultMaxErrors},
		{"smtprelays", "spec.limits.commandTimeout", config.DefaultCommandTimeout},
		{"smtprelays", "spec.limits.dataTimeout", config.DefaultDataTimeout},
		{"smtprelays", "spec.limits.auth.maxFailuresPerClient", config.DefaultAuthFailuresPerClient},
		{"smtprelays", "spec.limits.auth.maxFailuresPerUser", config.DefaultAuthFailuresPerUser},
		{"smtprelays", "spec.limits.auth.failureWindow", config.DefaultAuthFailureWindow},
		{"smtprelays", "spec.limits.auth.userLockout", config.DefaultAuthUserLockout},
		{"smtprelays", "spec.limits.auth.failureDelay", config.DefaultAuthFailureDelay},
		{"smtprelays", "spec.delivery.mode", string(config.PassThrough)},
		{"smtprelays", "spec.delivery.queue.maxAge", config.DefaultQueueMaxAge},
		{"smtprelays", "spec.delivery.queue.maxMessages", config.DefaultQueueMaxMessages},
		{"smtprelays", "spec.delivery.queue.retry.first", config.DefaultRetryFirst},
		{"smtprelays", "spec.delivery.queue.retry.backoff", int(config.DefaultRetryBackoff)},
		{"smtprelays", "spec.delivery.queue.retry.maxInterval", config.DefaultRetryMaxInterval},
		{"smarthosts", "spec.maxConnections", config.DefaultUpstreamMaxConnections},
		{"smarthosts", "spec.maxMessagesPerConnection", config.DefaultMaxMessagesPerConnection},
		{"smarthosts", "spec.timeouts.connect", config.DefaultUpstreamConnectTimeout},
		{"smarthosts", "spec.timeouts.command", config.DefaultUpstreamCommandTimeout},
		{"smarthosts", "spec.timeouts.data", config.DefaultUpstreamDataTimeout},
		{"smarthosts", "spec.timeouts.idle", config.DefaultUpstreamIdleTimeout},
		{"smarthosts", "spec.tls.mode", string(config.TLSStartTLS)},
	} {
		def := crdDefault(t, tc.crd, tc.path)
		var got any
		switch want := tc.want.(type) {
		case time.Duration:
			var s string
			if err := yaml.Unmarshal(def, &s); err != nil {
				t.Fatalf("%s %s: default %s: %v", tc.crd, tc.path, def, err)
			}
			d, err := time.ParseDuration(s)
			if err != nil {
				t.Fatalf("%s %s: default %q: %v", tc.crd, tc.path, s, err)
			}
			if d.String() != s {
				// Clients re-encode a Duration as d.String(): any other spelling changes
				// the spec, and bumps the generation, at the first update of every object.
				t.Errorf("%s %s: default %q must be written %q", tc.crd, tc.path, s, d.String())
			}
			got = d
		case string:
			var s string
			_ = yaml.Unmarshal(def, &s)
			got = s
		default:
			var n int64
			if err := yaml.Unmarshal(def, &n); err != nil {
				t.Fatalf("%s %s: default %s: %v", tc.crd, tc.path, def, err)
			}
			got = n
			tc.want = toInt64(want)
		}
		if got != tc.want {
			t.Errorf("%s %s: the API defaults to %v, the relay to %v", tc.crd, tc.path, got, tc.want)
		}
	}
}

func toInt64(v any) int64 {
	switch n := v.(type) {
	case int:
		return int64(n)
	case int64:
		return n
	}
	panic(fmt.Sprintf("%T", v))
}

// crdDefault returns the default (as JSON) of the field at path in a generated CRD.
func crdDefault(t *testing.T, plural, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "config", "crd", "bases", "relay.kuberelay.io_"+plural+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	s := crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	for _, p := range strings.Split(path, ".") {
		next, ok := s.Properties[p]
		if !ok {
			t.Fatalf("%s has no field %s", plural, path)
		}
		s = &next
	}
	if s.Default == nil {
		t.Fatalf("%s %s has no default: add a +kubebuilder:default marker", plural, path)
	}
	return s.Default.Raw
}

func TestTLSModeMapsEveryValue(t *testing.T) {
	for api, relay := range map[relayv1alpha1.TLSMode]config.TLSMode{
		relayv1alpha1.TLSNone: config.TLSNone, relayv1alpha1.TLSStartTLS: config.TLSStartTLS,
		relayv1alpha1.TLSImplicit: config.TLSImplicit, "": "",
	} {
		if got := tlsMode(api); got != relay {
			t.Errorf("tlsMode(%q) = %q, want %q", api, got, relay)
		}
	}
	if got := tlsMode("Opportunistic"); got == config.TLSNone || got == config.TLSStartTLS || got == config.TLSImplicit || got == "" {
		t.Errorf("an unknown mode became the relay's %q", got)
	}
}
