// Command e2e checks kuberelay end to end on hack/cluster's one-node cluster: it
// builds the image, brings the cluster up, installs the chart, runs a relay fleet
// whose smarthost is a capture server on the node IP, sends mail from a pod, checks
// hot reloads, a rolling change and a scale-down under continuous sending (no
// message answered 250 lost, every 4xx retried) and garbage collection, prints a
// summary with timings, and tears everything down.
//
//	go run ./hack/e2e                  # everything
//	go run ./hack/e2e -skip-image      # use dist/kuberelay-image.tar as it is
//	go run ./hack/e2e -reuse           # the cluster is already up: import the images into it
//	go run ./hack/e2e -keep            # leave the release and the cluster up at the end
//
// It exits non-zero and names the checks that failed.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/internal/testcerts"
)

const (
	ns          = "e2e"
	relayName   = "outbound"
	releaseName = "kuberelay"
	releaseNS   = "kuberelay-system"
	checkImage  = "kuberelay.local/check:1"
	smartUser   = "e2e-smarthost-user"
	clientUser  = "billing"
	podCIDR     = "10.244.0.0/16"
	applyBound  = 5 * time.Second
)

var (
	nodeIP      = envOr("KUBERELAY_CLUSTER_NODE_IP", "10.250.0.1")
	skipImage   = flag.Bool("skip-image", false, "do not run `make image`: use dist/kuberelay-image.tar as it is")
	reuse       = flag.Bool("reuse", false, "the cluster is already up: import the images into it instead of `cluster up`")
	keep        = flag.Bool("keep", false, "leave the release, the e2e namespace and the cluster up at the end")
	helmBin     = flag.String("helm", "bin/helm-v3.22.0", "the Helm client (`make helm`)")
	readyWait   = flag.Duration("ready-timeout", 120*time.Second, "bound on the manager and the relay becoming Ready")
	deleteBound = flag.Duration("delete-timeout", 60*time.Second, "bound on the garbage collection of a deleted SmtpRelay")
	loadN       = flag.Int("load", 600, "messages the client sends during the rolling change and the scale-down")
	loadC       = flag.Int("load-concurrency", 4, "concurrent SMTP sessions of that load")
	loadPerConn = flag.Int("load-per-session", 40, "messages per load session: sessions that outlive the preStop pause meet the drain")
	loadPause   = flag.Duration("load-interval", 250*time.Millisecond, "pause of each load session between two messages")
	rollBound   = flag.Duration("rollout-timeout", 150*time.Second, "bound on a rolling change or a scale-down of the relay")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type timing struct {
	name string
	d    time.Duration
}

type e2e struct {
	repo, state, kubeconfig, kubectlBin string
	tag                                 string
	image                               string // the kuberelay image's full reference
	capture                             *mailcapture.Server
	timings                             []timing
	passed, failed                      []string
	notes                               []string // figures worth a line in the summary
	clusterStarted                      bool
}

func main() {
	flag.Parse()
	e := &e2e{}
	code := e.run()
	os.Exit(code)
}

func (e *e2e) logf(format string, args ...any) {
	fmt.Printf("%s e2e: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func (e *e2e) time(name string, d time.Duration) {
	e.timings = append(e.timings, timing{name, d})
	e.logf("%s: %s", name, d.Round(time.Millisecond))
}

// check records a named check's outcome.
func (e *e2e) check(name string, err error) bool {
	if err != nil {
		e.failed = append(e.failed, fmt.Sprintf("%s: %v", name, err))
		e.logf("FAIL %s: %v", name, err)
		return false
	}
	e.passed = append(e.passed, name)
	e.logf("ok   %s", name)
	return true
}

func (e *e2e) run() (code int) {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	e.repo = wd
	if _, err := os.Stat(filepath.Join(e.repo, "hack/cluster/cluster")); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: run from the repository's root: go run ./hack/e2e")
		return 2
	}
	defer func() {
		e.teardown()
		e.summary()
		if len(e.failed) > 0 && code == 0 {
			code = 1
		}
	}()
	if err := e.setup(); err != nil {
		e.check("setup", err)
		return 1
	}
	e.scenario()
	return 0
}

// --- setup -------------------------------------------------------------------

func (e *e2e) setup() error {
	if !*skipImage {
		t := time.Now()
		if out, err := e.cmd(5*time.Minute, "", "make", "image"); err != nil {
			return fmt.Errorf("make image: %v\n%s", err, out)
		}
		e.time("make image", time.Since(t))
	}
	tag, err := imageRef(filepath.Join(e.repo, "dist/kuberelay-image.tar"))
	if err != nil {
		return err
	}
	e.tag = tag[strings.LastIndex(tag, ":")+1:]
	e.image = tag
	e.logf("image %s", tag)

	t := time.Now()
	if *reuse {
		if err := e.locateCluster(); err != nil {
			return err
		}
		if err := e.importImages(); err != nil {
			return err
		}
		e.time("images imported into the running cluster", time.Since(t))
	} else {
		e.clusterStarted = true
		if out, err := e.cmd(5*time.Minute, "", "hack/cluster/cluster", "up"); err != nil {
			return fmt.Errorf("cluster up: %v\n%s", err, tail(out, 2000))
		}
		e.time("cluster up", time.Since(t))
		if err := e.locateCluster(); err != nil {
			return err
		}
	}

	t = time.Now()
	if out, err := e.cmd(3*time.Minute, "", *helmBin, "--kubeconfig", e.kubeconfig, "upgrade", "--install", releaseName,
		"charts/kuberelay", "-n", releaseNS, "--create-namespace",
		"--set", "image.tag="+e.tag, "--set", "image.pullPolicy=Never"); err != nil {
		return fmt.Errorf("helm install: %v\n%s", err, out)
	}
	if out, err := e.kubectl(*readyWait+10*time.Second, "-n", releaseNS, "wait", "deployment", "--all",
		"--for=condition=Available", "--timeout="+readyWait.String()); err != nil {
		logs, _ := e.kubectl(20*time.Second, "-n", releaseNS, "get", "pods", "-o", "wide")
		return fmt.Errorf("manager Deployment not Available within %s: %v\n%s\n%s", *readyWait, err, out, logs)
	}
	e.time("helm install to manager Available", time.Since(t))

	capture, err := startCapture(nodeIP + ":0")
	if err != nil {
		return err
	}
	e.capture = capture
	e.logf("capture smarthost on %s", capture.Addr())
	return nil
}

func (e *e2e) locateCluster() error {
	out, err := e.cmd(30*time.Second, "", "hack/cluster/cluster", "kubeconfig")
	if err != nil {
		return fmt.Errorf("cluster kubeconfig: %v\n%s", err, out)
	}
	e.kubeconfig = strings.TrimSpace(out)
	e.state = filepath.Dir(e.kubeconfig)
	e.kubectlBin = "kubectl"
	if b, err := os.ReadFile(filepath.Join(e.state, "assets")); err == nil {
		if p := filepath.Join(strings.TrimSpace(string(b)), "kubectl"); fileExists(p) {
			e.kubectlBin = p
		}
	}
	if out, err := e.kubectl(20*time.Second, "get", "nodes"); err != nil {
		return fmt.Errorf("the cluster does not answer (is it up?): %v\n%s", err, out)
	}
	return nil
}

// importImages rebuilds the check image and imports it and the kuberelay image
// into a cluster that is already running (what `cluster up` does when it starts).
func (e *e2e) importImages() error {
	dir, err := os.MkdirTemp("", "kuberelay-e2e-images")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	steps := [][]string{
		{"go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "pause"), "./hack/cluster/pause"},
		{"go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "check"), "./hack/cluster/check"},
		{"go", "run", "-trimpath", "./hack/cluster/images", "-pause", filepath.Join(dir, "pause"), "-check", filepath.Join(dir, "check"), "-o", filepath.Join(dir, "images.tar")},
	}
	sock := filepath.Join(e.state, "containerd/containerd.sock")
	for _, f := range []string{filepath.Join(dir, "images.tar"), filepath.Join(e.repo, "dist/kuberelay-image.tar")} {
		steps = append(steps, []string{"ctr", "-a", sock, "-n", "k8s.io", "images", "import", f})
	}
	for _, s := range steps {
		if out, err := e.cmdEnv(3*time.Minute, []string{"CGO_ENABLED=0"}, s[0], s[1:]...); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// --- the scenario --------------------------------------------------------------

type relayStatus struct {
	Metadata struct {
		Generation int64 `json:"generation"`
	} `json:"metadata"`
	Status struct {
		ObservedGeneration    int64  `json:"observedGeneration"`
		ConfigHash            string `json:"configHash"`
		ConfigAppliedReplicas int32  `json:"configAppliedReplicas"`
		ReadyReplicas         int32  `json:"readyReplicas"`
		AttachedDomains       int32  `json:"attachedDomains"`
		Selector              string `json:"selector"`
		Conditions            []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"conditions"`
	} `json:"status"`
}

func (s relayStatus) cond(t string) string {
	for _, c := range s.Status.Conditions {
		if c.Type == t {
			return c.Status
		}
	}
	return ""
}

func (s relayStatus) applied(replicas int32) bool {
	return s.cond("ConfigApplied") == "True" && s.Status.ConfigAppliedReplicas == replicas &&
		s.Status.ObservedGeneration == s.Metadata.Generation && s.Status.ConfigHash != ""
}

func (s relayStatus) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hash %s applied %d ready %d domains %d;", s.Status.ConfigHash, s.Status.ConfigAppliedReplicas, s.Status.ReadyReplicas, s.Status.AttachedDomains)
	for _, c := range s.Status.Conditions {
		fmt.Fprintf(&b, " %s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message)
	}
	return b.String()
}

func (e *e2e) scenario() {
	caPEM := e.captureCA()
	relayCert, relayKey, err := testcerts.SelfSigned(relayName + "." + ns + ".svc")
	if err != nil {
		e.check("setup: relay certificate", err)
		return
	}
	dkimKey, err := testcerts.Ed25519Key()
	if err != nil {
		e.check("setup: DKIM key", err)
		return
	}
	_, port, _ := net.SplitHostPort(e.capture.Addr())
	oldPassword, newPassword := randomString(), randomString()

	// A fresh namespace.
	_, _ = e.kubectl(90*time.Second, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=80s")
	t := time.Now()
	manifests := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: Secret
metadata: {name: capture-ca, namespace: %[1]s}
data: {ca.crt: %[2]s}
---
apiVersion: v1
kind: Secret
metadata: {name: smarthost-credentials, namespace: %[1]s}
type: kubernetes.io/basic-auth
stringData: {username: %[3]s, password: e2e-smarthost-password}
---
apiVersion: v1
kind: Secret
metadata: {name: relay-tls, namespace: %[1]s}
type: kubernetes.io/tls
data: {tls.crt: %[4]s, tls.key: %[5]s}
---
apiVersion: v1
kind: Secret
metadata: {name: client-user, namespace: %[1]s}
type: kubernetes.io/basic-auth
stringData: {username: %[6]s, password: %[7]s}
---
apiVersion: v1
kind: Secret
metadata: {name: example-com-dkim, namespace: %[1]s}
data: {dkim.key: %[8]s}
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: Smarthost
metadata: {name: capture, namespace: %[1]s}
spec:
  endpoints:
    - host: "%[9]s"
      port: %[10]s
  tls:
    mode: STARTTLS
    caSecretRef: {name: capture-ca}
  auth:
    secretRef: {name: smarthost-credentials}
    mechanism: PLAIN
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: SmtpRelay
metadata: {name: %[11]s, namespace: %[1]s}
spec:
  replicas: 2
  tls:
    secretRef: {name: relay-tls}
  listeners:
    - {name: smtp, port: 25, tls: STARTTLS}
    - {name: submission, port: 587, tls: STARTTLS, requireAuth: true}
  allowedNetworks: ["%[12]s"]
  auth:
    users:
      - secretRef: {name: client-user}
        allowedSenders: [billing@example.com]
  smarthostRef: {name: capture}
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayDomain
metadata: {name: example-com, namespace: %[1]s}
spec:
  domain: example.com
  relayRef: {name: %[11]s}
  dkim:
    selector: e2e
    privateKeySecretRef: {name: example-com-dkim, key: dkim.key}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: check
      image: %[13]s
      imagePullPolicy: Never
      args: ["-listen", ":8080"]
      readinessProbe:
        httpGet: {path: /, port: 8080}
        periodSeconds: 1
`, ns, b64(caPEM), smartUser, b64(relayCert), b64(relayKey), clientUser, oldPassword, b64(dkimKey),
		nodeIP, port, relayName, podCIDR, checkImage)
	if !e.check("apply the e2e namespace's Secrets, Smarthost, SmtpRelay, RelayDomain and client pod", e.apply(manifests)) {
		return
	}
	out, err := e.kubectl(*readyWait+10*time.Second, "-n", ns, "wait", "--for=condition=Ready", "smtprelay/"+relayName, "--timeout="+readyWait.String())
	if !e.check("kubectl wait --for=condition=Ready smtprelay/"+relayName, wrap(err, out)) {
		st, _ := e.relayStatus()
		e.logf("status: %s", st)
		e.dump()
		return
	}
	st, err := e.waitStatus(30*time.Second, func(s relayStatus) bool { return s.applied(2) })
	if !e.check("status ConfigApplied True with configAppliedReplicas 2", err) {
		e.dump()
		return
	}
	e.time("apply to SmtpRelay Ready and ConfigApplied (2 replicas)", time.Since(t))
	e.logf("status: %s", st)
	e.check("kubectl get smtprelay shows READY True, REPLICAS 2, CONFIG True", e.relayTable(map[string]string{
		"READY": "True", "REPLICAS": "2", "CONFIG": "True"}))

	if out, err := e.kubectl(70*time.Second, "-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=60s"); !e.check("client pod Ready", wrap(err, out)) {
		return
	}
	svcIP, err := e.kubectl(20*time.Second, "-n", ns, "get", "service", relayName, "-o", "jsonpath={.spec.clusterIP}")
	if !e.check("relay Service has a ClusterIP", wrap(err, svcIP)) {
		return
	}
	svc25, svc587 := net.JoinHostPort(svcIP, "25"), net.JoinHostPort(svcIP, "587")

	// (a) AUTH over STARTTLS on 587, DKIM-signed, with the smarthost's credentials.
	captured := len(e.capture.Messages())
	e.check("(a) AUTH over STARTTLS on 587 from billing@example.com is delivered, DKIM-verifies, smarthost AUTH used", func() error {
		subject := "e2e-a-" + randomString()
		r := e.send(svc587, true, clientUser+":"+oldPassword, "billing@example.com", "someone@example.net", subject)
		if r.code != 0 {
			return fmt.Errorf("send: %s", r)
		}
		msg, err := e.captured(subject, &captured)
		if err != nil {
			return err
		}
		if msg.User != smartUser {
			return fmt.Errorf("the capture saw AUTH as %q, want the smarthost's username %q", msg.User, smartUser)
		}
		return e.verifyDKIM(msg, "example-com", "example.com")
	}())
	// (b) Allowed network, port 25, no AUTH.
	e.check("(b) from the pod network on 25 without AUTH is delivered", func() error {
		subject := "e2e-b-" + randomString()
		r := e.send(svc25, true, "", "noreply@example.com", "someone@example.net", subject)
		if r.code != 0 {
			return fmt.Errorf("send: %s", r)
		}
		_, err := e.captured(subject, &captured)
		return err
	}())
	// (c) A sender outside the relay's domains.
	e.check("(c) a sender outside the RelayDomains is refused with 5xx", e.expectRefused(svc25, "", "someone@not-relayed.example"))
	// (d) No credentials on 587.
	e.check("(d) a client without credentials on 587 is refused with 5xx", e.expectRefused(svc587, "", "billing@example.com"))

	// Hot reloads.
	pods, err := e.relayPods()
	if err == nil && len(pods) != 2 {
		err = fmt.Errorf("found %d relay pods: %v", len(pods), pods)
	}
	if !e.check("two relay pods", err) {
		return
	}
	e.hotReload("hot reload: a second RelayDomain", pods, func() error {
		return e.apply(fmt.Sprintf(`apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayDomain
metadata: {name: example-net, namespace: %s}
spec:
  domain: example.net
  relayRef: {name: %s}
`, ns, relayName))
	}, func() error {
		st, err := e.relayStatus()
		if err == nil && st.Status.AttachedDomains != 2 {
			return fmt.Errorf("attachedDomains %d, want 2", st.Status.AttachedDomains)
		}
		subject := "e2e-domain-" + randomString()
		if r := e.send(svc25, true, "", "noreply@example.net", "someone@example.org", subject); r.code != 0 {
			return fmt.Errorf("send from the new domain: %s", r)
		}
		_, err = e.captured(subject, &captured)
		return err
	})
	e.hotReload("hot reload: rotate the client password", pods, func() error {
		return e.apply(fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: client-user, namespace: %s}
type: kubernetes.io/basic-auth
stringData: {username: %s, password: %s}
`, ns, clientUser, newPassword))
	}, func() error {
		subject := "e2e-newpass-" + randomString()
		if r := e.send(svc587, true, clientUser+":"+newPassword, "billing@example.com", "someone@example.net", subject); r.code != 0 {
			return fmt.Errorf("send with the new password: %s", r)
		}
		if _, err := e.captured(subject, &captured); err != nil {
			return err
		}
		// Every pod, addressed directly: the new password works, the old one is refused.
		for _, p := range pods {
			addr := net.JoinHostPort(p.ip, p.subPort)
			subject := "e2e-newpass-" + p.name + "-" + randomString()
			if r := e.send(addr, true, clientUser+":"+newPassword, "billing@example.com", "someone@example.net", subject); r.code != 0 {
				return fmt.Errorf("pod %s: send with the new password: %s", p.name, r)
			}
			if _, err := e.captured(subject, &captured); err != nil {
				return fmt.Errorf("pod %s: %v", p.name, err)
			}
			r := e.send(addr, true, clientUser+":"+oldPassword, "billing@example.com", "someone@example.net", "e2e-oldpass")
			if r.code != 1 || !strings.HasPrefix(r.reply, "5") {
				return fmt.Errorf("pod %s: the old password was not refused with 5xx: %s", p.name, r)
			}
		}
		return nil
	})
	newCert, newKey, err := testcerts.SelfSigned(relayName + "." + ns + ".svc")
	if err != nil {
		e.check("renewed relay certificate", err)
		return
	}
	e.hotReload("hot reload: renew the relay TLS Secret", pods, func() error {
		return e.apply(fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: relay-tls, namespace: %s}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
`, ns, b64(newCert), b64(newKey)))
	}, func() error {
		blk, _ := pem.Decode(newCert)
		want := fmt.Sprintf("%x", sha256.Sum256(blk.Bytes))
		for _, p := range pods {
			got, err := servedCert(net.JoinHostPort(p.ip, p.smtpPort))
			if err != nil {
				return fmt.Errorf("pod %s: %v", p.name, err)
			}
			if got != want {
				return fmt.Errorf("pod %s serves certificate %s, want the renewed %s", p.name, got, want)
			}
		}
		r := e.send(svc587, true, clientUser+":"+newPassword, "billing@example.com", "someone@example.net", "e2e-tls-"+randomString())
		if r.code != 0 {
			return fmt.Errorf("send after renewal: %s", r)
		}
		if !strings.Contains(r.out, want) {
			return fmt.Errorf("the client pod saw another certificate: %s", r.out)
		}
		return nil
	})

	// A rolling change and a scale-down while a client sends without pause.
	e.underLoad(svc25)

	// Garbage collection.
	t = time.Now()
	e.check("deleting the SmtpRelay removes its Deployment, Service, ConfigMap and Secret", func() error {
		if out, err := e.kubectl(30*time.Second, "-n", ns, "delete", "smtprelay", relayName, "--wait=false"); err != nil {
			return wrap(err, out)
		}
		objs := []string{"deployment/" + relayName, "service/" + relayName, "configmap/" + relayName + "-config", "secret/" + relayName + "-secrets"}
		var left []string
		err := poll(*deleteBound, 250*time.Millisecond, func() (bool, error) {
			left = left[:0]
			for _, o := range objs {
				out, err := e.kubectl(10*time.Second, "-n", ns, "get", o, "--ignore-not-found", "-o", "name")
				if err != nil {
					return false, nil
				}
				if strings.TrimSpace(out) != "" {
					left = append(left, o)
				}
			}
			return len(left) == 0, nil
		})
		if err != nil {
			return fmt.Errorf("still there after %s: %v", *deleteBound, left)
		}
		e.time("SmtpRelay deletion to owned objects gone", time.Since(t))
		return nil
	}())
}

// hotReload makes a change, waits for every relay pod to run the new configuration
// (status configHash changed, ConfigApplied True, configAppliedReplicas 2, and each
// pod's /status reporting that hash) within applyBound, checks the pods were not
// restarted or replaced, then runs after.
func (e *e2e) hotReload(name string, pods []pod, change func() error, after func() error) {
	before, err := e.relayStatus()
	if err != nil {
		e.check(name, err)
		return
	}
	t := time.Now()
	if err := change(); err != nil {
		e.check(name, err)
		return
	}
	// Poll past the bound so the report says how late it was.
	st, err := e.waitStatus(applyBound+25*time.Second, func(s relayStatus) bool {
		return s.Status.ConfigHash != before.Status.ConfigHash && s.applied(2)
	})
	took := time.Since(t)
	e.time(name+": change to ConfigApplied on 2 pods", took)
	if err != nil {
		e.check(name, fmt.Errorf("not applied: %v", err))
		return
	}
	if took > applyBound {
		e.check(name, fmt.Errorf("applied after %s, more than %s", took.Round(time.Millisecond), applyBound))
		return
	}
	e.check(name+": applied within "+applyBound.String(), e.podsRunHash(pods, st.Status.ConfigHash))
	e.check(name+": same pods, no restart", e.samePods(pods))
	if after != nil {
		e.check(name+": takes effect", after())
	}
}

func (e *e2e) expectRefused(addr, auth, from string) error {
	r := e.send(addr, true, auth, from, "someone@example.net", "e2e-refused")
	if r.code != 1 || !strings.HasPrefix(r.reply, "5") {
		return fmt.Errorf("want a 5xx refusal: %s", r)
	}
	e.logf("refused as expected: %s", r.reply)
	return nil
}

// --- relay pods ------------------------------------------------------------------

type pod struct {
	name, uid, ip string
	smtpPort      string // the container port of the "smtp" listener
	subPort       string // the container port of the "submission" listener
	restarts      int
}

func (e *e2e) relayPods() ([]pod, error) {
	st, err := e.relayStatus()
	if err != nil {
		return nil, err
	}
	sel := st.Status.Selector
	if sel == "" {
		sel = "app.kubernetes.io/instance=" + relayName
	}
	out, err := e.kubectl(20*time.Second, "-n", ns, "get", "pods", "-l", sel, "-o", "json")
	if err != nil {
		return nil, wrap(err, out)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				UID               string  `json:"uid"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				Containers []struct {
					Ports []struct {
						Name          string `json:"name"`
						ContainerPort int    `json:"containerPort"`
					} `json:"ports"`
				} `json:"containers"`
			} `json:"spec"`
			Status struct {
				PodIP             string `json:"podIP"`
				ContainerStatuses []struct {
					RestartCount int `json:"restartCount"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, err
	}
	var pods []pod
	for _, it := range list.Items {
		if it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := pod{name: it.Metadata.Name, uid: it.Metadata.UID, ip: it.Status.PodIP, smtpPort: "10025", subPort: "587"}
		for _, c := range it.Spec.Containers {
			for _, cp := range c.Ports {
				switch cp.Name {
				case "smtp":
					p.smtpPort = fmt.Sprint(cp.ContainerPort)
				case "submission":
					p.subPort = fmt.Sprint(cp.ContainerPort)
				}
			}
		}
		for _, c := range it.Status.ContainerStatuses {
			p.restarts += c.RestartCount
		}
		pods = append(pods, p)
	}
	return pods, nil
}

func (e *e2e) samePods(want []pod) error {
	got, err := e.relayPods()
	if err != nil {
		return err
	}
	if len(got) != len(want) {
		return fmt.Errorf("pods now %v, before %v", got, want)
	}
	uids := map[string]bool{}
	for _, p := range want {
		uids[p.uid] = true
	}
	for _, p := range got {
		if !uids[p.uid] {
			return fmt.Errorf("pod %s (uid %s) is new; before: %v", p.name, p.uid, want)
		}
		if p.restarts != 0 {
			return fmt.Errorf("pod %s restarted %d times", p.name, p.restarts)
		}
	}
	return nil
}

// podsRunHash asks each pod's /status through the API server's pod proxy.
func (e *e2e) podsRunHash(pods []pod, hash string) error {
	for _, p := range pods {
		out, err := e.kubectl(15*time.Second, "get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:9090/proxy/status", ns, p.name))
		if err != nil {
			return fmt.Errorf("GET %s /status: %v", p.name, wrap(err, out))
		}
		var s struct {
			ConfigHash string `json:"configHash"`
		}
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			return fmt.Errorf("pod %s /status: %v: %s", p.name, err, out)
		}
		if s.ConfigHash != hash {
			return fmt.Errorf("pod %s runs %s, the relay's status says %s", p.name, s.ConfigHash, hash)
		}
	}
	return nil
}

func (e *e2e) relayStatus() (relayStatus, error) {
	var s relayStatus
	out, err := e.kubectl(15*time.Second, "-n", ns, "get", "smtprelay", relayName, "-o", "json")
	if err != nil {
		return s, wrap(err, out)
	}
	return s, json.Unmarshal([]byte(out), &s)
}

func (e *e2e) waitStatus(bound time.Duration, ok func(relayStatus) bool) (relayStatus, error) {
	var st relayStatus
	var last error
	err := poll(bound, 100*time.Millisecond, func() (bool, error) {
		st, last = e.relayStatus()
		return last == nil && ok(st), nil
	})
	if err != nil {
		return st, fmt.Errorf("not within %s (last error %v): %s", bound, last, st)
	}
	return st, nil
}

// relayTable reads `kubectl get smtprelay` as a user does, through the printer
// columns, and compares the named columns with want.
func (e *e2e) relayTable(want map[string]string) error {
	out, err := e.kubectl(15*time.Second, "-n", ns, "get", "smtprelay", relayName)
	if err != nil {
		return wrap(err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		return fmt.Errorf("want a header and one row:\n%s", out)
	}
	header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
	if len(header) != len(row) {
		return fmt.Errorf("columns do not line up (an empty cell?):\n%s", out)
	}
	for col, v := range want {
		i := slices.Index(header, col)
		if i < 0 {
			return fmt.Errorf("no column %s:\n%s", col, out)
		}
		if row[i] != v {
			return fmt.Errorf("%s is %q, want %q:\n%s", col, row[i], v, out)
		}
	}
	e.logf("kubectl get smtprelay:\n%s", out)
	return nil
}

func (e *e2e) dump() {
	for _, args := range [][]string{
		{"-n", ns, "get", "smtprelay,smarthost,relaydomain,pods,deployments", "-o", "wide"},
		{"-n", ns, "describe", "smtprelay", relayName},
		{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", releaseNS, "logs", "deployment/" + releaseName, "--tail=40"},
	} {
		out, _ := e.kubectl(20*time.Second, args...)
		fmt.Printf("--- kubectl %s\n%s\n", strings.Join(args, " "), tail(out, 4000))
	}
}

// --- mail ----------------------------------------------------------------------

type sendResult struct {
	code  int
	reply string
	out   string
}

func (r sendResult) String() string {
	return fmt.Sprintf("exit %d, reply %q, output %q", r.code, r.reply, strings.TrimSpace(r.out))
}

// send runs the check image's SMTP mode in the client pod.
func (e *e2e) send(addr string, starttls bool, auth, from, to, subject string) sendResult {
	args := []string{"-n", ns, "exec", "client", "--", "/check", "-smtp", addr, "-from", from, "-to", to, "-subject", subject, "-timeout", "20s"}
	if starttls {
		args = append(args, "-starttls")
	}
	if auth != "" {
		args = append(args, "-auth", auth)
	}
	out, err := e.kubectl(40*time.Second, args...)
	r := sendResult{out: out}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		r.code = -1
	}
	for _, l := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(l, "smtp-reply: "); ok {
			r.reply = s
		}
	}
	return r
}

// captured waits for the message with subject among those after *seen.
func (e *e2e) captured(subject string, seen *int) (mailcapture.Message, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		msgs := e.capture.Wait(*seen+1, time.Until(deadline))
		for i := *seen; i < len(msgs); i++ {
			if bytes.Contains(msgs[i].Data, []byte("Subject: "+subject+"\r\n")) {
				*seen = i + 1
				return msgs[i], nil
			}
		}
		*seen = len(msgs)
	}
	return mailcapture.Message{}, fmt.Errorf("no message %q reached the capture smarthost within 20s", subject)
}

