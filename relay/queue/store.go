// Package queue is the relay's durable spool for Queue mode: a message is answered
// 250 only once its data, its envelope and its recipients' state are on stable
// storage, and nothing half-written ever blocks a start or reaches an upstream.
//
// Each message is two files in msg/: <id>.eml (the data) and <id>.json (the
// envelope, written last: its presence commits the message). Both are written under
// tmp/ and renamed into msg/, then made durable together with every other commit in
// flight by one syncfs(2) of the spool's filesystem: concurrent sessions share that
// call (group commit), so throughput does not fall to one flush per message, and a
// message's bytes still stream to disk without being held in memory. The envelope
// records the data's size and SHA-256, so data a crash left short is found at start
// and never delivered.
package queue

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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

// Stats are the store's totals.
type Stats struct {
	Messages int
	Bytes    int64
	Oldest   time.Time // zero when empty
	// Syncs counts the flushes of the filesystem, shared by the commits that waited for
	// each: Commits/Syncs is the group commit's batch size.
	Syncs   int64
	Commits int64
}

// Store is a spool directory. It is safe for concurrent use.
type Store struct {
	dir string
	fs  *syncer
	// perFile fsyncs each file as it is written and leaves only the directory to the
	// group flush, instead of one syncfs for everything (see BenchmarkCommit).
	perFile bool

	mu       sync.Mutex
	messages map[string]msgInfo
	bytes    int64
	commits  atomic.Int64
}

type msgInfo struct {
	size     int64
	received time.Time
}

// Open opens (creating it if needed) the spool at dir, mode 0700, and returns the
// messages it holds. What a crash left behind is removed first: anything in tmp/, data
// without an envelope, and envelopes whose data is missing or of the wrong size.
func Open(dir string) (*Store, []Envelope, error) {
	return open(dir, false)
}

func open(dir string, perFile bool) (*Store, []Envelope, error) {
	for _, d := range []string{dir, filepath.Join(dir, "msg"), filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("queue: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("queue: %w", err)
		}
	}
	if err := clearDir(filepath.Join(dir, "tmp")); err != nil {
		return nil, nil, err
	}
	fs, err := newSyncer(filepath.Join(dir, "msg"), perFile)
	if err != nil {
		return nil, nil, err
	}
	s := &Store{dir: dir, fs: fs, perFile: perFile, messages: map[string]msgInfo{}}
	envs, err := s.recover()
	if err != nil {
		fs.close()
		return nil, nil, err
	}
	return s, envs, nil
}

// Close stops the store; commits after it fail.
func (s *Store) Close() { s.fs.close() }

func clearDir(d string) error {
	ents, err := os.ReadDir(d)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(d, e.Name())); err != nil {
			return fmt.Errorf("queue: %w", err)
		}
	}
	return nil
}

func (s *Store) recover() ([]Envelope, error) {
	msgDir := filepath.Join(s.dir, "msg")
	ents, err := os.ReadDir(msgDir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	envs := []Envelope{}
	hasEnv := map[string]bool{}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		env, err := s.readEnvelope(id)
		if err == nil {
			var fi os.FileInfo
			if fi, err = os.Stat(s.dataPath(id)); err == nil && fi.Size() != env.Size {
				err = ErrCorrupt
			}
		}
		if err != nil {
			// Never committed (the crash came before the flush), or damaged: the
			// client got no 250 for it, or it cannot be delivered as it was sent.
			_ = os.Remove(s.envPath(id))
			_ = os.Remove(s.dataPath(id))
			continue
		}
		hasEnv[id] = true
		envs = append(envs, env)
		s.messages[id] = msgInfo{size: env.Size, received: env.Received}
		s.bytes += env.Size
	}
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".eml"); ok && !hasEnv[id] {
			_ = os.Remove(filepath.Join(msgDir, e.Name()))
		}
	}
	return envs, nil
}

func (s *Store) dataPath(id string) string { return filepath.Join(s.dir, "msg", id+".eml") }
func (s *Store) envPath(id string) string  { return filepath.Join(s.dir, "msg", id+".json") }

func (s *Store) readEnvelope(id string) (Envelope, error) {
	var env Envelope
	b, err := os.ReadFile(s.envPath(id))
	if err != nil {
		return env, err
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return env, fmt.Errorf("%w: envelope: %v", ErrCorrupt, err)
	}
	if env.ID != id {
		return env, fmt.Errorf("%w: envelope of %s names %s", ErrCorrupt, id, env.ID)
	}
	return env, nil
}

// Writer receives one new message's data; Commit makes it durable.
type Writer struct {
	s    *Store
	env  Envelope
	f    *os.File
	h    hash.Hash
	n    int64
	done bool
}

