package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
	"github.com/kuberelay/kuberelay/internal/kubeletdir"
	"github.com/kuberelay/kuberelay/relay/config"
)

// limitsUsers is how many users, each with rate limits, the "limits" relay holds.
const limitsUsers = 1000

// limitsRatioMin is the target for the limits relay's rate over the plain one's.
const limitsRatioMin = 0.9

// limitsConfig is the pass-through relay's configuration with limitsUsers users, each
// with rate limits, and rate limits on the domain and the upstream that every message
// counts against (never reached): the "limits" rows measure what they cost.
func limitsConfig(plainPort, sinkPort, upstreamConns, maxConns int) string {
	base := strings.Replace(relayConfig(plainPort, 0, sinkPort, upstreamConns, maxConns), "- name: starttls\n  address: 127.0.0.1:0\n  tls: STARTTLS\n", "", 1)
	base = strings.Replace(base, "- domain: example.com\n", "- domain: example.com\n  rateLimits: {messagesPerMinute: 1000000000, recipientsPerDay: 1000000000}\n", 1)
	base = strings.Replace(base, "    mode: None\n", "    mode: None\n  rateLimits: {messagesPerHour: 1000000000}\n", 1)
	var users strings.Builder
	users.WriteString("users:\n")
	for i := range limitsUsers {
		fmt.Fprintf(&users, "- username: app-%04d\n  passwordHashFile: users/app-%04d\n  allowedSenders: [example.com]\n  rateLimits: {messagesPerMinute: 1000, maxSessions: 10}\n", i, i)
	}
	return base + users.String()
}

// startLimitsRelay starts the "limits" relay on its own configuration and secrets.
func startLimitsRelay(relayBin, tmp string, plainPort, httpPort, sinkPort, upstreamConns, maxConns int, certPEM, keyPEM []byte) (*proc.Child, string, error) {
	configDir, secretsDir := filepath.Join(tmp, "limits-config"), filepath.Join(tmp, "limits-secrets")
	if err := kubeletdir.Write(configDir, map[string][]byte{config.FileName: []byte(limitsConfig(plainPort, sinkPort, upstreamConns, maxConns))}); err != nil {
		return nil, "", err
	}
	// One hash for every user: only their number matters here.
	hash, err := bcrypt.GenerateFromPassword([]byte("bench-password"), bcrypt.MinCost)
	if err != nil {
		return nil, "", err
	}
	files := map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM}
	for i := range limitsUsers {
		files[fmt.Sprintf("users/app-%04d", i)] = hash
	}
	if err := kubeletdir.Write(secretsDir, files); err != nil {
		return nil, "", err
	}
	logPath := filepath.Join(tmp, "relay-limits.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(relayBin, "--config-dir", configDir, "--secrets-dir", secretsDir,
		"--http-address", fmt.Sprintf("127.0.0.1:%d", httpPort), "--spool-dir", tmp, "--shutdown-grace", "5s", "--reload-interval", "10m")
	cmd.Stdout, cmd.Stderr = logf, logf
	c, err := children.start("relay-limits", cmd)
	logf.Close()
	return c, logPath, err
}

// printLimitsTargets compares the limits relay with the plain one, per session count.
func printLimitsTargets(rows []row) {
	rate := func(s int, mode string) float64 {
		for _, r := range rows {
			if r.sessions == s && r.mode == mode {
				return r.relay
			}
		}
		return 0
	}
	for _, r := range rows {
		if r.mode != limitsMode {
			continue
		}
		label := fmt.Sprintf("target limits/plain >=%.1f at %d sessions (smtp-source):", limitsRatioMin, r.sessions)
		plain := rate(r.sessions, "plain, smtp-source")
		if plain <= 0 || r.relay <= 0 {
			fmt.Printf("  %-74s not measured (a run failed)\n", label)
			continue
		}
		fmt.Printf("  %-74s %s (%.2f)\n", label, metStr(r.relay/plain >= limitsRatioMin), r.relay/plain)
	}
}

const limitsMode = "limits (1000 users), smtp-source"