func (e *e2e) verifyDKIM(msg mailcapture.Message, domainObj, domain string) error {
	out, err := e.kubectl(15*time.Second, "-n", ns, "get", "relaydomain", domainObj, "-o", "jsonpath={.status.dkimRecord}")
	if err != nil {
		return wrap(err, out)
	}
	var rec struct{ Name, Value string }
	if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.Value == "" {
		return fmt.Errorf("status.dkimRecord %q: %v", out, err)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg.Data), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name != rec.Name {
			return nil, fmt.Errorf("no TXT record %s", name)
		}
		return []string{rec.Value}, nil
	}})
	if err != nil {
		return fmt.Errorf("DKIM: %v", err)
	}
	if len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != domain {
		var errs []string
		for _, v := range vs {
			errs = append(errs, fmt.Sprintf("d=%s err=%v", v.Domain, v.Err))
		}
		return fmt.Errorf("DKIM verification against %s: %d signatures %v", rec.Name, len(vs), errs)
	}
	return nil
}

// servedCert connects from this host to a relay pod's STARTTLS listener and returns
// the SHA-256 of the certificate it serves.
func servedCert(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := smtp.NewClientStartTLS(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // compared by hash below
	if err != nil {
		conn.Close()
		return "", err
	}
	defer c.Close()
	// EHLO again, over TLS: this runs the handshake.
	if err := c.Hello("e2e.kuberelay.local"); err != nil {
		return "", err
	}
	st, ok := c.TLSConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		return "", fmt.Errorf("no TLS certificate")
	}
	_ = c.Quit()
	return fmt.Sprintf("%x", sha256.Sum256(st.PeerCertificates[0].Raw)), nil
}

