package testpeers

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// swaksTLSPackage is the Debian package that gives swaks its TLS: swaks only recommends
// it, so an install without recommends has a swaks that cannot STARTTLS.
const swaksTLSPackage = "libnet-ssleay-perl"

// RequireSwaksTLS returns the path of a swaks that can speak TLS. A missing swaks, or
// one without its TLS module, fails the test with the package to install, instead of
// with swaks's own exit 10 in the middle of a session.
func RequireSwaksTLS(t testing.TB) string {
	t.Helper()
	swaks := RequireCommand(t, "swaks", "swaks")
	if err := SwaksTLS(exec.Command(swaks, "--support")); err != nil {
		t.Fatalf("%v", err)
	}
	return swaks
}

// SwaksTLS runs cmd, a `swaks --support`, and says what to install unless swaks
// reports TLS as supported.
func SwaksTLS(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err == nil && strings.Contains(string(out), "=== TLS supported") {
		return nil
	}
	why := "swaks --support does not list TLS"
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "TLS not available") {
			why = strings.TrimSpace(strings.TrimPrefix(line, "***"))
		}
	}
	return fmt.Errorf("swaks cannot use TLS (%s): install the Debian package %q (apt-get install %s)",
		why, swaksTLSPackage, swaksTLSPackage)
}
