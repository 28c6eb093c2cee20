package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/kuberelay/kuberelay/internal/eventually"
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
	if err := s2.Remove(env.ID); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if _, envs := openStore(t, dir); len(envs) != 0 {
		t.Fatalf("a removed message came back: %+v", envs)
	}
}

// segments lists the spool's segment files.
func segments(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "log", "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// recordAt returns the offset of the record holding data in the only segment, and
// that segment's path.
func recordAt(t *testing.T, dir, data string) (string, int64) {
	t.Helper()
	segs := segments(t, dir)
	if len(segs) != 1 {
		t.Fatalf("%d segments, want 1", len(segs))
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(data))
	if i < headerLen {
		t.Fatalf("%q is not in %s", data, segs[0])
	}
	return segs[0], int64(i - headerLen)
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// What a crash can leave behind never blocks a start and is never delivered: a record
// cut short at the end of a segment, a damaged record (the ones after it are kept), a
// large message's file without a record, a record whose file is missing or short.
func TestRecoveryDropsWhatACrashLeft(t *testing.T) {
	defer setInlineMax(16)()
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	damaged := put(t, s, "damaged\r\n", "x@example.net")
	good := put(t, s, "good\r\n", "x@example.net")
	lost := put(t, s, "its large file goes missing\r\n", "x@example.net")
	short := put(t, s, "its large file is cut short\r\n", "x@example.net")
	bigGood := put(t, s, "a large message left intact\r\n", "x@example.net")
	s.Close()
	seg, off := recordAt(t, dir, "damaged")
	writeAt(t, seg, off+headerLen, []byte("D"))
	must(t, os.Remove(filepath.Join(dir, "large", lost.ID+".eml")))
	must(t, os.Truncate(filepath.Join(dir, "large", short.ID+".eml"), 5))
	must(t, os.WriteFile(filepath.Join(dir, "large", "orphan.eml"), []byte("no record"), 0o600))
	// A record the crash cut short: its header and half its data.
	fi, err := os.Stat(seg)
	must(t, err)
	half, err := encode(append(make([]byte, headerLen), "torn record\r\n"...), &Envelope{ID: "torn"}, false, s.seed)
	must(t, err)
	writeAt(t, seg, fi.Size(), half[:headerLen+6])

	s2, envs := openStore(t, dir)
	var ids []string
	for _, e := range envs {
		ids = append(ids, e.ID)
	}
	if want := []string{good.ID, bigGood.ID}; !slices.Equal(ids, want) {
		t.Fatalf("recovered %v, want only the intact messages %v (damaged %s, lost %s, short %s)", ids, want, damaged.ID, lost.ID, short.ID)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "large", "*"))
	if want := []string{filepath.Join(dir, "large", bigGood.ID+".eml")}; !slices.Equal(left, want) {
		t.Errorf("large/ holds %v, want %v", left, want)
	}
	for _, e := range envs {
		if got, err := read(t, s2, e); err != nil || !strings.Contains(got, "intact") && got != "good\r\n" {
			t.Fatalf("data %q, %v", got, err)
		}
	}
	// New records go after the cut: the store starts a segment of its own.
	fresh := put(t, s2, "after the restart\r\n", "x@example.net")
	s2.Close()
	if _, envs := openStore(t, dir); len(envs) != 3 || envs[2].ID != fresh.ID {
		t.Fatalf("after a second restart: %+v", envs)
	}
}

// setInlineMax lowers the size past which data gets its own file, for a test.
func setInlineMax(n int) func() {
	old := inlineMax
	inlineMax = n
	return func() { inlineMax = old }
}

// Data changed on disk after the commit is refused when read, not delivered.
func TestCorruptDataRefusedOnRead(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	env := put(t, s, "original\r\n", "x@example.net")
	seg, off := recordAt(t, dir, "original")
	writeAt(t, seg, off+headerLen, []byte("changed!"))
	if _, err := read(t, s, env); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read a changed message with %v, want ErrCorrupt", err)
	}
}

