// Package gobuild builds this module's commands the one way `make build` does: static
// (CGO_ENABLED=0) and with -trimpath. Build settings are part of the key of every
// compiled package in go's build cache, so when tests, the hack/ drivers, go vet and
// `make build` all use these, each dependency is compiled once per machine instead of
// once per variant; the race-instrumented test binaries are the only other set.
package gobuild

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Env is the environment every build of this module's binaries adds to its own.
var Env = []string{"CGO_ENABLED=0"}

// Flags are the go build flags every build of this module's binaries uses (the
// Makefile's GOBUILDFLAGS).
var Flags = []string{"-trimpath"}

// Command returns a `go build` of the main package pkg (a path inside the module, such
// as "./relay/cmd/relay") into out, run from the module's root, with extra flags after
// the shared ones (for example "-ldflags", "-X main.version=v1").
func Command(ctx context.Context, pkg, out string, extra ...string) (*exec.Cmd, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	args := append([]string{"build"}, Flags...)
	args = append(args, extra...)
	args = append(args, "-o", out, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), Env...)
	return cmd, nil
}

// Build runs Command and returns the compiler's output with the error.
func Build(ctx context.Context, pkg, out string, extra ...string) error {
	cmd, err := Command(ctx, pkg, out, extra...)
	if err != nil {
		return err
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// ModuleRoot finds the module's root (the directory with go.mod) at or above the
// working directory, which go test sets to the package's directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory: run from the repository")
		}
		dir = parent
	}
}
