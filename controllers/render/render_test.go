package render

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/relay/config"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// goldenCases render without a relay-level error; every output is compared with
// testdata/<name>/.
func goldenCases(t *testing.T) []struct {
	name string
	in   Inputs
} {
	w := newWorld(t)

	custom := minimalRelay()
	custom.Spec = relayv1alpha1.SmtpRelaySpec{
		Replicas: ptr(int32(4)),
		Image:    "registry.example/kuberelay:custom",
		TLS:      &relayv1alpha1.RelayTLS{SecretRef: relayv1alpha1.LocalObjectReference{Name: "relay-tls"}},
		Auth:     &relayv1alpha1.RelayAuth{Users: []relayv1alpha1.RelayUser{{SecretRef: relayv1alpha1.LocalObjectReference{Name: "user-app"}}}},
		Listeners: []relayv1alpha1.Listener{
			{Name: "smtp", Port: 25, TLS: relayv1alpha1.TLSNone, MaxConnections: ptr(int32(400))},
			{Name: "submission", Port: 587, RequireAuth: true},
			{Name: "smtps", Port: 465, ContainerPort: ptr(int32(2465)), TLS: relayv1alpha1.TLSImplicit, RequireAuth: true},
		},
		SmarthostRef: &relayv1alpha1.LocalObjectReference{Name: "ses"},
		Resources: &corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: mustQuantity("200m"), corev1.ResourceMemory: mustQuantity("128Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: mustQuantity("512Mi")},
		},
		NodeSelector: map[string]string{"kubernetes.io/os": "linux"},
		Tolerations:  []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "mail", Effect: corev1.TaintEffectNoSchedule}},
		Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				TopologyKey:   "topology.kubernetes.io/zone",
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/instance": relayName}},
			}},
		}},
		PriorityClassName:   "mail-critical",
		PodDisruptionBudget: &relayv1alpha1.PodDisruptionBudgetSpec{MinAvailable: ptr(intstr.FromString("50%"))},
		Limits: &relayv1alpha1.RelayLimits{
			MaxConnections: ptr(int32(500)), MaxConnectionsPerClient: ptr(int32(40)), ReservedAuthConnections: ptr(int32(100)),
			Auth: &relayv1alpha1.AuthLimits{MaxFailuresPerClient: ptr(int32(5)), MaxFailuresPerUser: ptr(int32(20)),
				FailureWindow: &metav1.Duration{Duration: time.Hour}, UserLockout: &metav1.Duration{Duration: 2 * time.Minute},
				FailureDelay: &metav1.Duration{Duration: 2 * time.Second}},
		},
	}

	single := minimalRelay()
	single.Spec.Replicas = ptr(int32(1))
	// Dropped: the API server refuses externalTrafficPolicy on a ClusterIP Service.
	single.Spec.Service = &relayv1alpha1.ServiceSpec{ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}

	crossNS := realisticRelay()
	crossNS.Spec.Domains.Namespaces.From = "All"

	noDefault := minimalRelay()

	queued := realisticRelay()
	queued.Spec.Delivery = &relayv1alpha1.DeliverySpec{Mode: relayv1alpha1.DeliveryQueue, Queue: &relayv1alpha1.QueueSpec{
		Storage: relayv1alpha1.QueueStorage{Size: ptr(mustQuantity("20Gi")), StorageClassName: ptr("fast-ssd")},
		MaxAge:  &metav1.Duration{Duration: 72 * time.Hour},
		Retry:   &relayv1alpha1.QueueRetry{First: &metav1.Duration{Duration: 2 * time.Minute}, Backoff: ptr(int32(3))},
	}}

	return []struct {
		name string
		in   Inputs
	}{
		{"minimal", w.inputs(minimalRelay())},
		{"realistic", w.inputs(realisticRelay(), realisticDomains()...)},
		{"custom", w.inputs(custom, realisticDomains()...)},
		{"single-replica", w.inputs(single)},
		{"queue", w.inputs(queued, realisticDomains()...)},
		{"cross-namespace", w.inputs(crossNS,
			realisticDomains()[1],
			withDKIM(withSmarthost(domain("team-a", "team-a", "team-a.example", 3), "mailgun"), "mg", "dkim", "private"),
			withSmarthost(domain("team-b", "team-b", "team-b.example", 4), "mailgun"),
			// team-c names no smarthost: it goes through the relay's default.
			domain("team-c", "team-c", "team-c.example", 5),
		)},
		{"domain-problems", domainProblems(t)},
		{"no-default-smarthost", w.inputs(noDefault,
			withSmarthost(domain("team-a", "routed", "team-a.example", 1), "mailgun"),
			domain("team-b", "unrouted", "team-b.example", 2),
		)},
		{"conflict", w.inputs(realisticRelay(),
			domain(relayNS, "newer", "example.com", 5),
			domain("team-b", "same-age-b", "example.com", 3),
			domain(relayNS, "oldest", "example.com", 2),
			domain("team-a", "same-age-a", "example.com", 3),
			domain(relayNS, "other", "example.org", 9),
		)},
	}
}

