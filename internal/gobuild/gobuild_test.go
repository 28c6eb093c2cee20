package gobuild

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSameSettingsAsMakefile keeps the tests' builds and the Makefile's on one set of
// settings: a difference would silently compile every dependency twice.
func TestSameSettingsAsMakefile(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "gobuild", "gobuild.go")); err != nil {
		t.Fatalf("ModuleRoot = %s, which does not hold this package: %v", root, err)
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + `\s*:=\s*(.*)$`).FindSubmatch(mk)
		if m == nil {
			t.Fatalf("the Makefile does not set %s", name)
		}
		return strings.TrimSpace(string(m[1]))
	}
	if got, want := value("GOBUILDENV"), strings.Join(Env, " "); got != want {
		t.Errorf("Makefile GOBUILDENV = %q, gobuild.Env = %q", got, want)
	}
	if got, want := value("GOBUILDFLAGS"), strings.Join(Flags, " "); got != want {
		t.Errorf("Makefile GOBUILDFLAGS = %q, gobuild.Flags = %q", got, want)
	}
}
