// Package testpeers starts real SMTP peers for tests: Postfix's smtp-sink (with its fault
// injection) and an in-process go-smtp server with real TLS and AUTH. Everything listens
// on 127.0.0.1 and is stopped by t.Cleanup.
package testpeers

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// extraDirs are where Debian puts binaries that are not on a normal user's PATH.
var extraDirs = []string{"/usr/sbin", "/sbin", "/usr/lib/postfix/sbin", "/usr/local/sbin"}

// RequireCommand returns the path of the program name, which the Debian package
// debianPackage installs. A missing program fails the test, with a message saying what to
// install: it never skips, so a machine without the tool cannot pass silently.
func RequireCommand(t testing.TB, name, debianPackage string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range extraDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s not found: install the Debian package %q (apt-get install %s)", name, debianPackage, debianPackage)
	return ""
}