// domainProblems has one good domain and one domain per way a domain's own
// references can break; only the good one may render.
func domainProblems(t *testing.T) Inputs {
	w := newWorld(t)
	const ns = "team-x"
	w.addSecret(basicAuth(ns, "creds", "user", "password-six"))
	w.addSecret(secretObj(ns, "no-password", corev1.SecretTypeBasicAuth, map[string][]byte{"username": []byte("user")}))
	w.addSecret(secretObj(ns, "ca", corev1.SecretTypeOpaque, map[string][]byte{"ca.crt": fixture(t, "smarthost-ca.crt"), "junk": []byte("not a certificate")}))
	w.addSecret(secretObj(ns, "dkim", corev1.SecretTypeOpaque, map[string][]byte{
		"dkim.key":  fixture(t, "dkim-ed25519.key"),
		"short.key": fixture(t, "dkim-rsa-512.key"),
		"garbage":   []byte("-----BEGIN NONSENSE-----\n"),
		"cert":      fixture(t, "relay-tls.crt"),
	}))
	sh := func(name string, mod func(*relayv1alpha1.SmarthostSpec)) {
		s := &relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: relayv1alpha1.SmarthostSpec{
			Endpoints: []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.team-x.example", Port: 587}},
		}}
		mod(&s.Spec)
		w.addSmarthost(s)
	}
	auth := func(secret string) func(*relayv1alpha1.SmarthostSpec) {
		return func(s *relayv1alpha1.SmarthostSpec) {
			s.Auth = &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: secret}}
		}
	}
	ca := func(secret, key string) func(*relayv1alpha1.SmarthostSpec) {
		return func(s *relayv1alpha1.SmarthostSpec) {
			s.TLS.CASecretRef = &relayv1alpha1.SecretKeyReference{Name: secret, Key: key}
		}
	}
	sh("good", func(s *relayv1alpha1.SmarthostSpec) { auth("creds")(s); ca("ca", "")(s) })
	sh("auth-secret-missing", auth("missing"))
	sh("auth-key-missing", auth("no-password"))
	sh("ca-secret-missing", ca("missing", ""))
	sh("ca-key-missing", ca("ca", "other.crt"))
	sh("ca-invalid", ca("ca", "junk"))
	sh("plaintext-auth", func(s *relayv1alpha1.SmarthostSpec) { auth("creds")(s); s.TLS.Mode = relayv1alpha1.TLSNone })
	w.addSecret(secretObj(ns, "oauth", corev1.SecretTypeOpaque, map[string][]byte{"client-id": []byte("app-id"), "client-secret": []byte("oauth-client-secret-value")}))
	w.addSecret(secretObj(ns, "oauth-no-secret", corev1.SecretTypeOpaque, map[string][]byte{"client-id": []byte("app-id")}))
	oauth := func(secret string) func(*relayv1alpha1.SmarthostSpec) {
		return func(s *relayv1alpha1.SmarthostSpec) {
			s.Auth = &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{
				TokenURL: "https://login.microsoftonline.com/team-x.example/oauth2/v2.0/token", Scopes: []string{"https://outlook.office365.com/.default"},
				ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: secret}, Username: "relay@team-x.example"}}
		}
	}
	sh("oauth", oauth("oauth"))
	sh("oauth-secret-key-missing", oauth("oauth-no-secret"))

	d := func(name string, created int) relayv1alpha1.RelayDomain {
		return domain(ns, name, name+".example", created)
	}
	return w.inputs(realisticRelay(),
		withDKIM(withSmarthost(d("good", 1), "good"), "s1", "dkim", ""),
		withSmarthost(d("smarthost-missing", 2), "missing"),
		withSmarthost(d("auth-secret-missing", 3), "auth-secret-missing"),
		withSmarthost(d("auth-key-missing", 4), "auth-key-missing"),
		withSmarthost(d("ca-secret-missing", 5), "ca-secret-missing"),
		withSmarthost(d("ca-key-missing", 6), "ca-key-missing"),
		withSmarthost(d("ca-invalid", 7), "ca-invalid"),
		withSmarthost(d("plaintext-auth", 8), "plaintext-auth"),
		withDKIM(d("dkim-secret-missing", 9), "s1", "missing", ""),
		withDKIM(d("dkim-key-missing", 10), "s1", "dkim", "other.key"),
		withDKIM(d("dkim-key-too-short", 11), "s1", "dkim", "short.key"),
		withDKIM(d("dkim-key-garbage", 12), "s1", "dkim", "garbage"),
		withDKIM(d("dkim-key-is-a-certificate", 13), "s1", "dkim", "cert"),
		// Broken twice: the smarthost is reported, and the DKIM record still published.
		withDKIM(withSmarthost(d("smarthost-missing-dkim-ok", 14), "missing"), "s1", "dkim", ""),
		withSenders(d("bad-senders", 15), "not a local part"),
		// Uses the relay's default (SES), which is fine.
		d("default-route", 16),
		withSmarthost(d("oauth", 17), "oauth"),
		withSmarthost(d("oauth-secret-key-missing", 18), "oauth-secret-key-missing"),
	)
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }

func bcryptCompare(hash []byte, password string) error {
	return bcrypt.CompareHashAndPassword(hash, []byte(password))
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Config(tc.in)
			if err != nil {
				t.Fatalf("Config: %v", err)
			}
			checkRoundTrip(t, res)
			checkNoSecretValues(t, tc.in, res)

			dir := filepath.Join("testdata", tc.name)
			if *update {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
			}
			relay := tc.in.Relay
			golden(t, filepath.Join(dir, "relay.yaml"), res.ConfigYAML)
			golden(t, filepath.Join(dir, "domains.yaml"), marshal(t, domainReport(res)))
			golden(t, filepath.Join(dir, "configmap.yaml"), marshal(t, ConfigMap(relay, res)))
			golden(t, filepath.Join(dir, "secret.yaml"), marshal(t, secretReport(Secret(relay, res))))
			golden(t, filepath.Join(dir, "serviceaccount.yaml"), marshal(t, ServiceAccount(relay)))
			golden(t, filepath.Join(dir, "service.yaml"), marshal(t, Service(relay)))
			if QueueMode(relay) {
				golden(t, filepath.Join(dir, "statefulset.yaml"), marshal(t, StatefulSet(relay, testImage, Replicas(relay))))
				golden(t, filepath.Join(dir, "peerservice.yaml"), marshal(t, PeerService(relay)))
			} else {
				golden(t, filepath.Join(dir, "deployment.yaml"), marshal(t, Deployment(relay, testImage)))
			}
			pdbFile := filepath.Join(dir, "poddisruptionbudget.yaml")
			if pdb := PodDisruptionBudget(relay); pdb != nil {
				golden(t, pdbFile, marshal(t, pdb))
			} else if _, err := os.Stat(pdbFile); !*update && err == nil {
				t.Errorf("%s exists but the relay renders no PodDisruptionBudget", pdbFile)
			}
		})
	}
}

// checkRoundTrip loads the rendered configuration as a relay pod does.
func checkRoundTrip(t *testing.T, res *Result) {
	t.Helper()
	fsys := fstest.MapFS{}
	for name, b := range res.SecretData {
		if errs := validation.IsConfigMapKey(name); len(errs) > 0 || strings.Contains(name, "/") {
			t.Errorf("secret file %q is not a valid Secret key: %v", name, errs)
		}
		fsys[name] = &fstest.MapFile{Data: b}
	}
	loaded, err := config.LoadBytes(res.ConfigYAML, fsys)
	if err != nil {
		t.Fatalf("the relay refuses the rendered configuration: %v", err)
	}
	if loaded.Hash != res.Hash {
		t.Errorf("relay computes hash %s, render says %s", loaded.Hash, res.Hash)
	}
	if want := config.Hash(res.ConfigYAML, res.SecretData); res.Hash != want {
		t.Errorf("Result.Hash = %s, config.Hash = %s", res.Hash, want)
	}
	referenced := loaded.Config.ReferencedSecretFiles()
	sort.Strings(referenced)
	var have []string
	for name := range res.SecretData {
		have = append(have, name)
	}
	sort.Strings(have)
	if strings.Join(referenced, ",") != strings.Join(dedupe(referenced), ",") || strings.Join(dedupe(referenced), ",") != strings.Join(have, ",") {
		t.Errorf("secret files %v, relay.yaml references %v", have, referenced)
	}
}

