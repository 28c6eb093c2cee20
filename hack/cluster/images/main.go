// Command images packs the images that hack/cluster's one-node cluster needs and
// cannot pull, as one tarball for `ctr images import`: the sandbox image (a
// static pause binary, hack/cluster/pause), a check image (hack/cluster/check) and
// a Python image (this machine's Debian python3 with its standard library and the
// shared libraries they load, for applications that send with smtplib), each one
// layer on an empty base, for linux/GOARCH.
//
//	images -pause PAUSE_BINARY -check CHECK_BINARY [-python /usr/bin/python3] -o FILE
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

// Image names; hack/cluster/cluster uses the same.
const (
	PauseRef  = "kuberelay.local/pause:1"
	CheckRef  = "kuberelay.local/check:1"
	PythonRef = "kuberelay.local/python:1"
)

func main() {
	pause := flag.String("pause", "", "static pause binary")
	check := flag.String("check", "", "static check binary")
	python := flag.String("python", "", "a Debian python3 to pack as the Python image (optional)")
	out := flag.String("o", "", "tarball to write")
	flag.Parse()
	var err error
	switch {
	case *out == "":
		err = fmt.Errorf("-o is required")
	case *pause != "" && *check != "":
		err = build(*pause, *check, *python, *out)
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

func build(pauseBin, checkBin, python, out string) error {
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
	if python != "" {
		img, err := pythonImage(python)
		if err != nil {
			return fmt.Errorf("python image from %s: %w", python, err)
		}
		refs[name.MustParseReference(PythonRef).(name.Tag)] = img
	}
	return ociimage.Write(out, refs)
}

// binaryImage is one layer holding bin as /path, its entrypoint.
func binaryImage(bin, path string) (containerv1.Image, error) {
	return ociimage.Image([]ociimage.File{{Path: path, Source: bin, Mode: 0o555}}, epoch,
		containerv1.Config{Entrypoint: []string{"/" + path}, WorkingDir: "/"})
}
