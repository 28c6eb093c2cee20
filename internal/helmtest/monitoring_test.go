package helmtest_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers"
	"github.com/kuberelay/kuberelay/controllers/render"
	"github.com/kuberelay/kuberelay/relay/metrics"
)

// metricRef finds the kuberelay metrics a PromQL expression names.
var metricRef = regexp.MustCompile(`\bkuberelay_[a-z0-9_]+`)

// exported are the metric names the relay pods and the manager serve, histograms'
// series included.
func exported() []string {
	var out []string
	for _, n := range append(metrics.Names(), controllers.MetricNames...) {
		out = append(out, n, n+"_bucket", n+"_sum", n+"_count")
	}
	return out
}

// checkQueries fails for a query that names no kuberelay metric or one nobody
// exports.
func checkQueries(t *testing.T, what string, exprs []string) {
	t.Helper()
	known := exported()
	if len(exprs) == 0 {
		t.Fatalf("%s: no queries found", what)
	}
	for _, e := range exprs {
		refs := metricRef.FindAllString(e, -1)
		if len(refs) == 0 {
			t.Errorf("%s: %q names no kuberelay metric", what, e)
		}
		for _, r := range refs {
			if !slices.Contains(known, r) {
				t.Errorf("%s: %q names %s, which neither the relay nor the manager exports", what, e, r)
			}
		}
	}
}

// The PrometheusRule renders with the rules file as it is, promtool accepts the
// rules, and every alert queries metrics that exist.
func TestAlertRules(t *testing.T) {
	r := template(t, "--set", "prometheus.rules.enabled=true", "--set", "prometheus.rules.labels.release=prom")
	d, ok := r.find("PrometheusRule", "")
	if !ok {
		t.Fatal("no PrometheusRule rendered")
	}
	if labels := d.obj["metadata"].(map[string]any)["labels"].(map[string]any); labels["release"] != "prom" {
		t.Errorf("prometheus.rules.labels not applied: %v", labels)
	}
	spec, err := yaml.Marshal(d.obj["spec"])
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(file, spec, 0o600); err != nil {
		t.Fatal(err)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install the Debian package prometheus (.ci/run does)")
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
				Annotations map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(spec, &rules); err != nil {
		t.Fatal(err)
	}
	var exprs, alerts []string
	for _, g := range rules.Groups {
		for _, rule := range g.Rules {
			exprs = append(exprs, rule.Expr)
			alerts = append(alerts, rule.Alert)
			if rule.Annotations["summary"] == "" || rule.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a summary or a description", rule.Alert)
			}
		}
	}
	checkQueries(t, "alert rules", exprs)
	for _, want := range []string{"KubeRelayDeferring", "KubeRelayConfigReloadFailing", "KubeRelayAuthFailures", "KubeRelayQueueOld", "KubeRelayNotReady"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s among %v", want, alerts)
		}
	}
	if _, ok := template(t).find("PrometheusRule", ""); ok {
		t.Error("a PrometheusRule is rendered by default")
	}
}

// The dashboard ConfigMap carries the sidecar's label and a dashboard whose every
// panel queries metrics that exist.
func TestDashboard(t *testing.T) {
	r := template(t, "--set", "grafana.dashboard.enabled=true", "--set", "grafana.dashboard.namespace=monitoring")
	d, ok := r.find("ConfigMap", release+"-dashboard")
	if !ok {
		t.Fatal("no dashboard ConfigMap rendered")
	}
	meta := d.obj["metadata"].(map[string]any)
	if meta["namespace"] != "monitoring" || meta["labels"].(map[string]any)["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap metadata %v", meta)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Definition string
			}
		}
	}
	if err := json.Unmarshal([]byte(d.obj["data"].(map[string]any)["kuberelay.json"].(string)), &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if len(dash.Panels) < 10 {
		t.Fatalf("%d panels", len(dash.Panels))
	}
	var exprs []string
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if strings.HasPrefix(v.Definition, "label_values") {
			exprs = append(exprs, v.Definition)
		}
	}
	checkQueries(t, "dashboard", exprs)
	if _, ok := template(t).find("ConfigMap", release+"-dashboard"); ok {
		t.Error("a dashboard is rendered by default")
	}
}

// The PodMonitor selects the relay pods the operator runs, on their metrics port.
func TestPodMonitor(t *testing.T) {
	d, ok := template(t, "--set", "prometheus.podMonitor.enabled=true").find("PodMonitor", "")
	if !ok {
		t.Fatal("no PodMonitor rendered")
	}
	spec := d.obj["spec"].(map[string]any)
	sel := spec["selector"].(map[string]any)["matchLabels"].(map[string]any)
	pod := render.Labels(&relayv1alpha1.SmtpRelay{ObjectMeta: metav1.ObjectMeta{Name: "outbound", Namespace: "mail"}})
	for k, v := range sel {
		if pod[k] != v {
			t.Errorf("the PodMonitor selects %s=%v; relay pods have %v", k, v, pod)
		}
	}
	if sel["app.kubernetes.io/component"] != "relay" || spec["namespaceSelector"].(map[string]any)["any"] != true {
		t.Errorf("PodMonitor spec %v", spec)
	}
	if ep := spec["podMetricsEndpoints"].([]any)[0].(map[string]any); ep["port"] != "http" || ep["path"] != "/metrics" {
		t.Errorf("PodMonitor endpoint %v", ep)
	}
}