// Create starts a message with envelope env (its ID, Size and SHA256 are set here).
func (s *Store) Create(env Envelope) (*Writer, error) {
	env.ID = newID()
	f, err := os.OpenFile(filepath.Join(s.dir, "tmp", env.ID+".eml"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	return &Writer{s: s, env: env, f: f, h: sha256.New()}, nil
}

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("queue: %w", err)
	}
	return n, nil
}

// Commit makes the message durable and returns its envelope. It returns only once the
// data and envelope are on stable storage; on any error nothing of the message is kept
// and the client must not be told it was accepted.
func (w *Writer) Commit(ctx context.Context) (Envelope, error) {
	if w.done {
		return Envelope{}, errors.New("queue: message already committed or aborted")
	}
	w.done = true
	s := w.s
	tmpData := w.f.Name()
	var err error
	if s.perFile {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	env := w.env
	env.Size, env.SHA256 = w.n, hex.EncodeToString(w.h.Sum(nil))
	tmpEnv := filepath.Join(s.dir, "tmp", env.ID+".json")
	if err == nil {
		err = writeJSON(tmpEnv, env, s.perFile)
	}
	// The data first: an envelope in msg/ always has its data beside it.
	if err == nil {
		err = os.Rename(tmpData, s.dataPath(env.ID))
	}
	if err == nil {
		err = os.Rename(tmpEnv, s.envPath(env.ID))
	}
	if err == nil {
		err = s.fs.sync(ctx)
	}
	if err != nil {
		for _, p := range []string{tmpData, tmpEnv, s.envPath(env.ID), s.dataPath(env.ID)} {
			_ = os.Remove(p)
		}
		return Envelope{}, fmt.Errorf("queue: storing message: %w", err)
	}
	s.commits.Add(1)
	s.mu.Lock()
	s.messages[env.ID] = msgInfo{size: env.Size, received: env.Received}
	s.bytes += env.Size
	s.mu.Unlock()
	return env, nil
}

// Abort drops the message being written.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	_ = os.Remove(w.f.Name())
}

// Update records env (recipients' states, the next attempt) durably.
func (s *Store) Update(ctx context.Context, env Envelope) error {
	tmp := filepath.Join(s.dir, "tmp", env.ID+".json."+newID())
	err := writeJSON(tmp, env, s.perFile)
	if err == nil {
		err = os.Rename(tmp, s.envPath(env.ID))
	}
	if err == nil {
		err = s.fs.sync(ctx)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("queue: updating %s: %w", env.ID, err)
	}
	return nil
}

// Remove deletes a message once nothing is left to deliver, durably: a message whose
// upstream 250 was recorded is not delivered again after a crash.
func (s *Store) Remove(ctx context.Context, id string) error {
	err := os.Remove(s.envPath(id))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("queue: removing %s: %w", id, err)
	}
	_ = os.Remove(s.dataPath(id))
	s.mu.Lock()
	if m, ok := s.messages[id]; ok {
		s.bytes -= m.size
		delete(s.messages, id)
	}
	s.mu.Unlock()
	if err := s.fs.sync(ctx); err != nil {
		return fmt.Errorf("queue: removing %s: %w", id, err)
	}
	return nil
}

// Data opens a message's data. Reading it to the end fails with ErrCorrupt when it is
// not the data that was committed.
func (s *Store) Data(env Envelope) (io.ReadCloser, error) {
	f, err := os.Open(s.dataPath(env.ID))
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	return &checkedReader{f: f, h: sha256.New(), want: env.SHA256, size: env.Size}, nil
}

// Size returns how many messages and bytes the store holds, without the walk over
// every message that Stats makes for the oldest: it is asked for each new message.
func (s *Store) Size() (messages int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.messages), s.bytes
}

// Stats returns the store's totals.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{Messages: len(s.messages), Bytes: s.bytes}
	for _, m := range s.messages {
		if st.Oldest.IsZero() || m.received.Before(st.Oldest) {
			st.Oldest = m.received
		}
	}
	s.mu.Unlock()
	st.Syncs, st.Commits = s.fs.syncs.Load(), s.commits.Load()
	return st
}

type checkedReader struct {
	f    *os.File
	h    hash.Hash
	want string
	size int64
	n    int64
}

func (r *checkedReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if err == io.EOF && (r.n != r.size || hex.EncodeToString(r.h.Sum(nil)) != r.want) {
		return n, ErrCorrupt
	}
	return n, err
}

func (r *checkedReader) Close() error { return r.f.Close() }

func writeJSON(path string, v any, fsync bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil && fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// newID is time-ordered (so a listing is oldest first) and unique across restarts.
func newID() string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%016x%s", time.Now().UnixNano(), hex.EncodeToString(r[:]))
}
