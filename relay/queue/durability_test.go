package queue

// Durability tests: failed flushes, damaged headers, deleted segments, Close racing
// flushes, every cut of a torn tail, concurrent operations, and kill -9.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func commitOne(s *Store, data string) (Envelope, error) {
	w, err := s.Create(Envelope{From: "a@example.com", Route: "main", Received: time.Now(),
		Recipients: []Recipient{{Address: "x@example.net", State: Pending}}})
	if err != nil {
		return Envelope{}, err
	}
	if _, err := io.WriteString(w, data); err != nil {
		w.Abort()
		return Envelope{}, err
	}
	return w.Commit(context.Background())
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func ids(envs []Envelope) map[string]Envelope {
	m := map[string]Envelope{}
	for _, e := range envs {
		m[e.ID] = e
	}
	return m
}

// After a failed fdatasync nothing more is appended to that segment: Linux reports
// a writeback error once per file and may drop the pages, so a later fdatasync of
// the same file can succeed over a hole, and a record acknowledged after it would be
// lost at the next start. The failing flush is made by writing to /dev/zero (pwrite
// succeeds, fdatasync fails), so the real file never gets the failed record's bytes.
func TestNoAppendAfterFailedFlush(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	first := put(t, s, "first\r\n", "x@example.net")
	zero, err := os.OpenFile("/dev/zero", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no /dev/zero: %v", err)
	}
	defer zero.Close()
	s.mu.Lock()
	seg := s.cur
	real := seg.f
	seg.f = zero
	s.mu.Unlock()
	if _, err := commitOne(s, "its flush fails\r\n"); err == nil {
		t.Fatal("a commit whose fdatasync failed succeeded")
	}
	s.mu.Lock()
	seg.f = real // the disk is fine again: the next fdatasync succeeds
	sameSeg := s.cur == seg
	s.mu.Unlock()
	acked, err := commitOne(s, "acknowledged after the failed flush\r\n")
	must(t, err)
	s.Close()
	_, envs := openStore(t, dir)
	got := ids(envs)
	if _, ok := got[first.ID]; !ok {
		t.Errorf("the first message is lost")
	}
	if _, ok := got[acked.ID]; !ok {
		t.Errorf("a message acknowledged after a failed flush is lost at restart (segment still appended to after the failure: %v)", sameSeg)
	}
}

// A length field damaged into a negative number is an unreadable record, never a
// panic at start.
func TestNegativeLengthDoesNotPanic(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	put(t, s, "victim\r\n", "x@example.net")
	s.Close()
	seg, off := recordAt(t, dir, "victim")
	writeAt(t, seg, off+19, []byte{0x80}) // the top byte of the data length
	for name, open := range map[string]func() error{
		"Open": func() error {
			s, _, err := Open(dir)
			if err == nil {
				s.Close()
			}
			return err
		},
		"Inspect": func() error { _, err := Inspect(dir); return err },
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s panics on a record whose length is damaged: %v", name, r)
				}
			}()
			if err := open(); err != nil {
				t.Errorf("%s fails on a damaged record: %v", name, err)
			}
		}()
	}
}

// A record whose length is damaged is skipped, and the records after it are found
// again by their checksums.
func TestDamagedLengthKeepsFollowingRecords(t *testing.T) {
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	put(t, s, "victim\r\n", "x@example.net")
	a := put(t, s, "after one\r\n", "x@example.net")
	b := put(t, s, "after two\r\n", "x@example.net")
	s.Close()
	seg, off := recordAt(t, dir, "victim")
	writeAt(t, seg, off+12, []byte{byte(len("victim\r\n") - 1)}) // one bit of the data length
	_, envs := openStore(t, dir)
	got := ids(envs)
	for _, e := range []Envelope{a, b} {
		if _, ok := got[e.ID]; !ok {
			t.Errorf("intact message %s after a damaged record is lost", e.ID)
		}
	}
}

