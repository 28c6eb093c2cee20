package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the driver started; every one is stopped on exit, ctrl-C included.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid once done is closed
}

type childSet struct {
	mu       sync.Mutex
	children []*child
}

var children childSet

// start starts cmd and tracks it until it exits. The child gets SIGKILL if this
// process dies without cleaning up (Linux parent-death signal).
func (s *childSet) start(name string, cmd *exec.Cmd) (*child, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	s.mu.Lock()
	s.children = append(s.children, c)
	s.mu.Unlock()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends sig, waits up to grace, then kills. It reports whether the child had to
// be killed.
func (c *child) stop(sig os.Signal, grace time.Duration) (killed bool) {
	if c.exited() {
		return false
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
		return false
	case <-time.After(grace):
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
	return true
}

// stopAll stops every child still running, the relay with SIGTERM (it drains), the
// others with SIGKILL.
func (s *childSet) stopAll() {
	s.mu.Lock()
	cs := append([]*child(nil), s.children...)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.name == "relay" {
				c.stop(syscall.SIGTERM, 10*time.Second)
			} else {
				c.stop(syscall.SIGKILL, time.Second)
			}
		}()
	}
	wg.Wait()
}

// findTool finds a Postfix test program in PATH or in the Debian locations.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/lib/postfix/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH, /usr/sbin or /usr/lib/postfix/sbin; install the Debian package postfix (apt-get install postfix)", name)
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

// startSink runs smtp-sink on 127.0.0.1:port and waits for its greeting.
func startSink(sinkPath string, port int, logPath string) (*child, error) {
	args := []string{}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody") // required as root
	}
	// -m: concurrent connections handled (the driver uses at most ~60 at once).
	args = append(args, "-m", "1024", fmt.Sprintf("127.0.0.1:%d", port), "1024")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(sinkPath, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	c, err := children.start("smtp-sink", cmd)
	logf.Close()
	if err != nil {
		return nil, err
	}
	return c, waitGreeting(c, "smtp-sink", fmt.Sprintf("127.0.0.1:%d", port), logPath)
}

// startFloor runs the bare forwarder (hack/bench-relay/floor) on addr in front of
// upstream.
func startFloor(tmp, addr, upstream string) (*child, error) {
	bin, err := buildTool("./hack/bench-relay/floor", filepath.Join(tmp, "floor"))
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(tmp, "floor.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, addr, upstream)
	cmd.Stdout, cmd.Stderr = logf, logf
	c, err := children.start("floor", cmd)
	logf.Close()
	if err != nil {
		return nil, err
	}
	return c, waitGreeting(c, "floor", addr, logPath)
}

// waitGreeting waits up to 5s for the child c to greet on addr.
func waitGreeting(c *child, name, addr, logPath string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c.exited() {
			return fmt.Errorf("%s exited at once (%v); see %s", name, c.err, logPath)
		}
		err := expectGreeting(addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s on %s not answering after 5s: %v (log %s)", name, addr, err, logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func expectGreeting(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf[:n]), "220") {
		return fmt.Errorf("unexpected greeting %q", buf[:n])
	}
	_, _ = conn.Write([]byte("QUIT\r\n"))
	return nil
}

// ensureRelayBinary returns path if it exists, else builds the relay into tmpDir.
func ensureRelayBinary(path, tmpDir string) (string, bool, error) {
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		abs, err := filepath.Abs(path)
		return abs, false, err
	}
	bin, err := buildTool("./relay/cmd/relay", filepath.Join(tmpDir, "relay"))
	if err != nil {
		return "", false, fmt.Errorf("%s does not exist: %w", path, err)
	}
	return bin, true, nil
}

// buildTool builds the main package pkg of this module into bin.
func buildTool(pkg, bin string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "", fmt.Errorf("cannot build %s: the module root is unknown (run from the repository)", pkg)
	}
	build := exec.Command("go", "build", "-o", bin, pkg)
	build.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building %s: %w", pkg, err)
	}
	return bin, nil
}

// waitReady polls GET /readyz until 200, the relay exits or the timeout passes.
func waitReady(ctx context.Context, relay *child, httpAddr string, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if relay.exited() {
			return fmt.Errorf("relay exited before becoming ready: %v", relay.err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := client.Get("http://" + httpAddr + "/readyz")
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
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("relay not ready after %v (last /readyz: %s)", timeout, last)
}

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runSource runs smtp-source once and returns its wall-clock duration.
func runSource(ctx context.Context, sourcePath string, args []string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var out strings.Builder
	cmd := exec.Command(sourcePath, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	c, err := children.start("smtp-source", cmd)
	if err != nil {
		return 0, err
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		c.stop(syscall.SIGKILL, time.Second)
		return 0, fmt.Errorf("smtp-source %s: %w", strings.Join(args, " "), ctx.Err())
	}
	elapsed := time.Since(start)
	if c.err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 600 {
			msg = msg[:600] + "..."
		}
		return elapsed, fmt.Errorf("smtp-source %s: %v: %s", strings.Join(args, " "), c.err, msg)
	}
	return elapsed, nil
}
