package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/eventually"

	"golang.org/x/crypto/bcrypt"

	"github.com/kuberelay/kuberelay/internal/gobuild"
	"github.com/kuberelay/kuberelay/internal/kubeletdir"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/relay/config"
)

const cfgTemplate = `apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayConfig
hostname: relay.test
listeners:
- {name: smtp, address: "127.0.0.1:%d", tls: None}
allowedNetworks: [127.0.0.1/32]
users:
- {username: app, passwordHashFile: users/app}
domains:
- domain: example.com
defaultUpstream: main
upstreams:
- name: main
  endpoints: [{host: 127.0.0.1, port: %s}]
  tls: {mode: None}
`

func writeDirs(t *testing.T, yaml string, secrets map[string][]byte) (string, string) {
	t.Helper()
	dir := t.TempDir()
	cfg, sec := filepath.Join(dir, "config"), filepath.Join(dir, "secrets")
	if err := kubeletdir.Write(cfg, map[string][]byte{config.FileName: []byte(yaml)}); err != nil {
		t.Fatal(err)
	}
	if err := kubeletdir.Write(sec, secrets); err != nil {
		t.Fatal(err)
	}
	return cfg, sec
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func hashSecret(t *testing.T) map[string][]byte {
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{"users/app": h}
}

func TestCheck(t *testing.T) {
	good := fmt.Sprintf(cfgTemplate, 2525, "2526")
	cfg, sec := writeDirs(t, good, hashSecret(t))
	var out, errOut strings.Builder
	if code := run([]string{"--check", "--config-dir", cfg, "--secrets-dir", sec}, &out, &errOut); code != 0 {
		t.Fatalf("--check on a good config: exit %d: %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "configuration OK (hash ") {
		t.Fatalf("--check output: %q", out.String())
	}

	// A missing secret file and a bad field are both reported, by field.
	bad := strings.Replace(good, "tls: {mode: None}", "tls: {mode: SSL}", 1)
	cfg, sec = writeDirs(t, bad, map[string][]byte{"other": []byte("x")})
	out.Reset()
	errOut.Reset()
	if code := run([]string{"--check", "--config-dir", cfg, "--secrets-dir", sec}, &out, &errOut); code != 1 {
		t.Fatalf("--check on a bad config: exit %d", code)
	}
	for _, want := range []string{`upstreams[0].tls.mode: "SSL" is not one of`} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("--check output lacks %q:\n%s", want, errOut.String())
		}
	}
	cfg, sec = writeDirs(t, good, map[string][]byte{"other": []byte("x")})
	errOut.Reset()
	if code := run([]string{"--check", "--config-dir", cfg, "--secrets-dir", sec}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), `users[0].passwordHashFile: secret file "users/app" does not exist`) {
		t.Fatalf("missing secret file: exit %d:\n%s", code, errOut.String())
	}
	if code := run([]string{"--check", "extra"}, &out, &errOut); code != 2 {
		t.Fatalf("stray argument: exit %d", code)
	}
}

// TestBinary runs the built relay as a pod would: it serves, reports readiness and the
// config hash on /status, exposes metrics, relays a message, and stops cleanly on
// SIGTERM.
// binaryAndUpstream builds the relay binary and starts a capture server as its
// upstream, stopped when the test ends.
func binaryAndUpstream(t *testing.T) (bin string, up *mailcapture.Server, upPort string) {
	t.Helper()
	bin = filepath.Join(t.TempDir(), "relay")
	if err := gobuild.Build(context.Background(), "./relay/cmd/relay", bin); err != nil {
		t.Fatal(err)
	}
	up, err := mailcapture.Start("127.0.0.1:0", mailcapture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	_, upPort, _ = net.SplitHostPort(up.Addr())
	return bin, up, upPort
}

func TestBinary(t *testing.T) {
	bin, up, upPort := binaryAndUpstream(t)
	smtpPort, httpPort := freePort(t), freePort(t)
	cfg, sec := writeDirs(t, fmt.Sprintf(cfgTemplate, smtpPort, upPort), hashSecret(t))
	cmd := exec.Command(bin, "--config-dir", cfg, "--secrets-dir", sec,
		"--http-address", fmt.Sprintf("127.0.0.1:%d", httpPort), "--shutdown-grace", "5s")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := make(chan string, 1000)
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			logs <- s.Text()
		}
		close(logs)
	}()

	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	eventually.Require(t, 15*time.Second, func() string {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return "relay never became ready: " + err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Sprintf("relay never became ready: /readyz %d", resp.StatusCode)
		}
		return ""
	})
	var st statusResponse
	resp, err := http.Get(base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want, err := config.Load(cfg, sec)
	if err != nil {
		t.Fatal(err)
	}
	if st.ConfigHash != want.Hash || !st.Ready {
		t.Fatalf("/status = %+v, want hash %s", st, want.Hash)
	}

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", smtpPort))
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for _, line := range []string{"", "EHLO t\r\n", "MAIL FROM:<a@example.com>\r\n", "RCPT TO:<b@example.net>\r\n", "DATA\r\n", "Subject: x\r\n\r\nx\r\n.\r\n", "QUIT\r\n"} {
		if line != "" {
			c.Write([]byte(line))
		}
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", line, err)
			}
			if l[0] == '4' || l[0] == '5' {
				t.Fatalf("after %q: %s", line, l)
			}
			if len(l) > 3 && l[3] == ' ' {
				break
			}
		}
	}
	c.Close()
	if len(up.Wait(1, 10*time.Second)) != 1 {
		t.Fatal("message not relayed")
	}

	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{
		`kuberelay_relay_messages_total{outcome="relayed",reason="",upstream="main"} 1`,
		`kuberelay_relay_config_info{hash="` + want.Hash + `"} 1`,
		`kuberelay_relay_config_reloads_total{result="success"} 1`,
		`kuberelay_relay_sessions_total{listener="smtp"} 1`,
		"kuberelay_relay_upstream_data_seconds_bucket",
	} {
		if !strings.Contains(string(body), m) {
			t.Errorf("metrics lack %s", m)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("relay did not stop cleanly on SIGTERM: %v", err)
	}
	var all []string
	for l := range logs {
		all = append(all, l)
		var entry map[string]any
		if err := json.Unmarshal([]byte(l), &entry); err != nil {
			t.Errorf("log line is not JSON: %s", l)
		}
	}
	joined := strings.Join(all, "\n")
	for _, want := range []string{`"msg":"message relayed"`, `"queue":"`, `"session":"`, `"msg":"relay stopped cleanly"`} {
		if !strings.Contains(joined, want) {
			t.Errorf("logs lack %s:\n%s", want, joined)
		}
	}
	_ = os.Remove(bin)
}
