package kubeletdir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteSwapsAtomically(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, map[string][]byte{"relay.yaml": []byte("one"), "users/app": []byte("h1")}); err != nil {
		t.Fatal(err)
	}
	first, _ := os.Readlink(filepath.Join(dir, "..data"))
	if got, _ := os.ReadFile(filepath.Join(dir, "users", "app")); string(got) != "h1" {
		t.Fatalf("users/app = %q", got)
	}
	if err := Write(dir, map[string][]byte{"relay.yaml": []byte("two")}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "relay.yaml")); string(got) != "two" {
		t.Fatalf("relay.yaml = %q", got)
	}
	if target, _ := os.Readlink(filepath.Join(dir, "relay.yaml")); target != filepath.Join("..data", "relay.yaml") {
		t.Fatalf("relay.yaml is not a link through ..data: %q", target)
	}
	if _, err := os.Lstat(filepath.Join(dir, "users")); !os.IsNotExist(err) {
		t.Fatalf("removed file still linked: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, first)); !os.IsNotExist(err) {
		t.Fatalf("old data directory %s left behind", first)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 3 || !strings.HasPrefix(names[0], "..2") || names[1] != "..data" || names[2] != "relay.yaml" {
		t.Fatalf("directory holds %v", names)
	}
	if err := Write(dir, map[string][]byte{"../escape": nil}); err == nil {
		t.Fatal("a name escaping the directory was written")
	}
}
