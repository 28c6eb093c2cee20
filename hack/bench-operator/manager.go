package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// managerBinary returns path made absolute, or builds the operator into dir when path
// is empty.
func managerBinary(ctx context.Context, path, root, dir string) (string, error) {
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
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building the operator: %w", err)
	}
	return bin, nil
}

// manager is the operator running as a child process.
type manager struct {
	cmd                    *exec.Cmd
	version                string
	logPath                string
	metricsAddr, probeAddr string
	done                   chan struct{}
	err                    error // valid once done is closed
}

func startManager(ctx context.Context, bin, kubeconfig, logPath string) (*manager, error) {
	version, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", bin, err)
	}
	var ports [2]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	m := &manager{
		version:     strings.TrimSpace(string(version)),
		logPath:     logPath,
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		probeAddr:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
		done:        make(chan struct{}),
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	m.cmd = exec.Command(bin, "--metrics-bind-address", m.metricsAddr, "--health-probe-bind-address", m.probeAddr)
	m.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	// The manager dies with this process even if it is killed without cleaning up.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the manager: %w", err)
	}
	go func() {
		m.err = m.cmd.Wait()
		close(m.done)
	}()
	return m, nil
}

func (m *manager) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// stop stops the manager with SIGTERM, and SIGKILL if it has not left after 10s.
func (m *manager) stop() {
	if m.exited() {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
		return
	case <-time.After(10 * time.Second):
	}
	_ = m.cmd.Process.Kill()
	<-m.done
}

// waitReady polls /readyz until it answers 200.
func (m *manager) waitReady(ctx context.Context, timeout time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		if m.exited() {
			return m.withLog(fmt.Errorf("the manager exited before becoming ready: %v", m.err))
		}
		resp, err := hc.Get("http://" + m.probeAddr + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return m.withLog(fmt.Errorf("the manager is not ready after %v (last /readyz: %s)", timeout, last))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// memory returns the manager's peak and current resident set size, in bytes.
func (m *manager) memory() (hwm, rss int64, err error) {
	if m.exited() {
		return 0, 0, fmt.Errorf("the manager has exited: %v", m.err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// e.g. "VmHWM:	   81234 kB"
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmHWM" && key != "VmRSS") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc status %s: %q: %w", key, val, err)
		}
		if key == "VmHWM" {
			hwm = kb << 10
		} else {
			rss = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if hwm == 0 || rss == 0 {
		return 0, 0, fmt.Errorf("no VmHWM or VmRSS in /proc/%d/status", m.cmd.Process.Pid)
	}
	return hwm, rss, nil
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
	return fmt.Errorf("%w\nthe manager's log (%s) ends:\n%s", err, m.logPath, tailFile(m.logPath, 15))
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailFile returns the last n lines of a file, each cut to 400 bytes.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "..."
		}
	}
	return strings.Join(lines, "\n")
}