// --- teardown and summary -------------------------------------------------------------

func (e *e2e) teardown() {
	if e.capture != nil {
		_ = e.capture.Close()
	}
	if *keep {
		e.logf("-keep: leaving the release and the cluster up (KUBECONFIG=%s)", e.kubeconfig)
		return
	}
	if e.kubeconfig != "" {
		if out, err := e.kubectl(90*time.Second, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=60s"); err != nil {
			e.logf("deleting namespace %s: %v %s", ns, err, out)
		}
		if out, err := e.cmd(2*time.Minute, "", *helmBin, "--kubeconfig", e.kubeconfig, "uninstall", releaseName, "-n", releaseNS, "--wait", "--timeout=60s"); err != nil {
			e.logf("helm uninstall: %v %s", err, out)
		}
	}
	if len(e.failed) > 0 && e.state != "" {
		e.componentLogs()
	}
	if e.clusterStarted {
		t := time.Now()
		if out, err := e.cmd(3*time.Minute, "", "hack/cluster/cluster", "down"); err != nil {
			e.check("cluster down", wrap(err, out))
		} else {
			e.time("cluster down", time.Since(t))
		}
	}
}

// componentLogs prints the end of each cluster component's log, so a failed run
// (in CI, on a machine that is gone by the time anyone looks) explains itself.
func (e *e2e) componentLogs() {
	files, _ := filepath.Glob(filepath.Join(e.state, "logs", "*.log"))
	for _, f := range files {
		fmt.Printf("--- %s (last lines)\n%s\n", f, proc.TailFile(f, 25))
	}
}