func dedupe(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// secretValues are the values of every Secret in the inputs that must never appear
// in relay.yaml, a ConfigMap, a Deployment or a message. Client user names are not
// among them: relay.yaml names the users.
func secretValues(in Inputs) []string {
	userSecrets := map[string]bool{}
	if in.Relay.Spec.Auth != nil {
		for _, u := range in.Relay.Spec.Auth.Users {
			userSecrets[u.SecretRef.Name] = true
		}
	}
	var out []string
	for key, s := range in.Secrets {
		for k, v := range s.Data {
			if k == "username" && key.Namespace == in.Relay.Namespace && userSecrets[key.Name] {
				continue
			}
			if v := strings.TrimSpace(string(v)); len(v) >= 8 {
				out = append(out, v)
			}
		}
	}
	return out
}

func checkNoSecretValues(t *testing.T, in Inputs, res *Result) {
	t.Helper()
	var public []string
	public = append(public, string(res.ConfigYAML))
	public = append(public, string(marshal(t, ConfigMap(in.Relay, res))))
	public = append(public, string(marshal(t, Deployment(in.Relay, testImage))))
	public = append(public, string(marshal(t, Service(in.Relay))))
	for _, d := range res.DomainResults {
		public = append(public, d.Message)
	}
	values := secretValues(in)
	for _, v := range res.SecretData {
		if bytes.HasPrefix(v, []byte("$2")) {
			values = append(values, string(v)) // password hashes
		}
	}
	for _, p := range public {
		for _, v := range values {
			if strings.Contains(p, v) {
				t.Errorf("a secret value (%d bytes, starting %q) appears in:\n%s", len(v), v[:4], p)
			}
		}
	}
}

// domainReport is DomainResults as a sorted list, for a readable golden file.
func domainReport(res *Result) []map[string]any {
	keys := make([]types.NamespacedName, 0, len(res.DomainResults))
	for k := range res.DomainResults {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	out := []map[string]any{}
	for _, k := range keys {
		d := res.DomainResults[k]
		m := map[string]any{"relayDomain": k.String(), "included": d.Included}
		if d.Reason != "" {
			m["reason"], m["message"] = d.Reason, d.Message
		}
		if d.DKIMRecord != nil {
			m["dkimRecord"] = d.DKIMRecord
		}
		out = append(out, m)
	}
	return out
}

// secretReport shows the Secret with its data as text, so golden diffs are readable.
func secretReport(s *corev1.Secret) *corev1.Secret {
	s = s.DeepCopy()
	s.StringData = map[string]string{}
	for k, v := range s.Data {
		s.StringData[k] = string(v)
	}
	s.Data = nil
	return s
}

func marshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./controllers/render -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update to accept):\n%s", path, lineDiff(string(want), string(got)))
	}
}

// lineDiff shows the first lines that differ; enough to see what changed.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want %q\n  got  %q\n", i+1, wl, gl)
			if shown++; shown == 10 {
				b.WriteString("...\n")
				break
			}
		}
	}
	return b.String()
}

// TestDomainResults pins the reasons of domainProblems, beyond the golden file.
func TestDomainResults(t *testing.T) {
	res, err := Config(domainProblems(t))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"good":                      "",
		"default-route":             "",
		"smarthost-missing":         relayv1alpha1.ReasonSmarthostNotFound,
		"auth-secret-missing":       relayv1alpha1.ReasonSecretNotFound,
		"auth-key-missing":          relayv1alpha1.ReasonSecretKeyMissing,
		"ca-secret-missing":         relayv1alpha1.ReasonSecretNotFound,
		"ca-key-missing":            relayv1alpha1.ReasonSecretKeyMissing,
		"ca-invalid":                relayv1alpha1.ReasonInvalidSecret,
		"plaintext-auth":            relayv1alpha1.ReasonSmarthostNotReady,
		"dkim-secret-missing":       relayv1alpha1.ReasonSecretNotFound,
		"dkim-key-missing":          relayv1alpha1.ReasonSecretKeyMissing,
		"dkim-key-too-short":        relayv1alpha1.ReasonInvalidDKIMKey,
		"dkim-key-garbage":          relayv1alpha1.ReasonInvalidDKIMKey,
		"dkim-key-is-a-certificate": relayv1alpha1.ReasonInvalidDKIMKey,
		"smarthost-missing-dkim-ok": relayv1alpha1.ReasonSmarthostNotFound,
		"bad-senders":               relayv1alpha1.ReasonRenderFailed,
		"oauth":                     "",
		"oauth-secret-key-missing":  relayv1alpha1.ReasonSecretKeyMissing,
	}
	if len(res.DomainResults) != len(want) {
		t.Errorf("%d domain results, want %d", len(res.DomainResults), len(want))
	}
	for name, reason := range want {
		got, ok := res.DomainResults[types.NamespacedName{Namespace: "team-x", Name: name}]
		if !ok {
			t.Errorf("%s: no result", name)
			continue
		}
		if got.Included != (reason == "") || got.Reason != reason {
			t.Errorf("%s: included=%v reason=%q, want reason %q", name, got.Included, got.Reason, reason)
		}
		if reason != "" && got.Message == "" {
			t.Errorf("%s: no message", name)
		}
		in := false
		for _, d := range res.Config.Domains {
			in = in || d.Domain == name+".example"
		}
		if in != (reason == "") {
			t.Errorf("%s: in relay.yaml = %v", name, in)
		}
	}
	if r := res.DomainResults[types.NamespacedName{Namespace: "team-x", Name: "smarthost-missing-dkim-ok"}]; r.DKIMRecord == nil {
		t.Error("a domain left out for its smarthost should still get its DKIM record")
	}
	// Upstreams only for smarthosts in use: SES (default), team-x/good and team-x/oauth.
	var ups []string
	for _, u := range res.Config.Upstreams {
		ups = append(ups, u.Name)
	}
	if len(ups) != 3 || ups[0] != "ses" || !strings.HasPrefix(ups[1], "team-x-good-") || !strings.HasPrefix(ups[2], "team-x-oauth-") {
		t.Errorf("upstreams %v, want ses, team-x-good-<hash> and team-x-oauth-<hash>", ups)
	}
	if a := res.Config.Upstreams[2].Auth; a == nil || a.OAuth2 == nil || a.PasswordFile != "" || a.Mechanism != "" {
		t.Errorf("the OAuth 2.0 smarthost renders as %+v, want oauth2 and no password", a)
	}
}