// A spool that cannot be written fails the commit and keeps nothing of the message:
// a segment that cannot be created, and a full disk under an open one. The next
// commit after a full disk goes to a new segment and survives a restart.
func TestWriteErrorFailsCommit(t *testing.T) {
	commit := func(s *Store, data string) (Envelope, error) {
		w, err := s.Create(Envelope{From: "a@example.com", Received: time.Now(), Recipients: []Recipient{{Address: "x@example.net", State: Pending}}})
		must(t, err)
		io.WriteString(w, data)
		return w.Commit(context.Background())
	}
	t.Run("no segment", func(t *testing.T) {
		dir := t.TempDir()
		s, _ := openStore(t, dir)
		// The log directory becomes a file: no segment can be created in it.
		must(t, os.RemoveAll(filepath.Join(dir, "log")))
		must(t, os.WriteFile(filepath.Join(dir, "log"), nil, 0o600))
		if _, err := commit(s, "data\r\n"); err == nil {
			t.Fatal("a commit into an unwritable spool succeeded")
		}
		if st := s.Stats(); st.Messages != 0 {
			t.Fatalf("a failed commit is counted: %+v", st)
		}
	})
	t.Run("disk full", func(t *testing.T) {
		dir := t.TempDir()
		s, _ := openStore(t, dir)
		first := put(t, s, "first\r\n", "x@example.net")
		full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
		must(t, err)
		s.mu.Lock()
		real := s.cur.f
		s.cur.f = full
		s.mu.Unlock()
		if _, err := commit(s, "no room\r\n"); err == nil || !strings.Contains(err.Error(), "no space") {
			t.Fatalf("a commit onto a full disk returned %v, want ENOSPC", err)
		}
		if st := s.Stats(); st.Messages != 1 {
			t.Fatalf("a failed commit is counted: %+v", st)
		}
		// The first segment is no longer appended to; its file is closed by the test.
		defer real.Close()
		s.mu.Lock()
		s.index[first.ID].seg.f = real
		s.mu.Unlock()
		next, err := commit(s, "next\r\n")
		must(t, err)
		s.Close()
		_, envs := openStore(t, dir)
		if len(envs) != 2 || envs[0].ID != first.ID || envs[1].ID != next.ID {
			t.Fatalf("after restart: %+v, want the first and the next", envs)
		}
	})
}

// Files and directories are the relay's alone.
func TestModes(t *testing.T) {
	defer setInlineMax(4)()
	dir := filepath.Join(t.TempDir(), "spool")
	s, _ := openStore(t, dir)
	env := put(t, s, "large\r\n", "x@example.net")
	want := map[string]os.FileMode{
		dir: 0o700, filepath.Join(dir, "log"): 0o700, filepath.Join(dir, "large"): 0o700,
		filepath.Join(dir, "large", env.ID+".eml"): 0o600, filepath.Join(dir, "key"): 0o600,
	}
	for _, seg := range segments(t, dir) {
		want[seg] = 0o600
	}
	if len(want) != 6 {
		t.Fatalf("no segment was written")
	}
	for path, want := range want {
		fi, err := os.Stat(path)
		must(t, err)
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %o, want %o", path, fi.Mode().Perm(), want)
		}
	}
}

