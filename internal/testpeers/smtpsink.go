package testpeers

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuberelay/kuberelay/internal/eventually"
)

// startTimeout bounds how long a peer may take to accept connections.
const startTimeout = 10 * time.Second

// Sink is a running Postfix smtp-sink.
type Sink struct {
	// Addr is the 127.0.0.1:port it listens on.
	Addr string
	// DumpDir receives one file per delivered message (smtp-sink -d); see SinkMessages.
	DumpDir string

	out *syncBuffer
}

// StartSmtpSink runs Postfix's smtp-sink on a free 127.0.0.1 port with args (its fault
// injection options such as -r MAIL or -Q RCPT, see smtp-sink(1)) and returns its address
// and dump directory. It is StartSink for callers that need nothing more.
func StartSmtpSink(t testing.TB, args ...string) (addr string, dumpDir string) {
	t.Helper()
	s := StartSink(t, args...)
	return s.Addr, s.DumpDir
}

// StartSink runs Postfix's smtp-sink on a free 127.0.0.1 port. Besides args it passes -c
// (counters, see Sessions), -d (one dump file per message in DumpDir) and, as root,
// -u nobody, which smtp-sink requires. StartSink returns once the sink accepts
// connections (it connects once to find out, which counts as a session) and kills it
// when the test ends.
func StartSink(t testing.TB, args ...string) *Sink {
	t.Helper()
	bin := RequireCommand(t, "smtp-sink", "postfix")
	// Not t.TempDir: its parents are private to root, and the sink writes as nobody.
	dir, err := os.MkdirTemp("", "smtp-sink-")
	if err != nil {
		t.Fatalf("creating the smtp-sink dump directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatalf("making the smtp-sink dump directory writable: %v", err)
	}
	var lastOut string
	// A port found free can be taken by someone else before the sink binds it: retry.
	for attempt := 0; attempt < 5; attempt++ {
		addr := freeAddr(t)
		full := []string{"-c", "-d", filepath.Join(dir, "msg.")}
		if os.Geteuid() == 0 {
			full = append(full, "-u", "nobody")
		}
		full = append(full, args...)
		full = append(full, addr, "64")
		cmd := exec.Command(bin, full...)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting %s: %v", bin, err)
		}
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		if waitListening(addr, exited) && !hasExited(exited) {
			s := &Sink{Addr: addr, DumpDir: dir, out: out}
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-exited
				if t.Failed() {
					t.Logf("smtp-sink %s output: %q", strings.Join(full, " "), out.String())
				}
			})
			return s
		}
		cmd.Process.Kill()
		<-exited
		lastOut = out.String()
	}
	t.Fatalf("smtp-sink %s did not start: %s", strings.Join(args, " "), lastOut)
	return nil
}

// SinkCounters are smtp-sink's -c counters.
type SinkCounters struct {
	// Sessions that ended, the readiness probe of StartSink included.
	Sessions int
	// Quits counts QUIT commands.
	Quits int
	// Messages counts final dots received.
	Messages int
}

// Counters returns the sink's latest counters.
func (s *Sink) Counters() SinkCounters {
	var c SinkCounters
	for _, line := range strings.Split(s.out.String(), "\r") {
		var n SinkCounters
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "sess=%d quit=%d mesg=%d", &n.Sessions, &n.Quits, &n.Messages); err == nil {
			c = n
		}
	}
	return c
}

// WaitSessions waits until n sessions besides StartSink's probe have ended, failing the
// test after a bound. Use it before asserting that something did not arrive.
func (s *Sink) WaitSessions(t testing.TB, n int) SinkCounters {
	t.Helper()
	var c SinkCounters
	ok := Eventually(func() bool {
		c = s.Counters()
		return c.Sessions >= n+1
	})
	if !ok {
		t.Fatalf("smtp-sink %s: %d sessions ended, want %d", s.Addr, c.Sessions-1, n)
	}
	return c
}

// Messages returns what the sink has stored; see SinkMessages.
func (s *Sink) Messages(t testing.TB) []SinkMessage {
	t.Helper()
	return SinkMessages(t, s.DumpDir)
}

// SinkMessage is one mail transaction as smtp-sink dumped it.
type SinkMessage struct {
	// File is the dump file's path.
	File string
	// Helo is the argument of the last HELO or EHLO.
	Helo string
	// MailFrom is the argument of MAIL FROM, e.g. "<a@example.com> BODY=8BITMIME".
	MailFrom string
	// RcptTo are the arguments of each RCPT TO, in order.
	RcptTo []string
	// Content is the message as received, dot-decoded, with "\n" line endings
	// (smtp-sink stores lines that way).
	Content string
}

// SinkMessages reads every complete message in an smtp-sink dump directory, oldest
// first. smtp-sink removes the file of a transaction that was aborted before its final
// dot, so an aborted message never shows up.
func SinkMessages(t testing.TB, dumpDir string) []SinkMessage {
	t.Helper()
	entries, err := os.ReadDir(dumpDir)
	if err != nil {
		t.Fatalf("reading smtp-sink dump directory: %v", err)
	}
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile: an aborted transaction
		}
		files = append(files, file{filepath.Join(dumpDir, e.Name()), fi.ModTime()})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].mod.Before(files[j].mod) })
	var msgs []SinkMessage
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			continue
		}
		msgs = append(msgs, parseSinkDump(f.path, b))
	}
	return msgs
}

func parseSinkDump(path string, b []byte) SinkMessage {
	m := SinkMessage{File: path}
	lines := strings.Split(string(b), "\n")
	i := 0
	for ; i < len(lines); i++ {
		name, value, _ := strings.Cut(lines[i], ": ")
		switch name {
		case "X-Helo-Args":
			m.Helo = value
		case "X-Mail-Args":
			m.MailFrom = value
		case "X-Rcpt-Args":
			m.RcptTo = append(m.RcptTo, value)
		}
		if name == "Received" {
			// The sink's three-line Received header ends its own headers.
			i++
			for i < len(lines) && (strings.HasPrefix(lines[i], "\t") || strings.HasPrefix(lines[i], " ")) {
				i++
			}
			break
		}
	}
	content := strings.Join(lines[min(i, len(lines)):], "\n")
	// The dump ends with an empty line after the message.
	m.Content = strings.TrimSuffix(content, "\n")
	return m
}

// Eventually polls cond until it holds or a bound passes, and reports whether it held.
func Eventually(cond func() bool) bool {
	return eventually.Holds(startTimeout, cond)
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// Never the same port twice in a process: two parallel tests given one port
		// would each dial the other's sink and take it for their own.
		handedOutMu.Lock()
		seen := handedOut[port]
		handedOut[port] = true
		handedOutMu.Unlock()
		if !seen {
			return "127.0.0.1:" + strconv.Itoa(port)
		}
	}
}

var (
	handedOutMu sync.Mutex
	handedOut   = map[int]bool{}
)

// hasExited says whether the process has exited: a sink that could not bind its port
// exits, while whatever holds the port answers the dial.
func hasExited(exited <-chan struct{}) bool {
	select {
	case <-exited:
		return true
	default:
		return false
	}
}

// waitListening dials addr until it answers or the process exits.
func waitListening(addr string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
