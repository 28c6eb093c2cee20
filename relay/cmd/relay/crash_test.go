package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/eventually"
	"github.com/kuberelay/kuberelay/internal/mailcapture"
)

// TestQueueSurvivesKill sends without pause to a Queue-mode relay process and kills it
// with SIGKILL at random moments (accepting, storing, delivering), 20 times, each time
// starting it again on the same spool. Every message that was answered 250 must reach
// the upstream; a message may arrive twice only if the kill came between the
// upstream's 250 and its record, and the duplicates are reported.
func TestQueueSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the relay binary")
	}
	bin, up, upPort := binaryAndUpstream(t)
	smtpPort, httpPort := freePort(t), freePort(t)
	spool := filepath.Join(t.TempDir(), "spool")
	yaml := fmt.Sprintf(cfgTemplate, smtpPort, upPort) + fmt.Sprintf(`delivery:
  mode: Queue
  queue:
    dir: %s
    retry: {first: 100ms, backoff: 1, maxInterval: 100ms}
`, spool)
	cfg, sec := writeDirs(t, yaml, hashSecret(t))
	start := func() *exec.Cmd {
		t.Helper()
		cmd := exec.Command(bin, "--config-dir", cfg, "--secrets-dir", sec,
			"--http-address", fmt.Sprintf("127.0.0.1:%d", httpPort), "--shutdown-grace", "5s")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Whatever the kill left in the spool, the relay starts and gets ready.
		eventually.Require(t, 15*time.Second, func() string {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort))
			if err != nil {
				return "relay not ready after a restart: " + err.Error()
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Sprintf("relay not ready after a restart: /readyz %d", resp.StatusCode)
			}
			return ""
		})
		return cmd
	}

	var mu sync.Mutex
	acked := map[string]bool{}
	stop := make(chan struct{})
	var senders sync.WaitGroup
	for s := range 3 {
		senders.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("kill-%d-%d", s, i)
				if sendOne(fmt.Sprintf("127.0.0.1:%d", smtpPort), id) {
					mu.Lock()
					acked[id] = true
					mu.Unlock()
				}
			}
		})
	}
	const kills = 20
	for k := range kills {
		cmd := start()
		time.Sleep(time.Duration(50+rand.IntN(250)) * time.Millisecond) // a random moment to crash at
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		t.Logf("kill %d: %d messages answered 250 so far, %d delivered", k+1, len(ackedCopy(&mu, acked)), len(up.Messages()))
	}
	close(stop)
	senders.Wait()
	cmd := start()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	want := ackedCopy(&mu, acked)
	if len(want) < kills {
		t.Fatalf("only %d messages were answered 250 in %d runs", len(want), kills)
	}
	var missing []string
	eventually.Within(30*time.Second, func() string {
		got := subjects(up.Messages())
		missing = missing[:0]
		for id := range want {
			if got[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return "missing"
		}
		return ""
	})
	if len(missing) > 0 {
		t.Fatalf("%d of %d messages answered 250 never reached the upstream: %v", len(missing), len(want), missing[:min(10, len(missing))])
	}
	dups := 0
	for id, n := range subjects(up.Messages()) {
		if n > 1 && want[id] {
			dups += n - 1
		}
	}
	t.Logf("%d kills: %d messages answered 250, all delivered; %d duplicate deliveries", kills, len(want), dups)
}

func ackedCopy(mu *sync.Mutex, m map[string]bool) map[string]bool {
	mu.Lock()
	defer mu.Unlock()
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

func subjects(msgs []mailcapture.Message) map[string]int {
	out := map[string]int{}
	for _, m := range msgs {
		for _, line := range strings.Split(string(m.Data), "\r\n") {
			if s, ok := strings.CutPrefix(line, "Subject: "); ok {
				out[s]++
				break
			}
		}
	}
	return out
}

// sendOne sends one message over a new connection and reports whether its data was
// answered 250. Any failure (the relay was killed) is a false.
func sendOne(addr, subject string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		time.Sleep(20 * time.Millisecond) // the relay is restarting; try again shortly
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	reply := func() string {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return ""
			}
			if len(l) < 4 || l[3] == ' ' {
				return l
			}
		}
	}
	if !strings.HasPrefix(reply(), "220") {
		return false
	}
	for _, cmd := range []string{"EHLO t", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>", "DATA"} {
		fmt.Fprintf(c, "%s\r\n", cmd)
		if l := reply(); l == "" || l[0] != '2' && l[0] != '3' {
			return false
		}
	}
	fmt.Fprintf(c, "Subject: %s\r\n\r\nbody\r\n.\r\n", subject)
	ok := strings.HasPrefix(reply(), "250")
	fmt.Fprintf(c, "QUIT\r\n")
	return ok
}