// Deleting a segment makes the log directory dirty, so the unlink is flushed no
// later than the done byte that made the segment empty: otherwise a power loss could
// bring back the segment with an older record current, and deliver it again.
func TestSegmentUnlinkFlushed(t *testing.T) {
	defer func(old int64) { segmentMax = old }(segmentMax)
	segmentMax = 1 // every record starts a segment
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	env := put(t, s, "moved then delivered\r\n", "x@example.net", "y@example.net")
	old := segments(t, dir)
	env.Recipients[0].State, env.Recipients[0].Attempts = Delivered, 1
	env.Recipients[1].Attempts = 1
	must(t, s.Update(context.Background(), env)) // the old segment is unlinked here
	if _, err := os.Stat(old[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the superseded segment is still there")
	}
	must(t, s.Remove(env.ID))
	s.mu.Lock()
	dirPending := s.dirDirty
	s.mu.Unlock()
	if !dirPending {
		t.Errorf("a segment was unlinked, but no flush will fsync the log directory: after a power loss it comes back with the message's older record current")
	}
}

// Close flushes a removal that came while a flush ran, whichever of the two the run
// loop sees first.
func TestCloseFlushesPendingRemoval(t *testing.T) {
	missed := 0
	const rounds = 32
	for range rounds {
		var calls atomic.Int32
		entered, release := make(chan struct{}), make(chan struct{})
		sy := newSyncer(func() error {
			if calls.Add(1) == 1 {
				close(entered)
				<-release
			}
			return nil
		})
		go sy.sync(context.Background()) // a commit's flush, slow
		<-entered
		sy.later() // a removal while it runs
		go sy.close()
		<-sy.done
		close(release)
		<-sy.stopped
		if calls.Load() < 2 {
			missed++
		}
	}
	if missed > 0 {
		t.Errorf("Close skipped the flush of a pending removal in %d of %d rounds", missed, rounds)
	}
}

// A commit whose flush was under way when Close came gets that flush's verdict, not
// errClosed: a 451 for a durable message would be delivered twice.
func TestSyncAnswersFlushUnderwayAtClose(t *testing.T) {
	wrong := 0
	const rounds = 32
	for range rounds {
		entered, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		sy := newSyncer(func() error {
			once.Do(func() { close(entered); <-release })
			return nil
		})
		res := make(chan error, 1)
		go func() { res <- sy.sync(context.Background()) }()
		<-entered
		go sy.close()
		<-sy.done
		close(release)
		<-sy.stopped
		if err := <-res; err != nil {
			wrong++
		}
	}
	if wrong > 0 {
		t.Errorf("a flush that succeeded was reported as %v in %d of %d rounds", errClosed, wrong, rounds)
	}
}

// A commit after Close (a session finishing after the grace period) is refused and
// creates no segment.
func TestCommitAfterCloseRefused(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(dir)
	must(t, err)
	s.Close()
	before := countFDs(t)
	if _, err := commitOne(s, "too late\r\n"); err == nil {
		t.Fatal("a commit after Close succeeded")
	}
	if segs := segments(t, dir); len(segs) != 0 {
		t.Errorf("a commit after Close created %v", segs)
	}
	if after := countFDs(t); after != before {
		t.Errorf("a commit after Close left %d descriptors open", after-before)
	}
}

// WriteString after Commit or Abort is an error, as Write is, not a panic.
func TestWriteStringAfterCommit(t *testing.T) {
	s, _ := openStore(t, t.TempDir())
	for _, end := range []string{"commit", "abort"} {
		w, err := s.Create(Envelope{From: "a@example.com", Recipients: []Recipient{{Address: "x@example.net", State: Pending}}})
		must(t, err)
		io.WriteString(w, "data\r\n")
		if end == "commit" {
			_, err = w.Commit(context.Background())
			must(t, err)
		} else {
			w.Abort()
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("WriteString after %s panics: %v", end, r)
				}
			}()
			if _, err := w.WriteString("more"); err == nil {
				t.Errorf("WriteString after %s succeeded", end)
			}
		}()
	}
}

