package main

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

func (e *e2e) cmd(timeout time.Duration, stdin string, name string, args ...string) (string, error) {
	return e.run1(timeout, nil, stdin, name, args...)
}

func (e *e2e) cmdEnv(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	return e.run1(timeout, env, "", name, args...)
}

func (e *e2e) run1(timeout time.Duration, env []string, stdin string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = e.repo
	c.Env = append(os.Environ(), env...)
	c.WaitDelay = 5 * time.Second
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	out, err := c.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", name, timeout, err)
	}
	return string(out), err
}

func (e *e2e) kubectl(timeout time.Duration, args ...string) (string, error) {
	return e.cmd(timeout, "", e.kubectlBin, append([]string{"--kubeconfig", e.kubeconfig, "--request-timeout=" + timeout.String()}, args...)...)
}

func (e *e2e) apply(yaml string) error {
	out, err := e.cmd(60*time.Second, yaml, e.kubectlBin, "--kubeconfig", e.kubeconfig, "apply", "-f", "-")
	return wrap(err, out)
}

func poll(bound, every time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(bound)
	for {
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", bound)
		}
		time.Sleep(every)
	}
}

func wrap(err error, out string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%v: %s", err, strings.TrimSpace(tail(out, 2000)))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n       ")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func randomString() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// imageRef reads the image name from a `docker save`-style tarball.
func imageRef(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%v (run without -skip-image, or `make image`)", err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s has no manifest.json", path)
		}
		if err != nil {
			return "", err
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", err
		}
		if len(m) == 0 || len(m[0].RepoTags) == 0 {
			return "", fmt.Errorf("%s names no image", path)
		}
		return m[0].RepoTags[0], nil
	}
}