// An update is a new record; the later one wins at a start even when the crash came
// before the old one was marked done. Segments are deleted once nothing in them is
// current, so a spool whose messages are all delivered holds at most the segment
// being appended to.
func TestUpdatesAndSegmentLifetime(t *testing.T) {
	defer func(old int64) { segmentMax = old }(segmentMax)
	segmentMax = 600 // about two records per segment
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	var envs []Envelope
	for i := range 10 {
		envs = append(envs, put(t, s, fmt.Sprintf("message %d\r\n", i), "x@example.net", "y@example.net"))
	}
	if n := len(segments(t, dir)); n < 4 {
		t.Fatalf("10 messages in %d segments; the test needs several", n)
	}
	// The first message is deferred with one recipient delivered; the others are done.
	kept := envs[0]
	kept.Recipients[0].State, kept.Recipients[0].Attempts = Delivered, 1
	must(t, s.Update(context.Background(), kept))
	for _, e := range envs[1:] {
		must(t, s.Remove(e.ID))
	}
	if segs := segments(t, dir); len(segs) != 1 {
		t.Fatalf("with one message left, the spool holds %d segments: %v", len(segs), segs)
	}
	if got, err := read(t, s, kept); err != nil || got != "message 0\r\n" {
		t.Fatalf("data after the update: %q, %v", got, err)
	}
	s.Close()
	// A crash after the next update's record, before the old record's done byte and
	// its segment's deletion reached the disk: both records current.
	old := segments(t, dir)
	saved, err := os.ReadFile(old[0])
	must(t, err)
	s2, got := openStore(t, dir)
	if len(got) != 1 || got[0].Recipients[0].State != Delivered || got[0].Recipients[1].State != Pending {
		t.Fatalf("after restart: %+v", got)
	}
	again := got[0]
	again.Recipients[1].Attempts = 1
	must(t, s2.Update(context.Background(), again))
	s2.Close()
	if _, err := os.Stat(old[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the superseded segment is still there: %v", err)
	}
	must(t, os.WriteFile(old[0], saved, 0o600))
	_, got = openStore(t, dir)
	if len(got) != 1 || got[0].Recipients[1].Attempts != 1 {
		t.Fatalf("after a crash before the done byte: %+v, want the later record", got)
	}
}

// Data larger than inlineMax has its own file, kept across updates and removed with
// the message.
func TestLargeMessage(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	data := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n", inlineMax/64+10)
	env := put(t, s, data, "x@example.net")
	file := filepath.Join(dir, "large", env.ID+".eml")
	if fi, err := os.Stat(file); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("large file: %v %v", fi, err)
	}
	env.Recipients[0].Attempts = 1
	must(t, s.Update(context.Background(), env))
	s.Close()
	s2, envs := openStore(t, dir)
	if len(envs) != 1 || envs[0].Recipients[0].Attempts != 1 {
		t.Fatalf("after restart: %+v", envs)
	}
	if got, err := read(t, s2, envs[0]); err != nil || got != data {
		t.Fatalf("data: %d bytes, %v", len(got), err)
	}
	must(t, s2.Remove(env.ID))
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the large file outlived its message: %v", err)
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
		err := real()
		if f {
			entered <- struct{}{}
			<-release // the first flush is slow; every commit after it queues
		}
		return err
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
	{
		for _, sessions := range []int{1, 20} {
			b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
				s, _, err := Open(b.TempDir())
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

// A removal waits for no flush: its done byte is flushed by itself within lazyDelay
// when no commit carries it sooner, and at Close.
func TestRemovalFlushedLater(t *testing.T) {
	s, _ := openStore(t, t.TempDir())
	a := put(t, s, "a\r\n", "x@example.net")
	b := put(t, s, "b\r\n", "x@example.net")
	before := s.Stats().Syncs
	must(t, s.Remove(a.ID))
	if st := s.Stats(); st.Messages != 1 || st.Syncs != before {
		t.Fatalf("after a removal: %+v, want 1 message and no flush yet (%d before)", st, before)
	}
	eventually.Require(t, 10*lazyDelay, func() string {
		if st := s.Stats(); st.Syncs != before+1 {
			return fmt.Sprintf("%d flushes after the removal, want %d", st.Syncs, before+1)
		}
		return ""
	})
	must(t, s.Remove(b.ID))
	s.Close()
	if st := s.Stats(); st.Syncs != before+2 {
		t.Fatalf("%d flushes after Close, want %d: the last removal was not flushed", st.Syncs, before+2)
	}
}

// An envelope too large for a start to read back is refused at the commit, and the
// segment goes on taking records.
func TestEnvelopeTooLarge(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	w, err := s.Create(Envelope{From: "a@example.com", Recipients: []Recipient{{Address: "x@example.net", State: Pending, LastReply: strings.Repeat("x", envMax)}}})
	must(t, err)
	io.WriteString(w, "data\r\n")
	if _, err := w.Commit(context.Background()); err == nil || !strings.Contains(err.Error(), "over the limit") {
		t.Fatalf("an envelope over %d bytes was committed: %v", envMax, err)
	}
	after := put(t, s, "after\r\n", "x@example.net")
	s.Close()
	if _, envs := openStore(t, dir); len(envs) != 1 || envs[0].ID != after.ID {
		t.Fatalf("after restart: %+v", envs)
	}
}

// io.Copy into a Writer reads straight into the record, and on into the message's
// own file past inlineMax, whatever the reads' sizes.
func TestReadFrom(t *testing.T) {
	defer setInlineMax(1000)()
	s, _ := openStore(t, t.TempDir())
	for _, size := range []int{0, 10, 1000, 1001, 5000} {
		data := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz", size/36+1)[:size]
		for name, r := range map[string]io.Reader{"whole": struct{ io.Reader }{strings.NewReader(data)},
			"halves": iotest.HalfReader(strings.NewReader(data)), "bytes": iotest.OneByteReader(strings.NewReader(data))} {
			w, err := s.Create(Envelope{From: "a@example.com", Recipients: []Recipient{{Address: "x@example.net", State: Pending}}})
			must(t, err)
			n, err := io.Copy(w, r)
			if err != nil || n != int64(size) {
				t.Fatalf("%d bytes, %s: copied %d, %v", size, name, n, err)
			}
			env, err := w.Commit(context.Background())
			must(t, err)
			if got, err := read(t, s, env); err != nil || got != data {
				t.Fatalf("%d bytes, %s: read back %d bytes, %v", size, name, len(got), err)
			}
			_, statErr := os.Stat(s.largePath(env.ID))
			if large := statErr == nil; large != (size > 1000) {
				t.Fatalf("%d bytes, %s: own file %v, want %v", size, name, large, size > 1000)
			}
		}
	}
}

// A record hidden in a message's data, checksummed as the store would without its
// key, is never taken for one, even when a damaged header sends the start looking
// for the next record through that data.
func TestForgedRecordNotRecovered(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	forged, err := encode(append(make([]byte, headerLen), "Subject: spam\r\n\r\n"...),
		&Envelope{ID: "forged", From: "a@example.com", Route: "main", Recipients: []Recipient{{Address: "victim@example.net", State: Pending}}}, false, 0)
	must(t, err)
	carrier := put(t, s, "Subject: looks harmless\r\n\r\n"+string(forged)+"\r\n", "x@example.net")
	after := put(t, s, "after\r\n", "x@example.net")
	s.Close()
	seg, off := recordAt(t, dir, "Subject: looks harmless")
	writeAt(t, seg, off+12, []byte{0xff}) // the carrier's data length, damaged
	_, envs := openStore(t, dir)
	for _, e := range envs {
		if e.ID == "forged" {
			t.Fatal("a record from a client's data was recovered as a message")
		}
	}
	if len(envs) != 1 || envs[0].ID != after.ID {
		t.Fatalf("recovered %+v; want the record after the damaged one (%s) alone, not %s", envs, after.ID, carrier.ID)
	}
}

// A spool whose key is gone refuses to start rather than drop every record.
func TestMissingKeyRefused(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	put(t, s, "kept\r\n", "x@example.net")
	s.Close()
	must(t, os.Remove(filepath.Join(dir, "key")))
	if _, _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "key") {
		t.Fatalf("Open without the key: %v, want an error naming it", err)
	}
}

// A spool open in one store cannot be opened by another until it is closed.
func TestSpoolLocked(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	if _, _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second Open of an open spool: %v, want it refused", err)
	}
	s.Close()
	s2, _, err := Open(dir)
	must(t, err)
	s2.Close()
}
