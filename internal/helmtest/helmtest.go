// Package helmtest runs the Helm client on the chart in charts/kuberelay, for the
// chart's tests. The client is the pinned version that `make helm` installs into
// ./bin; a test that cannot find it fails and says how to get it, it never skips.
package helmtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Timeout bounds one helm command.
const Timeout = 2 * time.Minute

// Helm runs one helm binary with its configuration, cache and data directories
// private to the caller, so that no user or machine state leaks into a test.
type Helm struct {
	// Bin is the helm binary.
	Bin string
	// Home holds helm's configuration, cache and data directories.
	Home string
}

// New finds the helm binary for the repository at root: the HELM environment
// variable when set, otherwise ./bin/helm-<HELM_VERSION> as the Makefile installs it.
// home is a directory for helm's own state (e.g. t.TempDir()).
func New(root, home string) (*Helm, error) {
	bin := os.Getenv("HELM")
	if bin == "" {
		v, err := Version(root)
		if err != nil {
			return nil, err
		}
		bin = filepath.Join(root, "bin", "helm-"+v)
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no helm client at %s (run `make helm` to install it, or set HELM): %w", bin, err)
	}
	return &Helm{Bin: bin, Home: home}, nil
}

var versionLine = regexp.MustCompile(`(?m)^HELM_VERSION\s*\?=\s*(\S+)\s*$`)

// Version is the helm version the Makefile pins (HELM_VERSION).
func Version(root string) (string, error) {
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		return "", err
	}
	m := versionLine.FindSubmatch(mk)
	if m == nil {
		return "", fmt.Errorf("no `HELM_VERSION ?=` line in %s", filepath.Join(root, "Makefile"))
	}
	return string(m[1]), nil
}

// Run runs helm with args and returns its standard output. The error carries helm's
// standard error.
func (h *Helm) Run(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(h.Home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(h.Home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(h.Home, "data"),
		"KUBECONFIG="+filepath.Join(h.Home, "no-kubeconfig"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}
