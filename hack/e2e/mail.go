package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
)

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
