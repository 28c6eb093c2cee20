package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// appNS is the application namespace of the RelayClient step.
const appNS = ns + "-app"

// smtplibSend is Python's smtplib sending one message with the credentials of an
// smtp:// URL (argv[1], or "env" for $SMTP_URL as an application pod has it) to addr
// (the Service's ClusterIP: the URL's host name resolves only in the cluster). It
// prints the SMTP code of a refusal and exits 1 then.
const smtplibSend = `
import os, smtplib, ssl, sys, urllib.parse
u = urllib.parse.urlsplit(os.environ["SMTP_URL"] if sys.argv[1] == "env" else sys.argv[1])
host, port = sys.argv[2].rsplit(":", 1)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
msg = "From: %s\r\nTo: someone@example.net\r\nSubject: %s\r\n\r\nsent with smtplib\r\n" % (sys.argv[3], sys.argv[4])
try:
    with smtplib.SMTP(host, int(port), timeout=20) as s:
        s.starttls(context=ctx)
        s.login(urllib.parse.unquote(u.username), urllib.parse.unquote(u.password))
        s.sendmail(sys.argv[3], ["someone@example.net"], msg)
except smtplib.SMTPResponseException as e:
    print("smtp-reply: %d %s" % (e.smtp_code, e.smtp_error.decode(errors="replace")))
    sys.exit(1)
`

// relayClients: an application namespace gets a RelayClient; a pod that takes the
// generated Secret's url from its environment sends with it, and so does Python's
// smtplib; a rotation keeps the old password working (the pod still holds it) beside
// the new one; deleting the RelayClient revokes both.
func (e *e2e) relayClients(w *world) {
	const step = "relay clients: "
	_, _ = e.kubectl(90*time.Second, "delete", "namespace", appNS, "--ignore-not-found", "--wait=true", "--timeout=80s")
	out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p",
		`{"spec":{"domains":{"namespaces":{"from":"Selector","selector":{"matchLabels":{"kuberelay.io/e2e-mail":"yes"}}}}}}`)
	if !e.check(step+"the relay admits labelled namespaces", wrap(err, out)) {
		return
	}
	t := time.Now()
	manifests := tenantManifests(appNS, `{kuberelay.io/e2e-mail: "yes"}`, "app-example", "app.example")
	if !e.check(step+"apply a namespace with a RelayDomain and a RelayClient", e.apply(manifests)) {
		return
	}
	out, err = e.kubectl(70*time.Second, "-n", appNS, "wait", "--for=condition=Ready", "relayclient/mailer", "--timeout=60s")
	if !e.check(step+"RelayClient Ready", wrap(err, out)) {
		e.logf("%s", e.describe("-n", appNS, "relayclient/mailer"))
		return
	}
	e.time("RelayClient applied to Ready", time.Since(t))
	first, err := e.clientURL()
	if !e.check(step+"its Secret holds the url", err) {
		return
	}
	if !e.check(step+"the url names the relay's submission port", func() error {
		if want := relayName + "." + ns + ".svc:587"; first.Host != want || first.Scheme != "smtp" || first.User.Username() != appNS+".mailer" {
			return fmt.Errorf("url %s://%s@%s, want smtp://%s.mailer@%s", first.Scheme, first.User.Username(), first.Host, appNS, want)
		}
		return nil
	}()) {
		return
	}
	pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: app, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: %[2]s
      imagePullPolicy: Never
      args: ["-listen", ":8080"]
      env:
        - name: SMTP_URL
          valueFrom: {secretKeyRef: {name: mailer, key: url}}
      readinessProbe:
        httpGet: {path: /, port: 8080}
        periodSeconds: 1