func (e *e2e) summary() {
	fmt.Println("\n=== e2e summary")
	fmt.Println("timings:")
	for _, t := range e.timings {
		fmt.Printf("  %-76s %8s\n", t.name, t.d.Round(time.Millisecond))
	}
	if len(e.notes) > 0 {
		fmt.Println("figures:")
		for _, n := range e.notes {
			fmt.Println("  " + n)
		}
	}
	fmt.Printf("passed (%d):\n", len(e.passed))
	for _, p := range e.passed {
		fmt.Println("  ok  ", p)
	}
	if len(e.failed) > 0 {
		fmt.Printf("FAILED (%d):\n", len(e.failed))
		for _, f := range e.failed {
			fmt.Println("  FAIL", firstLines(f, 6))
		}
		return
	}
	fmt.Println("all checks passed")
}

// --- helpers -------------------------------------------------------------------------

func (e *e2e) cmd(timeout time.Duration, stdin string, name string, args ...string) (string, error) {
	return e.run1(timeout, nil, stdin, name, args...)
}

func (e *e2e) cmdEnv(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	return e.run1(timeout, env, "", name, args...)
}

func (e *e2e) run1(timeout time.Duration, env []string, stdin string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = e.repo
	c.Env = append(os.Environ(), env...)
	c.WaitDelay = 5 * time.Second
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	out, err := c.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", name, timeout, err)
	}
	return string(out), err
}