// A segment cut at any length (a kill during a pwrite, a power loss before the flush)
// opens without error; every record wholly before the cut is recovered, the later of
// two current records of a message wins, no cut record is delivered, the large file
// of a cut record is removed, and the store goes on with a segment of its own.
func TestTornTailAtEveryCut(t *testing.T) {
	defer setInlineMax(24)()
	src := t.TempDir()
	s, _ := openStore(t, src)
	m0 := put(t, s, "small one\r\n", "x@example.net")
	m1 := put(t, s, "a large message, with a file of its own\r\n", "x@example.net")
	m2 := put(t, s, "small two\r\n", "x@example.net")
	upd := m1
	upd.Recipients[0].Attempts = 1
	must(t, s.Update(context.Background(), upd))
	s.Close()
	segs := segments(t, src)
	if len(segs) != 1 {
		t.Fatalf("%d segments", len(segs))
	}
	full, err := os.ReadFile(segs[0])
	must(t, err)
	// Record boundaries: m0, m1, m2, m1 updated.
	var ends []int
	for off := 0; off < len(full); {
		envLen := int(binary.LittleEndian.Uint32(full[off+8:]))
		dataLen := int(binary.LittleEndian.Uint64(full[off+12:]))
		off += headerLen + dataLen + envLen
		ends = append(ends, off)
	}
	if len(ends) != 4 {
		t.Fatalf("%d records, want 4", len(ends))
	}
	// The crash came before the superseded record's done byte: it is 0 on disk.
	full[ends[0]+offDone] = 0
	largeData, err := os.ReadFile(filepath.Join(src, "large", m1.ID+".eml"))
	must(t, err)
	cuts := map[int]bool{0: true, len(full): true}
	starts := append([]int{0}, ends[:3]...)
	for _, b := range starts {
		for _, d := range []int{-1, 0, 1, 4, 5, headerLen - 1, headerLen, headerLen + 1, headerLen + 3} {
			if c := b + d; c >= 0 && c <= len(full) {
				cuts[c] = true
			}
		}
	}
	for _, e := range ends {
		cuts[e-1], cuts[e-2] = true, true
	}
	base := t.TempDir()
	for cut := range cuts {
		dir := filepath.Join(base, strconv.Itoa(cut))
		must(t, os.MkdirAll(filepath.Join(dir, "log"), 0o700))
		must(t, os.MkdirAll(filepath.Join(dir, "large"), 0o700))
		must(t, os.WriteFile(filepath.Join(dir, "log", filepath.Base(segs[0])), full[:cut], 0o600))
		must(t, os.WriteFile(filepath.Join(dir, "large", m1.ID+".eml"), largeData, 0o600))
		key, err := os.ReadFile(filepath.Join(src, "key"))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, "key"), key, 0o600))
		s, envs, err := Open(dir)
		if err != nil {
			t.Fatalf("cut at %d: Open: %v", cut, err)
		}
		got := ids(envs)
		want := map[string]int{} // id → attempts
		if cut >= ends[0] {
			want[m0.ID] = 0
		}
		if cut >= ends[1] {
			want[m1.ID] = 0
		}
		if cut >= ends[2] {
			want[m2.ID] = 0
		}
		if cut >= ends[3] {
			want[m1.ID] = 1
		}
		if len(got) != len(want) {
			t.Errorf("cut at %d: recovered %d messages, want %d", cut, len(got), len(want))
		}
		for id, att := range want {
			e, ok := got[id]
			if !ok {
				t.Errorf("cut at %d: %s missing", cut, id)
				continue
			}
			if e.Recipients[0].Attempts != att {
				t.Errorf("cut at %d: %s has attempts %d, want %d", cut, id, e.Recipients[0].Attempts, att)
			}
			if _, err := read(t, s, e); err != nil {
				t.Errorf("cut at %d: reading %s: %v", cut, id, err)
			}
		}
		if _, ok := want[m1.ID]; !ok {
			if _, err := os.Stat(filepath.Join(dir, "large", m1.ID+".eml")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cut at %d: the large file of a cut record is kept", cut)
			}
		}
		fresh, err := commitOne(s, "after the cut\r\n")
		if err != nil {
			t.Fatalf("cut at %d: commit: %v", cut, err)
		}
		s.Close()
		s, envs, err = Open(dir)
		if err != nil {
			t.Fatalf("cut at %d: second Open: %v", cut, err)
		}
		if _, ok := ids(envs)[fresh.ID]; !ok || len(envs) != len(want)+1 {
			t.Errorf("cut at %d: after a second start %d messages, want %d and the fresh one", cut, len(envs), len(want)+1)
		}
		s.Close()
	}
}

