package queue

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// errClosed fails the commits that come after Close.
var errClosed = errors.New("queue is closed")

// syncer runs the store's flush for every commit waiting at the time: while one
// flush runs, the commits that arrive wait for the next, which serves them all
// (group commit).
type syncer struct {
	// flush makes everything written so far durable (a stand-in in tests).
	flush func() error
	reqs  chan chan error
	syncs atomic.Int64

	once    sync.Once
	done    chan struct{}
	stopped chan struct{}
}

func newSyncer(flush func() error) *syncer {
	s := &syncer{flush: flush, reqs: make(chan chan error, 1024), done: make(chan struct{}), stopped: make(chan struct{})}
	go s.run()
	return s
}

func (s *syncer) run() {
	defer close(s.stopped)
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
	// The flush running now ends before the files it flushes are closed.
	s.once.Do(func() { close(s.done) })
	<-s.stopped
}
