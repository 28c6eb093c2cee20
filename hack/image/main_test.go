package main

import (
	"archive/tar"
	"context"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kuberelay/kuberelay/internal/gobuild"
)

// TestImage builds the image from freshly built static binaries and checks what a
// container runtime would use: user, entrypoint, labels, files, and that both
// binaries are static and report their version.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	bins := map[string]string{"manager": ".", "relay": "./relay/cmd/relay"}
	for bin, pkg := range bins {
		if err := gobuild.Build(context.Background(), pkg, filepath.Join(dir, bin),
			"-ldflags", "-s -w -X main.version=v9.8.7 -X main.commit=abc1234"); err != nil {
			t.Fatal(err)
		}
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out", "image.tar")
	o := Options{Manager: filepath.Join(dir, "manager"), Relay: filepath.Join(dir, "relay"), CACerts: ca,
		Repository: "ghcr.io/kuberelay/kuberelay", Version: "v9.8.7", Commit: "abc1234", Source: "https://example.com/src",
		Output: out, Created: time.Unix(1700000000, 0).UTC()}
	if err := Build(o); err != nil {
		t.Fatal(err)
	}

	tag, _ := name.NewTag("ghcr.io/kuberelay/kuberelay:v9.8.7")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("the tarball does not hold the tagged image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" || strings.Join(c.Entrypoint, " ") != "/manager" {
		t.Errorf("user %q, entrypoint %q", c.User, c.Entrypoint)
	}
	for k, v := range map[string]string{"org.opencontainers.image.version": "v9.8.7", "org.opencontainers.image.revision": "abc1234",
		"org.opencontainers.image.source": "https://example.com/src", "org.opencontainers.image.created": "2023-11-14T22:13:20Z"} {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}

	// The files, extracted as a runtime would.
	root := filepath.Join(dir, "rootfs")
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	modes := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		modes[h.Name] = h.Mode
		if h.Typeflag != tar.TypeReg {
			continue
		}
		p := filepath.Join(root, h.Name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, b, os.FileMode(h.Mode)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"manager", "relay", "etc/ssl/certs/ca-certificates.crt", "tmp/"} {
		if _, ok := modes[f]; !ok {
			t.Errorf("the image lacks /%s (has %v)", f, modes)
		}
	}
	for _, bin := range []string{"manager", "relay"} {
		p := filepath.Join(root, bin)
		if modes[bin]&0o111 == 0 {
			t.Errorf("/%s is not executable: %o", bin, modes[bin])
		}
		f, err := elf.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("/%s is dynamically linked; the image has no libc", bin)
			}
		}
		f.Close()
		v, err := exec.Command(p, "--version").Output()
		if err != nil || !strings.Contains(string(v), "v9.8.7") || !strings.Contains(string(v), "abc1234") {
			t.Errorf("/%s --version: %q, %v", bin, v, err)
		}
	}
}
