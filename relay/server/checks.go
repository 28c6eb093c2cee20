package server

import (
	"context"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kuberelay/kuberelay/relay/internal/jsonhttp"
	"github.com/kuberelay/kuberelay/relay/upstream"
)

// checkRoundTimeout bounds one round of upstream checks; each endpoint is bounded by
// its upstream's connect timeout, which the API caps far below this.
const checkRoundTimeout = 2 * time.Minute

// minCheckGap is the least time between the starts of two rounds.
const minCheckGap = 2 * time.Second

// UpstreamChecks is the last round of upstream checks (POST /upstreams/check): each
// upstream's endpoints connected to as a delivery would, without sending mail.
type UpstreamChecks struct {
	// ConfigHash is the configuration the round checked.
	ConfigHash string    `json:"configHash"`
	StartedAt  time.Time `json:"startedAt"`
	// FinishedAt is absent while the round runs.
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
	// Upstreams maps each upstream's name to its endpoints' results, in order.
	Upstreams map[string][]upstream.EndpointCheck `json:"upstreams,omitempty"`
}

// checker runs one round at a time and keeps the last.
type checker struct {
	mu      sync.Mutex
	last    *UpstreamChecks
	running bool
}

// StartChecks starts a round of checks of the named upstreams (all when none is
// named) on the current configuration, unless one runs or one started less than
// minCheckGap ago; it reports whether it started one. Whoever asks decides how often: the
// operator asks one pod of a fleet per interval, so a provider sees one check per
// endpoint per fleet.
func (s *Server) StartChecks(upstreams ...string) bool {
	c := &s.checks
	c.mu.Lock()
	// One round at a time, and not back to back, whoever asks.
	if c.running || c.last != nil && time.Since(c.last.StartedAt) < minCheckGap {
		c.mu.Unlock()
		return false
	}
	c.running = true
	g := s.current()
	round := &UpstreamChecks{ConfigHash: g.loaded.Hash, StartedAt: time.Now().UTC()}
	c.last = round
	c.mu.Unlock()

	// Not counted in s.wg: a shutdown does not wait for a round.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), checkRoundTimeout)
		defer cancel()
		names := make([]string, 0, len(g.pools))
		for n := range g.pools {
			if len(upstreams) == 0 || slices.Contains(upstreams, n) {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		results := map[string][]upstream.EndpointCheck{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, n := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := g.pools[n].Check(ctx)
				for _, e := range r {
					if e.Error != "" {
						s.log.Info("upstream check failed", "upstream", n, "endpoint", e.Endpoint, "error", e.Error)
					}
				}
				mu.Lock()
				results[n] = r
				mu.Unlock()
			}()
		}
		wg.Wait()
		done := time.Now().UTC()
		c.mu.Lock()
		round.Upstreams, round.FinishedAt = results, &done
		c.running = false
		c.mu.Unlock()
	}()
	return true
}

// Checks returns the last round (running or finished), or nil if none ran.
func (s *Server) Checks() *UpstreamChecks {
	c := &s.checks
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil {
		return nil
	}
	cp := *c.last
	return &cp
}

// ChecksHandler serves the upstream checks on the relay's HTTP port:
//
//	POST /upstreams/check[?upstream=NAME...]   start a round of those upstreams, or all
//	                                            (202; 409 while one runs or just ran)
//	GET  /upstreams/check   the last round
func (s *Server) ChecksHandler() http.Handler {
	mux := http.NewServeMux()
	reply := jsonhttp.Reply
	mux.HandleFunc("POST /upstreams/check", func(w http.ResponseWriter, r *http.Request) {
		if !s.StartChecks(r.URL.Query()["upstream"]...) {
			reply(w, http.StatusConflict, map[string]string{"error": "a round of checks is running or has just run: try again in a few seconds"})
			return
		}
		reply(w, http.StatusAccepted, s.Checks())
	})
	mux.HandleFunc("GET /upstreams/check", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, s.Checks())
	})
	return mux
}