func TestConflict(t *testing.T) {
	w := newWorld(t)
	in := w.inputs(realisticRelay(),
		domain(relayNS, "newer", "example.com", 5),
		domain("team-b", "same-age-b", "example.com", 3),
		domain(relayNS, "oldest", "example.com", 2),
		domain("team-a", "same-age-a", "example.com", 3),
	)
	res, err := Config(in)
	if err != nil {
		t.Fatal(err)
	}
	if r := res.DomainResults[types.NamespacedName{Namespace: relayNS, Name: "oldest"}]; !r.Included {
		t.Errorf("the oldest RelayDomain should win: %+v", r)
	}
	for _, k := range []types.NamespacedName{{Namespace: relayNS, Name: "newer"}, {Namespace: "team-a", Name: "same-age-a"}, {Namespace: "team-b", Name: "same-age-b"}} {
		r := res.DomainResults[k]
		if r.Included || r.Reason != relayv1alpha1.ReasonDomainConflict || !strings.Contains(r.Message, relayNS+"/oldest") {
			t.Errorf("%s: %+v, want a DomainConflict naming %s/oldest", k, r, relayNS)
		}
	}
	// Without the oldest, the tie is broken by namespace/name.
	in.Domains = []relayv1alpha1.RelayDomain{in.Domains[0], in.Domains[1], in.Domains[3]}
	res, err = Config(in)
	if err != nil {
		t.Fatal(err)
	}
	if r := res.DomainResults[types.NamespacedName{Namespace: "team-a", Name: "same-age-a"}]; !r.Included {
		t.Errorf("team-a/same-age-a should win the tie: %+v", r)
	}
	// The winner keeps the domain even when it is broken, so ownership does not flip.
	in = w.inputs(realisticRelay(),
		withSmarthost(domain(relayNS, "old-broken", "example.com", 1), "missing"),
		domain(relayNS, "new-fine", "example.com", 2),
	)
	res, err = Config(in)
	if err != nil {
		t.Fatal(err)
	}
	if r := res.DomainResults[types.NamespacedName{Namespace: relayNS, Name: "new-fine"}]; r.Reason != relayv1alpha1.ReasonDomainConflict {
		t.Errorf("new-fine: %+v, want DomainConflict", r)
	}
	if len(res.Config.Domains) != 0 {
		t.Errorf("domains %v, want none", res.Config.Domains)
	}
}

