package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
)

func (e *e2e) teardown() {
	if e.capture != nil {
		_ = e.capture.Close()
	}
	if *keep {
		e.logf("-keep: leaving the release and the cluster up (KUBECONFIG=%s)", e.kubeconfig)
		return
	}
	if e.kubeconfig != "" {
		if out, err := e.kubectl(90*time.Second, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=60s"); err != nil {
			e.logf("deleting namespace %s: %v %s", ns, err, out)
		}
		if out, err := e.cmd(2*time.Minute, "", *helmBin, "--kubeconfig", e.kubeconfig, "uninstall", releaseName, "-n", releaseNS, "--wait", "--timeout=60s"); err != nil {
			e.logf("helm uninstall: %v %s", err, out)
		}
	}
	if len(e.failed) > 0 && e.state != "" {
		e.componentLogs()
	}
	if e.clusterStarted {
		t := time.Now()
		if out, err := e.cmd(3*time.Minute, "", "hack/cluster/cluster", "down"); err != nil {
			e.check("cluster down", wrap(err, out))
		} else {
			e.time("cluster down", time.Since(t))
		}
	}
}

// componentLogs prints the end of each cluster component's log, so a failed run
// (in CI, on a machine that is gone by the time anyone looks) explains itself.
func (e *e2e) componentLogs() {
	files, _ := filepath.Glob(filepath.Join(e.state, "logs", "*.log"))
	for _, f := range files {
		fmt.Printf("--- %s (last lines)\n%s\n", f, proc.TailFile(f, 25))
	}
}

func (e *e2e) summary() {
	fmt.Println("\n=== e2e summary")
	fmt.Println("timings:")
	for _, t := range e.timings {
		fmt.Printf("  %-76s %8s\n", t.name, t.d.Round(time.Millisecond))
	}
	if len(e.notes) > 0 {
		fmt.Println("figures:")
		for _, n := range e.notes {
			fmt.Println("  " + n)
		}
	}
	fmt.Printf("passed (%d):\n", len(e.passed))
	for _, p := range e.passed {
		fmt.Println("  ok  ", p)
	}
	if len(e.failed) > 0 {
		fmt.Printf("FAILED (%d):\n", len(e.failed))
		for _, f := range e.failed {
			fmt.Println("  FAIL", firstLines(f, 6))
		}
		return
	}
	fmt.Println("all checks passed")
}
