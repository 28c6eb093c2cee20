// Package ociimage builds container images from files on this machine, without a
// container engine or a registry, and writes them as a tarball that `docker load`
// and `ctr images import` accept.
package ociimage

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	containerv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is a file of the image: Source on this machine becomes Path in the image.
type File struct {
	Path, Source string
	Mode         int64
}

// Image is one layer on an empty base holding files (owned by root, with their
// parent directories) and a world-writable /tmp, for linux on this machine's
// architecture (a runtime refuses an image without a platform), created at created
// and run with cfg.
func Image(files []File, created time.Time, cfg containerv1.Config) (containerv1.Image, error) {
	layer, err := filesLayer(files, created)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = containerv1.Time{Time: created}
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// Write writes the images, each under its tag, to out as one tarball; out appears
// whole or not at all.
func Write(out string, refs map[name.Reference]containerv1.Image) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func filesLayer(files []File, mtime time.Time) (containerv1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		for i := range len(f.Path) {
			if d := f.Path[:i]; f.Path[i] == '/' && !dirs[d] {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
					return nil, err
				}
			}
		}
		b, err := os.ReadFile(f.Source)
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(f.Path, "/")
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: f.Mode, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: mtime}); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}
