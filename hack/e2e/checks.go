package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/internal/testcerts"
)

// checkInterval is the checked Smarthost's spec.check.interval: the API's least.
const checkInterval = 30 * time.Second

// smarthostChecks: a Smarthost whose password is wrong shows AuthAccepted False with
// the server's reply within one check interval, and True after its Secret is fixed,
// with no relay pod restarted.
func (e *e2e) smarthostChecks() {
	const step = "smarthost checks: "
	ca, err := testcerts.NewCA("kuberelay e2e checked smarthost CA")
	var tlsCfg *tls.Config
	if err == nil {
		tlsCfg, err = ca.ServerTLS(nodeIP)
	}
	if !e.check(step+"a CA for a second smarthost", err) {
		return
	}
	const user, right = "relay", "right-password-e2e"
	srv, err := startChecked(tlsCfg, user, right)
	if !e.check(step+"a second smarthost that takes one login", err) {
		return
	}
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Addr())
	pods, err := e.relayPods()
	if !e.check(step+"relay pods", err) {
		return
	}
	manifests := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: checked-ca, namespace: %[1]s}
data: {ca.crt: %[2]s}
---
apiVersion: v1
kind: Secret
metadata: {name: checked-credentials, namespace: %[1]s}
type: kubernetes.io/basic-auth
stringData: {username: %[3]s, password: wrong-password}
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: Smarthost
metadata: {name: checked, namespace: %[1]s}
spec:
  endpoints: [{host: "%[4]s", port: %[5]s}]
  tls: {caSecretRef: {name: checked-ca}}
  auth: {secretRef: {name: checked-credentials}}
  check: {interval: %[6]s}
---
apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayDomain
metadata: {name: checked-example, namespace: %[1]s}
spec:
  domain: checked.example
  relayRef: {name: %[7]s}
  smarthostRef: {name: checked}
`, ns, b64(ca.PEM), user, nodeIP, port, checkInterval, relayName)
	t := time.Now()
	if !e.check(step+"a Smarthost with a wrong password, used by a RelayDomain", e.apply(manifests)) {
		return
	}
	defer func() {
		_, _ = e.kubectl(30*time.Second, "-n", ns, "delete", "relaydomain/checked-example", "smarthost/checked", "secret/checked-credentials", "secret/checked-ca", "--ignore-not-found")
	}()
	cond := func(want string) (string, error) {
		var msg string
		err := poll(checkInterval+4*applyBound, 250*time.Millisecond, func() (bool, error) {
			out, err := e.kubectl(15*time.Second, "-n", ns, "get", "smarthost", "checked", "-o", "json")
			if err != nil {
				return false, nil
			}
			var sh struct {
				Status struct {
					Conditions []struct{ Type, Status, Message string } `json:"conditions"`
				} `json:"status"`
			}
			if json.Unmarshal([]byte(out), &sh) != nil {
				return false, nil
			}
			for _, c := range sh.Status.Conditions {
				if c.Type == "AuthAccepted" {
					msg = c.Message
					return c.Status == want, nil
				}
			}
			return false, nil
		})
		return msg, err
	}
	msg, err := cond("False")
	e.check(step+"AuthAccepted False with the server's reply within one check interval", func() error {
		if err != nil {
			return fmt.Errorf("%v (last message %q)", err, msg)
		}
		if !strings.Contains(msg, "535") || strings.Contains(msg, "wrong-password") {
			return fmt.Errorf("message %q: want the server's 535 and no password", msg)
		}
		return nil
	}())
	e.time("Smarthost with a wrong password applied to AuthAccepted False", time.Since(t))
	e.logf("smarthost checks: AuthAccepted False: %s", msg)

	t = time.Now()
	out, err := e.kubectl(20*time.Second, "-n", ns, "patch", "secret", "checked-credentials", "--type=merge", "-p",
		fmt.Sprintf(`{"stringData":{"password":%q}}`, right))
	if !e.check(step+"fix the password in the Secret", wrap(err, out)) {
		return
	}
	msg, err = cond("True")
	e.check(step+"AuthAccepted True after the fix", wrap(err, msg))
	e.time("Secret fixed to AuthAccepted True", time.Since(t))
	e.check(step+"no relay pod restarted", e.samePods(pods))
	out, _ = e.kubectl(15*time.Second, "-n", ns, "get", "smarthost", "checked")
	e.check(step+"kubectl get smarthost shows REACHABLE and AUTHACCEPTED True", func() error {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			return fmt.Errorf("unexpected output:\n%s", out)
		}
		h, v := strings.Fields(lines[0]), strings.Fields(lines[1])
		got := map[string]string{}
		for i := range h {
			if i < len(v) {
				got[h[i]] = v[i]
			}
		}
		if got["REACHABLE"] != "True" || got["AUTHACCEPTED"] != "True" {
			return fmt.Errorf("columns %v:\n%s", got, out)
		}
		return nil
	}())
	e.logf("%s", out)
}

// startChecked starts a STARTTLS smarthost that takes one user's login.
func startChecked(tlsCfg *tls.Config, user, pass string) (*mailcapture.Server, error) {
	return mailcapture.Start(nodeIP+":0", mailcapture.Options{TLS: tlsCfg, Auth: true, Users: map[string]string{user: pass}})
}
