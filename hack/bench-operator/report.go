package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
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

	idle               idleResult // what the manager did during the idle period; zero without one
	convergedAfterIdle int
}

// missed names the targets the run did not meet.
func (r *report) missed() []string {
	var out []string
	if r.convergeTime > r.opts.target {
		out = append(out, fmt.Sprintf("converging took %v, more than -target %v", r.convergeTime.Round(time.Millisecond), r.opts.target))
	}
	if w := r.idle.writeCount(); w > 0 {
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
		r.idle.print(w, o.idle)
	}
	fmt.Fprintln(w, "targets")
	fmt.Fprintf(w, "  converge <= %-5v %s\n", o.target, okIf(r.convergeTime <= o.target))
	if o.idle > 0 {
		fmt.Fprintf(w, "  idle writes = 0  %s\n", okIf(r.idle.writeCount() == 0))
	}
}

func okIf(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

// clientReport holds the figures of the RelayClients phase.
type clientReport struct {
	opts options
	plan *clientPlan

	createTime, convergeTime time.Duration
	// converging is what the manager did from the start of creation until converged.
	converging counters
	// convergingWrites are its write requests meanwhile, from the audit log, and
	// auditErr why they could not be read.
	convergingWrites []loggedWrite
	auditErr         error
	// hashChanges is how often the relay's status.configHash changed until converged,
	// and idleHashChanges during the idle period.
	hashChanges, idleHashChanges int
	lastHashChange               time.Duration // since the start of creation
	// rssStart is the manager's RSS when the phase started, and peakReset whether
	// its peak was reset to it then (so hwm is the phase's own peak).
	rssStart, hwm, rss int64
	peakReset          bool
	bcryptCost         int // of the hash spot-checked

	idle            idleResult
	readyAfterIdle  int
	afterIdleReason string // why not all are, when some are not
}

func (r *clientReport) missed() []string {
	var out []string
	if w := r.idle.writeCount(); w > 0 {
		out = append(out, fmt.Sprintf("the manager made %.0f API writes in %v of idle after the RelayClients converged, not 0", w, r.opts.idle))
	}
	if r.opts.idle > 0 && (r.readyAfterIdle != r.opts.clients || r.afterIdleReason != "") {
		out = append(out, fmt.Sprintf("only %d/%d RelayClients were still Ready after the idle period %s", r.readyAfterIdle, r.opts.clients, r.afterIdleReason))
	}
	return out
}

func (r *clientReport) print(w io.Writer) {
	o, p := r.opts, r.plan
	fmt.Fprintf(w, "bench-operator: RelayClients\n")
	fmt.Fprintf(w, "  clients          %d in %d namespaces (%s each), a RelayDomain per namespace, all on SmtpRelay %s (TLS, namespaces from All)\n",
		o.clients, o.clientNamespaces, perNamespace(o.clients, o.clientNamespaces), p.relayKey)
	fmt.Fprintf(w, "  created          %d objects in %v (%d workers)\n", p.count(), r.createTime.Round(time.Millisecond), o.workers)
	fmt.Fprintf(w, "  converged        all %d clients Ready, with their Secrets and in relay.yaml, in %v from the start of creation (%.1f clients/s; polled every %v)\n",
		o.clients, r.convergeTime.Round(time.Millisecond), float64(o.clients)/r.convergeTime.Seconds(), pollInterval)
	fmt.Fprintf(w, "  config hash      changed %d times until converged (last %v after the start)", r.hashChanges, r.lastHashChange.Round(time.Millisecond))
	if o.idle > 0 {
		fmt.Fprintf(w, ", %d times while idle", r.idleHashChanges)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  manager CPU      %.1f s while converging (%.1f ms per client; bcrypt cost %d)\n",
		r.converging.cpu, 1000*r.converging.cpu/float64(o.clients), r.bcryptCost)
	fmt.Fprintf(w, "  manager requests while converging: writes:")
	for _, m := range writeMethods {
		fmt.Fprintf(w, " %s %.0f", m, r.converging.requests[m])
	}
	fmt.Fprintf(w, "; reads: GET %.0f\n", r.converging.requests["GET"])
	fmt.Fprintf(w, "                   reconciles:")
	for _, ctrl := range slices.Sorted(maps.Keys(r.converging.reconciles)) {
		fmt.Fprintf(w, " %s %.0f", ctrl, r.converging.reconciles[ctrl])
	}
	fmt.Fprintln(w)
	var busy []string
	for _, ctrl := range slices.Sorted(maps.Keys(r.converging.reconciles)) {
		if q, n := r.converging.queued[ctrl], r.converging.running[ctrl]; q > 0 || n > 0 {
			busy = append(busy, fmt.Sprintf("%s %.0f running, %.0f queued", ctrl, n, q))
		}
	}
	if len(busy) > 0 {
		fmt.Fprintf(w, "                   still at work when all were Ready: %s\n", strings.Join(busy, "; "))
	}
	if r.auditErr != nil {
		fmt.Fprintf(w, "                   which writes: the API server's audit log could not be read: %v\n", r.auditErr)
	} else {
		fmt.Fprintf(w, "                   which writes (the API server's audit log):\n")
		writeRequests(w, r.convergingWrites, time.Time{}, 20)
	}
	if r.peakReset {
		fmt.Fprintf(w, "  manager memory   peak RSS (VmHWM) during the phase %.1f MiB (RSS %.1f MiB at its start), RSS at the end %.1f MiB\n",
			mib(r.hwm), mib(r.rssStart), mib(r.rss))
	} else {
		fmt.Fprintf(w, "  manager memory   peak RSS (VmHWM, since the manager started) %.1f MiB, RSS at the end %.1f MiB\n", mib(r.hwm), mib(r.rss))
	}
	if o.idle > 0 {
		r.idle.print(w, o.idle)
	}
	fmt.Fprintln(w, "targets")
	if o.idle > 0 {
		fmt.Fprintf(w, "  idle writes = 0  %s\n", okIf(r.idle.writeCount() == 0))
		fmt.Fprintf(w, "  Ready after idle %s\n", okIf(r.readyAfterIdle == o.clients && r.afterIdleReason == ""))
	}
}

func perNamespace(n, namespaces int) string {
	if n%namespaces == 0 {
		return fmt.Sprint(n / namespaces)
	}
	return fmt.Sprintf("%d-%d", n/namespaces, n/namespaces+1)
}
