// Package ratelimit counts what one user, sender domain or upstream sends through a
// relay process: messages and recipients in windows aligned to the clock (the minute,
// the hour, the UTC day), as providers count their quotas, and concurrent sessions.
// A fleet-wide budget is split by the operator: each pod enforces its share, with no
// state shared between pods.
//
// Counts survive configuration reloads (the Table belongs to the server); a changed
// limit applies to what was already counted in the current window.
package ratelimit

import (
	"sync"
	"time"
)

// Kind is what a limit is keyed by.
type Kind uint8

const (
	User Kind = iota
	Domain
	Upstream
)

func (k Kind) String() string {
	switch k {
	case User:
		return "user"
	case Domain:
		return "domain"
	}
	return "upstream"
}

// Window is a counting window.
type Window uint8

const (
	Minute Window = iota
	Hour
	Day
	windows
)

func (w Window) String() string {
	switch w {
	case Minute:
		return "minute"
	case Hour:
		return "hour"
	}
	return "day"
}

// Unit is what is counted.
type Unit uint8

const (
	Messages Unit = iota
	Recipients
	units
)

func (u Unit) String() string {
	if u == Messages {
		return "messages"
	}
	return "recipients"
}

// Limits are the most of each unit per window; 0 is no limit.
type Limits [units][windows]int64

// Any reports whether some limit is set.
func (l *Limits) Any() bool {
	for _, u := range l {
		for _, n := range u {
			if n > 0 {
				return true
			}
		}
	}
	return false
}

// Key names what is counted.
type Key struct {
	Kind Kind
	Name string
}

// Request is one Take's part: n units against key's limits.
type Request struct {
	Key    Key
	Limits *Limits
}

// Refusal says which limit a Take hit.
type Refusal struct {
	Key    Key
	Unit   Unit
	Window Window
	Limit  int64
}

type counter struct {
	window int64 // the window's number since the epoch
	n      int64
}

type entry struct {
	counts   [units][windows]counter
	sessions int
}

// Table holds the counts. It is safe for concurrent use; the zero Table is empty.
type Table struct {
	mu      sync.Mutex
	entries map[Key]*entry
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{entries: map[Key]*entry{}} }

func (t *Table) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

func windowOf(now time.Time, w Window) int64 {
	s := now.Unix()
	switch w {
	case Minute:
		return s / 60
	case Hour:
		return s / 3600
	}
	return s / 86400
}

func (t *Table) entry(k Key) *entry {
	if t.entries == nil {
		t.entries = map[Key]*entry{}
	}
	e := t.entries[k]
	if e == nil {
		e = &entry{}
		t.entries[k] = e
	}
	return e
}

// Take counts n units against every request's limits, all or none: when one limit
// would be passed, nothing is counted and the Refusal says which.
func (t *Table) Take(u Unit, n int64, reqs ...Request) *Refusal {
	now := t.now()
	var cur [windows]int64
	for w := range windows {
		cur[w] = windowOf(now, Window(w))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range reqs {
		if r.Limits == nil {
			continue
		}
		e := t.entries[r.Key]
		for w, lim := range r.Limits[u] {
			if lim <= 0 {
				continue
			}
			used := int64(0)
			if e != nil && e.counts[u][w].window == cur[w] {
				used = e.counts[u][w].n
			}
			if used+n > lim {
				return &Refusal{Key: r.Key, Unit: u, Window: Window(w), Limit: lim}
			}
		}
	}
	for _, r := range reqs {
		if r.Limits == nil || !r.Limits.Any() {
			continue
		}
		e := t.entry(r.Key)
		for w := range windows {
			c := &e.counts[u][w]
			if c.window != cur[w] {
				c.window, c.n = cur[w], 0
			}
			c.n += n
		}
	}
	return nil
}

// Used returns what key has used of unit in each window now.
func (t *Table) Used(k Key, u Unit) [windows]int64 {
	now := t.now()
	var out [windows]int64
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entries[k]; e != nil {
		for w := range windows {
			if c := e.counts[u][w]; c.window == windowOf(now, Window(w)) {
				out[w] = c.n
			}
		}
	}
	return out
}

// Keys lists the keys counted.
func (t *Table) Keys() []Key {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Key, 0, len(t.entries))
	for k := range t.entries {
		out = append(out, k)
	}
	return out
}

// OpenSession counts a session of key against max (0: no limit) and reports whether
// it may go on; a true answer must be matched by CloseSession.
func (t *Table) OpenSession(k Key, max int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(k)
	if max > 0 && e.sessions >= max {
		return false
	}
	e.sessions++
	return true
}

// CloseSession ends a session OpenSession let go on.
func (t *Table) CloseSession(k Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entries[k]; e != nil && e.sessions > 0 {
		e.sessions--
	}
}
