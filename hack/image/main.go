// Command image builds kuberelay's container image as a tarball from binaries built
// on this machine, without a container engine or a registry: one layer holding
// /manager, /relay and the CA certificates that verify smarthosts, run as a non-root
// user, with OCI labels. It holds what the Dockerfile builds. Load it with
// `docker load -i FILE` or `ctr images import FILE`.
//
//	make image    # bin/manager and bin/relay, then dist/kuberelay-image.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	containerv1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kuberelay/kuberelay/internal/ociimage"
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
	labels := map[string]string{
		"org.opencontainers.image.title":       "kuberelay",
		"org.opencontainers.image.description": "Kubernetes operator and SMTP relay: /manager runs the operator, /relay each relay pod",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Commit,
		"org.opencontainers.image.source":      o.Source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.created":     o.Created.Format(time.RFC3339),
	}
	img, err := ociimage.Image([]ociimage.File{
		{Path: "manager", Source: o.Manager, Mode: 0o555},
		{Path: "relay", Source: o.Relay, Mode: 0o555},
		{Path: "etc/ssl/certs/ca-certificates.crt", Source: o.CACerts, Mode: 0o444},
	}, o.Created, containerv1.Config{
		User:       nonRoot,
		Entrypoint: []string{"/manager"},
		WorkingDir: "/",
		Labels:     labels,
		Env:        []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
	})
	if err != nil {
		return err
	}
	ref, err := name.NewTag(o.Repository + ":" + o.Version)
	if err != nil {
		return fmt.Errorf("image name: %w", err)
	}
	return ociimage.Write(o.Output, map[name.Reference]containerv1.Image{ref: img})
}
