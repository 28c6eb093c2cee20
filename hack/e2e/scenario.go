package main

import (
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/kuberelay/kuberelay/internal/testcerts"
)

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

// world is what the scenario's steps share: the relay Service's addresses, the
// client's passwords, and how many captured messages were already looked at.
type world struct {
	svc25, svc587            string
	oldPassword, newPassword string
	captured                 int
}

// scenario runs the e2e steps in order; a step that cannot go on ends it.
func (e *e2e) scenario() {
	w := e.deploy()
	if w == nil {
		return
	}
	e.firstMessages(w)
	if !e.hotReloads(w) {
		return
	}
	// An application's own credentials: written, used, rotated, revoked.
	e.relayClients(w)
	// Capture mode: a staging namespace's mail kept in the relay, never sent.
	e.captureMode(w)
	// Live checks: a wrong smarthost password shows on the Smarthost, and its fix.
	e.smarthostChecks()
	// Queue mode: mail kept through a smarthost outage and a scale-down.
	e.queueMode()
	// A rolling change and a scale-down while a client sends without pause.
	e.underLoad(w.svc25)
	e.garbageCollection()
}

// deploy applies the e2e namespace (Secrets, Smarthost, SmtpRelay, RelayDomain and a
// client pod) and waits for the relay to be Ready with its configuration applied.
func (e *e2e) deploy() *world {
	caPEM := e.captureCA()
	relayCert, relayKey, err := testcerts.SelfSigned(relayName + "." + ns + ".svc")
	if err != nil {
		e.check("setup: relay certificate", err)
		return nil
	}
	dkimKey, err := testcerts.Ed25519Key()
	if err != nil {
		e.check("setup: DKIM key", err)
		return nil
	}
	_, port, _ := net.SplitHostPort(e.capture.Addr())
	w := &world{oldPassword: randomString(), newPassword: randomString()}

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
`, ns, b64(caPEM), smartUser, b64(relayCert), b64(relayKey), clientUser, w.oldPassword, b64(dkimKey),
		nodeIP, port, relayName, podCIDR, checkImage)
	if !e.check("apply the e2e namespace's Secrets, Smarthost, SmtpRelay, RelayDomain and client pod", e.apply(manifests)) {
		return nil
	}
	out, err := e.kubectl(*readyWait+10*time.Second, "-n", ns, "wait", "--for=condition=Ready", "smtprelay/"+relayName, "--timeout="+readyWait.String())
	if !e.check("kubectl wait --for=condition=Ready smtprelay/"+relayName, wrap(err, out)) {
		st, _ := e.relayStatus()
		e.logf("status: %s", st)
		e.dump()
		return nil
	}
	st, err := e.waitStatus(30*time.Second, func(s relayStatus) bool { return s.applied(2) })
	if !e.check("status ConfigApplied True with configAppliedReplicas 2", err) {
		e.dump()
		return nil
	}
	e.time("apply to SmtpRelay Ready and ConfigApplied (2 replicas)", time.Since(t))
	e.logf("status: %s", st)
	e.check("kubectl get smtprelay shows READY True, REPLICAS 2, CONFIG True, QUEUED 0", e.relayTable(map[string]string{
		"READY": "True", "REPLICAS": "2", "CONFIG": "True", "QUEUED": "0"}))

	if out, err := e.kubectl(70*time.Second, "-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=60s"); !e.check("client pod Ready", wrap(err, out)) {
		return nil
	}
	svcIP, err := e.kubectl(20*time.Second, "-n", ns, "get", "service", relayName, "-o", "jsonpath={.spec.clusterIP}")
	if !e.check("relay Service has a ClusterIP", wrap(err, svcIP)) {
		return nil
	}
	w.svc25, w.svc587 = net.JoinHostPort(svcIP, "25"), net.JoinHostPort(svcIP, "587")
	w.captured = len(e.capture.Messages())
	return w
}

// firstMessages sends through the relay Service: with AUTH on 587, from the pod
// network on 25, and the two refusals.
func (e *e2e) firstMessages(w *world) {
	// (a) AUTH over STARTTLS on 587, DKIM-signed, with the smarthost's credentials.
	e.check("(a) AUTH over STARTTLS on 587 from billing@example.com is delivered, DKIM-verifies, smarthost AUTH used", func() error {
		subject := "e2e-a-" + randomString()
		r := e.send(w.svc587, true, clientUser+":"+w.oldPassword, "billing@example.com", "someone@example.net", subject)
		if r.code != 0 {
			return fmt.Errorf("send: %s", r)
		}
		msg, err := e.captured(subject, &w.captured)
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
		r := e.send(w.svc25, true, "", "noreply@example.com", "someone@example.net", subject)
		if r.code != 0 {
			return fmt.Errorf("send: %s", r)
		}
		_, err := e.captured(subject, &w.captured)
		return err
	}())
	// (c) A sender outside the relay's domains.
	e.check("(c) a sender outside the RelayDomains is refused with 5xx", e.expectRefused(w.svc25, "", "someone@not-relayed.example"))
	// (d) No credentials on 587.
	e.check("(d) a client without credentials on 587 is refused with 5xx", e.expectRefused(w.svc587, "", "billing@example.com"))
}

// hotReloads changes a domain, the client password and the relay certificate, and
// checks each is applied to the same pods without a restart. false ends the scenario.
func (e *e2e) hotReloads(w *world) bool {
	pods, err := e.relayPods()
	if err == nil && len(pods) != 2 {
		err = fmt.Errorf("found %d relay pods: %v", len(pods), pods)
	}
	if !e.check("two relay pods", err) {
		return false
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
		if r := e.send(w.svc25, true, "", "noreply@example.net", "someone@example.org", subject); r.code != 0 {
			return fmt.Errorf("send from the new domain: %s", r)
		}
		_, err = e.captured(subject, &w.captured)
		return err
	})
	e.hotReload("hot reload: rotate the client password", pods, func() error {
		return e.apply(fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: client-user, namespace: %s}
type: kubernetes.io/basic-auth
stringData: {username: %s, password: %s}
`, ns, clientUser, w.newPassword))
	}, func() error {
		subject := "e2e-newpass-" + randomString()
		if r := e.send(w.svc587, true, clientUser+":"+w.newPassword, "billing@example.com", "someone@example.net", subject); r.code != 0 {
			return fmt.Errorf("send with the new password: %s", r)
		}
		if _, err := e.captured(subject, &w.captured); err != nil {
			return err
		}
		// Every pod, addressed directly: the new password works, the old one is refused.
		for _, p := range pods {
			addr := net.JoinHostPort(p.ip, p.subPort)
			subject := "e2e-newpass-" + p.name + "-" + randomString()
			if r := e.send(addr, true, clientUser+":"+w.newPassword, "billing@example.com", "someone@example.net", subject); r.code != 0 {
				return fmt.Errorf("pod %s: send with the new password: %s", p.name, r)
			}
			if _, err := e.captured(subject, &w.captured); err != nil {
				return fmt.Errorf("pod %s: %v", p.name, err)
			}
			r := e.send(addr, true, clientUser+":"+w.oldPassword, "billing@example.com", "someone@example.net", "e2e-oldpass")
			if r.code != 1 || !strings.HasPrefix(r.reply, "5") {
				return fmt.Errorf("pod %s: the old password was not refused with 5xx: %s", p.name, r)
			}
		}
		return nil
	})
	newCert, newKey, err := testcerts.SelfSigned(relayName + "." + ns + ".svc")
	if err != nil {
		e.check("renewed relay certificate", err)
		return false
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
		r := e.send(w.svc587, true, clientUser+":"+w.newPassword, "billing@example.com", "someone@example.net", "e2e-tls-"+randomString())
		if r.code != 0 {
			return fmt.Errorf("send after renewal: %s", r)
		}
		if !strings.Contains(r.out, want) {
			return fmt.Errorf("the client pod saw another certificate: %s", r.out)
		}
		return nil
	})
	return true
}

// garbageCollection deletes the SmtpRelay and waits for its owned objects to go.
func (e *e2e) garbageCollection() {
	t := time.Now()
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
