package testpeers_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestInstallLinesAgree keeps the README's install line and the packages .ci/run installs
// the same set, so a newcomer gets what CI gets.
func TestInstallLinesAgree(t *testing.T) {
	root := filepath.Join("..", "..")
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	ci, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`apt-get install --no-install-recommends ([a-z0-9 .+-]+)`).FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no 'apt-get install --no-install-recommends ...' line")
	}
	c := regexp.MustCompile(`(?m)^packages=\(([^)]*)\)`).FindSubmatch(ci)
	if c == nil {
		t.Fatal(".ci/run has no packages=(...) list")
	}
	fromReadme, fromCI := strings.Fields(string(m[1])), strings.Fields(string(c[1]))
	slices.Sort(fromReadme)
	slices.Sort(fromCI)
	if !slices.Equal(fromReadme, fromCI) {
		t.Fatalf("README.md installs %v, .ci/run installs %v: make them the same", fromReadme, fromCI)
	}
	for _, p := range []string{"swaks", "libnet-ssleay-perl", "postfix"} {
		if !slices.Contains(fromCI, p) {
			t.Errorf(".ci/run does not install %s", p)
		}
	}
}