func TestRelayErrors(t *testing.T) {
	cases := []struct {
		name    string
		mod     func(*world, *relayv1alpha1.SmtpRelay)
		reason  string
		message string // a part of the message
	}{
		{"tls secret missing", func(w *world, r *relayv1alpha1.SmtpRelay) { r.Spec.TLS.SecretRef.Name = "missing" },
			relayv1alpha1.ReasonSecretNotFound, "Secret mail/missing (spec.tls.secretRef"},
		{"tls key missing", func(w *world, r *relayv1alpha1.SmtpRelay) {
			delete(w.secrets[key(relayNS, "relay-tls")].Data, "tls.key")
		},
			relayv1alpha1.ReasonSecretKeyMissing, `has no key "tls.key"`},
		{"tls not a pair", func(w *world, r *relayv1alpha1.SmtpRelay) {
			w.secrets[key(relayNS, "relay-tls")].Data["tls.key"] = fixture(t, "relay-tls-renewed.key")
		}, relayv1alpha1.ReasonInvalidSecret, "not a matching PEM certificate and private key"},
		{"user secret missing", func(w *world, r *relayv1alpha1.SmtpRelay) { delete(w.secrets, key(relayNS, "user-app")) },
			relayv1alpha1.ReasonSecretNotFound, "Secret mail/user-app (spec.auth.users[1].secretRef"},
		{"user password missing", func(w *world, r *relayv1alpha1.SmtpRelay) {
			delete(w.secrets[key(relayNS, "user-app")].Data, "password")
		},
			relayv1alpha1.ReasonSecretKeyMissing, `Secret mail/user-app (spec.auth.users[1].secretRef of SmtpRelay mail/relay) has no key "password"`},
		{"user username missing", func(w *world, r *relayv1alpha1.SmtpRelay) {
			delete(w.secrets[key(relayNS, "user-app")].Data, "username")
		},
			relayv1alpha1.ReasonSecretKeyMissing, `has no key "username"`},
		{"user password empty", func(w *world, r *relayv1alpha1.SmtpRelay) {
			w.secrets[key(relayNS, "user-app")].Data["password"] = []byte("\n")
		},
			relayv1alpha1.ReasonInvalidSecret, "password is empty"},
		{"user password too long", func(w *world, r *relayv1alpha1.SmtpRelay) {
			w.secrets[key(relayNS, "user-app")].Data["password"] = bytes.Repeat([]byte("x"), 73)
		}, relayv1alpha1.ReasonInvalidSecret, "longer than 72 bytes"},
		{"user name with a line break", func(w *world, r *relayv1alpha1.SmtpRelay) {
			w.secrets[key(relayNS, "user-app")].Data["username"] = []byte("a\nb")
		}, relayv1alpha1.ReasonInvalidSecret, "may not contain"},
		{"duplicate user name", func(w *world, r *relayv1alpha1.SmtpRelay) {
			w.secrets[key(relayNS, "user-app")].Data["username"] = []byte("billing")
		}, relayv1alpha1.ReasonInvalidSecret, `user name "billing" is also the user name in Secret mail/user-billing`},
		{"user allowedSenders invalid", func(w *world, r *relayv1alpha1.SmtpRelay) {
			r.Spec.Auth.Users[0].AllowedSenders = []string{"@@"}
		}, relayv1alpha1.ReasonRenderFailed, "spec.auth.users[0].allowedSenders[0]"},
		{"smarthost missing", func(w *world, r *relayv1alpha1.SmtpRelay) { r.Spec.SmarthostRef.Name = "missing" },
			relayv1alpha1.ReasonSmarthostNotFound, "Smarthost mail/missing (spec.smarthostRef) not found"},
		{"smarthost auth secret missing", func(w *world, r *relayv1alpha1.SmtpRelay) { delete(w.secrets, key(relayNS, "ses-credentials")) },
			relayv1alpha1.ReasonSecretNotFound, "Smarthost mail/ses: Secret mail/ses-credentials (spec.auth.secretRef) not found"},
		{"smarthost ca invalid", func(w *world, r *relayv1alpha1.SmtpRelay) {
			w.secrets[key(relayNS, "ses-ca")].Data["ca.crt"] = []byte("nope")
		}, relayv1alpha1.ReasonInvalidSecret, "holds no PEM certificate"},
		{"smarthost password empty", func(w *world, r *relayv1alpha1.SmtpRelay) {
			w.secrets[key(relayNS, "ses-credentials")].Data["password"] = nil
		}, relayv1alpha1.ReasonInvalidSecret, "password is empty"},
		{"null sender without smarthost", func(w *world, r *relayv1alpha1.SmtpRelay) { r.Spec.SmarthostRef = nil },
			relayv1alpha1.ReasonNoSmarthost, "spec.nullSender is Allow"},
		{"listener on the http port", func(w *world, r *relayv1alpha1.SmtpRelay) {
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 9090}}
		}, relayv1alpha1.ReasonRenderFailed, "container port 9090 is also used by the relay's http port"},
		{"defaulted container ports collide", func(w *world, r *relayv1alpha1.SmtpRelay) {
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 25}, {Name: "alt", Port: 10025}}
		}, relayv1alpha1.ReasonRenderFailed, `container port 10025 is also used by listener "smtp"`},
		{"listener named http", func(w *world, r *relayv1alpha1.SmtpRelay) {
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "http", Port: 25}}
		}, relayv1alpha1.ReasonRenderFailed, "reserved"},
		{"listener name not a port name", func(w *world, r *relayv1alpha1.SmtpRelay) {
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "a--b", Port: 25}}
		}, relayv1alpha1.ReasonRenderFailed, "not a valid port name"},
		{"requireAuth without TLS", func(w *world, r *relayv1alpha1.SmtpRelay) {
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 25, TLS: relayv1alpha1.TLSNone, RequireAuth: true}}
		}, relayv1alpha1.ReasonRenderFailed, "requireAuth"},
		{"relay name unusable", func(w *world, r *relayv1alpha1.SmtpRelay) { r.Name = "1.relay" },
			relayv1alpha1.ReasonRenderFailed, "SmtpRelay name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			relay := realisticRelay()
			tc.mod(w, relay)
			in := w.inputs(relay, realisticDomains()...)
			res, err := Config(in)
			var rerr *Error
			if !errors.As(err, &rerr) {
				t.Fatalf("Config = %v, %v; want an *Error", res, err)
			}
			if rerr.Reason != tc.reason || !strings.Contains(rerr.Message, tc.message) {
				t.Errorf("got %s: %s\nwant %s: ...%s...", rerr.Reason, rerr.Message, tc.reason, tc.message)
			}
			for _, v := range secretValues(in) {
				if strings.Contains(rerr.Message, v) {
					t.Errorf("the message contains a secret value: %s", rerr.Message)
				}
			}
		})
	}
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func TestDeterministic(t *testing.T) {
	w := newWorld(t)
	for _, tc := range goldenCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Config(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			// Same objects, other order, a fresh hasher, copies of everything.
			in := tc.in
			in.Relay = tc.in.Relay.DeepCopy()
			in.Domains = nil
			for i := len(tc.in.Domains) - 1; i >= 0; i-- {
				in.Domains = append(in.Domains, *tc.in.Domains[i].DeepCopy())
			}
			in.Hasher = &fakeHasher{}
			b, err := Config(in)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a.ConfigYAML, b.ConfigYAML) || a.Hash != b.Hash {
				t.Errorf("two renders differ:\n%s", lineDiff(string(a.ConfigYAML), string(b.ConfigYAML)))
			}
			if !bytes.Equal(marshal(t, Secret(tc.in.Relay, a)), marshal(t, Secret(in.Relay, b))) {
				t.Error("Secrets differ")
			}
			if !bytes.Equal(marshal(t, Deployment(tc.in.Relay, testImage)), marshal(t, Deployment(in.Relay, testImage))) {
				t.Error("Deployments differ")
			}
		})
	}
	// Reordering set-like lists in the spec changes nothing.
	r1 := realisticRelay()
	r2 := realisticRelay()
	r2.Spec.AllowedNetworks = []string{"10.0.0.0/8", "fd00::/8"}
	r2.Spec.Auth.Users[0], r2.Spec.Auth.Users[1] = r2.Spec.Auth.Users[1], r2.Spec.Auth.Users[0]
	r2.Spec.Auth.Users[1].AllowedSenders = []string{"example.org", "invoices@example.com"}
	a, err := Config(w.inputs(r1, realisticDomains()...))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Config(w.inputs(r2, realisticDomains()...))
	if err != nil {
		t.Fatal(err)
	}
	if a.Hash != b.Hash {
		t.Errorf("reordered sets change the configuration:\n%s", lineDiff(string(a.ConfigYAML), string(b.ConfigYAML)))
	}
}

