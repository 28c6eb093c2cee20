package helmtest_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/kuberelay/kuberelay/internal/helmtest"
	"github.com/kuberelay/kuberelay/internal/testenv"
)

const (
	release   = "kuberelay"
	namespace = "kuberelay-system"
	// defaultImage is the manager's image with the chart's appVersion.
	defaultImage = "ghcr.io/kuberelay/kuberelay:0.1.0"
	keepKey      = "helm.sh/resource-policy"
)

// repoRoot returns the repository root and the chart's directory in it.
func repoRoot(t *testing.T) (root, chart string) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root, filepath.Join(root, "charts", "kuberelay")
}

func newHelm(t *testing.T) (*helmtest.Helm, string) {
	t.Helper()
	root, chart := repoRoot(t)
	h, err := helmtest.New(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return h, chart
}

// doc is one rendered object.
type doc struct {
	kind, name string
	raw        []byte
	obj        map[string]any
}

// rendered is the output of helm template, by kind and name.
type rendered []doc

func (r rendered) find(kind, name string) (doc, bool) {
	for _, d := range r {
		if d.kind == kind && (name == "" || d.name == name) {
			return d, true
		}
	}
	return doc{}, false
}

func (r rendered) all(kind string) []doc {
	var out []doc
	for _, d := range r {
		if d.kind == kind {
			out = append(out, d)
		}
	}
	return out
}

// into decodes the one object of kind (and name, unless empty) into v.
func (r rendered) into(t *testing.T, kind, name string, v any) {
	t.Helper()
	d, ok := r.find(kind, name)
	if !ok {
		t.Fatalf("no %s %q rendered", kind, name)
	}
	if err := yaml.UnmarshalStrict(d.raw, v); err != nil {
		t.Fatalf("decoding %s %s: %v\n%s", kind, d.name, err, d.raw)
	}
}

func splitYAML(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var docs [][]byte
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("splitting YAML: %v", err)
		}
		if len(bytes.TrimSpace(d)) == 0 {
			continue
		}
		docs = append(docs, d)
	}
}

func parse(t *testing.T, b []byte) rendered {
	t.Helper()
	var out rendered
	for _, raw := range splitYAML(t, b) {
		var obj map[string]any
		if err := yaml.Unmarshal(raw, &obj); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, raw)
		}
		if obj == nil {
			continue // only comments
		}
		kind, _ := obj["kind"].(string)
		meta, _ := obj["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		out = append(out, doc{kind: kind, name: name, raw: raw, obj: obj})
	}
	return out
}

// template runs helm template with the given extra arguments.
func template(t *testing.T, args ...string) rendered {
	t.Helper()
	h, chart := newHelm(t)
	out, err := h.Run(context.Background(), append([]string{"template", release, chart, "--namespace", namespace}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return parse(t, out)
}

func TestLint(t *testing.T) {
	h, chart := newHelm(t)
	for _, args := range [][]string{
		nil,
		{"--set", "crds.enabled=false", "--set", "namespaces={a,b}", "--set", "prometheus.serviceMonitor.enabled=true", "--set", "podDisruptionBudget.enabled=true"},
	} {
		if out, err := h.Run(context.Background(), append([]string{"lint", "--strict", chart}, args...)...); err != nil {
			t.Errorf("helm lint %v: %v\n%s", args, err, out)
		}
	}
}

func managerContainer(t *testing.T, dep *appsv1.Deployment) corev1.Container {
	t.Helper()
	cs := dep.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "manager" {
		t.Fatalf("want one container named manager, got %+v", cs)
	}
	return cs[0]
}

func TestTemplateDefaults(t *testing.T) {
	r := template(t)

	var dep appsv1.Deployment
	r.into(t, "Deployment", release, &dep)
	if dep.Namespace != namespace {
		t.Errorf("Deployment namespace %q, want %q", dep.Namespace, namespace)
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
		t.Errorf("replicas %v, want 1", dep.Spec.Replicas)
	}
	c := managerContainer(t, &dep)
	if c.Image != defaultImage {
		t.Errorf("image %q, want %q", c.Image, defaultImage)
	}
	if !slices.Equal(c.Command, []string{"/manager"}) {
		t.Errorf("command %q, want [/manager]", c.Command)
	}
	wantArgs := []string{
		"--leader-elect",
		"--metrics-bind-address=:8080",
		"--health-probe-bind-address=:8081",
		"--relay-image=" + defaultImage,
		"--log-level=info",
		"--concurrency=4",
	}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args\n got %q\nwant %q", c.Args, wantArgs)
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container securityContext is not hardened: %+v", sc)
	}
	for name, p := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port.String() != "probes" {
			t.Errorf("probe %s: %+v", name, p)
		}
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "probes" && p.ContainerPort == 8081 }) ||
		!slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" && p.ContainerPort == 8080 }) {
		t.Errorf("ports %+v, want metrics 8080 and probes 8081", c.Ports)
	}
	if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v, want memory requests and limits", c.Resources)
	}

	var sa corev1.ServiceAccount
	r.into(t, "ServiceAccount", release, &sa)
	if dep.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Errorf("pods run as %q, the ServiceAccount is %q", dep.Spec.Template.Spec.ServiceAccountName, sa.Name)
	}
	var crb rbacv1.ClusterRoleBinding
	r.into(t, "ClusterRoleBinding", "", &crb)
	if crb.RoleRef.Name != release+"-manager" || len(crb.Subjects) != 1 ||
		crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != namespace {
		t.Errorf("ClusterRoleBinding does not grant %s-manager to %s/%s: %+v", release, namespace, sa.Name, crb)
	}

	var svc corev1.Service
	r.into(t, "Service", release+"-metrics", &svc)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8080 || svc.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("metrics Service ports %+v, want 8080 -> metrics", svc.Spec.Ports)
	}
	if !reflect.DeepEqual(svc.Spec.Selector, dep.Spec.Selector.MatchLabels) {
		t.Errorf("Service selects %v, the Deployment's pods are %v", svc.Spec.Selector, dep.Spec.Selector.MatchLabels)
	}

	crds := r.all("CustomResourceDefinition")
	if len(crds) != 4 {
		t.Errorf("%d CRDs rendered, want 4", len(crds))
	}
	for _, d := range crds {
		if got := annotations(d)[keepKey]; got != "keep" {
			t.Errorf("CRD %s: annotation %s=%q, want keep", d.name, keepKey, got)
		}
	}
	for _, kind := range []string{"ServiceMonitor", "PodDisruptionBudget"} {
		if _, ok := r.find(kind, ""); ok {
			t.Errorf("%s rendered by default", kind)
		}
	}
}

