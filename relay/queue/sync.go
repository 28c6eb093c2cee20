package queue

import (
	"context"
	"errors"
	"sync"
	"time"
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
	// lazy asks for a flush within lazyDelay, for changes nothing waits on.
	lazy chan struct{}

	once    sync.Once
	done    chan struct{}
	stopped chan struct{}
}

func newSyncer(flush func() error) *syncer {
	s := &syncer{flush: flush, reqs: make(chan chan error, 1024), lazy: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	go s.run()
	return s
}

// lazyDelay bounds how long a change nothing waits on (a delivered message's done
// byte) stays unflushed when no commit's flush carries it sooner.
const lazyDelay = time.Second

func (s *syncer) run() {
	defer close(s.stopped)
	lazy := time.NewTimer(lazyDelay)
	lazy.Stop()
	pending := false
	for {
		var batch []chan error
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
		case <-s.lazy:
			if !pending {
				pending = true
				lazy.Reset(lazyDelay)
			}
			continue
		case <-lazy.C:
		case <-s.done:
			// Whatever was changed without waiting (a removal) is flushed, pending or
			// not: flush does nothing when nothing changed.
			_ = s.flush()
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
		// Every flush carries the lazy changes too.
		pending = false
		lazy.Stop()
		err := s.flush()
		for _, r := range batch {
			r <- err
		}
	}
}

// later asks for a flush within lazyDelay without waiting for it.
func (s *syncer) later() {
	select {
	case s.lazy <- struct{}{}:
	default:
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
		// A flush under way when Close came still answers: its verdict stands.
		<-s.stopped
		select {
		case err := <-ch:
			return err
		default:
			return errClosed
		}
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
