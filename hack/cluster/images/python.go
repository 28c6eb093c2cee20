package main

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	containerv1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kuberelay/kuberelay/internal/ociimage"
)

// stdlibSkipped are parts of the standard library no mail-sending program needs.
var stdlibSkipped = []string{"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
	"dist-packages", "site-packages", "__pycache__"}

// pythonImage packs the interpreter python (e.g. /usr/bin/python3, a Debian build
// whose standard library is /usr/lib/python3.N), its standard library and the shared
// libraries it and its extension modules load, at the same paths. It runs as
// `python3 -S` (no site packages).
func pythonImage(python string) (containerv1.Image, error) {
	bin, err := filepath.EvalSymlinks(python)
	if err != nil {
		return nil, err
	}
	version := filepath.Base(bin) // python3.11
	if !regexp.MustCompile(`^python3\.\d+$`).MatchString(version) {
		return nil, fmt.Errorf("%s is not a versioned python3 binary", bin)
	}
	stdlib := "/usr/lib/" + version
	if _, err := os.Stat(filepath.Join(stdlib, "os.py")); err != nil {
		return nil, fmt.Errorf("no standard library at %s (install Debian's python3): %w", stdlib, err)
	}
	files := []ociimage.File{{Path: "/usr/bin/" + version, Source: bin, Mode: 0o555},
		{Path: "/usr/bin/python3", Source: bin, Mode: 0o555}}
	objects := []string{bin}
	err = filepath.WalkDir(stdlib, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != stdlib && (slices.Contains(stdlibSkipped, d.Name()) || strings.HasPrefix(d.Name(), "config-")) {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := os.Stat(p) // through symlinks; a dangling one is left out
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		files = append(files, ociimage.File{Path: p, Source: p, Mode: 0o444})
		if strings.HasSuffix(p, ".so") {
			objects = append(objects, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	libs, err := sharedLibraries(objects)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		src, err := filepath.EvalSymlinks(l)
		if err != nil {
			return nil, err
		}
		files = append(files, ociimage.File{Path: l, Source: src, Mode: 0o555})
	}
	for i := range files {
		// Relative in the layer, as the other images' files.
		files[i].Path = strings.TrimPrefix(files[i].Path, "/")
	}
	return ociimage.Image(files, epoch, containerv1.Config{Entrypoint: []string{"/usr/bin/python3", "-S"}, WorkingDir: "/",
		Env: []string{"PATH=/usr/bin", "PYTHONDONTWRITEBYTECODE=1"}})
}

// lddPath is an absolute path in ldd's output: "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)"
// or the loader's "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddPath = regexp.MustCompile(`(?m)^\s*(?:\S+ => )?(/\S+) \(0x`)

// sharedLibraries lists the libraries the objects load, as ldd names them.
func sharedLibraries(objects []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, o := range objects {
		b, err := exec.Command("ldd", o).Output()
		if err != nil {
			// A module ldd cannot read is left to fail at import, if ever imported.
			continue
		}
		for _, m := range lddPath.FindAllStringSubmatch(string(b), -1) {
			if !seen[m[1]] {
				seen[m[1]] = true
				out = append(out, m[1])
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("ldd found no shared libraries of %s", objects[0])
	}
	slices.Sort(out)
	return out, nil
}
