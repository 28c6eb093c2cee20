package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
	"github.com/kuberelay/kuberelay/internal/gobuild"
)

// childSet holds every process the driver started; each is stopped on exit, ctrl-C
// included.
type childSet struct {
	mu       sync.Mutex
	children []*proc.Child
	after    []func()
	// stopping is held through stopAll, so that a second call (main's, racing the
	// signal handler's) returns only once the first has done everything.
	stopping sync.Mutex
}

var children childSet

// start starts cmd (see proc.Start) and remembers it for stopAll.
func (s *childSet) start(name string, cmd *exec.Cmd) (*proc.Child, error) {
	c, err := proc.Start(name, cmd)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.children = append(s.children, c)
	s.mu.Unlock()
	return c, nil
}

// afterStop registers f to run once, after stopAll has stopped the children: for what a
// child leaves behind (Postfix's daemons).
func (s *childSet) afterStop(f func()) {
	s.mu.Lock()
	s.after = append(s.after, f)
	s.mu.Unlock()
}

// stopAll stops every child still running, the relay with SIGTERM (it drains), Postfix's
// master with SIGTERM (it passes that on to its daemons), the others with SIGKILL; then
// it runs what afterStop registered.
func (s *childSet) stopAll() {
	s.stopping.Lock()
	defer s.stopping.Unlock()
	s.mu.Lock()
	cs := append([]*proc.Child(nil), s.children...)
	after := s.after
	s.after = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch c.Name {
			case "relay":
				c.Stop(syscall.SIGTERM, 10*time.Second)
			case "postfix":
				c.Stop(syscall.SIGTERM, 5*time.Second)
			default:
				c.Stop(syscall.SIGKILL, time.Second)
			}
		}()
	}
	wg.Wait()
	for _, f := range after {
		f()
	}
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

// startSink runs smtp-sink on 127.0.0.1:port and waits for its greeting.
func startSink(sinkPath string, port int, logPath string) (*proc.Child, error) {
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
	return c, waitGreeting(c, fmt.Sprintf("127.0.0.1:%d", port), logPath)
}

// startFloor runs the bare forwarder (hack/bench-relay/floor) on addr in front of
// upstream.
func startFloor(tmp, addr, upstream string) (*proc.Child, error) {
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
	return c, waitGreeting(c, addr, logPath)
}

// waitGreeting waits up to 5s for the child c to greet on addr.
func waitGreeting(c *proc.Child, addr, logPath string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c.Exited() {
			return fmt.Errorf("%s exited at once (%v); see %s", c.Name, c.Err(), logPath)
		}
		err := expectGreeting(addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s on %s not answering after 5s: %v (log %s)", c.Name, addr, err, logPath)
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
	build, err := gobuild.Command(context.Background(), pkg, bin)
	if err != nil {
		return "", err
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building %s: %w", pkg, err)
	}
	return bin, nil
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
	case <-c.Done():
	case <-ctx.Done():
		c.Stop(syscall.SIGKILL, time.Second)
		return 0, fmt.Errorf("smtp-source %s: %w", strings.Join(args, " "), ctx.Err())
	}
	elapsed := time.Since(start)
	if err := c.Err(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 600 {
			msg = msg[:600] + "..."
		}
		return elapsed, fmt.Errorf("smtp-source %s: %v: %s", strings.Join(args, " "), err, msg)
	}
	return elapsed, nil
}