func annotations(d doc) map[string]any {
	meta, _ := d.obj["metadata"].(map[string]any)
	a, _ := meta["annotations"].(map[string]any)
	return a
}

func TestTemplateValues(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, r rendered)
	}{
		{
			name: "crds disabled",
			args: []string{"--set", "crds.enabled=false"},
			check: func(t *testing.T, r rendered) {
				if n := len(r.all("CustomResourceDefinition")); n != 0 {
					t.Errorf("%d CRDs rendered with crds.enabled=false", n)
				}
				if _, ok := r.find("Deployment", release); !ok {
					t.Error("no Deployment")
				}
			},
		},
		{
			name: "crds not kept",
			args: []string{"--set", "crds.keep=false"},
			check: func(t *testing.T, r rendered) {
				crds := r.all("CustomResourceDefinition")
				if len(crds) != 4 {
					t.Fatalf("%d CRDs rendered, want 4", len(crds))
				}
				for _, d := range crds {
					if v, ok := annotations(d)[keepKey]; ok {
						t.Errorf("CRD %s annotated %s=%v with crds.keep=false", d.name, keepKey, v)
					}
				}
			},
		},
		{
			name: "namespaces, image, relay image, log level, concurrency, no leader election",
			args: []string{
				"--set", "namespaces={mail,billing}",
				"--set", "image.tag=v9.9.9",
				"--set", "relayImage=registry.example/relay@sha256:0123",
				"--set", "logLevel=debug",
				"--set", "concurrency=8",
				"--set", "leaderElection.enabled=false",
				"--set", "replicaCount=3",
			},
			check: func(t *testing.T, r rendered) {
				var dep appsv1.Deployment
				r.into(t, "Deployment", release, &dep)
				c := managerContainer(t, &dep)
				if c.Image != "ghcr.io/kuberelay/kuberelay:v9.9.9" {
					t.Errorf("image %q", c.Image)
				}
				want := []string{
					"--metrics-bind-address=:8080",
					"--health-probe-bind-address=:8081",
					"--relay-image=registry.example/relay@sha256:0123",
					"--namespaces=mail,billing",
					"--log-level=debug",
					"--concurrency=8",
				}
				if !slices.Equal(c.Args, want) {
					t.Errorf("args\n got %q\nwant %q", c.Args, want)
				}
				if *dep.Spec.Replicas != 3 {
					t.Errorf("replicas %d, want 3", *dep.Spec.Replicas)
				}
			},
		},
		{
			name: "relay image follows the manager's tag",
			args: []string{"--set", "image.repository=registry.example/kuberelay", "--set", "image.tag=dev"},
			check: func(t *testing.T, r rendered) {
				var dep appsv1.Deployment
				r.into(t, "Deployment", release, &dep)
				if c := managerContainer(t, &dep); !slices.Contains(c.Args, "--relay-image=registry.example/kuberelay:dev") {
					t.Errorf("args %q lack --relay-image=registry.example/kuberelay:dev", c.Args)
				}
			},
		},
		{
			name: "scheduling",
			args: []string{
				"--set", "nodeSelector.kubernetes\\.io/os=linux",
				"--set", "tolerations[0].key=dedicated,tolerations[0].operator=Exists",
				"--set", "priorityClassName=system-cluster-critical",
				"--set", "podAnnotations.a=b",
			},
			check: func(t *testing.T, r rendered) {
				var dep appsv1.Deployment
				r.into(t, "Deployment", release, &dep)
				spec := dep.Spec.Template.Spec
				if spec.NodeSelector["kubernetes.io/os"] != "linux" || len(spec.Tolerations) != 1 ||
					spec.Tolerations[0].Key != "dedicated" || spec.PriorityClassName != "system-cluster-critical" ||
					dep.Spec.Template.Annotations["a"] != "b" {
					t.Errorf("scheduling values not applied: %+v", spec)
				}
			},
		},
		{
			name: "service monitor",
			args: []string{"--set", "prometheus.serviceMonitor.enabled=true", "--set", "prometheus.serviceMonitor.labels.release=prom"},
			check: func(t *testing.T, r rendered) {
				d, ok := r.find("ServiceMonitor", release)
				if !ok {
					t.Fatal("no ServiceMonitor")
				}
				var sm struct {
					Metadata struct {
						Namespace string            `json:"namespace"`
						Labels    map[string]string `json:"labels"`
					} `json:"metadata"`
					Spec struct {
						Selector  struct{ MatchLabels map[string]string } `json:"selector"`
						Endpoints []struct {
							Port     string `json:"port"`
							Path     string `json:"path"`
							Interval string `json:"interval"`
						} `json:"endpoints"`
					} `json:"spec"`
				}
				if err := yaml.Unmarshal(d.raw, &sm); err != nil {
					t.Fatal(err)
				}
				var svc corev1.Service
				r.into(t, "Service", release+"-metrics", &svc)
				for k, v := range sm.Spec.Selector.MatchLabels {
					if svc.Labels[k] != v {
						t.Errorf("ServiceMonitor selects %s=%s, the metrics Service has %q", k, v, svc.Labels[k])
					}
				}
				if sm.Metadata.Namespace != namespace || sm.Metadata.Labels["release"] != "prom" ||
					len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Interval != "30s" {
					t.Errorf("ServiceMonitor: %+v", sm)
				}
			},
		},
		{
			name: "pod disruption budget",
			args: []string{"--set", "podDisruptionBudget.enabled=true"},
			check: func(t *testing.T, r rendered) {
				var pdb policyv1.PodDisruptionBudget
				r.into(t, "PodDisruptionBudget", release, &pdb)
				if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || pdb.Spec.MaxUnavailable != nil {
					t.Errorf("PodDisruptionBudget spec %+v, want minAvailable 1", pdb.Spec)
				}
				var dep appsv1.Deployment
				r.into(t, "Deployment", release, &dep)
				if !reflect.DeepEqual(pdb.Spec.Selector, dep.Spec.Selector) {
					t.Errorf("PodDisruptionBudget selects %v, the Deployment %v", pdb.Spec.Selector, dep.Spec.Selector)
				}
			},
		},
		{
			name: "pod disruption budget, max unavailable",
			args: []string{"--set", "podDisruptionBudget.enabled=true", "--set", "podDisruptionBudget.maxUnavailable=50%"},
			check: func(t *testing.T, r rendered) {
				var pdb policyv1.PodDisruptionBudget
				r.into(t, "PodDisruptionBudget", release, &pdb)
				if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.String() != "50%" || pdb.Spec.MinAvailable != nil {
					t.Errorf("PodDisruptionBudget spec %+v, want maxUnavailable 50%%", pdb.Spec)
				}
			},
		},
		{
			name: "existing service account",
			args: []string{"--set", "serviceAccount.create=false", "--set", "serviceAccount.name=mine"},
			check: func(t *testing.T, r rendered) {
				if _, ok := r.find("ServiceAccount", ""); ok {
					t.Error("ServiceAccount rendered with serviceAccount.create=false")
				}
				var dep appsv1.Deployment
				r.into(t, "Deployment", release, &dep)
				if dep.Spec.Template.Spec.ServiceAccountName != "mine" {
					t.Errorf("serviceAccountName %q, want mine", dep.Spec.Template.Spec.ServiceAccountName)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.check(t, template(t, tt.args...))
		})
	}
}