func (e *e2e) kubectl(timeout time.Duration, args ...string) (string, error) {
	return e.cmd(timeout, "", e.kubectlBin, append([]string{"--kubeconfig", e.kubeconfig, "--request-timeout=" + timeout.String()}, args...)...)
}

func (e *e2e) apply(yaml string) error {
	out, err := e.cmd(60*time.Second, yaml, e.kubectlBin, "--kubeconfig", e.kubeconfig, "apply", "-f", "-")
	return wrap(err, out)
}

func poll(bound, every time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(bound)
	for {
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", bound)
		}
		time.Sleep(every)
	}
}

func wrap(err error, out string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%v: %s", err, strings.TrimSpace(tail(out, 2000)))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n       ")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func randomString() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// imageRef reads the image name from a `docker save`-style tarball.
func imageRef(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%v (run without -skip-image, or `make image`)", err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s has no manifest.json", path)
		}
		if err != nil {
			return "", err
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", err
		}
		if len(m) == 0 || len(m[0].RepoTags) == 0 {
			return "", fmt.Errorf("%s names no image", path)
		}
		return m[0].RepoTags[0], nil
	}
}

// --- certificates and keys ------------------------------------------------------------

var captureCAPEM []byte

func (e *e2e) captureCA() []byte { return captureCAPEM }