// TestPodTemplateStable: what hot-reloads must not restart pods.
func TestPodTemplateStable(t *testing.T) {
	base := Deployment(realisticRelay(), testImage)
	baseRes, err := Config(newWorld(t).inputs(realisticRelay(), realisticDomains()...))
	if err != nil {
		t.Fatal(err)
	}
	same := []struct {
		name string
		mod  func(*world, *relayv1alpha1.SmtpRelay, *[]relayv1alpha1.RelayDomain)
	}{
		{"domain added", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			*d = append(*d, domain("team-c", "c", "team-c.example", 7))
		}},
		{"domains removed", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) { *d = nil }},
		{"user removed", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			r.Spec.Auth.Users = r.Spec.Auth.Users[:1]
		}},
		{"password changed", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			w.secrets[key(relayNS, "user-app")].Data["password"] = []byte("a-new-password")
		}},
		{"certificate renewed", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			w.secrets[key(relayNS, "relay-tls")].Data["tls.crt"] = fixture(t, "relay-tls-renewed.crt")
			w.secrets[key(relayNS, "relay-tls")].Data["tls.key"] = fixture(t, "relay-tls-renewed.key")
		}},
		{"DKIM key rotated", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			w.secrets[key(relayNS, "dkim-example-com")].Data["dkim.key"] = fixture(t, "dkim-ed25519.key")
		}},
		{"connection and AUTH limits", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			// The default listeners, written out, with a limit of their own: a reload,
			// not a rollout.
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 25, MaxConnections: ptr(int32(300))},
				{Name: "submission", Port: 587, TLS: relayv1alpha1.TLSStartTLS, RequireAuth: true}}
			r.Spec.Limits.MaxConnectionsPerClient = ptr(int32(20))
			r.Spec.Limits.Auth = &relayv1alpha1.AuthLimits{MaxFailuresPerClient: ptr(int32(3))}
		}},
		{"limits, networks, null sender, route", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			r.Spec.Limits = &relayv1alpha1.RelayLimits{MaxRecipients: ptr(int32(10))}
			r.Spec.AllowedNetworks = nil
			r.Spec.NullSender = "Reject"
			w.smarthosts[key(relayNS, "ses")].Spec.MaxConnections = 3
		}},
		{"service", func(w *world, r *relayv1alpha1.SmtpRelay, d *[]relayv1alpha1.RelayDomain) {
			r.Spec.Service = nil
		}},
	}
	for _, tc := range same {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			relay := realisticRelay()
			domains := realisticDomains()
			tc.mod(w, relay, &domains)
			res, err := Config(w.inputs(relay, domains...))
			if err != nil {
				t.Fatal(err)
			}
			if res.Hash == baseRes.Hash && tc.name != "service" {
				t.Error("the change did not change the configuration: the test tests nothing")
			}
			got := Deployment(relay, testImage)
			if !bytes.Equal(marshal(t, got.Spec.Template), marshal(t, base.Spec.Template)) {
				t.Errorf("pod template changed:\n%s", lineDiff(string(marshal(t, base.Spec.Template)), string(marshal(t, got.Spec.Template))))
			}
		})
	}
	// And what cannot hot-reload does change it.
	changed := []struct {
		name string
		mod  func(*relayv1alpha1.SmtpRelay)
	}{
		{"image", func(r *relayv1alpha1.SmtpRelay) { r.Spec.Image = "other:1" }},
		{"listener port", func(r *relayv1alpha1.SmtpRelay) {
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 2525}}
		}},
		{"listener TLS mode", func(r *relayv1alpha1.SmtpRelay) {
			r.Spec.Listeners = []relayv1alpha1.Listener{{Name: "smtp", Port: 25, TLS: relayv1alpha1.TLSNone},
				{Name: "submission", Port: 587, TLS: relayv1alpha1.TLSStartTLS, RequireAuth: true}}
		}},
		{"resources", func(r *relayv1alpha1.SmtpRelay) {
			r.Spec.Resources = &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: mustQuantity("1")}}
		}},
		{"scheduling", func(r *relayv1alpha1.SmtpRelay) { r.Spec.NodeSelector = map[string]string{"a": "b"} }},
	}
	for _, tc := range changed {
		t.Run(tc.name, func(t *testing.T) {
			relay := realisticRelay()
			tc.mod(relay)
			if bytes.Equal(marshal(t, Deployment(relay, testImage).Spec.Template), marshal(t, base.Spec.Template)) {
				t.Error("pod template unchanged")
			}
		})
	}
}

// TestConfigWithDefaultHasher: real bcrypt hashes verify, and a restarted operator
// (empty cache) renders the same Secret from the previous one.
func TestConfigWithDefaultHasher(t *testing.T) {
	w := newWorld(t)
	in := w.inputs(realisticRelay(), realisticDomains()...)
	in.Hasher = &DefaultHasher{Cost: 4}
	a, err := Config(in)
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{}
	for name, b := range a.SecretData {
		fsys[name] = &fstest.MapFile{Data: b}
	}
	loaded, err := config.LoadBytes(a.ConfigYAML, fsys)
	if err != nil {
		t.Fatal(err)
	}
	if err := bcryptCompare(loaded.PasswordHashes["app"][0], "app-password-one"); err != nil {
		t.Errorf("app's hash does not verify its password (trailing newline trimmed): %v", err)
	}
	// Same hasher: cached.
	b, err := Config(in)
	if err != nil {
		t.Fatal(err)
	}
	if a.Hash != b.Hash {
		t.Error("a second render with the same hasher re-hashed")
	}
	// A new operator process: the previous Secret's hashes are kept.
	in.Hasher = &DefaultHasher{Cost: 4}
	in.Previous = a.SecretData
	c, err := Config(in)
	if err != nil {
		t.Fatal(err)
	}
	if a.Hash != c.Hash {
		t.Error("a restarted operator re-hashed passwords that did not change")
	}
	// Without the previous Secret, it cannot know: new salts, new hash.
	in.Hasher = &DefaultHasher{Cost: 4}
	in.Previous = nil
	d, err := Config(in)
	if err != nil {
		t.Fatal(err)
	}
	if a.Hash == d.Hash {
		t.Error("expected fresh hashes without a previous Secret")
	}
}

func TestUpstreamNames(t *testing.T) {
	long := strings.Repeat("x", 70)
	keys := []types.NamespacedName{
		{Namespace: relayNS, Name: "ses"},
		{Namespace: relayNS, Name: "with.dots"},
		{Namespace: relayNS, Name: long},
		{Namespace: "a-b", Name: "c"},
		{Namespace: "a", Name: "b-c"},
		{Namespace: "team-a", Name: "mailgun"},
	}
	names := upstreamNames(relayNS, keys)
	// A Smarthost named exactly like another's hashed name.
	squatter := types.NamespacedName{Namespace: relayNS, Name: names[key("team-a", "mailgun")]}
	names2 := upstreamNames(relayNS, append(keys, squatter))
	for _, ns := range []map[types.NamespacedName]string{names, names2} {
		seen := map[string]types.NamespacedName{}
		for k, n := range ns {
			if !upstreamNameRE.MatchString(n) {
				t.Errorf("%s: %q is not a valid upstream name", k, n)
			}
			if o, ok := seen[n]; ok {
				t.Errorf("%s and %s are both %q", k, o, n)
			}
			seen[n] = k
		}
	}
	if names[key(relayNS, "ses")] != "ses" {
		t.Errorf("a Smarthost in the relay's namespace keeps its name, got %q", names[key(relayNS, "ses")])
	}
	if names2[squatter] != squatter.Name {
		t.Errorf("the plain name wins: %q", names2[squatter])
	}
	// Stable: adding another Smarthost renames nobody else.
	more := upstreamNames(relayNS, append(keys[:len(keys):len(keys)], key("team-z", "other")))
	for _, k := range keys {
		if more[k] != names[k] {
			t.Errorf("%s renamed from %q to %q", k, names[k], more[k])
		}
	}
}

