// Command images packs the images that hack/cluster's one-node cluster needs and
// cannot pull, as one tarball for `ctr images import`: the sandbox image (a
// static pause binary, hack/cluster/pause) and a check image (hack/cluster/check),
// each one layer on an empty base, for linux/GOARCH.
//
//	images -pause PAUSE_BINARY -check CHECK_BINARY -o FILE
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

// Image names; hack/cluster/cluster uses the same.
const (
	PauseRef = "kuberelay.local/pause:1"
	CheckRef = "kuberelay.local/check:1"
)

func main() {
	pause := flag.String("pause", "", "static pause binary")
	check := flag.String("check", "", "static check binary")
	out := flag.String("o", "", "tarball to write")
	flag.Parse()
	var err error
	switch {
	case *out == "":
		err = fmt.Errorf("-o is required")
	case *pause != "" && *check != "":
		err = build(*pause, *check, *out)
	default:
		err = fmt.Errorf("need -pause and -check")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

// epoch keeps the images reproducible.
var epoch = time.Unix(0, 0).UTC()

func build(pauseBin, checkBin, out string) error {
	refs := map[name.Reference]containerv1.Image{}
	for _, im := range []struct{ ref, bin, path string }{
		{PauseRef, pauseBin, "pause"},
		{CheckRef, checkBin, "check"},
	} {
		img, err := binaryImage(im.bin, im.path)
		if err != nil {
			return err
		}
		ref, err := name.NewTag(im.ref)
		if err != nil {
			return err
		}
		refs[ref] = img
	}
	return write(out, refs)
}

// binaryImage is one layer holding bin as /path, its entrypoint.
func binaryImage(bin, path string) (containerv1.Image, error) {
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: 0o555, Size: int64(len(b)), ModTime: epoch}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(b); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch}); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
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
	cf.Created = containerv1.Time{Time: epoch}
	cf.Config = containerv1.Config{Entrypoint: []string{"/" + path}, WorkingDir: "/"}
	return mutate.ConfigFile(img, cf)
}

func write(out string, refs map[name.Reference]containerv1.Image) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