// startCapture starts the capture smarthost with STARTTLS, its certificate issued
// for the node IP by a CA of its own (captureCAPEM).
func startCapture(addr string) (*mailcapture.Server, error) {
	ca, err := testcerts.NewCA("kuberelay e2e capture CA")
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	cfg, err := ca.ServerTLS(host)
	if err != nil {
		return nil, err
	}
	captureCAPEM = ca.PEM
	return mailcapture.Start(addr, mailcapture.Options{TLS: cfg, Auth: true})
}

// --- under load ------------------------------------------------------------------

// loadSummary is what `check -load` prints on its "load-summary: " line.
type loadSummary struct {
	Messages    int      `json:"messages"`
	Concurrency int      `json:"concurrency"`
	Accepted    []string `json:"accepted"`
	GivenUp     []string `json:"givenUp"`
	Refused     []string `json:"refused"`
	Replies4xx  int      `json:"replies4xx"`
	ConnErrors  int      `json:"connErrors"`
	Retries     int      `json:"retries"`
	Connections int      `json:"connections"`
	Sample4xx   []string `json:"sample4xx"`
	SampleErrs  []string `json:"sampleErrors"`
	Sample5xx   []string `json:"sample5xx"`
	DurationMS  int64    `json:"durationMs"`
	Unknown     []string `json:"unknown"`
}

