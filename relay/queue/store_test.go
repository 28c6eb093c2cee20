package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func openStore(t testing.TB, dir string) (*Store, []Envelope) {
	t.Helper()
	s, envs, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, envs
}

func put(t testing.TB, s *Store, data string, rcpts ...string) Envelope {
	t.Helper()
	env := Envelope{From: "a@example.com", Route: "main", Received: time.Now()}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, Recipient{Address: r, State: Pending})
	}
	w, err := s.Create(env)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, data); err != nil {
		t.Fatal(err)
	}
	env, err = w.Commit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func read(t *testing.T, s *Store, env Envelope) (string, error) {
	t.Helper()
	r, err := s.Data(env)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

// A committed message, its envelope and later state updates survive a restart.
func TestCommitSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s, envs := openStore(t, dir)
	if len(envs) != 0 {
		t.Fatalf("a new spool holds %d messages", len(envs))
	}
	env := put(t, s, "Subject: one\r\n\r\nbody\r\n", "x@example.net", "y@example.net")
	env.Recipients[0].State, env.Recipients[0].LastReply = Delivered, "250 2.0.0 Ok"
	if err := s.Update(context.Background(), env); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, envs := openStore(t, dir)
	if len(envs) != 1 || envs[0].ID != env.ID || envs[0].Recipients[0].State != Delivered || envs[0].Recipients[1].State != Pending {
		t.Fatalf("after restart: %+v, want %+v", envs, env)
	}
	if got, err := read(t, s2, envs[0]); err != nil || got != "Subject: one\r\n\r\nbody\r\n" {
		t.Fatalf("data %q, %v", got, err)
	}
	if st := s2.Stats(); st.Messages != 1 || st.Bytes != env.Size {
		t.Fatalf("stats %+v", st)
	}
	if err := s2.Remove(context.Background(), env.ID); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if _, envs := openStore(t, dir); len(envs) != 0 {
		t.Fatalf("a removed message came back: %+v", envs)
	}
}

// What a crash can leave behind never blocks a start and is never delivered: files
// in tmp/, data without an envelope, an envelope without data, data cut short, an
// envelope that does not parse.
func TestRecoveryRemovesLeftovers(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	good := put(t, s, "good\r\n", "x@example.net")
	short := put(t, s, "this will be cut short\r\n", "x@example.net")
	lost := put(t, s, "its data goes missing\r\n", "x@example.net")
	s.Close()
	msg := filepath.Join(dir, "msg")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "tmp", "half.eml"), []byte("half"), 0o600))
	must(os.WriteFile(filepath.Join(msg, "orphan.eml"), []byte("no envelope"), 0o600))
	must(os.WriteFile(filepath.Join(msg, "broken.json"), []byte("{"), 0o600))
	must(os.WriteFile(filepath.Join(msg, "broken.eml"), []byte("x"), 0o600))
	must(os.Truncate(filepath.Join(msg, short.ID+".eml"), 5))
	must(os.Remove(filepath.Join(msg, lost.ID+".eml")))

	s2, envs := openStore(t, dir)
	if len(envs) != 1 || envs[0].ID != good.ID {
		t.Fatalf("recovered %+v, want only the intact message", envs)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
	for _, f := range left {
		if !strings.Contains(f, good.ID) {
			t.Errorf("%s was left behind", f)
		}
	}
	if got, err := read(t, s2, envs[0]); err != nil || got != "good\r\n" {
		t.Fatalf("data %q, %v", got, err)
	}
}

// Data changed on disk after the commit is refused when read, not delivered.
func TestCorruptDataRefusedOnRead(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	env := put(t, s, "original\r\n", "x@example.net")
	if err := os.WriteFile(filepath.Join(dir, "msg", env.ID+".eml"), []byte("changed!\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := read(t, s, env); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read a changed message with %v, want ErrCorrupt", err)
	}
}

// A spool that cannot be written fails the commit; nothing is kept of the message.
func TestWriteErrorFailsCommit(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	// The message directory becomes a file: the data cannot be moved into it.
	msg := filepath.Join(dir, "msg")
	if err := os.RemoveAll(msg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(msg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := s.Create(Envelope{From: "a@example.com", Recipients: []Recipient{{Address: "x@example.net", State: Pending}}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "data\r\n")
	if _, err := w.Commit(context.Background()); err == nil {
		t.Fatal("a commit into an unwritable spool succeeded")
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Fatalf("the failed commit left %d files in tmp/", len(tmp))
	}
	if st := s.Stats(); st.Messages != 0 {
		t.Fatalf("a failed commit is counted: %+v", st)
	}
}

// Files and directories are the relay's alone.
func TestModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s, _ := openStore(t, dir)
	env := put(t, s, "x\r\n", "x@example.net")
	for path, want := range map[string]os.FileMode{
		dir: 0o700, filepath.Join(dir, "msg"): 0o700, filepath.Join(dir, "tmp"): 0o700,
		filepath.Join(dir, "msg", env.ID+".eml"): 0o600, filepath.Join(dir, "msg", env.ID+".json"): 0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %o, want %o", path, fi.Mode().Perm(), want)
		}
	}
}

// Commits that arrive while a flush runs share the next one.
func TestGroupCommit(t *testing.T) {
	s, _ := openStore(t, t.TempDir())
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	real := s.fs.flush
	first := true
	var mu sync.Mutex
	s.fs.flush = func() error {
		mu.Lock()
		f := first
		first = false
		mu.Unlock()
		if f {
			entered <- struct{}{}
			<-release // the first flush is slow; every commit after it queues
		}
		return real()
	}
	var wg sync.WaitGroup
	wg.Go(func() { put(t, s, "first\r\n", "x@example.net") })
	<-entered
	const n = 20
	for i := range n {
		wg.Go(func() { put(t, s, strings.Repeat("m", i)+"\r\n", "x@example.net") })
	}
	// Wait until all n are queued behind the slow flush, then let it finish.
	for len(s.fs.reqs) < n {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	st := s.Stats()
	if st.Commits != n+1 || st.Syncs != 2 {
		t.Fatalf("%d commits took %d flushes, want %d commits in 2", st.Commits, st.Syncs, n+1)
	}
}

// BenchmarkCommit stores 4 KiB messages from 1 and 20 concurrent sessions, each
// waiting for its commit as a client waits for its 250, and reports messages per
// second and filesystem flushes per message.
func BenchmarkCommit(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 64)
	for _, mode := range []string{"syncfs", "fsync-per-file"} {
		for _, sessions := range []int{1, 20} {
			b.Run(fmt.Sprintf("%s/sessions=%d", mode, sessions), func(b *testing.B) {
				s, _, err := open(b.TempDir(), mode == "fsync-per-file")
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for range sessions {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							w, err := s.Create(Envelope{From: "a@example.com", Recipients: []Recipient{{Address: "x@example.net", State: Pending}}})
							if err != nil {
								b.Error(err)
								return
							}
							w.Write(data)
							if _, err := w.Commit(context.Background()); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				el := time.Since(start)
				st := s.Stats()
				b.ReportMetric(float64(st.Commits)/el.Seconds(), "msg/s")
				b.ReportMetric(float64(st.Syncs)/float64(max(st.Commits, 1)), "flushes/msg")
			})
		}
	}
}