// TestSchema proves that values.schema.json accepts the defaults (every other test
// renders them) and rejects misspelt and mistyped values.
func TestSchema(t *testing.T) {
	h, chart := newHelm(t)
	tests := []struct {
		args []string
		want string // in helm's error
	}{
		{[]string{"--set", "replicaCont=2"}, "replicaCont"},
		{[]string{"--set", "replicaCount=abc"}, "replicaCount"},
		{[]string{"--set-string", "replicaCount=two"}, "replicaCount"},
		{[]string{"--set", "crds.enabeld=false"}, "enabeld"},
		{[]string{"--set", "crds.keep=yes"}, "keep"},
		{[]string{"--set", "logLevel=trace"}, "logLevel"},
		{[]string{"--set", "concurrency=0"}, "concurrency"},
		{[]string{"--set", "namespaces=mail"}, "namespaces"},
		{[]string{"--set", "prometheus.serviceMonitor.enable=true"}, "enable"},
		{[]string{"--set", "podDisruptionBudget.minAvailable=most"}, "minAvailable"},
		{[]string{"--set", "image.pullPolicy=Sometimes"}, "pullPolicy"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			out, err := h.Run(context.Background(), append([]string{"template", release, chart}, tt.args...)...)
			if err == nil {
				t.Fatalf("helm template accepted %v:\n%.300s", tt.args, out)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not come from the schema or does not name %q: %v", tt.want, err)
			}
		})
	}
	t.Run("both minAvailable and maxUnavailable", func(t *testing.T) {
		_, err := h.Run(context.Background(), "template", release, chart, "--set", "podDisruptionBudget.enabled=true",
			"--set", "podDisruptionBudget.minAvailable=1", "--set", "podDisruptionBudget.maxUnavailable=1")
		if err == nil || !strings.Contains(err.Error(), "not both") {
			t.Errorf("want a 'not both' error, got %v", err)
		}
	})
}