func TestSecretFileName(t *testing.T) {
	long := strings.Repeat("a", 250)
	for _, id := range []string{"example.com", long, "bad/char", long + "b"} {
		n := secretFileName("dkim", id, "key")
		if errs := validation.IsConfigMapKey(n); len(errs) > 0 {
			t.Errorf("%q: %v", n, errs)
		}
	}
	if secretFileName("dkim", long, "key") == secretFileName("dkim", long+"b", "key") {
		t.Error("long ids collide")
	}
	if got := secretFileName("dkim", "example.com", "key"); got != "dkim.example.com.key" {
		t.Errorf("got %q", got)
	}
}

func TestInternalErrors(t *testing.T) {
	if _, err := Config(Inputs{}); err == nil {
		t.Error("no error without a relay")
	}
	w := newWorld(t)
	in := w.inputs(realisticRelay())
	in.Hasher = nil
	_, err := Config(in)
	var rerr *Error
	if err == nil || errors.As(err, &rerr) {
		t.Errorf("a missing Hasher is the caller's bug, not the user's: %v", err)
	}
}

func TestCheckSmarthost(t *testing.T) {
	cases := []struct {
		name    string
		mod     func(*world, *relayv1alpha1.Smarthost)
		reason  string // "" for usable
		message string
	}{
		{"usable", func(*world, *relayv1alpha1.Smarthost) {}, "", ""},
		{"credentials missing", func(w *world, _ *relayv1alpha1.Smarthost) { delete(w.secrets, key(relayNS, "ses-credentials")) },
			relayv1alpha1.ReasonSecretNotFound, "Secret mail/ses-credentials (spec.auth.secretRef) not found"},
		{"password key missing", func(w *world, _ *relayv1alpha1.Smarthost) {
			delete(w.secrets[key(relayNS, "ses-credentials")].Data, "password")
		}, relayv1alpha1.ReasonSecretKeyMissing, `has no key "password"`},
		{"ca not PEM", func(w *world, _ *relayv1alpha1.Smarthost) {
			w.secrets[key(relayNS, "ses-ca")].Data["ca.crt"] = []byte("nope")
		}, relayv1alpha1.ReasonInvalidSecret, "holds no PEM certificate"},
		{"mechanism the relay refuses", func(_ *world, sh *relayv1alpha1.Smarthost) { sh.Spec.Auth.Mechanism = "CRAM-MD5" },
			relayv1alpha1.ReasonSmarthostNotReady, "spec.auth.mechanism"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			sh := w.smarthosts[key(relayNS, "ses")].DeepCopy()
			tc.mod(w, sh)
			err := CheckSmarthost(sh, w.secrets)
			switch {
			case tc.reason == "" && err != nil:
				t.Fatalf("CheckSmarthost = %s: %s; want nil", err.Reason, err.Message)
			case tc.reason == "":
			case err == nil:
				t.Fatalf("CheckSmarthost = nil; want %s", tc.reason)
			case err.Reason != tc.reason || !strings.Contains(err.Message, tc.message):
				t.Errorf("got %s: %s\nwant %s: ...%s...", err.Reason, err.Message, tc.reason, tc.message)
			}
			if err != nil && (strings.Contains(err.Message, "ses-smtp-password-three") || strings.Contains(err.Message, "AKIAEXAMPLEUSERNAME1")) {
				t.Errorf("the message contains a secret value: %s", err.Message)
			}
		})
	}
}

// Each provider renders its endpoint, and Microsoft 365 its token endpoint, scope and
// limits; what the user sets wins.
func TestProviders(t *testing.T) {
	w := newWorld(t)
	w.addSecret(basicAuth(relayNS, "provider-creds", "user", "provider-password"))
	w.addSecret(secretObj(relayNS, "m365-oauth", corev1.SecretTypeOpaque, map[string][]byte{"client-id": []byte("id"), "client-secret": []byte("m365-secret")}))
	password := &relayv1alpha1.SmarthostAuth{SecretRef: &relayv1alpha1.LocalObjectReference{Name: "provider-creds"}}
	render := func(spec relayv1alpha1.SmarthostSpec) (config.Upstream, *Error) {
		t.Helper()
		sh := &relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Namespace: relayNS, Name: "provider"}, Spec: spec}
		if spec.TLS.Mode == "" {
			sh.Spec.TLS.Mode = relayv1alpha1.TLSStartTLS // the API's default
		}
		w.addSmarthost(sh)
		relay := minimalRelay()
		relay.Spec.SmarthostRef = &relayv1alpha1.LocalObjectReference{Name: "provider"}
		res, err := Config(w.inputs(relay))
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				return config.Upstream{}, e
			}
			t.Fatal(err)
		}
		return res.Config.Upstreams[0], nil
	}
	for _, tc := range []struct {
		provider, region, host string
	}{
		{"SES", "eu-west-1", "email-smtp.eu-west-1.amazonaws.com"},
		{"SendGrid", "", "smtp.sendgrid.net"},
		{"Mailgun", "", "smtp.mailgun.org"},
		{"Mailgun", "eu", "smtp.eu.mailgun.org"},
		{"Microsoft365", "", "smtp.office365.com"},
		{"GoogleWorkspace", "", "smtp.gmail.com"},
		{"Postmark", "", "smtp.postmarkapp.com"},
	} {
		u, e := render(relayv1alpha1.SmarthostSpec{Provider: tc.provider, Region: tc.region, Auth: password})
		if e != nil {
			t.Fatalf("%s: %v", tc.provider, e)
		}
		if len(u.Endpoints) != 1 || u.Endpoints[0].Host != tc.host || u.Endpoints[0].Port != 587 || u.TLS.Mode != config.TLSStartTLS {
			t.Errorf("%s %s: endpoints %+v, TLS %s; want %s:587 with STARTTLS", tc.provider, tc.region, u.Endpoints, u.TLS.Mode, tc.host)
		}
	}
	// Microsoft 365 with OAuth 2.0: the tenant's token endpoint, the Exchange scope,
	// Exchange Online's limits.
	u, e := render(relayv1alpha1.SmarthostSpec{Provider: "Microsoft365", Auth: &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{
		TenantID: "contoso.onmicrosoft.com", ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "m365-oauth"}, Username: "relay@contoso.example"}}})
	if e != nil {
		t.Fatal(e)
	}
	if o := u.Auth.OAuth2; o.TokenURL != "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token" ||
		strings.Join(o.Scopes, " ") != "https://outlook.office365.com/.default" {
		t.Errorf("Microsoft 365 OAuth 2.0: %+v", o)
	}
	if l := u.RateLimits; l == nil || l.MessagesPerMinute != 30 || l.RecipientsPerDay != 10000 {
		t.Errorf("Microsoft 365 limits: %+v", l)
	}
	// Explicit fields win: an endpoint, limits.
	u, e = render(relayv1alpha1.SmarthostSpec{Provider: "SendGrid", Auth: password, Endpoints: []relayv1alpha1.SmarthostEndpoint{{Host: "smtp.eu.sendgrid.net", Port: 2525}}})
	if e != nil || u.Endpoints[0].Host != "smtp.eu.sendgrid.net" || u.Endpoints[0].Port != 2525 {
		t.Errorf("explicit endpoint: %+v %v", u.Endpoints, e)
	}
	u, e = render(relayv1alpha1.SmarthostSpec{Provider: "Microsoft365", Auth: password, Limits: &relayv1alpha1.RateLimits{MessagesPerHour: 100}})
	if e != nil || u.RateLimits == nil || u.RateLimits.MessagesPerMinute != 0 || u.RateLimits.MessagesPerHour != 100 {
		t.Errorf("explicit limits: %+v %v", u.RateLimits, e)
	}
	// SES without a region says what to add.
	if _, e := render(relayv1alpha1.SmarthostSpec{Provider: "SES", Auth: password}); e == nil || !strings.Contains(e.Message, "spec.region is required") {
		t.Errorf("SES without region: %v", e)
	}
	// OAuth 2.0 without a token endpoint names the field.
	if _, e := render(relayv1alpha1.SmarthostSpec{Provider: "SendGrid", Auth: &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{
		ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "m365-oauth"}, Username: "u"}}}); e == nil || !strings.Contains(e.Message, "spec.auth.oauth2.tokenURL") {
		t.Errorf("no token URL: %v", e)
	}
}

