// Package queue is the relay's durable spool for Queue mode: a message is answered
// 250 only once its data, its envelope and its recipients' state are on stable
// storage, and nothing half-written ever blocks a start or reaches an upstream.
//
// The spool is a log. Each message is one record appended to the current segment
// (log/<seq>.seg): a header with a checksum, the data, then the envelope. The commits
// in flight share one fdatasync(2) of the segments they wrote (group commit), so a
// burst of sessions costs a few flushes, not one per message, and nothing but the
// appended bytes is flushed: no directory entries per message, no other files of the
// filesystem. A record is never rewritten except for its one "done" byte, set when the
// message is delivered or replaced; a new state (a deferral's recipients, the next
// attempt) is a new record of the whole message, the later record winning at start.
// A segment is deleted once none of its records is current, and since every deferred
// message moves to the current segment at each attempt, old segments empty by
// themselves. Data larger than inlineMax is kept in its own file in large/, so a
// session never holds a large message in memory. Records record the data's size and
// SHA-256: data a crash cut short or the disk changed is found and never delivered.
// Checksums start from the spool's own random key (the file key), so bytes a client
// sent that look like a record are never taken for one, even when a damaged header
// makes a start look for the next record through a message's data. The spool is
// locked (flock) while open: two relays never share one.
//
// Plain files over an embedded database (bbolt): records stream into one file with
// one flush per batch, where a B-tree rewrites pages and flushes twice per commit,
// and the data of each message is read back with one pread.
package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// RecipientState is where delivery to one recipient stands.
type RecipientState string

const (
	// Pending recipients are delivered at the next attempt.
	Pending RecipientState = "Pending"
	// Delivered recipients were accepted by the upstream (its 250 is recorded).
	Delivered RecipientState = "Delivered"
	// Failed recipients were refused for good (a 5xx, or the message grew too old).
	Failed RecipientState = "Failed"
)

// Recipient is one recipient of a queued message and its delivery state.
type Recipient struct {
	Address  string         `json:"address"`
	State    RecipientState `json:"state"`
	Attempts int            `json:"attempts,omitempty"`
	// LastReply is the upstream's last reply for this recipient (sanitised text).
	LastReply string `json:"lastReply,omitempty"`
}