// Updates, removals, reads and commits race on the same messages while segments are
// sealed and deleted under the readers and the flushes: no race, no error but
// ErrNotFound, no damaged read, nothing removed comes back, every descriptor is
// closed, and once every message is gone at most one segment is left.
func TestConcurrentOpsAndSegmentDeletion(t *testing.T) {
	defer func(old int64) { segmentMax = old }(segmentMax)
	segmentMax = 2 << 10
	defer setInlineMax(100)()
	dir := t.TempDir()
	fds := countFDs(t)
	s, _, err := Open(dir)
	must(t, err)
	const workers, per = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*per*4)
	var kept sync.Map // id → attempts
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				data := fmt.Sprintf("worker %d message %d %s\r\n", w, i, strings.Repeat("z", (w*31+i*17)%180))
				env, err := commitOne(s, data)
				if err != nil {
					errs <- err
					return
				}
				var inner sync.WaitGroup
				remove := i%3 != 0
				inner.Go(func() { // an attempt recorded
					e := env
					e.Recipients = []Recipient{{Address: "x@example.net", State: Pending, Attempts: 1}}
					if err := s.Update(context.Background(), e); err != nil && !errors.Is(err, ErrNotFound) {
						errs <- fmt.Errorf("update: %w", err)
					}
				})
				for range 2 {
					inner.Go(func() { // a delivery reading it
						r, err := s.Data(env)
						// A large message's file may go between the lookup and the open.
						if errors.Is(err, ErrNotFound) || errors.Is(err, os.ErrNotExist) {
							return
						}
						if err != nil {
							errs <- fmt.Errorf("data: %w", err)
							return
						}
						b, err := io.ReadAll(r)
						r.Close()
						if err != nil || string(b) != data {
							errs <- fmt.Errorf("read %d bytes, %v", len(b), err)
						}
					})
				}
				if remove {
					inner.Go(func() {
						if err := s.Remove(env.ID); err != nil {
							errs <- fmt.Errorf("remove: %w", err)
						}
					})
				}
				inner.Wait()
				if !remove {
					kept.Store(env.ID, data)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s.Close()
	s, envs, err := Open(dir)
	must(t, err)
	got := ids(envs)
	n := 0
	kept.Range(func(k, v any) bool {
		n++
		e, ok := got[k.(string)]
		if !ok {
			t.Errorf("kept message %s lost", k)
			return true
		}
		if b, err := read(t, s, e); err != nil || b != v.(string) {
			t.Errorf("kept message %s: %q, %v", k, b, err)
		}
		return true
	})
	if len(got) != n {
		t.Errorf("%d messages after restart, want the %d kept: removed ones came back", len(got), n)
	}
	for _, e := range envs {
		must(t, s.Remove(e.ID))
	}
	if segs := segments(t, dir); len(segs) > 1 {
		t.Errorf("with nothing left, %d segments remain", len(segs))
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "large", "*")); len(left) != 0 {
		t.Errorf("large files outlive their messages: %v", left)
	}
	s.Close()
	if after := countFDs(t); after != fds {
		t.Errorf("%d descriptors before, %d after Close", fds, after)
	}
}

