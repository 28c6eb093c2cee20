package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"time"
)

// writeMethods are the HTTP methods that change the cluster.
var writeMethods = []string{"POST", "PUT", "PATCH", "DELETE"}

// report holds the figures of one run.
type report struct {
	opts           options
	plan           *plan
	managerVersion string

	createTime, convergeTime time.Duration
	hwm, rss                 int64 // bytes

	idle               counters // requests made during the idle period; zero without one
	convergedAfterIdle int
}

func (r *report) idleWrites() float64 {
	var n float64
	for _, m := range writeMethods {
		n += r.idle.requests[m]
	}
	return n
}

// missed names the targets the run did not meet.
func (r *report) missed() []string {
	var out []string
	if r.convergeTime > r.opts.target {
		out = append(out, fmt.Sprintf("converging took %v, more than -target %v", r.convergeTime.Round(time.Millisecond), r.opts.target))
	}
	if w := r.idleWrites(); w > 0 {
		out = append(out, fmt.Sprintf("the manager made %.0f API writes in %v of idle, not 0", w, r.opts.idle))
	}
	if r.opts.idle > 0 && r.convergedAfterIdle != r.opts.relays {
		out = append(out, fmt.Sprintf("only %d/%d relays were still converged after the idle period", r.convergedAfterIdle, r.opts.relays))
	}
	return out
}

func (r *report) print(w io.Writer) {
	o, p := r.opts, r.plan
	fmt.Fprintf(w, "bench-operator: %s\n", r.managerVersion)
	fmt.Fprintf(w, "  relays           %d in %d namespaces, %d domains each (%d RelayDomains); %d with TLS and a user, %d DKIM keys\n",
		o.relays, o.namespaces, o.domains, o.relays*o.domains, p.authRelays, p.dkimDomains)
	fmt.Fprintf(w, "  created          %d objects in %v (%d workers)\n", p.count(), r.createTime.Round(time.Millisecond), o.workers)
	fmt.Fprintf(w, "  converged        all %d relays in %v from the start of creation (%.1f relays/s; polled every %v)\n",
		o.relays, r.convergeTime.Round(time.Millisecond), float64(o.relays)/r.convergeTime.Seconds(), pollInterval)
	fmt.Fprintf(w, "  manager memory   peak RSS (VmHWM) %.1f MiB, RSS at the end %.1f MiB\n", mib(r.hwm), mib(r.rss))
	if o.idle > 0 {
		fmt.Fprintf(w, "  idle %-11v writes:", o.idle)
		for _, m := range writeMethods {
			fmt.Fprintf(w, " %s %.0f", m, r.idle.requests[m])
		}
		fmt.Fprintf(w, "; reads: GET %.0f (watches count as GETs)\n", r.idle.requests["GET"])
		fmt.Fprintf(w, "                   reconciles:")
		if len(r.idle.reconciles) == 0 {
			fmt.Fprintf(w, " none counted")
		}
		for _, ctrl := range slices.Sorted(maps.Keys(r.idle.reconciles)) {
			fmt.Fprintf(w, " %s %.0f", ctrl, r.idle.reconciles[ctrl])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "targets")
	fmt.Fprintf(w, "  converge <= %-5v %s\n", o.target, okIf(r.convergeTime <= o.target))
	if o.idle > 0 {
		fmt.Fprintf(w, "  idle writes = 0  %s\n", okIf(r.idleWrites() == 0))
	}
}

func okIf(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}