// Envelope is what is known of a queued message besides its data.
type Envelope struct {
	ID   string `json:"id"`
	From string `json:"from"`
	// Body is the client's BODY parameter, passed on at delivery.
	Body       string      `json:"body,omitempty"`
	Route      string      `json:"route"`
	Recipients []Recipient `json:"recipients"`
	Received   time.Time   `json:"received"`
	// NextAttempt is when the next delivery attempt is due.
	NextAttempt time.Time `json:"nextAttempt"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
}

// Pending reports whether any recipient still waits for delivery.
func (e *Envelope) Pending() bool {
	for _, r := range e.Recipients {
		if r.State == Pending {
			return true
		}
	}
	return false
}

// ErrCorrupt means a message's data does not match its envelope (a crash cut it short,
// or the disk changed it): it is never delivered.
var ErrCorrupt = errors.New("queued message data does not match its envelope")

// ErrNotFound means the store holds no message of that ID.
var ErrNotFound = errors.New("no such message in the queue")

// Stats are the store's totals.
type Stats struct {
	Messages int
	Bytes    int64
	Oldest   time.Time // zero when empty
	// Syncs counts the flushes, shared by the commits that waited for each:
	// Commits/Syncs is the group commit's batch size.
	Syncs   int64
	Commits int64
}

// Record layout: a header, the data (inline messages only), the envelope as JSON.
//
//	0  magic "KRQ1"
//	4  done: 0, or 1 once the record is no longer current (the only byte rewritten)
//	5  kind: 0 inline data, 1 data in large/<id>.eml
//	6  zero
//	8  envelope length, uint32 little-endian
//	12 inline data length, uint64
//	20 CRC-32C of bytes 5-19 and of everything after the header
const (
	headerLen = 24
	recMagic  = "KRQ1"
	offDone   = 4
	kindLarge = 1
	envMax    = 1 << 20
)

var (
	// inlineMax is the largest message kept in its record; larger ones get a file.
	inlineMax = 256 << 10
	// segmentMax is the size past which appends go to a new segment.
	segmentMax int64 = 32 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Store is a spool directory. It is safe for concurrent use.
type Store struct {
	dir    string
	logDir *os.File
	// lock holds the spool's flock while the store is open.
	lock     *os.File
	largeDir *os.File
	fs       *syncer

	mu      sync.Mutex
	cur     *segment // appended to; nil until the first append, and after a write error
	nextSeq uint64
	index   map[string]*loc
	bytes   int64
	// dirty are the segments written since the last flush; dirDirty and largeDirty
	// say a directory gained an entry (a segment, a large message's file).
	dirty      map[*segment]bool
	dirDirty   bool
	largeDirty bool
	commits    atomic.Int64
	syncs      atomic.Int64
	// readOnly: Inspect's store changes nothing on disk.
	readOnly bool
	// seed starts every record's checksum: the CRC-32C of the spool's own random key,
	// so data a client sent that looks like a record never passes for one.
	seed uint32
	// recovered are the segments found by recover.
	recovered []*segment
	closed    bool
}

// segment is one log file.
type segment struct {
	seq  uint64
	f    *os.File
	size int64 // where the next record goes
	// live counts the current records here, and the records being committed.
	live int
	// refs counts readers of its data; the file is closed when the last one is done
	// with a deleted segment.
	refs    int
	deleted bool
	// failed is set once an fdatasync of f failed: what was appended since may be
	// lost without a later fdatasync saying so.
	failed error
}

// loc is where a message's current record is.
type loc struct {
	seg      *segment
	off      int64
	dataLen  int64 // inline data, 0 for large
	large    bool
	size     int64
	sha      string
	received time.Time
}

// Open opens (creating it if needed) the spool at dir, mode 0700, and returns the
// messages it holds, oldest first. What a crash left behind is dropped: a record cut
// short or damaged, a large message's file without a record, a record whose file is
// missing or of the wrong size.
func Open(dir string) (*Store, []Envelope, error) {
	for _, d := range []string{dir, filepath.Join(dir, "log"), filepath.Join(dir, "large")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("queue: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("queue: %w", err)
		}
	}
	s := &Store{dir: dir, index: map[string]*loc{}, dirty: map[*segment]bool{}, nextSeq: 1}
	var err error
	var envs []Envelope
	if s.lock, err = os.Open(dir); err != nil {
		return nil, nil, fmt.Errorf("queue: %w", err)
	}
	if err := unix.Flock(int(s.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		s.lock.Close()
		return nil, nil, fmt.Errorf("queue: spool %s is in use by another process (%v): each relay needs a spool of its own", dir, err)
	}
	if s.logDir, err = os.Open(filepath.Join(dir, "log")); err != nil {
		s.lock.Close()
		return nil, nil, fmt.Errorf("queue: %w", err)
	}
	if s.largeDir, err = os.Open(filepath.Join(dir, "large")); err != nil {
		s.logDir.Close()
		s.lock.Close()
		return nil, nil, fmt.Errorf("queue: %w", err)
	}
	if s.seed, err = spoolKey(dir, true); err == nil {
		envs, err = s.recover()
	}
	if err != nil {
		for _, seg := range s.recovered {
			seg.f.Close()
		}
		s.logDir.Close()
		s.largeDir.Close()
		s.lock.Close()
		return nil, nil, err
	}
	s.fs = newSyncer(s.flush)
	return s, envs, nil
}

// Close stops the store; commits after it fail.
func (s *Store) Close() {
	if s.fs != nil {
		s.fs.close()
	}
	s.closeFiles()
}

func (s *Store) closeFiles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	seen := map[*segment]bool{}
	for _, l := range s.index {
		seen[l.seg] = true
	}
	if s.cur != nil {
		seen[s.cur] = true
	}
	for seg := range seen {
		seg.f.Close()
	}
	s.logDir.Close()
	s.largeDir.Close()
	// Closing the descriptor releases the flock.
	s.lock.Close()
}

func (s *Store) segPath(seq uint64) string {
	return filepath.Join(s.dir, "log", fmt.Sprintf("%016x.seg", seq))
}

func (s *Store) largePath(id string) string { return filepath.Join(s.dir, "large", id+".eml") }

// flush makes everything appended and marked so far durable: each segment written
// since the last flush, then the directories that gained entries.
func (s *Store) flush() error {
	s.mu.Lock()
	var err error
	segs := make([]*segment, 0, len(s.dirty))
	for seg := range s.dirty {
		if seg.failed != nil {
			err = seg.failed
			continue
		}
		seg.refs++ // not closed under the flush if deleted meanwhile
		segs = append(segs, seg)
	}
	clear(s.dirty)
	dirDirty, largeDirty := s.dirDirty, s.largeDirty
	s.dirDirty, s.largeDirty = false, false
	s.mu.Unlock()
	if len(segs) == 0 && !dirDirty && !largeDirty {
		return err
	}
	s.syncs.Add(1)
	if dirDirty {
		if e := s.logDir.Sync(); e != nil && err == nil {
			err = e
		}
	}
	if largeDirty {
		if e := s.largeDir.Sync(); e != nil && err == nil {
			err = e
		}
	}
	var failed []*segment
	for _, seg := range segs {
		if e := unix.Fdatasync(int(seg.f.Fd())); e != nil {
			e = fmt.Errorf("flushing %s: %w", seg.f.Name(), e)
			if err == nil {
				err = e
			}
			failed = append(failed, seg)
		}
	}
	s.mu.Lock()
	for _, seg := range failed {
		seg.failed = err
		if seg == s.cur {
			s.seal()
		}
	}
	for _, seg := range segs {
		s.release(seg)
	}
	if err != nil {
		// What failed to flush is flushed again next time rather than assumed safe.
		for _, seg := range segs {
			if !seg.deleted && seg.failed == nil {
				s.dirty[seg] = true
			}
		}
		s.dirDirty, s.largeDirty = s.dirDirty || dirDirty, s.largeDirty || largeDirty
	}
	s.mu.Unlock()
	return err
}

// release drops a reference to seg; s.mu is held.
func (s *Store) release(seg *segment) {
	seg.refs--
	if seg.deleted && seg.refs == 0 {
		seg.f.Close()
	}
}

// dropLive counts one current record less in seg and deletes the segment once none
// is left and it is no longer appended to; s.mu is held.
func (s *Store) dropLive(seg *segment) {
	seg.live--
	if seg.live > 0 || seg == s.cur || seg.deleted || s.readOnly {
		return
	}
	seg.deleted = true
	delete(s.dirty, seg)
	// Its records are all done or superseded by durable ones: if the unlink is lost
	// in a crash, the next start finds nothing current in it and deletes it again.
	_ = os.Remove(seg.f.Name())
	s.dirDirty = true
	if seg.refs == 0 {
		seg.f.Close()
	}
}

// append writes rec at the end of the current segment, starting a new one when the
// current one is full, and counts it live there; s.mu is held.
func (s *Store) append(rec []byte) (*segment, int64, error) {
	if s.closed {
		return nil, 0, errClosed
	}
	if s.cur != nil && s.cur.size > 0 && s.cur.size+int64(len(rec)) > segmentMax {
		s.seal()
	}
	if s.cur == nil {
		f, err := os.OpenFile(s.segPath(s.nextSeq), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, 0, err
		}
		s.cur = &segment{seq: s.nextSeq, f: f}
		s.nextSeq++
		s.dirDirty = true
	}
	seg := s.cur
	off := seg.size
	if _, err := seg.f.WriteAt(rec, off); err != nil {
		// Whatever part of the record reached the file ends this segment: nothing is
		// ever appended after bytes that may be torn.
		seg.size += int64(len(rec))
		s.seal()
		return nil, 0, err
	}
	seg.size += int64(len(rec))
	seg.live++
	s.dirty[seg] = true
	return seg, off, nil
}

// seal stops appending to the current segment; s.mu is held.
func (s *Store) seal() {
	seg := s.cur
	s.cur = nil
	if seg.live == 0 {
		seg.live = 1
		s.dropLive(seg)
	}
}

// markDone sets the done byte of the record at off in seg; s.mu is held. It is made
// durable by the next flush.
func (s *Store) markDone(seg *segment, off int64) error {
	if seg.deleted || s.readOnly {
		return nil
	}
	if _, err := seg.f.WriteAt([]byte{1}, off+offDone); err != nil {
		return err
	}
	if seg.failed == nil {
		s.dirty[seg] = true
	}
	return nil
}

// encode completes the record in buf (the header's room, then the inline data) with
// env and the header.
func encode(buf []byte, env *Envelope, large bool, seed uint32) ([]byte, error) {
	dataLen := len(buf) - headerLen
	b, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	if len(b) > envMax {
		// A start would take it for a torn record and stop reading its segment.
		return nil, fmt.Errorf("envelope of %d bytes is over the limit of %d", len(b), envMax)
	}
	buf = append(buf, b...)
	h := buf[:headerLen]
	copy(h, recMagic)
	h[offDone], h[5], h[6], h[7] = 0, 0, 0, 0
	if large {
		h[5] = kindLarge
	}
	binary.LittleEndian.PutUint32(h[8:], uint32(len(b)))
	binary.LittleEndian.PutUint64(h[12:], uint64(dataLen))
	c := crc32.Update(seed, castagnoli, h[5:20])
	binary.LittleEndian.PutUint32(h[20:], crc32.Update(c, castagnoli, buf[headerLen:]))
	return buf, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func getBuf() *[]byte {
	b := bufPool.Get().(*[]byte)
	*b = append((*b)[:0], make([]byte, headerLen)...)
	return b
}

func putBuf(b *[]byte) {
	if cap(*b) <= 1<<20 {
		bufPool.Put(b)
	}
}

// Writer receives one new message's data; Commit makes it durable.
type Writer struct {
	s     *Store
	env   Envelope
	buf   *[]byte // header room and inline data; nil once returned
	large *os.File
	h     hash.Hash
	n     int64
	done  bool
}

// Create starts a message with envelope env (its ID, Size and SHA256 are set here).
func (s *Store) Create(env Envelope) (*Writer, error) {
	env.ID = newID()
	return &Writer{s: s, env: env, buf: getBuf(), h: sha256.New()}, nil
}

func (w *Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, errors.New("queue: write after commit or abort")
	}
	w.h.Write(p)
	w.n += int64(len(p))
	if w.large == nil && len(*w.buf)-headerLen+len(p) <= inlineMax {
		*w.buf = append(*w.buf, p...)
		return len(p), nil
	}
	if w.large == nil {
		f, err := os.OpenFile(w.s.largePath(w.env.ID), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return 0, fmt.Errorf("queue: %w", err)
		}
		w.large = f
		if _, err := f.Write((*w.buf)[headerLen:]); err != nil {
			return 0, fmt.Errorf("queue: %w", err)
		}
		*w.buf = (*w.buf)[:headerLen]
	}
	if _, err := w.large.Write(p); err != nil {
		return 0, fmt.Errorf("queue: %w", err)
	}
	return len(p), nil
}

// WriteString is Write without a copy of s.
func (w *Writer) WriteString(s string) (int, error) {
	if !w.done && w.large == nil && len(*w.buf)-headerLen+len(s) <= inlineMax {
		io.WriteString(w.h, s)
		w.n += int64(len(s))
		*w.buf = append(*w.buf, s...)
		return len(s), nil
	}
	return w.Write([]byte(s))
}

// ReadFrom reads r to its end straight into the record (so io.Copy needs no buffer of
// its own), and on into a file of its own past inlineMax.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for w.large == nil && !w.done {
		b := *w.buf
		room := headerLen + inlineMax - len(b)
		if room <= 0 {
			break
		}
		if cap(b)-len(b) < min(room, 4096) {
			b = slices.Grow(b, min(room, max(len(b), 16<<10)))
		}
		n, err := r.Read(b[len(b):min(cap(b), len(b)+room)])
		w.h.Write(b[len(b) : len(b)+n])
		w.n += int64(n)
		total += int64(n)
		*w.buf = b[:len(b)+n]
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	// Past inlineMax: Write moves what is held to the message's own file.
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Commit makes the message durable and returns its envelope. It returns only once the
// data and envelope are on stable storage; on any error nothing of the message is kept
// and the client must not be told it was accepted.
func (w *Writer) Commit(ctx context.Context) (Envelope, error) {
	if w.done {
		return Envelope{}, errors.New("queue: message already committed or aborted")
	}
	w.done = true
	defer w.free()
	s := w.s
	env := w.env
	env.Size, env.SHA256 = w.n, hex.EncodeToString(w.h.Sum(nil))
	l, err := w.store(ctx, &env)
	if err != nil {
		if w.large != nil {
			_ = os.Remove(w.large.Name())
		}
		return Envelope{}, fmt.Errorf("queue: storing message: %w", err)
	}
	s.commits.Add(1)
	s.mu.Lock()
	s.index[env.ID] = l
	s.bytes += env.Size
	s.mu.Unlock()
	return env, nil
}

func (w *Writer) store(ctx context.Context, env *Envelope) (*loc, error) {
	s := w.s
	if w.large != nil {
		// Its own file is flushed by itself; its directory entry with the record's.
		err := w.large.Sync()
		if cerr := w.large.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	rec, err := encode(*w.buf, env, w.large != nil, s.seed)
	if err != nil {
		return nil, err
	}
	*w.buf = rec
	s.mu.Lock()
	seg, off, err := s.append(rec)
	if err == nil && w.large != nil {
		s.largeDirty = true
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	l := &loc{seg: seg, off: off, dataLen: int64(len(rec)) - headerLen - int64(binary.LittleEndian.Uint32(rec[8:])),
		large: w.large != nil, size: env.Size, sha: env.SHA256, received: env.Received}
	if err := s.fs.sync(ctx); err != nil {
		// The record may yet reach the disk: marked done, it is not delivered after a
		// restart to a client that was told it was not accepted.
		s.mu.Lock()
		_ = s.markDone(seg, off)
		s.dropLive(seg)
		s.mu.Unlock()
		return nil, err
	}
	return l, nil
}

// Abort drops the message being written.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	if w.large != nil {
		w.large.Close()
		_ = os.Remove(w.large.Name())
	}
	w.free()
}

func (w *Writer) free() {
	if w.buf != nil {
		putBuf(w.buf)
		w.buf = nil
	}
}

// Update records env (recipients' states, the next attempt) durably, as a new record
// of the whole message in the current segment; the old one is marked done.
func (s *Store) Update(ctx context.Context, env Envelope) error {
	s.mu.Lock()
	old := s.index[env.ID]
	if old != nil {
		old.seg.refs++
	}
	s.mu.Unlock()
	if old == nil {
		return fmt.Errorf("queue: updating %s: %w", env.ID, ErrNotFound)
	}
	buf := getBuf()
	defer putBuf(buf)
	var err error
	if old.dataLen > 0 {
		*buf = slices.Grow(*buf, int(old.dataLen))[:headerLen+int(old.dataLen)]
		_, err = old.seg.f.ReadAt((*buf)[headerLen:], old.off+headerLen)
	}
	s.mu.Lock()
	s.release(old.seg)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	env.Size, env.SHA256 = old.size, old.sha
	rec, err := encode(*buf, &env, old.large, s.seed)
	if err != nil {
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	*buf = rec
	s.mu.Lock()
	seg, off, err := s.append(rec)
	s.mu.Unlock()
	if err == nil {
		err = s.fs.sync(ctx)
		if err != nil {
			s.mu.Lock()
			_ = s.markDone(seg, off)
			s.dropLive(seg)
			s.mu.Unlock()
		}
	}
	if err != nil {
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	// The new record is durable: the old one needs no flush of its own, since at a
	// start the later of two current records wins.
	s.mu.Lock()
	defer s.mu.Unlock()
	nl := *old
	nl.seg, nl.off = seg, off
	if s.index[env.ID] != old {
		// Removed meanwhile: the new record is not current either.
		_ = s.markDone(seg, off)
		s.dropLive(seg)
		return nil
	}
	s.index[env.ID] = &nl
	_ = s.markDone(old.seg, old.off)
	s.dropLive(old.seg)
	return nil
}

// Remove deletes a message once nothing is left to deliver. Its record is marked
// done at once and flushed with the next commit, or within lazyDelay: a crash of the
// machine (not of the relay, whose writes the kernel keeps) in that window may
// deliver the message again, as with a crash before its upstream 250 was recorded,
// and nothing waits for a flush per delivery. Removing a message the store does not
// hold is not an error.
func (s *Store) Remove(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.index[id]
	if l == nil {
		return nil
	}
	if err := s.markDone(l.seg, l.off); err != nil {
		return fmt.Errorf("queue: removing %s: %w", id, err)
	}
	delete(s.index, id)
	s.bytes -= l.size
	s.fs.later()
	// The segment is deleted once nothing in it is current, maybe before the done
	// byte is flushed: a segment that comes back after a crash is read again, which
	// again may only deliver twice.
	s.dropLive(l.seg)
	if l.large {
		_ = os.Remove(s.largePath(id))
	}
	return nil
}

// Data opens a message's data. Reading it to the end fails with ErrCorrupt when it is
// not the data that was committed.
func (s *Store) Data(env Envelope) (io.ReadCloser, error) {
	s.mu.Lock()
	l := s.index[env.ID]
	if l == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("queue: %s: %w", env.ID, ErrNotFound)
	}
	if l.large {
		s.mu.Unlock()
		f, err := os.Open(s.largePath(env.ID))
		if err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		return &checkedReader{r: f, close: f.Close, h: sha256.New(), want: l.sha, size: l.size}, nil
	}
	seg := l.seg
	seg.refs++
	s.mu.Unlock()
	var once sync.Once
	closeFn := func() error {
		once.Do(func() {
			s.mu.Lock()
			s.release(seg)
			s.mu.Unlock()
		})
		return nil
	}
	return &checkedReader{r: io.NewSectionReader(seg.f, l.off+headerLen, l.dataLen), close: closeFn,
		h: sha256.New(), want: l.sha, size: l.size}, nil
}

// Size returns how many messages and bytes the store holds, without the walk over
// every message that Stats makes for the oldest: it is asked for each new message.
func (s *Store) Size() (messages int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index), s.bytes
}

// Stats returns the store's totals.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{Messages: len(s.index), Bytes: s.bytes}
	for _, l := range s.index {
		if st.Oldest.IsZero() || l.received.Before(st.Oldest) {
			st.Oldest = l.received
		}
	}
	s.mu.Unlock()
	st.Syncs, st.Commits = s.syncs.Load(), s.commits.Load()
	return st
}

type checkedReader struct {
	r     io.Reader
	close func() error
	h     hash.Hash
	want  string
	size  int64
	n     int64
}

func (r *checkedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if err == io.EOF && (r.n != r.size || hex.EncodeToString(r.h.Sum(nil)) != r.want) {
		return n, ErrCorrupt
	}
	return n, err
}

func (r *checkedReader) Close() error { return r.close() }

// Inspect returns the messages a spool holds, oldest first, as Open would, without
// changing anything on disk: for looking at the spool of a relay that is not running.
func Inspect(dir string) ([]Envelope, error) {
	s := &Store{dir: dir, index: map[string]*loc{}, dirty: map[*segment]bool{}, readOnly: true}
	defer func() {
		for _, seg := range s.recovered {
			seg.f.Close()
		}
	}()
	var err error
	if s.seed, err = spoolKey(dir, false); err != nil {
		return nil, err
	}
	return s.recover()
}

// spoolKey returns the checksum seed of the spool's key file, making the key (16
// random bytes) for a spool that holds no segment yet when create is set.
func spoolKey(dir string, create bool) (uint32, error) {
	path := filepath.Join(dir, "key")
	key, err := os.ReadFile(path)
	if err == nil && len(key) == 16 {
		return crc32.Update(0, castagnoli, key), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("queue: %w", err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "log", "*.seg"))
	switch {
	case len(segs) > 0:
		return 0, fmt.Errorf("queue: %s is missing or damaged: without it the records in %s cannot be verified; restore it from a backup of the volume", path, filepath.Join(dir, "log"))
	case !create:
		return 0, nil
	}
	key = make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		return 0, fmt.Errorf("queue: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		_, err = f.Write(key)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(dir); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return 0, fmt.Errorf("queue: making the spool key: %w", err)
	}
	return crc32.Update(0, castagnoli, key), nil
}

// recover reads every segment in order and indexes the current records; the later
// of two current records of a message wins (a crash came between a new record and
// the old one's done byte).
func (s *Store) recover() ([]Envelope, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "log"))
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	var seqs []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		seq, err := strconv.ParseUint(name, 16, 64)
		if !ok || err != nil || e.Name() != filepath.Base(s.segPath(seq)) {
			// Not the store's: left alone rather than guessed at.
			continue
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	envs := map[string]Envelope{}
	for _, seq := range seqs {
		flag := os.O_RDWR
		if s.readOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(s.segPath(seq), flag, 0)
		if err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		seg := &segment{seq: seq, f: f}
		s.recovered = append(s.recovered, seg)
		s.nextSeq = seq + 1
		if err := s.scan(seg, envs); err != nil {
			return nil, err
		}
	}
	for _, seg := range s.recovered {
		if seg.live == 0 {
			seg.live = 1
			s.dropLive(seg)
		}
	}
	large, err := os.ReadDir(filepath.Join(s.dir, "large"))
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	for _, e := range large {
		id, _ := strings.CutSuffix(e.Name(), ".eml")
		if l := s.index[id]; !s.readOnly && (l == nil || !l.large) {
			_ = os.Remove(filepath.Join(s.dir, "large", e.Name()))
		}
	}
	// Done bytes set here are flushed before the first commit is acknowledged.
	for seg := range s.dirty {
		if err := unix.Fdatasync(int(seg.f.Fd())); err != nil {
			return nil, fmt.Errorf("queue: flushing %s: %w", seg.f.Name(), err)
		}
	}
	clear(s.dirty)
	if s.dirDirty && !s.readOnly {
		if err := s.logDir.Sync(); err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		s.dirDirty = false
	}
	out := make([]Envelope, 0, len(envs))
	for _, e := range envs {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Envelope) int {
		if c := a.Received.Compare(b.Received); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// scan indexes seg's current records. It stops at the first record that is not one
// (the end, or a tail a crash left unwritten or torn: nothing after it was ever
// acknowledged); a record whose checksum fails is skipped, and reading goes on at the
// next offset where a record's checksum holds (its own lengths may be the damage).
func (s *Store) scan(seg *segment, envs map[string]Envelope) error {
	fi, err := seg.f.Stat()
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	end := fi.Size()
	seg.size = end
	var h [headerLen]byte
	var payload []byte
	for off := int64(0); off+headerLen <= end; {
		if _, err := seg.f.ReadAt(h[:], off); err != nil {
			return fmt.Errorf("queue: reading %s: %w", seg.f.Name(), err)
		}
		envLen := int64(binary.LittleEndian.Uint32(h[8:]))
		dl := binary.LittleEndian.Uint64(h[12:])
		if string(h[:4]) != recMagic || envLen > envMax || dl > uint64(end) || off+headerLen+int64(dl)+envLen > end {
			break
		}
		dataLen := int64(dl)
		n := off + headerLen + dataLen + envLen
		payload = slices.Grow(payload[:0], int(dataLen+envLen))[:dataLen+envLen]
		if _, err := seg.f.ReadAt(payload, off+headerLen); err != nil {
			return fmt.Errorf("queue: reading %s: %w", seg.f.Name(), err)
		}
		c := crc32.Update(crc32.Update(s.seed, castagnoli, h[5:20]), castagnoli, payload)
		if c != binary.LittleEndian.Uint32(h[20:]) {
			// Its lengths may be what is damaged: go on at the next record that checks.
			off = resync(seg, off+1, end, s.seed)
			continue
		}
		if h[offDone] != 0 {
			off = n
			continue
		}
		var env Envelope
		large := h[5] == kindLarge
		ok := json.Unmarshal(payload[dataLen:], &env) == nil && env.ID != "" && !strings.ContainsAny(env.ID, "/.")
		if ok && large {
			fi, err := os.Stat(s.largePath(env.ID))
			ok = err == nil && fi.Size() == env.Size
		}
		if !ok {
			// Cannot be delivered as it was sent.
			_ = s.markDone(seg, off)
			off = n
			continue
		}
		if prev := s.index[env.ID]; prev != nil {
			_ = s.markDone(prev.seg, prev.off)
			prev.seg.live--
			s.bytes -= prev.size
		}
		seg.live++
		s.index[env.ID] = &loc{seg: seg, off: off, dataLen: dataLen, large: large, size: env.Size, sha: env.SHA256, received: env.Received}
		s.bytes += env.Size
		envs[env.ID] = env
		off = n
	}
	return nil
}

// newID is time-ordered (so a listing is oldest first) and unique across restarts.
func newID() string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%016x%s", time.Now().UnixNano(), hex.EncodeToString(r[:]))
}

// resync returns the offset of the first record at or after from whose checksum
// holds, or end.
func resync(seg *segment, from, end int64, seed uint32) int64 {
	buf := make([]byte, end-from)
	if _, err := seg.f.ReadAt(buf, from); err != nil && err != io.EOF {
		return end
	}
	for i := 0; ; {
		j := bytes.Index(buf[i:], []byte(recMagic))
		if j < 0 {
			return end
		}
		if p := i + j; validAt(buf[p:], seed) {
			return from + int64(p)
		}
		i += j + 1
	}
}

func validAt(b []byte, seed uint32) bool {
	if len(b) < headerLen {
		return false
	}
	envLen, dataLen := uint64(binary.LittleEndian.Uint32(b[8:])), binary.LittleEndian.Uint64(b[12:])
	if envLen > envMax || dataLen > uint64(len(b)) || headerLen+dataLen+envLen > uint64(len(b)) {
		return false
	}
	c := crc32.Update(crc32.Update(seed, castagnoli, b[5:20]), castagnoli, b[headerLen:headerLen+dataLen+envLen])
	return c == binary.LittleEndian.Uint32(b[20:])
}
