package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// errClosed fails the commits that come after Close.
var errClosed = errors.New("queue is closed")

// syncer flushes the spool's filesystem for every commit waiting at the time, with
// one syncfs(2): while one flush runs, the commits that arrive wait for the next,
// which serves them all (group commit).
type syncer struct {
	dir *os.File
	// flush makes everything written so far durable; syncfs of dir's filesystem, or
	// a stand-in in tests.
	flush func() error
	reqs  chan chan error
	syncs atomic.Int64

	once sync.Once
	done chan struct{}
}

func newSyncer(dir string, perFile bool) (*syncer, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	s := &syncer{dir: d, reqs: make(chan chan error, 1024), done: make(chan struct{})}
	s.flush = func() error { return unix.Syncfs(int(d.Fd())) }
	if perFile {
		// Each file was fsynced by its writer: what is left is the directory entries.
		s.flush = d.Sync
	}
	go s.run()
	return s, nil
}

func (s *syncer) run() {
	for {
		var batch []chan error
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
		case <-s.done:
			return
		}
	more:
		for {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		err := s.flush()
		s.syncs.Add(1)
		for _, r := range batch {
			r <- err
		}
	}
}

// sync returns once everything written before the call is durable.
func (s *syncer) sync(ctx context.Context) error {
	ch := make(chan error, 1)
	select {
	case s.reqs <- ch:
	case <-s.done:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-ch:
		return err
	case <-s.done:
		return errClosed
	case <-ctx.Done():
		// The flush may still complete; the caller treats the commit as failed, which
		// is safe (the client retries; the message might be delivered twice).
		return ctx.Err()
	}
}

func (s *syncer) close() {
	s.once.Do(func() {
		close(s.done)
		s.dir.Close()
	})
}
