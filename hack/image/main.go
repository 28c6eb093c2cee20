// Command image builds kuberelay's container image as a tarball from binaries built
// on this machine, without a container engine or a registry: one layer holding
// /manager, /relay and the CA certificates that verify smarthosts, run as a non-root
// user, with OCI labels. It holds what the Dockerfile builds. Load it with
// `docker load -i FILE` or `ctr images import FILE`.
//
//	make image    # bin/manager and bin/relay, then dist/kuberelay-image.tar
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	containerv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nonRoot is the image's user: the relay and the manager need no privilege.
const nonRoot = "65532:65532"

// Options describe the image.
type Options struct {
	Manager, Relay, CACerts string
	Repository, Version     string
	Commit, Source          string
	Output                  string
	// Created is the image's creation time; the commit time keeps builds reproducible.
	Created time.Time
}

func main() {
	var o Options
	flag.StringVar(&o.Manager, "manager", "bin/manager", "static manager binary")
	flag.StringVar(&o.Relay, "relay", "bin/relay", "static relay binary")
	flag.StringVar(&o.CACerts, "ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle (Debian: ca-certificates)")
	flag.StringVar(&o.Repository, "repository", "ghcr.io/kuberelay/kuberelay", "image repository")
	flag.StringVar(&o.Version, "version", "dev", "image tag and version label")
	flag.StringVar(&o.Commit, "commit", "unknown", "revision label")
	flag.StringVar(&o.Source, "source", "https://github.com/kuberelay/kuberelay", "source label")
	flag.StringVar(&o.Output, "o", "dist/kuberelay-image.tar", "tarball to write")
	created := flag.Int64("created", 0, "creation time, Unix seconds (default: now)")
	flag.Parse()
	o.Created = time.Now().UTC()
	if *created > 0 {
		o.Created = time.Unix(*created, 0).UTC()
	}
	if err := Build(o); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s (%s:%s); load it with: docker load -i %s\n", o.Output, o.Repository, o.Version, o.Output)
}

// Build writes the image tarball.
func Build(o Options) error {
	layer, err := filesLayer(o.Created, []file{
		{"manager", o.Manager, 0o555},
		{"relay", o.Relay, 0o555},
		{"etc/ssl/certs/ca-certificates.crt", o.CACerts, 0o444},
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	labels := map[string]string{
		"org.opencontainers.image.title":       "kuberelay",
		"org.opencontainers.image.description": "Kubernetes operator and SMTP relay: /manager runs the operator, /relay each relay pod",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Commit,
		"org.opencontainers.image.source":      o.Source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
	}
	img, err = mutate.Config(img, containerv1.Config{
		User:       nonRoot,
		Entrypoint: []string{"/manager"},
		WorkingDir: "/",
		Labels:     labels,
		Env:        []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
	})
	if err != nil {
		return err
	}
	// The platform: a runtime refuses an image whose os and architecture are unset.
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	img, err = mutate.CreatedAt(img, containerv1.Time{Time: o.Created})
	if err != nil {
		return err
	}
	ref, err := name.NewTag(o.Repository + ":" + o.Version)
	if err != nil {
		return fmt.Errorf("image name: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(o.Output), 0o755); err != nil {
		return err
	}
	return tarball.WriteToFile(o.Output, ref, img)
}

type file struct {
	path, src string
	mode      int64
}

// filesLayer makes one layer holding files, owned by root and readable by the
// image's user, with parent directories.
func filesLayer(mtime time.Time, files []file) (containerv1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for _, d := range parents(f.path) {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
				return nil, err
			}
		}
		b, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.path, Mode: f.mode, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	// /tmp, writable, for anything that wants a temporary directory.
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: mtime}); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

// parents are the directories above p, outermost first: "a/b/c" gives a, a/b.
func parents(p string) []string {
	var out []string
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			out = append(out, p[:i])
		}
	}
	return out
}
