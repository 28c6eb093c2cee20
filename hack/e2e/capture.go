package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// stagingNS is the namespace whose mail the capture step captures.
const stagingNS = ns + "-staging"

// captureMode: the relay captures the mail of namespaces labelled for it. A staging
// namespace's application (a Python pod with its RelayClient's url) sends; the message
// is in one relay pod's capture API, readable, downloadable and deletable there, and
// never reaches the smarthost.
func (e *e2e) captureMode(w *world) {
	const step = "capture mode: "
	_, _ = e.kubectl(90*time.Second, "delete", "namespace", stagingNS, "--ignore-not-found", "--wait=true", "--timeout=80s")
	out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p",
		`{"spec":{"capture":{"namespaceSelector":{"matchLabels":{"kuberelay.io/e2e-capture":"yes"}}}}}`)
	if !e.check(step+"the relay captures the mail of labelled namespaces", wrap(err, out)) {
		return
	}
	defer func() {
		out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "smtprelay", relayName, "--type=merge", "-p", `{"spec":{"capture":null}}`)
		e.check(step+"capture off again", wrap(err, out))
		_, _ = e.kubectl(30*time.Second, "delete", "namespace", stagingNS, "--wait=false")
	}()
	t := time.Now()
	manifests := tenantManifests(stagingNS, `{kuberelay.io/e2e-mail: "yes", kuberelay.io/e2e-capture: "yes"}`, "staging-example", "staging.example") +
		"---\n" + pythonPod(stagingNS, "py", "mailer")
	if !e.check(step+"apply a staging namespace with a RelayDomain, a RelayClient and a Python pod", e.apply(manifests)) {
		return
	}
	out, err = e.kubectl(70*time.Second, "-n", stagingNS, "wait", "--for=condition=Ready", "relayclient/mailer", "pod/py", "--timeout=60s")
	if !e.check(step+"RelayClient and pod Ready", wrap(err, out)) {
		e.logf("%s", e.describe("-n", stagingNS, "relayclient/mailer"))
		return
	}
	out, err = e.kubectl(20*time.Second, "-n", stagingNS, "get", "relayclient", "mailer")
	if !e.check(step+"kubectl get relayclient shows CAPTURED true", func() error {
		if err != nil {
			return wrap(err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		h, v := strings.Fields(lines[0]), strings.Fields(lines[len(lines)-1])
		for i, c := range h {
			if c == "CAPTURED" && i < len(v) && v[i] == "true" {
				return nil
			}
		}
		return fmt.Errorf("no CAPTURED true in:\n%s", out)
	}()) {
		return
	}
	subject := "e2e-captured-" + randomString()
	// The pods take the new configuration within the reload time.
	var lastOut string
	if !e.check(step+"the staging pod sends with smtplib", poll(4*applyBound, 500*time.Millisecond, func() (bool, error) {
		lastOut, err = e.podSmtplib(stagingNS, "py", w.svc587, "noreply@staging.example", subject)
		return err == nil, nil
	})) {
		e.logf("last smtplib output: %s", lastOut)
		return
	}
	e.time("capture mode applied to mail captured", time.Since(t))

	// Exactly one relay pod holds it.
	pods, err := e.relayPods()
	if !e.check(step+"relay pods", err) {
		return
	}
	type item struct {
		ID      string   `json:"id"`
		From    string   `json:"from"`
		To      []string `json:"to"`
		User    string   `json:"user"`
		Subject string   `json:"subject"`
	}
	var holder, id string
	for _, p := range pods {
		var l struct {
			Pod   string `json:"pod"`
			Items []item `json:"items"`
		}
		out, err := e.kubectl(15*time.Second, "get", "--raw", e.captureAPI(p.name, "?q="+url.QueryEscape(subject)))
		if err != nil || json.Unmarshal([]byte(out), &l) != nil {
			e.check(step+"capture API of "+p.name, wrap(err, out))
			return
		}
		for _, it := range l.Items {
			if it.Subject == subject {
				if holder != "" || it.User != stagingNS+".mailer" || it.From != "noreply@staging.example" {
					e.check(step+"one captured copy, from the client", fmt.Errorf("%s holds %+v (holder so far %q)", p.name, it, holder))
					return
				}
				holder, id = p.name, it.ID
			}
		}
	}
	if !e.check(step+"the message is in a relay pod's capture API", func() error {
		if holder == "" {
			return fmt.Errorf("no relay pod's capture API lists %q", subject)
		}
		return nil
	}()) {
		return
	}
	raw, err := e.kubectl(15*time.Second, "get", "--raw", e.captureAPI(holder, "/"+id+"/raw"))
	e.check(step+"its .eml downloads with the relay's Received field", func() error {
		if err != nil {
			return wrap(err, raw)
		}
		if !strings.HasPrefix(raw, "Received: ") || !strings.Contains(raw, "Subject: "+subject) {
			return fmt.Errorf("raw message: %s", firstLines(raw, 5))
		}
		return nil
	}())
	e.check(step+"it never reached the smarthost", func() error {
		for _, m := range e.capture.Messages() {
			if bytes.Contains(m.Data, []byte(subject)) {
				return fmt.Errorf("the smarthost got %q", subject)
			}
		}
		return nil
	}())
	out, err = e.kubectl(15*time.Second, "delete", "--raw", e.captureAPI(holder, "/"+id))
	e.check(step+"delete it through the API", wrap(err, out))
	out, err = e.kubectl(15*time.Second, "get", "--raw", e.captureAPI(holder, "/"+id))
	e.check(step+"gone after the delete", func() error {
		if err == nil {
			return fmt.Errorf("still there: %s", out)
		}
		if !strings.Contains(out, "NotFound") && !strings.Contains(out, "404") && !strings.Contains(out, "not found") {
			return wrap(err, out)
		}
		return nil
	}())
	// Mail of a namespace the selector does not pick is still relayed.
	e.check(step+"another namespace's mail still reaches the smarthost", func() error {
		subject := "e2e-not-captured-" + randomString()
		if r := e.send(w.svc25, true, "", "noreply@example.com", "someone@example.net", subject); r.code != 0 {
			return fmt.Errorf("send: %s", r)
		}
		_, err := e.captured(subject, &w.captured)
		return err
	}())
}

// captureAPI is the path of a relay pod's capture API (plus rest) through the API
// server's proxy.
func (e *e2e) captureAPI(pod, rest string) string {
	return "/api/v1/namespaces/" + ns + "/pods/" + pod + ":9090/proxy/capture/api/messages" + rest
}