type loadRun struct {
	out  string
	err  error
	done time.Time
}

// underLoad sends a continuous load from the client pod to the Service on port 25
// while the relay goes through a rolling change (an upgrade: spec.image set to
// another image reference) and then a scale-down from 2 replicas to 1. Every message the
// client saw answered 250 must reach the capture smarthost; every 4xx or broken
// connection is retried by the client, and none may be given up.
func (e *e2e) underLoad(svc25 string) {
	const name = "under load: rolling change then scale-down to 1, every message answered 250 is delivered, none given up"
	prefix := "e2e-load-" + randomString()[:8]
	args := []string{"-n", ns, "exec", "client", "--", "/check", "-smtp", svc25, "-starttls",
		"-from", "noreply@example.com", "-to", "someone@example.net",
		"-load", fmt.Sprint(*loadN), "-concurrency", fmt.Sprint(*loadC), "-interval", loadPause.String(), "-per-session", fmt.Sprint(*loadPerConn),
		"-id-prefix", prefix, "-timeout", "5m"}
	start := time.Now()
	done := make(chan loadRun, 1)
	go func() {
		out, err := e.kubectl(6*time.Minute, args...)
		done <- loadRun{out: out, err: err, done: time.Now()}
	}()
	e.logf("load: %d messages over %d concurrent sessions (%d messages each, %s apart), ids %s-NNNNNN", *loadN, *loadC, *loadPerConn, *loadPause, prefix)

	// Let the load reach the relay before anything changes.
	var early *loadRun
	select {
	case r := <-done:
		early = &r
	case <-time.After(3 * time.Second):
	}
	var rollEnd, scaleEnd time.Time
	if early == nil {
		t := time.Now()
		err := e.rollingChange()
		rollEnd = time.Now()
		e.time("under load: rolling change (spec.image upgrade) to new pods Ready, old gone", rollEnd.Sub(t))
		e.check("under load: rolling change of the relay Deployment completes", err)

		t = time.Now()
		err = e.scaleDown(1)
		scaleEnd = time.Now()
		e.time("under load: scale-down 2 to 1 to the removed pod gone", scaleEnd.Sub(t))
		e.check("under load: scale-down of the SmtpRelay to 1 replica completes", err)
	}

	var run loadRun
	if early != nil {
		run = *early
	} else {
		run = <-done
	}
	e.time(fmt.Sprintf("under load: %d messages sent (load start to end)", *loadN), run.done.Sub(start))
	e.check(name, func() error {
		var sum loadSummary
		var line string
		for _, l := range strings.Split(run.out, "\n") {
			if s, ok := strings.CutPrefix(l, "load-summary: "); ok {
				line = s
			}
		}
		if line == "" {
			return fmt.Errorf("the load printed no summary: %v", wrap(run.err, run.out))
		}
		if err := json.Unmarshal([]byte(line), &sum); err != nil {
			return fmt.Errorf("load summary: %v: %s", err, tail(line, 300))
		}
		e.logf("load: %d accepted, %d given up, %d refused (5xx), %d 4xx replies, %d connection errors, %d retries, %d sessions, %d with a lost DATA reply, %s",
			len(sum.Accepted), len(sum.GivenUp), len(sum.Refused), sum.Replies4xx, sum.ConnErrors, sum.Retries, sum.Connections, len(sum.Unknown),
			(time.Duration(sum.DurationMS) * time.Millisecond).Round(time.Millisecond))
		e.notes = append(e.notes, fmt.Sprintf("under load: %d messages over %d sessions at a time: %d answered 250, %d given up, %d refused 5xx; %d 4xx replies and %d connection errors, all retried (%d retries, %d sessions, %d DATA replies lost)",
			sum.Messages, sum.Concurrency, len(sum.Accepted), len(sum.GivenUp), len(sum.Refused), sum.Replies4xx, sum.ConnErrors, sum.Retries, sum.Connections, len(sum.Unknown)))
		e.logf("load: 4xx replies seen: %q", sum.Sample4xx)
		e.logf("load: connection errors seen: %q", sum.SampleErrs)
		if len(sum.Sample5xx) > 0 {
			e.logf("load: 5xx replies seen: %q", sum.Sample5xx)
		}
		var problems []string
		if early != nil {
			problems = append(problems, "the load ended before the rolling change started: nothing was tested under load")
		} else if run.done.Before(scaleEnd) {
			problems = append(problems, fmt.Sprintf("the load ended %s before the scale-down completed", scaleEnd.Sub(run.done).Round(time.Millisecond)))
		}
		if len(sum.GivenUp) > 0 {
			problems = append(problems, fmt.Sprintf("%d messages given up after retries: %v", len(sum.GivenUp), firstN(sum.GivenUp, 10)))
		}
		if len(sum.Refused) > 0 {
			problems = append(problems, fmt.Sprintf("%d messages refused with 5xx: %v %q", len(sum.Refused), firstN(sum.Refused, 10), sum.Sample5xx))
		}
		if n := len(sum.Accepted) + len(sum.GivenUp) + len(sum.Refused); n != *loadN {
			problems = append(problems, fmt.Sprintf("the summary accounts for %d messages, not %d", n, *loadN))
		}

		// Every id answered 250 reaches the capture (at least once).
		t := time.Now()
		counts, missing := e.loadDelivered(prefix, sum.Accepted, 60*time.Second)
		e.time("under load: load end to every accepted message captured", time.Since(t))
		dups := 0
		for _, c := range counts {
			if c > 1 {
				dups += c - 1
			}
		}
		e.logf("load: %d distinct ids captured, %d duplicate deliveries, %d accepted ids missing", len(counts), dups, len(missing))
		e.notes = append(e.notes, fmt.Sprintf("under load: %d distinct ids captured, %d duplicate deliveries, %d answered 250 and missing", len(counts), dups, len(missing)))
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("LOST: %d messages answered 250 never reached the smarthost within 60s: %v", len(missing), firstN(missing, 20)))
			e.dump()
		}
		if len(problems) > 0 {
			return errors.New(strings.Join(problems, "; "))
		}
		return nil
	}())
}

