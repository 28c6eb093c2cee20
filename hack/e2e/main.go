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
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kuberelay/kuberelay/internal/mailcapture"
)

const (
	ns          = "e2e"
	relayName   = "outbound"
	releaseName = "kuberelay"
	releaseNS   = "kuberelay-system"
	checkImage  = "kuberelay.local/check:1"
	pythonImage = "kuberelay.local/python:1"
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