// New segments always get a sequence number above every segment on disk, also after
// a start deleted the newest one, so "later wins" keeps meaning later.
func TestSeqAfterRestart(t *testing.T) {
	defer func(old int64) { segmentMax = old }(segmentMax)
	segmentMax = 1
	dir := t.TempDir()
	s, _ := openStore(t, dir)
	keep := put(t, s, "kept\r\n", "x@example.net")
	gone := put(t, s, "gone\r\n", "x@example.net")
	must(t, s.Remove(gone.ID)) // the current segment now holds nothing current
	s.Close()
	for round := range 3 {
		s, envs := openStore(t, dir)
		if len(envs) != 1 || envs[0].ID != keep.ID {
			t.Fatalf("round %d: %+v", round, envs)
		}
		before := segments(t, dir)
		e := envs[0]
		e.Recipients[0].Attempts = round + 1
		must(t, s.Update(context.Background(), e))
		after := segments(t, dir)
		if len(after) != 1 || (len(before) > 0 && after[0] <= before[len(before)-1]) {
			t.Fatalf("round %d: segments %v after %v", round, after, before)
		}
		s.Close()
	}
	_, envs := openStore(t, dir)
	if len(envs) != 1 || envs[0].Recipients[0].Attempts != 3 {
		t.Fatalf("after the restarts: %+v", envs)
	}
}

// kill -9 at arbitrary instants, in a child process.

const killHelperEnv = "QUEUE_KILL_TEST_DIR"

func killData(from string) string {
	var w, i, n int
	fmt.Sscanf(from, "w%d-%d-%d@", &w, &i, &n)
	return fmt.Sprintf("worker %d message %d %s\r\n", w, i, strings.Repeat("k", n))
}

