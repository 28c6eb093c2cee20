// Package kubeletdir writes a directory the way the kubelet updates a mounted
// ConfigMap or Secret volume: the files go into a fresh timestamped directory, the
// "..data" symlink is swapped to it in one rename, and each top-level name is a symlink
// through "..data". A reader therefore sees either the whole old set of files or the
// whole new set, never a mix. The relay's local run and its tests use it to produce
// exactly what a relay pod sees.
package kubeletdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

const dataLink = "..data"

// Write replaces the content of dir with files (paths relative to dir, "/"-separated).
func Write(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name := range files {
		if name == "" || strings.HasPrefix(name, ".") || filepath.IsAbs(name) || strings.Contains(name, "..") {
			return fmt.Errorf("kubeletdir: invalid file name %q", name)
		}
	}
	oldTarget, _ := os.Readlink(filepath.Join(dir, dataLink))

	ts, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	for name, data := range files {
		p := filepath.Join(ts, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	// The swap: one rename makes every file new at once.
	if err := os.Rename(tmpLink, filepath.Join(dir, dataLink)); err != nil {
		return err
	}

	top := map[string]bool{}
	for name := range files {
		top[strings.SplitN(name, "/", 2)[0]] = true
	}
	names := make([]string, 0, len(top))
	for n := range top {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		link := filepath.Join(dir, n)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join(dataLink, n) {
			continue
		}
		if err := os.Symlink(filepath.Join(dataLink, n), link); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	// Remove links to names that are gone, then the old data directory.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") || top[n] {
			continue
		}
		if e.Type()&os.ModeSymlink != 0 {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	if oldTarget != "" && oldTarget != filepath.Base(ts) {
		return os.RemoveAll(filepath.Join(dir, oldTarget))
	}
	return nil
}
