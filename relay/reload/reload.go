// Package reload keeps the relay's configuration current. It watches the config and
// secrets directories (not the files: the kubelet updates a mounted ConfigMap or Secret
// by swapping the "..data" symlink), re-reads them on every change and on a slow timer,
// and hands each new valid configuration to the relay. A configuration that does not
// load is logged and counted, and the last good one stays in use.
package reload

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"

	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/metrics"
)

// Watcher reloads the configuration when its directories change.
type Watcher struct {
	ConfigDir  string
	SecretsDir string
	// Interval is the slow timer that re-reads even without an event. Default 30s.
	Interval time.Duration
	// Debounce gathers the burst of events one update makes. Default 50ms.
	Debounce time.Duration
	Log      logr.Logger
	Metrics  *metrics.Metrics
	// Apply receives each configuration that loads and differs from the current one.
	Apply func(*config.Loaded)

	mu      sync.Mutex
	hash    string
	lastErr error
	lastAt  time.Time
}

// Status is what the watcher last saw.
type Status struct {
	// Hash is the hash of the configuration in use.
	Hash string
	// LastError is the error of the last load if it failed, else nil.
	LastError error
	// LastAttempt is when the directories were last read.
	LastAttempt time.Time
}

// Load reads the configuration once, for start-up. It records the hash so that Run
// only applies later changes.
func (w *Watcher) Load() (*config.Loaded, error) {
	l, err := config.Load(w.ConfigDir, w.SecretsDir)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastAt = time.Now()
	w.lastErr = err
	if err != nil {
		return nil, err
	}
	w.hash = l.Hash
	return l, nil
}

// Status returns what the watcher last saw.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Status{Hash: w.hash, LastError: w.lastErr, LastAttempt: w.lastAt}
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	if w.Interval == 0 {
		w.Interval = 30 * time.Second
	}
	if w.Debounce == 0 {
		w.Debounce = 50 * time.Millisecond
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer fw.Close()
	dirs := []string{w.ConfigDir}
	if w.SecretsDir != "" && w.SecretsDir != w.ConfigDir {
		dirs = append(dirs, w.SecretsDir)
	}
	for _, d := range dirs {
		if err := fw.Add(d); err != nil {
			return err
		}
	}
	// A change made between Load and the watches being set up raised no event: look once
	// now that they are.
	w.reload("start")
	tick := time.NewTicker(w.Interval)
	defer tick.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
			_ = ev
			debounce.Reset(w.Debounce)
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("file watcher closed")
			}
			// Events may have been lost (queue overflow): re-read now rather than wait
			// for the timer.
			w.Log.Error(err, "watching configuration directories")
			debounce.Reset(w.Debounce)
		case <-debounce.C:
			w.reload("change")
		case <-tick.C:
			w.reload("timer")
		}
	}
}

func (w *Watcher) reload(trigger string) {
	l, err := config.Load(w.ConfigDir, w.SecretsDir)
	w.mu.Lock()
	w.lastAt = time.Now()
	prevErr := w.lastErr
	w.lastErr = err
	same := err == nil && l.Hash == w.hash
	if err == nil {
		w.hash = l.Hash
	}
	w.mu.Unlock()
	if err != nil {
		// Counted on every attempt; logged only when the error changes, so the slow
		// timer does not repeat the same lines.
		w.Metrics.ConfigReloads.WithLabelValues("failure").Inc()
		if prevErr == nil || prevErr.Error() != err.Error() {
			w.Log.Error(err, "configuration not loaded; keeping the last good one", "trigger", trigger)
		}
		return
	}
	if same {
		return
	}
	w.Metrics.ConfigReloads.WithLabelValues("success").Inc()
	w.Log.Info("configuration reloaded", "hash", l.Hash, "trigger", trigger)
	w.Apply(l)
}