// loadDelivered waits up to bound for every accepted id to be in the capture and
// returns how many times each id of the load was captured and the accepted ids that
// never were.
func (e *e2e) loadDelivered(prefix string, accepted []string, bound time.Duration) (map[string]int, []string) {
	deadline := time.Now().Add(bound)
	key := []byte("\r\nSubject: " + prefix + "-")
	for {
		counts := map[string]int{}
		for _, m := range e.capture.Messages() {
			i := bytes.Index(m.Data, key)
			if i < 0 {
				continue
			}
			rest := m.Data[i+len("\r\nSubject: "):]
			if j := bytes.Index(rest, []byte("\r\n")); j >= 0 {
				counts[string(rest[:j])]++
			}
		}
		var missing []string
		for _, id := range accepted {
			if counts[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return counts, missing
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// deploymentState is the relay Deployment and all its pods, terminating ones included.
type deploymentState struct {
	generation, observed          int64
	replicas, updated, available  int32
	pods, terminating, oldVersion int
	images                        []string // the relay containers' images, distinct, sorted
}

func (e *e2e) deploymentState() (deploymentState, error) {
	var d deploymentState
	out, err := e.kubectl(15*time.Second, "-n", ns, "get", "deployment", relayName, "-o", "json")
	if err != nil {
		return d, wrap(err, out)
	}
	var dep struct {
		Metadata struct {
			Generation int64 `json:"generation"`
		} `json:"metadata"`
		Spec struct {
			Replicas int32 `json:"replicas"`
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
		} `json:"spec"`
		Status struct {
			ObservedGeneration int64 `json:"observedGeneration"`
			UpdatedReplicas    int32 `json:"updatedReplicas"`
			AvailableReplicas  int32 `json:"availableReplicas"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &dep); err != nil {
		return d, err
	}
	d.generation, d.observed = dep.Metadata.Generation, dep.Status.ObservedGeneration
	d.replicas, d.updated, d.available = dep.Spec.Replicas, dep.Status.UpdatedReplicas, dep.Status.AvailableReplicas
	var sel []string
	for k, v := range dep.Spec.Selector.MatchLabels {
		sel = append(sel, k+"="+v)
	}
	// The newest ReplicaSet's pod-template-hash.
	out, err = e.kubectl(15*time.Second, "-n", ns, "get", "replicasets", "-l", strings.Join(sel, ","), "-o", "json")
	if err != nil {
		return d, wrap(err, out)
	}
	var rss struct {
		Items []struct {
			Metadata struct {
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &rss); err != nil {
		return d, err
	}
	newest, rev := "", -1
	for _, rs := range rss.Items {
		var r int
		fmt.Sscan(rs.Metadata.Annotations["deployment.kubernetes.io/revision"], &r)
		if r > rev {
			newest, rev = rs.Metadata.Labels["pod-template-hash"], r
		}
	}
	out, err = e.kubectl(15*time.Second, "-n", ns, "get", "pods", "-l", strings.Join(sel, ","), "-o", "json")
	if err != nil {
		return d, wrap(err, out)
	}
	var pods struct {
		Items []struct {
			Metadata struct {
				Labels            map[string]string `json:"labels"`
				DeletionTimestamp *string           `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				Containers []struct {
					Image string `json:"image"`
				} `json:"containers"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		return d, err
	}
	for _, p := range pods.Items {
		d.pods++
		if p.Metadata.DeletionTimestamp != nil {
			d.terminating++
		}
		if p.Metadata.Labels["pod-template-hash"] != newest {
			d.oldVersion++
		}
		for _, c := range p.Spec.Containers {
			if !slices.Contains(d.images, c.Image) {
				d.images = append(d.images, c.Image)
			}
		}
	}
	slices.Sort(d.images)
	return d, nil
}

func (d deploymentState) String() string {
	return fmt.Sprintf("generation %d observed %d, replicas %d updated %d available %d; pods %d (terminating %d, old template %d), images %v",
		d.generation, d.observed, d.replicas, d.updated, d.available, d.pods, d.terminating, d.oldVersion, d.images)
}

// rollingChange upgrades the relay as a user would: spec.image names another image
// (the same content under a second tag, since nothing can be pulled here). It waits
// until the Deployment runs only new pods on that image, all available, the old
// ones gone.
func (e *e2e) rollingChange() error {
	before, err := e.deploymentState()
	if err != nil {
		return err
	}
	next := e.image + "-next"
	sock := filepath.Join(e.state, "containerd/containerd.sock")
	if out, err := e.cmd(time.Minute, "", "ctr", "-a", sock, "-n", "k8s.io", "images", "tag", "--force", e.image, next); err != nil {
		return fmt.Errorf("tagging the image as %s: %v\n%s", next, err, out)
	}
	patch := fmt.Sprintf(`{"spec":{"image":%q}}`, next)
	if out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p", patch); err != nil {
		return wrap(err, out)
	}
	var d deploymentState
	err = poll(*rollBound, 200*time.Millisecond, func() (bool, error) {
		var err error
		d, err = e.deploymentState()
		if err != nil {
			return false, nil
		}
		return d.generation > before.generation && d.observed >= d.generation && d.replicas == 2 &&
			d.updated == 2 && d.available == 2 && d.pods == 2 && d.oldVersion == 0 && d.terminating == 0 &&
			len(d.images) == 1 && d.images[0] == next, nil
	})
	if err != nil {
		return fmt.Errorf("%v: %s", err, d)
	}
	return nil
}

// scaleDown sets spec.replicas and waits until the Deployment runs that many pods,
// the removed ones gone.
func (e *e2e) scaleDown(n int32) error {
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, n)
	if out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p", patch); err != nil {
		return wrap(err, out)
	}
	var d deploymentState
	err := poll(*rollBound, 200*time.Millisecond, func() (bool, error) {
		var err error
		d, err = e.deploymentState()
		if err != nil {
			return false, nil
		}
		return d.replicas == n && d.observed >= d.generation && d.available == n && d.pods == int(n) && d.terminating == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%v: %s", err, d)
	}
	return nil
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("... %d more", len(s)-n))
	}
	return s
}
