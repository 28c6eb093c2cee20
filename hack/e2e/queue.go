package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kuberelay/kuberelay/internal/mailcapture"
)

const (
	queueRelay   = "queued"
	queueClass   = "kuberelay-e2e-queue"
	queueN       = 1000
	queueReplica = 3
)

// queueMode checks Queue mode in the real cluster: a relay of three pods, each with
// its own volume, answers 250 for 1,000 messages while its smarthost is down; it is
// scaled to one pod; the smarthost comes back; every message arrives exactly once, the
// leaving pods are removed only after they delivered their queues, and no claim is
// left holding mail.
func (e *e2e) queueMode() {
	const step = "queue mode"
	// Volumes: hostPath directories on the node (the cluster has no provisioner),
	// owned by the relay's user.
	root, err := os.MkdirTemp("/var/tmp", "kuberelay-e2e-pv-")
	if !e.check(step+": volume directories", err) {
		return
	}
	defer os.RemoveAll(root)
	var pvs strings.Builder
	fmt.Fprintf(&pvs, "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: %s}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n", queueClass)
	for i := range queueReplica {
		dir := filepath.Join(root, fmt.Sprint(i))
		if err := os.Mkdir(dir, 0o700); err == nil {
			err = os.Chown(dir, 65532, 65532)
		}
		if !e.check(step+": volume directory", err) {
			return
		}
		fmt.Fprintf(&pvs, `---
apiVersion: v1
kind: PersistentVolume
metadata: {name: %s-%d}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: %s
  hostPath: {path: %s, type: Directory}
`, queueClass, i, queueClass, dir)
	}
	defer func() {
		for i := range queueReplica {
			_, _ = e.kubectl(30*time.Second, "delete", "persistentvolume", fmt.Sprintf("%s-%d", queueClass, i), "--ignore-not-found", "--wait=false")
		}
		_, _ = e.kubectl(30*time.Second, "delete", "storageclass", queueClass, "--ignore-not-found")
	}()
	if !e.check(step+": StorageClass and PersistentVolumes", e.apply(pvs.String())) {
		return
	}

	// A smarthost of its own, which goes down and comes back on the same address.
	l, err := net.Listen("tcp", nodeIP+":0")
	if !e.check(step+": smarthost address", err) {
		return
	}
	addr := l.Addr().String()
	l.Close()
	up, err := mailcapture.Start(addr, mailcapture.Options{})
	if !e.check(step+": smarthost", err) {
		return
	}
	_, port, _ := net.SplitHostPort(addr)
	t := time.Now()
	if !e.check(step+": apply a Queue-mode SmtpRelay with 3 replicas", e.apply(fmt.Sprintf(`apiVersion: relay.kuberelay.io/v1alpha1
kind: Smarthost
metadata: {name: queue-smarthost, namespace: %[1]s}
spec:
  endpoints: [{host: "%[2]s", port: %[3]s}]
  tls: {mode: None}
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: SmtpRelay
metadata: {name: %[4]s, namespace: %[1]s}
spec:
  replicas: %[5]d
  listeners: [{name: smtp, port: 25, tls: None}]
  allowedNetworks: ["%[6]s"]
  smarthostRef: {name: queue-smarthost}
  delivery:
    mode: Queue
    queue:
      storage: {size: 1Gi, storageClassName: %[7]s}
      retry: {first: 2s, backoff: 1, maxInterval: 2s}
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayDomain
metadata: {name: queue-example, namespace: %[1]s}
spec:
  domain: queue.example
  relayRef: {name: %[4]s}
`, ns, nodeIP, port, queueRelay, queueReplica, podCIDR, queueClass))) {
		up.Close()
		return
	}
	out, err := e.kubectl(*readyWait+10*time.Second, "-n", ns, "wait", "--for=condition=Ready", "smtprelay/"+queueRelay, "--timeout="+readyWait.String())
	if !e.check(step+": Ready with 3 pods, each on its own volume", wrap(err, out)) {
		up.Close()
		e.dump()
		return
	}
	e.time(step+": apply to Ready (3 pods, 3 claims bound)", time.Since(t))

	// The smarthost goes down; the relay keeps answering 250.
	up.Close()
	svcIP, err := e.kubectl(20*time.Second, "-n", ns, "get", "service", queueRelay, "-o", "jsonpath={.spec.clusterIP}")
	if !e.check(step+": relay Service", wrap(err, svcIP)) {
		return
	}
	prefix := "e2e-queue-" + randomString()[:8]
	t = time.Now()
	out, err = e.kubectl(5*time.Minute, "-n", ns, "exec", "client", "--", "/check", "-smtp", net.JoinHostPort(svcIP, "25"),
		"-from", "noreply@queue.example", "-to", "someone@example.net", "-load", fmt.Sprint(queueN), "-concurrency", "10",
		"-interval", "0s", "-per-session", "50", "-id-prefix", prefix, "-timeout", "4m")
	var sum loadSummary
	if err == nil {
		err = parseLoadSummary(out, &sum)
	}
	if err == nil && len(sum.Accepted) != queueN {
		err = fmt.Errorf("%d of %d answered 250 (given up %d, refused %d): %v", len(sum.Accepted), queueN, len(sum.GivenUp), len(sum.Refused), firstN(sum.SampleErrs, 3))
	}
	if !e.check(fmt.Sprintf("%s: %d messages answered 250 with the smarthost down", step, queueN), err) {
		e.logf("load output: %s", tail(out, 2000))
		return
	}
	e.time(fmt.Sprintf("%s: %d messages stored with the smarthost down", step, queueN), time.Since(t))

	// Scale to one pod: the two leaving pods must first deliver what they hold, which
	// they cannot while the smarthost is down.
	if out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", queueRelay, "--type=merge", "-p", `{"spec":{"replicas":1}}`); !e.check(step+": scale to 1", wrap(err, out)) {
		return
	}
	e.check(step+": the scale-down waits for the leaving pods (Draining)", poll(60*time.Second, time.Second, func() (bool, error) {
		st, err := e.kubectl(10*time.Second, "-n", ns, "get", "smtprelay", queueRelay, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`)
		return err == nil && strings.TrimSpace(st) == "Draining", nil
	}))

	// The smarthost comes back: everything arrives once, the pods go, the claims too.
	up, err = mailcapture.Start(addr, mailcapture.Options{})
	if !e.check(step+": smarthost back", err) {
		return
	}
	defer up.Close()
	t = time.Now()
	var counts map[string]int
	err = poll(3*time.Minute, time.Second, func() (bool, error) {
		counts = subjectCounts(up.Messages(), prefix)
		return len(counts) >= queueN, nil
	})
	dups := 0
	for _, n := range counts {
		dups += n - 1
	}
	if err == nil && dups > 0 {
		err = fmt.Errorf("%d deliveries were duplicates", dups)
	}
	if !e.check(fmt.Sprintf("%s: all %d delivered once after the smarthost came back", step, queueN), wrap(err, fmt.Sprintf("%d of %d delivered", len(counts), queueN))) {
		return
	}
	e.time(step+": smarthost back to all delivered", time.Since(t))
	e.check(step+": scaled to 1 pod, and the two leaving pods' claims deleted once they were empty", poll(2*time.Minute, time.Second, func() (bool, error) {
		pvcs, err := e.kubectl(10*time.Second, "-n", ns, "get", "pvc", "-o", "name")
		if err != nil {
			return false, nil
		}
		pods, err := e.kubectl(10*time.Second, "-n", ns, "get", "pods", "-l", "app.kubernetes.io/instance="+queueRelay, "-o", "name")
		return err == nil && len(strings.Fields(pvcs)) == 1 && strings.Contains(pvcs, "queue-"+queueRelay+"-0") &&
			len(strings.Fields(pods)) == 1, nil
	}))
	_, _ = e.kubectl(60*time.Second, "-n", ns, "delete", "smtprelay", queueRelay, "--wait=true", "--timeout=50s")
	_, _ = e.kubectl(60*time.Second, "-n", ns, "delete", "pvc", "--all", "--wait=true", "--timeout=50s")
}

// subjectCounts counts the messages whose Subject starts with prefix, by Subject.
func subjectCounts(msgs []mailcapture.Message, prefix string) map[string]int {
	counts := map[string]int{}
	key := []byte("\r\nSubject: " + prefix + "-")
	for _, m := range msgs {
		i := bytes.Index(m.Data, key)
		if i < 0 {
			continue
		}
		rest := m.Data[i+len("\r\nSubject: "):]
		if j := bytes.Index(rest, []byte("\r\n")); j >= 0 {
			counts[string(rest[:j])]++
		}
	}
	return counts
}

// parseLoadSummary reads the "load-summary: " line of `check -load`.
func parseLoadSummary(out string, sum *loadSummary) error {
	for _, line := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "load-summary: "); ok {
			return json.Unmarshal([]byte(s), sum)
		}
	}
	return fmt.Errorf("no load-summary line in:\n%s", tail(out, 1000))
}