// readDir returns the *.yaml files of dir by name.
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(n)] = b
	}
	return out
}

const resync = "the chart's copy differs from config/: run `make manifests`"

// TestCRDsMatchConfig checks that the chart's CRDs are config/crd/bases', both the
// copies it reads and what it renders from them.
func TestCRDsMatchConfig(t *testing.T) {
	root, chart := repoRoot(t)
	want := readDir(t, filepath.Join(root, "config", "crd", "bases"))
	got := readDir(t, filepath.Join(chart, "files", "crds"))
	if len(want) == 0 {
		t.Fatal("no CRDs in config/crd/bases")
	}
	for name, b := range want {
		if !bytes.Equal(got[name], b) {
			t.Errorf("files/crds/%s: %s", name, resync)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("files/crds/%s is not in config/crd/bases: %s", name, resync)
		}
	}

	// What helm renders is config's CRD plus the release's labels and the keep
	// annotation, and nothing else.
	wantByName := map[string]map[string]any{}
	for name, b := range want {
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		wantByName[obj["metadata"].(map[string]any)["name"].(string)] = obj
	}
	crds := template(t).all("CustomResourceDefinition")
	if len(crds) != len(wantByName) {
		t.Errorf("%d CRDs rendered, config/crd/bases has %d", len(crds), len(wantByName))
	}
	for _, d := range crds {
		w, ok := wantByName[d.name]
		if !ok {
			t.Errorf("rendered CRD %s is not in config/crd/bases", d.name)
			continue
		}
		meta := d.obj["metadata"].(map[string]any)
		delete(meta, "labels")
		delete(meta["annotations"].(map[string]any), keepKey)
		if !reflect.DeepEqual(d.obj, w) {
			gotY, _ := yaml.Marshal(d.obj)
			wantY, _ := yaml.Marshal(w)
			t.Errorf("rendered CRD %s differs from config/crd/bases beyond labels and %s:\n got:\n%.2000s\nwant:\n%.2000s", d.name, keepKey, gotY, wantY)
		}
	}
}

// TestRBACMatchesConfig checks that the manager's ClusterRole has exactly
// config/rbac/role.yaml's rules.
func TestRBACMatchesConfig(t *testing.T) {
	root, chart := repoRoot(t)
	want, err := os.ReadFile(filepath.Join(root, "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(chart, "files", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("files/rbac/role.yaml: %s", resync)
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(want, &role); err != nil {
		t.Fatal(err)
	}
	var rendered rbacv1.ClusterRole
	template(t).into(t, "ClusterRole", release+"-manager", &rendered)
	if len(role.Rules) == 0 || !reflect.DeepEqual(rendered.Rules, role.Rules) {
		t.Errorf("ClusterRole rules differ from config/rbac/role.yaml:\n got %+v\nwant %+v", rendered.Rules, role.Rules)
	}
}
