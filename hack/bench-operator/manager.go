package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
	"github.com/kuberelay/kuberelay/internal/gobuild"
)

// managerBinary returns path made absolute, or builds the operator into dir when path
// is empty.
func managerBinary(ctx context.Context, path, dir string) (string, error) {
	if path != "" {
		fi, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("-manager: %w (make build makes bin/manager)", err)
		}
		if fi.IsDir() {
			return "", fmt.Errorf("-manager: %s is a directory", path)
		}
		return filepath.Abs(path)
	}
	bin := filepath.Join(dir, "manager")
	progress("building the operator into %s", bin)
	build, err := gobuild.Command(ctx, ".", bin)
	if err != nil {
		return "", err
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building the operator: %w", err)
	}
	return bin, nil
}

// manager is the operator running as a child process.
type manager struct {
	*proc.Child
	version                string
	agent                  string // the start of its user agent, which client-go makes from the binary's name
	logPath                string
	metricsAddr, probeAddr string
}

func startManager(ctx context.Context, bin, kubeconfig, logPath string) (*manager, error) {
	version, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", bin, err)
	}
	var ports [2]int
	for i := range ports {
		if ports[i], err = proc.FreePort(); err != nil {
			return nil, err
		}
	}
	m := &manager{
		version:     strings.TrimSpace(string(version)),
		agent:       filepath.Base(bin) + "/",
		logPath:     logPath,
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		probeAddr:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--metrics-bind-address", m.metricsAddr, "--health-probe-bind-address", m.probeAddr)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	if m.Child, err = proc.Start("the manager", cmd); err != nil {
		return nil, err
	}
	return m, nil
}

// stop stops the manager with SIGTERM, and SIGKILL if it has not left after 10s.
func (m *manager) stop() {
	m.Stop(syscall.SIGTERM, 10*time.Second)
}

// waitReady polls /readyz until it answers 200.
func (m *manager) waitReady(ctx context.Context, timeout time.Duration) error {
	if err := proc.WaitReady(ctx, m.Child, "http://"+m.probeAddr+"/readyz", timeout); err != nil {
		return m.withLog(err)
	}
	return nil
}

// memory returns the manager's peak and current resident set size, in bytes.
func (m *manager) memory() (hwm, rss int64, err error) {
	if m.Exited() {
		return 0, 0, fmt.Errorf("the manager has exited: %v", m.Err())
	}
	rss, hwm, err = proc.Memory(m.Pid())
	return hwm, rss, err
}

// scrape reads the manager's metrics.
func (m *manager) scrape(ctx context.Context) (counters, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.metricsAddr+"/metrics", nil)
	if err != nil {
		return counters{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return counters{}, fmt.Errorf("scraping the manager's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return counters{}, fmt.Errorf("scraping the manager's metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// withLog adds the end of the manager's log to err.
func (m *manager) withLog(err error) error {
	return fmt.Errorf("%w\nthe manager's log (%s) ends:\n%s", err, m.logPath, proc.TailFile(m.logPath, 15))
}