// An OAuth 2.0 client with a certificate renders the certificate and key, no secret;
// a Secret with both, or a key that is not RSA, is named.
func TestOAuth2ClientCertificateRendered(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	render := func(data map[string][]byte) (*Result, error) {
		w := newWorld(t)
		w.addSecret(secretObj(relayNS, "m365", corev1.SecretTypeOpaque, data))
		w.addSmarthost(&relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Namespace: relayNS, Name: "m365"}, Spec: relayv1alpha1.SmarthostSpec{
			Provider: "Microsoft365", TLS: relayv1alpha1.SmarthostTLS{Mode: relayv1alpha1.TLSStartTLS},
			Auth: &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{TenantID: "contoso.example",
				ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "m365"}, Username: "relay@contoso.example"}}}})
		relay := minimalRelay()
		relay.Spec.SmarthostRef = &relayv1alpha1.LocalObjectReference{Name: "m365"}
		return Config(w.inputs(relay))
	}
	res, err := render(map[string][]byte{"client-id": []byte("id"), "tls.crt": certPEM, "tls.key": keyPEM})
	if err != nil {
		t.Fatal(err)
	}
	o := res.Config.Upstreams[0].Auth.OAuth2
	if o.ClientCertificateFile == "" || o.ClientKeyFile == "" || o.ClientSecretFile != "" || !bytes.Equal(res.SecretData[o.ClientKeyFile], keyPEM) {
		t.Fatalf("certificate client rendered as %+v", o)
	}
	if strings.Contains(string(res.ConfigYAML), "PRIVATE KEY") {
		t.Fatal("the key is in relay.yaml")
	}
	_, err = render(map[string][]byte{"client-id": []byte("id"), "client-secret": []byte("s"), "tls.crt": certPEM, "tls.key": keyPEM})
	if err == nil || !strings.Contains(err.Error(), "holds both client-secret and tls.crt") {
		t.Errorf("secret and certificate: %v", err)
	}
	_, err = render(map[string][]byte{"client-id": []byte("id"), "tls.crt": fixture(t, "relay-tls.crt"), "tls.key": fixture(t, "relay-tls.key")})
	if err == nil || !strings.Contains(err.Error(), "its RSA key (tls.key)") {
		t.Errorf("an ECDSA client key: %v", err)
	}
}

// A Google Workspace Smarthost with a service account key renders the key and the
// Gmail scope; the token endpoint comes from the key.
func TestGoogleServiceAccountRendered(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	sa := fmt.Sprintf(`{"type":"service_account","client_email":"relay@p.iam.gserviceaccount.com","private_key_id":"k1","private_key":%q,"token_uri":"https://oauth2.googleapis.com/token"}`,
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	render := func(data map[string][]byte) (*Result, error) {
		w := newWorld(t)
		w.addSecret(secretObj(relayNS, "google", corev1.SecretTypeOpaque, data))
		w.addSmarthost(&relayv1alpha1.Smarthost{ObjectMeta: metav1.ObjectMeta{Namespace: relayNS, Name: "google"}, Spec: relayv1alpha1.SmarthostSpec{
			Provider: "GoogleWorkspace", TLS: relayv1alpha1.SmarthostTLS{Mode: relayv1alpha1.TLSStartTLS},
			Auth: &relayv1alpha1.SmarthostAuth{OAuth2: &relayv1alpha1.SmarthostOAuth2{
				ClientSecretRef: relayv1alpha1.LocalObjectReference{Name: "google"}, Username: "relay@example.com"}}}})
		relay := minimalRelay()
		relay.Spec.SmarthostRef = &relayv1alpha1.LocalObjectReference{Name: "google"}
		return Config(w.inputs(relay))
	}
	res, err := render(map[string][]byte{"service-account.json": []byte(sa)})
	if err != nil {
		t.Fatal(err)
	}
	u := res.Config.Upstreams[0]
	if o := u.Auth.OAuth2; o.ServiceAccountFile == "" || o.ClientIDFile != "" || o.TokenURL != "" || strings.Join(o.Scopes, " ") != "https://mail.google.com/" ||
		u.Endpoints[0].Host != "smtp.gmail.com" {
		t.Fatalf("rendered as %+v %+v", u.Endpoints, o)
	}
	if _, err := render(map[string][]byte{"service-account.json": []byte(`{"client_email":"x"}`)}); err == nil || !strings.Contains(err.Error(), "service-account.json") {
		t.Errorf("a broken key: %v", err)
	}
}
