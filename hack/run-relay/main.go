// Command run-relay runs a relay on this machine with an embedded default
// configuration, no cluster needed: it generates a certificate, a DKIM key and a demo
// user, publishes relay.yaml and the secret files the way the kubelet mounts a
// ConfigMap and a Secret, starts a capture smarthost that saves every message it
// receives as an .eml file, and runs the relay binary against them. Editing the source
// relay.yaml it prints re-publishes it, and the relay hot-reloads. Ctrl-C stops all.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/crypto/bcrypt"

	"github.com/kuberelay/kuberelay/internal/gobuild"
	"github.com/kuberelay/kuberelay/internal/kubeletdir"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
	"github.com/kuberelay/kuberelay/internal/testcerts"
	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/dkim"
)

const (
	demoUser     = "demo"
	demoPassword = "demo-password"
)

func main() {
	dir := flag.String("dir", ".run", "working directory for config, secrets and captured mail")
	smtpPort := flag.Int("smtp-port", 2525, "port of the relay's plain/STARTTLS listener")
	subPort := flag.Int("submission-port", 2587, "port of the relay's STARTTLS+AUTH listener")
	capturePort := flag.Int("capture-port", 2526, "port of the capture smarthost")
	httpPort := flag.Int("http-port", 9090, "port of the relay's metrics and status endpoint")
	flag.Parse()
	if err := run(*dir, *smtpPort, *subPort, *capturePort, *httpPort); err != nil {
		log.Fatalf("run-relay: %v", err)
	}
}

func run(dir string, smtpPort, subPort, capturePort, httpPort int) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	mailDir := filepath.Join(dir, "mail")
	for _, d := range []string{dir, mailDir, filepath.Join(dir, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	secrets, txt, err := demoSecrets()
	if err != nil {
		return err
	}
	srcConfig := filepath.Join(dir, "relay.yaml")
	if _, err := os.Stat(srcConfig); os.IsNotExist(err) {
		if err := os.WriteFile(srcConfig, []byte(defaultConfig(smtpPort, subPort, capturePort)), 0o644); err != nil {
			return err
		}
	}
	configDir, secretsDir := filepath.Join(dir, "config"), filepath.Join(dir, "secrets")
	if err := kubeletdir.Write(secretsDir, secrets); err != nil {
		return err
	}
	publish := func() error {
		b, err := os.ReadFile(srcConfig)
		if err != nil {
			return err
		}
		return kubeletdir.Write(configDir, map[string][]byte{config.FileName: b})
	}
	if err := publish(); err != nil {
		return err
	}

	capture, err := mailcapture.Start(fmt.Sprintf("127.0.0.1:%d", capturePort), mailcapture.Options{Dir: mailDir})
	if err != nil {
		return err
	}
	defer capture.Close()

	relayBin := filepath.Join(dir, "bin", "relay")
	build, err := gobuild.Command(context.Background(), "./relay/cmd/relay", relayBin)
	if err != nil {
		return err
	}
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the relay: %w", err)
	}
	relay := exec.Command(relayBin, "--config-dir", configDir, "--secrets-dir", secretsDir,
		"--http-address", fmt.Sprintf("127.0.0.1:%d", httpPort), "--reload-interval", "10s")
	relay.Stdout, relay.Stderr = os.Stdout, os.Stderr
	if err := relay.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- relay.Wait() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go watchSource(ctx, srcConfig, publish)

	fmt.Printf(`
kuberelay relay running locally (Ctrl-C stops everything).

  Send a test mail from an allowed network (127.0.0.1), DKIM-signed for example.com:
    swaks --server 127.0.0.1:%[1]d --from noreply@example.com --to someone@example.net

  Send with STARTTLS and AUTH on the submission port:
    swaks --server 127.0.0.1:%[2]d -tls --tls-verify=no --auth PLAIN --auth-user %[5]s \
      --auth-password %[6]s --from noreply@example.com --to someone@example.net

  Delivered mail is saved as .eml files in: %[3]s
  Status and metrics: curl 127.0.0.1:%[7]d/status ; curl 127.0.0.1:%[7]d/metrics
  Edit the configuration (saved changes are published as the kubelet would and
  hot-reloaded, no restart): %[4]s
  DKIM record to publish at s1._domainkey.example.com: %[8]s

`, smtpPort, subPort, mailDir, srcConfig, demoUser, demoPassword, httpPort, txt)

	select {
	case err := <-exited:
		return fmt.Errorf("relay exited: %v", err)
	case <-ctx.Done():
	}
	_ = relay.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = relay.Process.Kill()
		<-exited
	}
	fmt.Println("stopped")
	return nil
}

func defaultConfig(smtpPort, subPort, capturePort int) string {
	return fmt.Sprintf(`# kuberelay relay configuration (reference: docs/relay-config.md)
apiVersion: relay.kuberelay.io/v1alpha1
kind: RelayConfig
hostname: relay.localhost.localdomain
listeners:
- name: smtp
  address: 127.0.0.1:%d
  tls: STARTTLS
- name: submission
  address: 127.0.0.1:%d
  tls: STARTTLS
  requireAuth: true
tls:
  certFile: tls.crt
  keyFile: tls.key
allowedNetworks: [127.0.0.1/32]
users:
- username: %s
  passwordHashFile: users/%s
  allowedSenders: [example.com]
domains:
- domain: example.com
  dkim:
    selector: s1
    privateKeyFile: dkim/example.com.key
- domain: example.org
defaultUpstream: capture
upstreams:
- name: capture
  endpoints:
  - host: 127.0.0.1
    port: %d
  tls:
    mode: None
`, smtpPort, subPort, demoUser, demoUser, capturePort)
}

// demoSecrets makes the secret files of the default configuration, as the operator
// would render them into the relay's Secret.
func demoSecrets() (map[string][]byte, string, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte(demoPassword), bcrypt.DefaultCost)
	if err != nil {
		return nil, "", err
	}
	dkimKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, "", err
	}
	txt, err := dkim.TXTRecord(dkimKey)
	if err != nil {
		return nil, "", err
	}
	certPEM, keyPEM, err := testcerts.SelfSigned("relay.localhost.localdomain", "localhost", "127.0.0.1")
	if err != nil {
		return nil, "", err
	}
	return map[string][]byte{
		"tls.crt":              certPEM,
		"tls.key":              keyPEM,
		"users/" + demoUser:    hash,
		"dkim/example.com.key": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(dkimKey)}),
	}, txt, nil
}

// watchSource re-publishes the source relay.yaml whenever it is saved.
func watchSource(ctx context.Context, src string, publish func() error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Printf("not watching %s: %v", src, err)
		return
	}
	defer w.Close()
	// Editors often replace the file, so the directory is watched.
	if err := w.Add(filepath.Dir(src)); err != nil {
		log.Printf("not watching %s: %v", src, err)
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-w.Events:
			if filepath.Clean(ev.Name) != src || !ev.Has(fsnotify.Write|fsnotify.Create|fsnotify.Rename) {
				continue
			}
			if err := publish(); err != nil {
				log.Printf("publishing %s: %v", src, err)
			} else {
				log.Printf("published %s to the relay's config directory", src)
			}
		case err := <-w.Errors:
			log.Printf("watching %s: %v", src, err)
		}
	}
}
