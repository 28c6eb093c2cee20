package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// idleResult is what the manager did during an idle period.
type idleResult struct {
	// requests are its API requests and reconciles, from its metrics.
	requests counters
	// writes are its write requests, from the API server's audit log, and auditErr
	// why they could not be read.
	writes   []loggedWrite
	auditErr error
	start    time.Time // of the idle period
}

// measureIdle waits d and returns what the manager did meanwhile.
func measureIdle(ctx context.Context, mgr *manager, cp *controlPlane, d time.Duration) (idleResult, error) {
	var res idleResult
	before, err := mgr.scrape(ctx)
	if err != nil {
		return res, mgr.withLog(err)
	}
	offset := cp.auditOffset()
	res.start = time.Now()
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-mgr.Done():
		return res, mgr.withLog(fmt.Errorf("the manager exited during the idle period: %v", mgr.Err()))
	case <-time.After(d):
	}
	after, err := mgr.scrape(ctx)
	if err != nil {
		return res, mgr.withLog(err)
	}
	res.requests = after.sub(before)
	res.writes, res.auditErr = cp.writesSince(offset, mgr.agent)
	return res, nil
}

// writeCount is how many write requests the manager made, from its metrics.
func (r idleResult) writeCount() float64 {
	var n float64
	for _, m := range writeMethods {
		n += r.requests.requests[m]
	}
	return n
}

// print writes the idle period's lines of a report and, when the manager wrote,
// which requests it made.
func (r idleResult) print(w io.Writer, d time.Duration) {
	fmt.Fprintf(w, "  idle %-11v writes:", d)
	for _, m := range writeMethods {
		fmt.Fprintf(w, " %s %.0f", m, r.requests.requests[m])
	}
	fmt.Fprintf(w, "; reads: GET %.0f (watches count as GETs)\n", r.requests.requests["GET"])
	fmt.Fprintf(w, "                   reconciles:")
	if len(r.requests.reconciles) == 0 {
		fmt.Fprintf(w, " none counted")
	}
	for _, ctrl := range slices.Sorted(maps.Keys(r.requests.reconciles)) {
		fmt.Fprintf(w, " %s %.0f", ctrl, r.requests.reconciles[ctrl])
	}
	fmt.Fprintln(w)
	if r.writeCount() == 0 && len(r.writes) == 0 {
		return
	}
	switch {
	case r.auditErr != nil:
		fmt.Fprintf(w, "                   which writes: the API server's audit log could not be read: %v\n", r.auditErr)
	case len(r.writes) == 0:
		fmt.Fprintf(w, "                   which writes: none in the API server's audit log\n")
	default:
		fmt.Fprintf(w, "                   which writes (the API server's audit log; when into the idle period):\n")
		writeRequests(w, r.writes, r.start, 10)
	}
}

// writeRequests lists requests grouped, the most frequent first, at most limit
// lines: by verb and resource when since is zero, else by object with the times they
// were answered after since.
func writeRequests(w io.Writer, writes []loggedWrite, since time.Time, limit int) {
	counts, times := map[string]int{}, map[string][]string{}
	for _, lw := range writes {
		if since.IsZero() {
			counts[fmt.Sprintf("%s %s -> %d", lw.verb, lw.resource, lw.code)]++
			continue
		}
		k := lw.String()
		counts[k]++
		if len(times[k]) < 5 {
			times[k] = append(times[k], fmt.Sprintf("+%v", lw.at.Sub(since).Round(10*time.Millisecond)))
		}
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		if d := counts[b] - counts[a]; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	for i, k := range keys {
		if i == limit {
			fmt.Fprintf(w, "                     ... and %d more\n", len(keys)-i)
			break
		}
		line := k
		if t := times[k]; len(t) > 0 {
			line += " (at " + strings.Join(t, ", ")
			if counts[k] > len(t) {
				line += ", ..."
			}
			line += ")"
		}
		fmt.Fprintf(w, "                     %5d  %s\n", counts[k], line)
	}
}