`, appNS, checkImage)
	if !e.check(step+"an application pod with SMTP_URL from the Secret", e.apply(pod+"---\n"+pythonPod(appNS, "py", "mailer"))) {
		return
	}
	if out, err := e.kubectl(70*time.Second, "-n", appNS, "wait", "--for=condition=Ready", "pod/app", "pod/py", "--timeout=60s"); !e.check(step+"application pods Ready", wrap(err, out)) {
		return
	}
	fromPod := func(subject string) error {
		// The Service's ClusterIP: this cluster runs no DNS for the URL's host name.
		out, err := e.kubectl(40*time.Second, "-n", appNS, "exec", "app", "--", "/check", "-url-env", "SMTP_URL", "-smtp", w.svc587,
			"-from", "noreply@app.example", "-to", "someone@example.net", "-subject", subject, "-timeout", "20s")
		if err != nil {
			return wrap(err, out)
		}
		_, err = e.captured(subject, &w.captured)
		return err
	}
	smtplib := func(u *url.URL, subject string) (string, error) {
		return e.cmd(40*time.Second, "", "python3", "-c", smtplibSend, u.String(), w.svc587, "noreply@app.example", subject)
	}
	sentWith := func(u *url.URL) error {
		subject := "e2e-smtplib-" + randomString()
		if out, err := smtplib(u, subject); err != nil {
			return wrap(err, out)
		}
		_, err := e.captured(subject, &w.captured)
		return err
	}
	e.check(step+"the pod sends with the url from its environment", fromPod("e2e-client-pod-"+randomString()))
	e.check(step+"a Python pod sends with smtplib and the url from its environment", func() error {
		subject := "e2e-smtplib-pod-" + randomString()
		if out, err := e.podSmtplib(appNS, "py", w.svc587, "noreply@app.example", subject); err != nil {
			return wrap(err, out)
		}
		_, err := e.captured(subject, &w.captured)
		return err
	}())
	e.check(step+"Python's smtplib sends with the Secret's credentials", sentWith(first))
	e.check(step+"a sender outside allowedSenders is refused", func() error {
		out, err := e.cmd(40*time.Second, "", "python3", "-c", smtplibSend, first.String(), w.svc587, "billing@example.com", "e2e-refused")
		if err == nil || !strings.Contains(out, "smtp-reply: 5") {
			return fmt.Errorf("want a 5xx: %v %s", err, out)
		}
		return nil
	}())

	// Rotation: the Secret changes at once; the pod keeps the old url in its
	// environment and goes on sending during the overlap.
	t = time.Now()
	out, err = e.kubectl(20*time.Second, "-n", appNS, "annotate", "relayclient", "mailer", "relay.kuberelay.io/rotate=e2e-1", "--overwrite")
	if !e.check(step+"ask for a rotation", wrap(err, out)) {
		return
	}
	var rotated *url.URL
	if !e.check(step+"the Secret gets a new password", poll(30*time.Second, 250*time.Millisecond, func() (bool, error) {
		u, err := e.clientURL()
		if err != nil {
			return false, nil
		}
		rotated = u
		p1, _ := first.User.Password()
		p2, _ := u.User.Password()
		return p1 != p2, nil
	})) {
		return
	}
	e.check(step+"the new password works within the reload time", poll(4*applyBound, 500*time.Millisecond, func() (bool, error) {
		return sentWith(rotated) == nil, nil
	}))
	e.time("rotation requested to the new password accepted", time.Since(t))
	e.check(step+"the old password still works during the overlap (the pod's environment)", fromPod("e2e-client-pod-old-"+randomString()))

	e.fleetLimit(w)

	// Deleting the client revokes both passwords.
	t = time.Now()
	out, err = e.kubectl(30*time.Second, "-n", appNS, "delete", "relayclient", "mailer", "--wait=false")
	if !e.check(step+"delete the RelayClient", wrap(err, out)) {
		return
	}
	// One login per try: each failure slows the client's next attempts down.
	e.check(step+"deleting the RelayClient revokes the new password", poll(4*applyBound, 500*time.Millisecond, func() (bool, error) {
		out, err := smtplib(rotated, "e2e-revoked")
		return err != nil && strings.Contains(out, "smtp-reply: 535"), nil
	}))
	e.time("RelayClient deleted to its password refused", time.Since(t))
	e.check(step+"and the old one", func() error {
		if out, err := smtplib(first, "e2e-revoked"); err == nil || !strings.Contains(out, "smtp-reply: 535") {
			return fmt.Errorf("want 535: %v %s", err, out)
		}
		return nil
	}())
	_, _ = e.kubectl(30*time.Second, "delete", "namespace", appNS, "--wait=false")
}

// clientURL reads the url key of the RelayClient's Secret.
func (e *e2e) clientURL() (*url.URL, error) {
	out, err := e.kubectl(20*time.Second, "-n", appNS, "get", "secret", "mailer", "-o", "jsonpath={.data.url}")
	if err != nil {
		return nil, wrap(err, out)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(string(raw))
	if err != nil || u.User == nil {
		return nil, fmt.Errorf("the Secret's url does not parse with credentials")
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return nil, fmt.Errorf("the Secret's url has no port: %w", err)
	}
	return u, nil
}

// describe is kubectl describe, for the log of a failed step.
func (e *e2e) describe(args ...string) string {
	out, _ := e.kubectl(20*time.Second, append([]string{"describe"}, args...)...)
	return out
}

// The fleet-limit check: a budget of messages a minute for the RelayClient, shared
// by fleetLimitPods relay pods (100 each).
const (
	fleetLimitBudget = 300
	fleetLimitPods   = 3
)

// fleetLimit scales the relay to three pods, gives the RelayClient a budget and sends
// half as much again from the pod, each message once on a connection of its own so
// the Service spreads them unevenly over the pods: the fleet must take at most the
// budget in each clock minute the run touched, and must have refused some. The relay
// goes back to two pods.
func (e *e2e) fleetLimit(w *world) {
	const step = "relay clients: fleet rate limit: "
	before, err := e.relayStatus()
	if !e.check(step+"relay status", err) {
		return
	}
	out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p", fmt.Sprintf(`{"spec":{"replicas":%d}}`, fleetLimitPods))
	if !e.check(step+"scale the relay to 3 pods", wrap(err, out)) {
		return
	}
	defer func() {
		out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p", `{"spec":{"replicas":2}}`)
		if e.check(step+"scale the relay back to 2 pods", wrap(err, out)) {
			_, err := e.waitStatus(90*time.Second, func(s relayStatus) bool { return s.applied(2) && s.Status.ReadyReplicas == 2 })
			e.check(step+"two pods again", err)
		}
	}()
	out, err = e.kubectl(20*time.Second, "-n", appNS, "patch", "relayclient", "mailer", "--type=merge", "-p",
		fmt.Sprintf(`{"spec":{"limits":{"messagesPerMinute":%d}}}`, fleetLimitBudget))
	if !e.check(step+"set spec.limits.messagesPerMinute", wrap(err, out)) {
		return
	}
	st, err := e.waitStatus(90*time.Second, func(s relayStatus) bool {
		return s.Status.ConfigHash != before.Status.ConfigHash && s.applied(fleetLimitPods) && s.Status.ReadyReplicas == fleetLimitPods
	})
	if !e.check(step+"three relay pods run the shared budget", err) {
		return
	}
	pods, err := e.relayPods()
	if err == nil {
		err = e.podsRunHash(pods, st.Status.ConfigHash)
	}
	if !e.check(step+"each pod reports the new configuration", err) {
		return
	}
	// One clock minute is the figure: start early in one, so the run fits in it.
	if now := time.Now(); now.Second() > 40 {
		time.Sleep(now.Truncate(time.Minute).Add(time.Minute).Sub(now))
	}
	sent := fleetLimitBudget * 3 / 2
	start := time.Now()
	out, _ = e.kubectl(120*time.Second, "-n", appNS, "exec", "app", "--", "/check", "-url-env", "SMTP_URL", "-smtp", w.svc587,
		"-load", fmt.Sprint(sent), "-concurrency", "8", "-per-session", "1", "-retries", "0", "-id-prefix", "e2e-fleet-"+randomString(),
		"-from", "noreply@app.example", "-to", "someone@example.net", "-timeout", "90s")
	end := time.Now()
	var sum struct {
		Accepted   []string `json:"accepted"`
		Replies4xx int      `json:"replies4xx"`
		Sample4xx  []string `json:"sample4xx"`
	}
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "load-summary: "); ok {
			line = v
		}
	}
	if !e.check(step+"the load ran", func() error {
		if line == "" {
			return fmt.Errorf("no load summary: %s", tail(out, 500))
		}
		return json.Unmarshal([]byte(line), &sum)
	}()) {
		return
	}
	// Windows are clock minutes: a slow run may touch two.
	minutes := int(end.Truncate(time.Minute).Sub(start.Truncate(time.Minute))/time.Minute) + 1
	e.logf("fleet rate limit: %d of %d messages taken in %s over %d clock minute(s), budget %d a minute over %d pods (taken per pod today: %s); %d 4xx replies, e.g. %v",
		len(sum.Accepted), sent, end.Sub(start).Round(time.Millisecond), minutes, fleetLimitBudget, fleetLimitPods,
		e.perPodUse(pods, appNS+".mailer"), sum.Replies4xx, firstN(sum.Sample4xx, 2))
	e.check(step+"the fleet takes at most the budget in each minute", func() error {
		if got, most := len(sum.Accepted), fleetLimitBudget*minutes; got > most {
			return fmt.Errorf("%d messages taken in %d minute(s): more than the budget of %d a minute", got, minutes, fleetLimitBudget)
		}
		return nil
	}())
	e.check(step+"messages over the budget are told 451 4.7.1", func() error {
		if sum.Replies4xx == 0 || !strings.Contains(strings.Join(sum.Sample4xx, " "), "451") {
			return fmt.Errorf("no 451 seen: %v", sum.Sample4xx)
		}
		return nil
	}())
}

// perPodUse is what each relay pod says user sent today (its /status rateUse).
func (e *e2e) perPodUse(pods []pod, user string) string {
	var parts []string
	for _, p := range pods {
		out, err := e.kubectl(15*time.Second, "get", "--raw", "/api/v1/namespaces/"+ns+"/pods/"+p.name+":9090/proxy/status")
		var st struct {
			RateUse []struct {
				Kind, Name string
				Messages   [3]int64
			} `json:"rateUse"`
		}
		if err != nil || json.Unmarshal([]byte(out), &st) != nil {
			parts = append(parts, p.name+" ?")
			continue
		}
		n := int64(0)
		for _, u := range st.RateUse {
			if u.Kind == "user" && u.Name == user {
				n = u.Messages[2]
			}
		}
		parts = append(parts, fmt.Sprintf("%s %d", p.name, n))
	}
	return strings.Join(parts, ", ")
}

// pythonPod is an application pod on the Python image (Debian's python3) with
// SMTP_URL from the named RelayClient Secret, idle until told to send.
func pythonPod(namespace, name, secret string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: %[3]s
      imagePullPolicy: Never
      args: ["-c", "import signal; signal.pause()"]
      env:
        - name: SMTP_URL
          valueFrom: {secretKeyRef: {name: %[4]s, key: url}}
`, namespace, name, pythonImage, secret)
}

// podSmtplib sends one message from a Python pod with smtplib and the url in its
// environment, to addr (the Service's ClusterIP).
func (e *e2e) podSmtplib(namespace, pod, addr, from, subject string) (string, error) {
	return e.kubectl(40*time.Second, "-n", namespace, "exec", pod, "--", "/usr/bin/python3", "-S", "-c", smtplibSend, "env", addr, from, subject)
}

// tenantManifests are an application namespace with labels, a RelayDomain domainName
// for domain and a RelayClient "mailer" that may send as noreply@domain, both
// attached to the e2e relay.
func tenantManifests(namespace, labels, domainName, domain string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels: %[2]s
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayDomain
metadata: {name: %[3]s, namespace: %[1]s}
spec:
  domain: %[4]s
  relayRef: {name: %[5]s, namespace: %[6]s}
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayClient
metadata: {name: mailer, namespace: %[1]s}
spec:
  relayRef: {name: %[5]s, namespace: %[6]s}
  allowedSenders: [noreply@%[4]s]
`, namespace, labels, domainName, domain, relayName, ns)
}