// TestKillHelper is the child of TestKill9: it commits, updates, reads and
// removes messages until it is killed, and says on stdout what it is about to do (lower
// case) and what returned (upper case).
func TestKillHelper(t *testing.T) {
	dir := os.Getenv(killHelperEnv)
	if dir == "" {
		t.Skip("the child of TestKill9")
	}
	segmentMax = 2 << 10
	inlineMax = 64
	s, envs, err := Open(dir)
	if err != nil {
		fmt.Println("E", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	say := func(format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", a...) // unbuffered: in the pipe before the next step
		mu.Unlock()
	}
	round, _ := strconv.Atoi(os.Getenv(killHelperEnv + "_ROUND"))
	go func() { // what the last start recovered: half removed, half updated
		for i, e := range envs {
			if i%2 == 0 {
				say("r %s", e.ID)
				if err := s.Remove(e.ID); err != nil {
					say("E %v", err)
				}
				say("R %s", e.ID)
				continue
			}
			n := e.Recipients[0].Attempts + 1
			e.Recipients[0].Attempts = n
			say("u %s %d", e.ID, n)
			if err := s.Update(context.Background(), e); err != nil {
				say("E %v", err)
			}
			say("U %s %d", e.ID, n)
		}
	}()
	for w := range 8 {
		go func() {
			for i := 0; ; i++ {
				n := rand.IntN(150)
				from := fmt.Sprintf("w%d-%d-%d@r%d.example.com", w, i, n, round)
				env := Envelope{From: from, Route: "main", Received: time.Now(),
					Recipients: []Recipient{{Address: "x@example.net", State: Pending}}}
				wr, err := s.Create(env)
				if err != nil {
					say("E %v", err)
					return
				}
				io.WriteString(wr, killData(from))
				env, err = wr.Commit(context.Background())
				if err != nil {
					say("E %v", err)
					return
				}
				say("C %s", env.ID)
				if r, err := s.Data(env); err == nil {
					io.Copy(io.Discard, r)
					r.Close()
				}
				for k := 1; k <= rand.IntN(3); k++ {
					env.Recipients[0].Attempts = k
					say("u %s %d", env.ID, k)
					if err := s.Update(context.Background(), env); err != nil {
						say("E %v", err)
						return
					}
					say("U %s %d", env.ID, k)
				}
				if rand.IntN(3) != 0 {
					say("r %s", env.ID)
					if err := s.Remove(env.ID); err != nil {
						say("E %v", err)
						return
					}
					say("R %s", env.ID)
				}
			}
		}()
	}
	select {}
}

// A child process stores, updates and removes messages and is killed with SIGKILL at
// an arbitrary instant, several times on the same spool: every acknowledged message
// is there with at least its last acknowledged state, nothing removed comes back,
// every message reads back intact, and nothing blocks the next start.
func TestKill9(t *testing.T) {
	if os.Getenv(killHelperEnv) != "" {
		t.Skip("in the child")
	}
	dir := t.TempDir()
	type state struct {
		mustExist bool // acknowledged, no removal started
		lo, hi    int  // attempts: last acknowledged, last started
	}
	known := map[string]*state{}
	gone := map[string]bool{} // absent at some start: never again
	removed := map[string]bool{}
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), killHelperEnv+"="+dir, killHelperEnv+"_ROUND="+strconv.Itoa(round))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		must(t, err)
		must(t, cmd.Start())
		sc := bufio.NewScanner(out)
		limit := 150 + rand.IntN(300)
		lines, killed := 0, false
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			lines++
			if !killed && lines >= limit {
				cmd.Process.Kill() // SIGKILL; what is already in the pipe is still read
				killed = true
			}
			if len(f) == 0 {
				continue
			}
			switch f[0] {
			case "E":
				t.Errorf("round %d: child: %s", round, sc.Text())
			case "C":
				known[f[1]] = &state{mustExist: true}
			case "u", "U":
				st := known[f[1]]
				if st == nil {
					st = &state{}
					known[f[1]] = st
				}
				n, _ := strconv.Atoi(f[2])
				if f[0] == "u" {
					st.hi = n
				} else {
					st.lo = n
				}
			case "r":
				if st := known[f[1]]; st != nil {
					st.mustExist = false
				}
			case "R":
				removed[f[1]] = true
			}
		}
		if !killed {
			cmd.Process.Kill()
		}
		cmd.Wait()
		if lines < limit {
			t.Fatalf("round %d: the child said %d lines, then stopped: %s", round, lines, stderr.String())
		}
		s, envs, err := Open(dir)
		if err != nil {
			t.Fatalf("round %d: Open after kill -9: %v", round, err)
		}
		got := ids(envs)
		t.Logf("round %d: killed after %d lines; %d messages tracked, %d removed so far, %d recovered, %d segments",
			round, lines, len(known), len(removed), len(got), len(segments(t, dir)))
		for id, st := range known {
			e, ok := got[id]
			switch {
			case removed[id] && ok:
				t.Errorf("round %d: removed message %s came back", round, id)
			case st.mustExist && !ok:
				t.Errorf("round %d: acknowledged message %s lost", round, id)
			case ok && (e.Recipients[0].Attempts < st.lo || e.Recipients[0].Attempts > max(st.hi, st.lo)):
				t.Errorf("round %d: %s has attempts %d, acknowledged %d, started %d", round, id, e.Recipients[0].Attempts, st.lo, st.hi)
			}
		}
		for id, e := range got {
			if gone[id] {
				t.Errorf("round %d: %s was gone at an earlier start and came back", round, id)
			}
			if b, err := read(t, s, e); err != nil || b != killData(e.From) {
				t.Errorf("round %d: %s reads %q, %v", round, id, b, err)
			}
		}
		// What this start found is the truth from now on.
		for id := range known {
			if _, ok := got[id]; !ok {
				gone[id] = true
			}
		}
		known = map[string]*state{}
		for id, e := range got {
			a := e.Recipients[0].Attempts
			known[id] = &state{mustExist: true, lo: a, hi: a}
		}
		s.Close()
		if t.Failed() {
			return
		}
	}
}
