// Command run runs kuberelay on this machine with no cluster: an embedded control
// plane, the operator, the samples in config/samples, and a relay serving exactly the
// configuration the operator renders, delivering to a local capture smarthost that
// saves each message under DIR/mail. Edit the resources with kubectl and the relay
// picks the change up without a restart. Ctrl-C stops everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/kuberelay/kuberelay/internal/localrun"
	"github.com/kuberelay/kuberelay/internal/testenv"
)

func main() {
	dir := flag.String("dir", ".run", "directory for the mail, the relay's files, the kubeconfig and the logs")
	relay := flag.String("relay", "bin/relay", "relay binary (make build)")
	httpAddr := flag.String("http-address", "127.0.0.1:9090", "the relay's /status, /metrics and /readyz")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := testenv.RepoRoot()
	if err != nil {
		fail(err)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fail(err)
	}
	fmt.Println("starting a control plane, the operator, the samples and the relay ...")
	run, err := localrun.Start(ctx, localrun.Options{Dir: abs, RelayBinary: *relay,
		Samples: filepath.Join(root, "config", "samples"), HTTPAddress: *httpAddr})
	if err != nil {
		fail(err)
	}
	defer run.Stop()
	assets, _ := testenv.Assets(root)
	kubectl := fmt.Sprintf("KUBECONFIG=%s %s", run.Kubeconfig, filepath.Join(assets, "kubectl"))
	fmt.Printf(`
kuberelay is running.

  relay listeners   127.0.0.1:10025 (smtp, STARTTLS) and 127.0.0.1:10587 (submission, STARTTLS + AUTH)
  relay status      http://%[1]s/status   metrics: http://%[1]s/metrics   log: %[2]s
  smarthost         %[3]s (a local capture standing in for the sample's SES); mail lands in %[4]s
  operator log      %[5]s

Send a test mail as the sample user:

  swaks --server 127.0.0.1:10587 --tls --auth PLAIN --auth-user billing \
    --auth-password replace-with-a-long-random-password \
    --from billing@example.com --to someone@example.net

Look at and edit the resources; the relay reloads without a restart:

  %[6]s get smtprelay,smarthost,relaydomain -n mail
  %[6]s get relaydomain example-com -n mail -o jsonpath='{.status.dkimRecord}'
  %[6]s edit relaydomain example-com -n mail

Ctrl-C stops everything.
`, run.HTTPAddress, run.RelayLog, run.Capture.Addr(), filepath.Join(abs, "mail"), filepath.Join(abs, "manager.log"), kubectl)
	<-ctx.Done()
	fmt.Println("\nstopping ...")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "run:", err)
	os.Exit(1)
}
