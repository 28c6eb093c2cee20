// Command bench-relay measures the relay against Postfix's smtp-sink: it sends
// messages with smtp-source (and, for STARTTLS and latency, with a Go client) straight
// to smtp-sink and through a relay whose only upstream is that smtp-sink, in the same
// run, and prints the rates, their ratio, the latency from the final "." to the 250,
// and what an idle client connection costs the relay in memory. The "postfix" rows
// put a real Postfix where the Queue-mode relay is, a private instance (its own
// configuration, queue and log in the work directory, relaying to smtp-sink) on the
// same filesystem, for comparison; they need root (Postfix's master starts as root) and
// are skipped with a note without it. It prints figures and never fails on them; it
// fails only when it cannot run.
//
//	make bench-relay                      # builds bin/relay, then:
//	go run ./hack/bench-relay -relay bin/relay [-n 2000] [-sessions 1,20] [-idle 1000]
//
// Needs smtp-sink and smtp-source (Debian package postfix). Everything listens on and
// connects to 127.0.0.1 only. The relay runs as a child process on a generated
// configuration published with relay/kubeletdir into a temporary directory, which is
// left in place with the relay's log.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
	"github.com/kuberelay/kuberelay/internal/kubeletdir"
	"github.com/kuberelay/kuberelay/relay/config"
)

const (
	msgSize  = 4096
	ratioMin = 0.5
	idleMax  = 64.0 // KiB per idle connection
)

type options struct {
	n, n1, idle, upstreamConns, runs int
	sessions                         []int
	relay                            string
	reconnect, floor                 bool
}

func main() {
	var o options
	var sessions string
	flag.IntVar(&o.n, "n", 2000, "messages per run")
	flag.IntVar(&o.runs, "runs", 5, "runs per configuration; rates are the median, latencies pooled over the runs")
	flag.IntVar(&o.n1, "n1", 0, "messages per run at 1 session (0: n/4)")
	flag.StringVar(&sessions, "sessions", "1,20", "comma-separated session counts")
	flag.IntVar(&o.idle, "idle", 1000, "idle connections opened to measure their memory cost (0: skip)")
	flag.StringVar(&o.relay, "relay", "bin/relay", "relay binary (built into a temporary directory if missing)")
	flag.IntVar(&o.upstreamConns, "upstream-connections", 40, "upstream maxConnections in the relay's configuration")
	flag.BoolVar(&o.floor, "floor", true, "also run smtp-source through hack/bench-relay/floor, a bare Go forwarder with the relay's wire pattern and none of its work, for scale")
	flag.BoolVar(&o.reconnect, "reconnect", false, "smtp-source opens a new connection per message (default: -d, all messages of a session over one connection, like the Go client)")
	flag.Parse()
	for f := range strings.SplitSeq(sessions, ",") {
		s, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || s < 1 || s > 1000 {
			fmt.Fprintf(os.Stderr, "bench-relay: -sessions: %q is not a session count (1-1000)\n", f)
			os.Exit(2)
		}
		o.sessions = append(o.sessions, s)
	}
	if o.n < 1 || o.n1 < 0 || o.idle < 0 || o.idle > 20000 || o.upstreamConns < 1 || o.runs < 1 || o.runs > 50 {
		fmt.Fprintln(os.Stderr, "bench-relay: -n must be >= 1, -n1 >= 0, -idle 0-20000, -upstream-connections >= 1, -runs 1-50")
		os.Exit(2)
	}
	if o.n1 == 0 {
		o.n1 = max(o.n/4, 1)
	}

	// Stop every child on ctrl-C or SIGTERM, then leave.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "\nbench-relay: %v: stopping children\n", s)
		children.stopAll()
		os.Exit(130)
	}()

	code := 0
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "bench-relay: %v\n", err)
		code = 1
	}
	children.stopAll()
	os.Exit(code)
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "  .. "+format+"\n", args...)
}

// row is one line of the rate table.
type row struct {
	sessions, msgs int
	mode           string
	direct, relay  float64 // msg/s; 0 when failed
	directErr      error
	relayErr       error
	relayLat       []time.Duration // sorted; nil for smtp-source
	relayCPU       *acc
	// reference: the bare Go forwarder (hack/bench-relay/floor) in the relay's place,
	// for scale; no target applies.
	reference bool
	// queue: the Queue-mode relay; flushesPerMsg is its filesystem flushes per
	// message stored (group commit), 0 where not measured.
	queue         bool
	flushesPerMsg float64
	// postfix: the private Postfix in the queue relay's place.
	postfix bool
	// limits: the pass-through relay with 1000 users and rate limits; its target is
	// against the plain relay's rate (printLimitsTargets).
	limits bool
}

func (r row) ratio() (float64, bool) {
	if r.direct <= 0 || r.relay <= 0 {
		return 0, false
	}
	return r.relay / r.direct, true
}

// latRow is one line of the latency table.
type latRow struct {
	sessions, msgs int
	target         string
	res            *acc
}

func run(o options) error {
	ctx := context.Background()
	sinkPath, err := findTool("smtp-sink")
	if err != nil {
		return err
	}
	sourcePath, err := findTool("smtp-source")
	if err != nil {
		return err
	}
	if err := raiseNoFile(uint64(2*o.idle + 1024)); err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "bench-relay-")
	if err != nil {
		return err
	}
	relayBin, built, err := ensureRelayBinary(o.relay, tmp)
	if err != nil {
		return err
	}
	var ports [9]int
	for i := range ports {
		if ports[i], err = proc.FreePort(); err != nil {
			return err
		}
	}
	sinkPort, plainPort, tlsPort, httpPort, floorPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	floorAddr := fmt.Sprintf("127.0.0.1:%d", floorPort)
	sinkAddr := fmt.Sprintf("127.0.0.1:%d", sinkPort)
	plainAddr := fmt.Sprintf("127.0.0.1:%d", plainPort)
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	qPlainAddr := fmt.Sprintf("127.0.0.1:%d", ports[5])
	qHTTPAddr := fmt.Sprintf("127.0.0.1:%d", ports[6])

	sinkLog := filepath.Join(tmp, "smtp-sink.log")
	if _, err := startSink(sinkPath, sinkPort, sinkLog); err != nil {
		return err
	}

	var floor *proc.Child
	if o.floor {
		if floor, err = startFloor(tmp, floorAddr, sinkAddr); err != nil {
			return err
		}
	}

	certPEM, keyPEM, clientTLS, err := selfSigned()
	if err != nil {
		return err
	}
	configDir, secretsDir := filepath.Join(tmp, "config"), filepath.Join(tmp, "secrets")
	maxConns := max(5000, 2*o.idle+100)
	yaml := relayConfig(plainPort, tlsPort, sinkPort, o.upstreamConns, maxConns)
	if err := kubeletdir.Write(configDir, map[string][]byte{config.FileName: []byte(yaml)}); err != nil {
		return err
	}
	if err := kubeletdir.Write(secretsDir, map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM}); err != nil {
		return err
	}

	relayLog := filepath.Join(tmp, "relay.log")
	logf, err := os.Create(relayLog)
	if err != nil {
		return err
	}
	defer logf.Close()
	version, _ := exec.Command(relayBin, "--version").Output()
	cmd := exec.Command(relayBin, "--config-dir", configDir, "--secrets-dir", secretsDir,
		"--http-address", httpAddr, "--spool-dir", tmp, "--shutdown-grace", "5s", "--reload-interval", "10m")
	cmd.Stdout, cmd.Stderr = logf, logf
	relay, err := children.start("relay", cmd)
	if err != nil {
		return err
	}
	if err := proc.WaitReady(ctx, relay, "http://"+httpAddr+"/readyz", 15*time.Second); err != nil {
		return fmt.Errorf("%w\nrelay log %s ends:\n%s", err, relayLog, proc.TailFile(relayLog, 20))
	}
	// A second relay in Queue mode, its spool in the work directory: the "queue" rows.
	qConfigDir := filepath.Join(tmp, "queue-config")
	qYAML := strings.Replace(relayConfig(ports[5], 0, sinkPort, o.upstreamConns, maxConns), "- name: starttls\n  address: 127.0.0.1:0\n  tls: STARTTLS\n", "", 1) +
		fmt.Sprintf("delivery:\n  mode: Queue\n  queue:\n    dir: %s\n", filepath.Join(tmp, "queue"))
	if err := kubeletdir.Write(qConfigDir, map[string][]byte{config.FileName: []byte(qYAML)}); err != nil {
		return err
	}
	qLog := filepath.Join(tmp, "relay-queue.log")
	qlogf, err := os.Create(qLog)
	if err != nil {
		return err
	}
	defer qlogf.Close()
	qcmd := exec.Command(relayBin, "--config-dir", qConfigDir, "--secrets-dir", secretsDir,
		"--http-address", qHTTPAddr, "--spool-dir", tmp, "--shutdown-grace", "5s", "--reload-interval", "10m")
	qcmd.Stdout, qcmd.Stderr = qlogf, qlogf
	qrelay, err := children.start("relay-queue", qcmd)
	if err != nil {
		return err
	}
	if err := proc.WaitReady(ctx, qrelay, "http://"+qHTTPAddr+"/readyz", 15*time.Second); err != nil {
		return fmt.Errorf("%w\nqueue relay log %s ends:\n%s", err, qLog, proc.TailFile(qLog, 20))
	}
	// A third relay, pass-through with 1000 users and rate limits: the "limits" rows.
	lAddr, lHTTP := fmt.Sprintf("127.0.0.1:%d", ports[7]), fmt.Sprintf("127.0.0.1:%d", ports[8])
	lrelay, lLog, err := startLimitsRelay(relayBin, tmp, ports[7], ports[8], sinkPort, o.upstreamConns, maxConns, certPEM, keyPEM)
	if err != nil {
		return err
	}
	if err := proc.WaitReady(ctx, lrelay, "http://"+lHTTP+"/readyz", 15*time.Second); err != nil {
		return fmt.Errorf("%w\nlimits relay log %s ends:\n%s", err, lLog, proc.TailFile(lLog, 20))
	}
	pf, pfNote := startPostfix(tmp, sinkAddr, max(100, slices.Max(o.sessions)), o.upstreamConns)

	fmt.Printf("bench-relay: %s", strings.TrimSpace(string(version))+"\n")
	if built {
		fmt.Printf("  relay binary   %s (built: %s did not exist)\n", relayBin, o.relay)
	} else {
		fmt.Printf("  relay binary   %s\n", relayBin)
	}
	fmt.Printf("  work dir       %s (config/, secrets/, left in place)\n", tmp)
	fmt.Printf("  relay log      %s\n", relayLog)
	fmt.Printf("  relay          pid %d, plain %s, STARTTLS %s, http %s; upstream maxConnections %d, limits.maxConnections %d\n",
		relay.Pid(), plainAddr, tlsAddr, httpAddr, o.upstreamConns, maxConns)
	fmt.Printf("  smtp-sink      %s (%s -m 1024 ... 1024)\n", sinkAddr, sinkPath)
	if pf != nil {
		fmt.Printf("  postfix        %s, Postfix %s, pid %d, private instance in %s (etc/, queue/, maillog), relaying to smtp-sink\n",
			pf.addr, pf.version, pf.master.Pid(), pf.dir)
	} else {
		fmt.Printf("  postfix        %s\n", pfNote)
	}
	fmt.Printf("  host           %d CPUs shared by the load generators, the relay and smtp-sink\n\n", numCPU())

	// Idle connections first, on a relay that has not carried mail yet, so that heap
	// left over from the load runs does not absorb (and hide) their cost.
	var idle []idleCost
	if o.idle > 0 {
		idle = measureIdle(ctx, relay.Pid(), httpAddr, plainAddr, tlsAddr, clientTLS, o.idle)
	}
	if relay.Exited() {
		return fmt.Errorf("relay exited during the idle-connection test: %v\nrelay log %s ends:\n%s", relay.Err(), relayLog, proc.TailFile(relayLog, 20))
	}

	msg := message(msgSize)
	progress("warm-up: 200 messages over 20 sessions, direct and through the relay (plain and STARTTLS), not counted")
	relayedExpected := 0
	for _, w := range []struct {
		addr string
		tls  *tls.Config
	}{{sinkAddr, nil}, {plainAddr, nil}, {tlsAddr, clientTLS}} {
		r := generate(ctx, w.addr, w.tls, 20, 200, msg)
		if r.firstErr != nil {
			progress("warm-up to %s: %d sent, %d failed: %v", w.addr, r.sent, r.failed, r.firstErr)
		}
		if w.addr != sinkAddr {
			relayedExpected += r.sent
		}
	}
	if pf != nil {
		progress("warm-up: 200 messages over 20 sessions to postfix, until delivered, not counted")
		pf.warmUp(ctx, msg)
	}

	pid := relay.Pid()
	var rows []row
	var lats []latRow
	for _, s := range o.sessions {
		n := o.n
		if s == 1 {
			n = o.n1
		}
		n = max(n, s)
		srcArgs := func(addr string) []string {
			a := []string{"-s", strconv.Itoa(s), "-m", strconv.Itoa(n), "-l", strconv.Itoa(msgSize),
				"-f", sender, "-t", recipient, "-M", heloName}
			if !o.reconnect {
				a = append(a, "-d")
			}
			return append(a, addr)
		}
		var srcDirect, srcRelay, srcFloor, goDirect, goRelay, goTLS, srcQueued, srcDelivered, pfStored, pfDelivered, srcLimits acc
		var flushes, commits float64
		for rep := range o.runs {
			// Direct and relayed runs alternate, so that drift on the host hits both.
			if rep == 0 {
				progress("smtp-source %s   (direct)", strings.Join(srcArgs(sinkAddr), " "))
				progress("smtp-source %s   (relay, plain listener)", strings.Join(srcArgs(plainAddr), " "))
				if pf != nil {
					progress("smtp-source %s   (postfix)", strings.Join(srcArgs(pf.addr), " "))
				}
			}
			progress("%d sessions, %d messages, run %d of %d: smtp-source direct, relay; Go client direct, relay, relay STARTTLS", s, n, rep+1, o.runs)
			d, err := runSource(ctx, sourcePath, srcArgs(sinkAddr))
			srcDirect.addSource(n, d, err)
			c0 := cpuTime(pid)
			d, err = runSource(ctx, sourcePath, srcArgs(plainAddr))
			srcRelay.addSource(n, d, err)
			srcRelay.addCPU(c0, cpuTime(pid))
			if floor != nil {
				fpid := floor.Pid()
				c0 = cpuTime(fpid)
				d, err = runSource(ctx, sourcePath, srcArgs(floorAddr))
				srcFloor.addSource(n, d, err)
				srcFloor.addCPU(c0, cpuTime(fpid))
			}
			// Queue mode: the rate of 250s (stored durably), then of delivery, until the
			// queue is empty again.
			m0, _ := scrape(qHTTPAddr)
			c0 = cpuTime(qrelay.Pid())
			t0 := time.Now()
			d, err = runSource(ctx, sourcePath, srcArgs(qPlainAddr))
			srcQueued.addSource(n, d, err)
			srcQueued.addCPU(c0, cpuTime(qrelay.Pid()))
			if err == nil {
				if err := drained(qHTTPAddr, 2*time.Minute); err != nil {
					srcDelivered.addSource(n, 0, err)
				} else {
					srcDelivered.addSource(n, time.Since(t0), nil)
				}
			}
			if m1, err := scrape(qHTTPAddr); err == nil && m0 != nil {
				flushes += m1["kuberelay_queue_flushes_total"] - m0["kuberelay_queue_flushes_total"]
				commits += m1["kuberelay_queue_commits_total"] - m0["kuberelay_queue_commits_total"]
			}
			c0 = cpuTime(lrelay.Pid())
			d, err = runSource(ctx, sourcePath, srcArgs(lAddr))
			srcLimits.addSource(n, d, err)
			srcLimits.addCPU(c0, cpuTime(lrelay.Pid()))
			if pf != nil {
				pf.measure(ctx, sourcePath, srcArgs(pf.addr), n, &pfStored, &pfDelivered)
			}
			goDirect.addGen(n, generate(ctx, sinkAddr, nil, s, n, msg))
			c0 = cpuTime(pid)
			goRelay.addGen(n, generate(ctx, plainAddr, nil, s, n, msg))
			goRelay.addCPU(c0, cpuTime(pid))
			c0 = cpuTime(pid)
			goTLS.addGen(n, generate(ctx, tlsAddr, clientTLS, s, n, msg))
			goTLS.addCPU(c0, cpuTime(pid))
			relayedExpected += srcRelay.lastSent + goRelay.lastSent + goTLS.lastSent
			if relay.Exited() {
				return fmt.Errorf("relay exited during the load runs: %v\nrelay log %s ends:\n%s", relay.Err(), relayLog, proc.TailFile(relayLog, 20))
			}
		}
		rows = append(rows,
			makeRow(s, n, "plain, smtp-source", &srcDirect, &srcRelay),
			makeRow(s, n, "plain, Go client", &goDirect, &goRelay),
			makeRow(s, n, "relay client-TLS vs direct plain, Go", &goDirect, &goTLS))
		if floor != nil {
			r := makeRow(s, n, "floor, smtp-source", &srcDirect, &srcFloor)
			r.reference = true
			rows = append(rows, r)
		}
		q := makeRow(s, n, "queue, stored, smtp-source", &srcDirect, &srcQueued)
		q.queue, q.flushesPerMsg = true, flushes/max(commits, 1)
		dq := makeRow(s, n, "queue, delivered, smtp-source", &srcDirect, &srcDelivered)
		dq.queue = true
		dq.relayCPU = nil
		rows = append(rows, q, dq)
		lr := makeRow(s, n, limitsMode, &srcDirect, &srcLimits)
		lr.limits = true
		rows = append(rows, lr)
		if pf != nil {
			rows = append(rows, postfixRows(s, n, &srcDirect, &pfStored, &pfDelivered)...)
		}
		lats = append(lats,
			latRow{s, n, "direct to smtp-sink, plain", &goDirect},
			latRow{s, n, "relay, plain", &goRelay},
			latRow{s, n, "relay, client STARTTLS", &goTLS})
	}

	final, _ := scrape(httpAddr)
	fmt.Println()
	printRates(rows, o)
	printLatency(lats)
	printIdle(idle)
	printTargets(rows, idle, pfNote)
	printRelayCounters(final, relayedExpected)
	if pf != nil {
		pf.printLog()
	}

	progress("stopping the relay (SIGTERM)")
	killed := relay.Stop(syscall.SIGTERM, 10*time.Second)
	status := "exited cleanly"
	if killed {
		status = "did not stop within 10s of SIGTERM and was killed"
	} else if err := relay.Err(); err != nil {
		status = "exited with " + err.Error()
	}
	errs, warns := countLogLevels(relayLog)
	fmt.Printf("\nrelay %s; its log has %d ERROR and %d WARN lines: %s\n", status, errs, warns, relayLog)
	if pf != nil {
		fmt.Println(pf.stop())
	}
	return nil
}

// acc collects the runs of one configuration.
type acc struct {
	rates        []float64 // msg/s of each run that delivered anything
	lat          []time.Duration
	sent, failed int
	lastSent     int             // messages delivered by the latest run
	cpuPerMsg    []time.Duration // relay CPU time (user+system) per delivered message, per run
	err          error           // first failure
}

// addCPU records the relay's CPU time over the latest run (cpuTime before and after).
func (a *acc) addCPU(start, end time.Duration) {
	if a.lastSent > 0 && start >= 0 && end >= start {
		a.cpuPerMsg = append(a.cpuPerMsg, (end-start)/time.Duration(a.lastSent))
	}
}

// medianCPU is the median relay CPU time per message over the runs.
func (a *acc) medianCPU() (time.Duration, bool) {
	if a == nil || len(a.cpuPerMsg) == 0 {
		return 0, false
	}
	c := slices.Clone(a.cpuPerMsg)
	slices.Sort(c)
	return c[len(c)/2], true
}

func (a *acc) addSource(n int, d time.Duration, err error) {
	if err != nil {
		if a.err == nil {
			a.err = err
		}
		a.failed += n
		a.lastSent = 0
		return
	}
	a.sent += n
	a.lastSent = n
	a.rates = append(a.rates, float64(n)/d.Seconds())
}

func (a *acc) addGen(n int, r genResult) {
	a.sent += r.sent
	a.lastSent = r.sent
	a.failed += r.failed
	if r.firstErr != nil && a.err == nil {
		a.err = fmt.Errorf("%d of %d failed, first: %w", r.failed, n, r.firstErr)
	}
	if r.sent > 0 {
		a.rates = append(a.rates, r.rate())
	}
	a.lat = append(a.lat, r.latencies...)
	slices.Sort(a.lat)
}

// median is the median rate over the runs (0 if none delivered).
func (a *acc) median() float64 {
	if len(a.rates) == 0 {
		return 0
	}
	r := slices.Clone(a.rates)
	slices.Sort(r)
	if len(r)%2 == 1 {
		return r[len(r)/2]
	}
	return (r[len(r)/2-1] + r[len(r)/2]) / 2
}

func makeRow(s, n int, mode string, direct, relay *acc) row {
	return row{sessions: s, msgs: n, mode: mode,
		direct: direct.median(), directErr: direct.err,
		relay: relay.median(), relayErr: relay.err,
		relayLat: relay.lat, relayCPU: relay}
}

func measureIdle(ctx context.Context, pid int, httpAddr, plainAddr, tlsAddr string, clientTLS *tls.Config, k int) []idleCost {
	var out []idleCost
	var held []string
	var open [][]net.Conn
	defer func() {
		for _, cs := range open {
			closeAll(cs)
		}
	}()
	for _, m := range []struct {
		label, note, addr string
		tls               *tls.Config
	}{
		{"plain", "after EHLO", plainAddr, nil},
		{"STARTTLS", "after EHLO, STARTTLS, handshake, EHLO", tlsAddr, clientTLS},
	} {
		c := idleCost{label: m.label, note: m.note, k: k}
		time.Sleep(time.Second)
		var err error
		if c.before, err = sampleMem(pid, httpAddr, 1, 0); err != nil {
			c.err = err
			out = append(out, c)
			continue
		}
		progress("opening %d idle connections to %s (%s)", k, m.addr, m.label)
		conns, err := openIdle(ctx, m.addr, m.tls, k)
		open = append(open, conns)
		if err != nil {
			c.err = fmt.Errorf("%d of %d opened: %w", len(conns), k, err)
			c.k = len(conns)
		}
		time.Sleep(2 * time.Second) // let the relay settle; its GC runs on its own schedule
		if c.after, err = sampleMem(pid, httpAddr, 3, 500*time.Millisecond); err != nil && c.err == nil {
			c.err = err
		}
		c.compute()
		if len(held) > 0 {
			c.note += "; " + strings.Join(held, ", ") + " still open"
		}
		held = append(held, fmt.Sprintf("the %d %s", len(conns), m.label))
		out = append(out, c)
	}
	return out
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\nprocessor") + boolInt(strings.HasPrefix(string(b), "processor"))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func raiseNoFile(need uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= need {
		return nil
	}
	rl.Cur = need
	if rl.Max < need {
		rl.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE to %d for the idle connections: %w (lower -idle or raise ulimit -n)", need, err)
	}
	return nil
}

func fmtRate(v float64, err error) string {
	if err != nil && v <= 0 {
		return "FAILED"
	}
	if err != nil {
		return fmt.Sprintf("%.0f*", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

func printRates(rows []row, o options) {
	conn := "-d, one connection per session"
	if o.reconnect {
		conn = "a new connection per message"
	}
	fmt.Printf("Rates: messages / wall-clock time of a run, median of %d runs (msgs = messages per run).\n", o.runs)
	fmt.Printf("smtp-source: %s. Go client: one connection per session.\n", conn)
	fmt.Printf("p50/p99/max: relay latency from the final \".\" to the 250, Go client only, all runs pooled.\n")
	fmt.Printf("relay CPU: the relay process's user+system time per message (median of the runs).\n")
	fmt.Printf("%-9s  %-8s  %-37s  %5s  %12s  %11s  %5s  %6s  %6s  %6s  %9s\n",
		"size", "sessions", "mode", "msgs", "direct msg/s", "relay msg/s", "ratio", "p50 ms", "p99 ms", "max ms", "relay CPU")
	var notes []string
	for _, r := range rows {
		ratio := "-"
		if v, ok := r.ratio(); ok {
			ratio = fmt.Sprintf("%.2f", v)
		}
		p50, p99, pmax := "-", "-", "-"
		if len(r.relayLat) > 0 {
			p50, p99, pmax = ms(percentile(r.relayLat, 0.50)), ms(percentile(r.relayLat, 0.99)), ms(r.relayLat[len(r.relayLat)-1])
		}
		cpu := "-"
		if c, ok := r.relayCPU.medianCPU(); ok {
			cpu = fmt.Sprintf("%.0f µs", float64(c)/float64(time.Microsecond))
		}
		fmt.Printf("%-9s  %8d  %-37s  %5d  %12s  %11s  %5s  %6s  %6s  %6s  %9s\n",
			"size=4KiB", r.sessions, r.mode, r.msgs, fmtRate(r.direct, r.directErr), fmtRate(r.relay, r.relayErr), ratio, p50, p99, pmax, cpu)
		if r.directErr != nil {
			notes = append(notes, fmt.Sprintf("  %d sessions, %s, direct: %v", r.sessions, r.mode, r.directErr))
		}
		if r.relayErr != nil {
			notes = append(notes, fmt.Sprintf("  %d sessions, %s, relay: %v", r.sessions, r.mode, r.relayErr))
		}
	}
	for _, r := range rows {
		if r.queue && r.flushesPerMsg > 0 {
			fmt.Printf("  queue, %d sessions: %.2f filesystem flushes per message stored (commits share them), removals included\n", r.sessions, r.flushesPerMsg)
		}
	}
	fmt.Println(`  "queue, stored": a second relay in Queue mode, the rate of 250s, each given once the message is on`)
	fmt.Println(`  stable storage; "queue, delivered": from the first message sent until its queue was empty again.`)
	if slices.ContainsFunc(rows, func(r row) bool { return r.postfix }) {
		fmt.Println(`  "postfix": a private Postfix in the queue relay's place, measured the same way (its 250 too follows`)
		fmt.Println(`  an fsync of the queue file; delivered = until its queue directories are empty); relay CPU is`)
		fmt.Println(`  Postfix's, all its processes.`)
	}
	fmt.Println(`  "limits (1000 users)": a third relay, pass-through, with 1000 users each with rate limits and limits on`)
	fmt.Println(`  the domain and the upstream that every message counts against (never reached).`)
	fmt.Println(`  "relay client-TLS vs direct plain": the client speaks STARTTLS to the relay; smtp-sink has no TLS,`)
	fmt.Println(`  so its direct figure is the plain Go-client rate of the row above.`)
	if o.floor {
		fmt.Println(`  "floor": hack/bench-relay/floor in the relay's place, a bare Go forwarder with the relay's wire`)
		fmt.Println(`  pattern and none of its work (no SMTP library, checks, logs or metrics): the scale for the rows above.`)
	}
	if len(notes) > 0 {
		fmt.Println("Failures (* = rate over the messages that were accepted):")
		for _, n := range notes {
			fmt.Println(n)
		}
	}
	fmt.Println()
}

func printLatency(lats []latRow) {
	if len(lats) == 0 {
		return
	}
	fmt.Println(`Latency, final "." written to 250 read (Go client, 4 KiB messages, all runs pooled)`)
	fmt.Printf("%-8s  %-28s  %6s  %6s  %6s  %6s  %6s\n", "sessions", "path", "msgs", "p50 ms", "p99 ms", "max ms", "failed")
	for _, l := range lats {
		p50, p99, pmax := "-", "-", "-"
		if n := len(l.res.lat); n > 0 {
			p50, p99, pmax = ms(percentile(l.res.lat, 0.5)), ms(percentile(l.res.lat, 0.99)), ms(l.res.lat[n-1])
		}
		fmt.Printf("%8d  %-28s  %6d  %6s  %6s  %6s  %6d\n", l.sessions, l.target, l.res.sent, p50, p99, pmax, l.res.failed)
	}
	fmt.Println()
}

func printIdle(idle []idleCost) {
	if len(idle) == 0 {
		return
	}
	fmt.Println("Idle connections: relay VmRSS (/proc/<pid>/status) before (1s after the previous step) and after")
	fmt.Println("(max of 3 reads 2-3s after the last connection opened); the relay's GC runs on its own schedule.")
	for _, c := range idle {
		if c.err != nil {
			fmt.Printf("  %-10s ERROR: %v\n", c.label, c.err)
			if c.k == 0 {
				continue
			}
		}
		fmt.Printf("  %-10s %5d idle conns (%s): VmRSS %d -> %d KiB = %.1f KiB/conn\n",
			c.label, c.k, c.note, c.before.rssKiB, c.after.rssKiB, c.rssPerConnKiB)
		fmt.Printf("  %-10s Go heap in use %+.1f KiB/conn, stacks in use %+.1f KiB/conn, %+.2f goroutines/conn; relay reports %.0f plain + %.0f STARTTLS open\n",
			"", c.heapPerConnKiB, c.stackPerConnKiB, c.goroutinesPerConn, c.after.connsPlain, c.after.connsTLS)
	}
	fmt.Println()
}

func printTargets(rows []row, idle []idleCost, postfixNote string) {
	fmt.Println("Targets")
	found := false
	for _, r := range rows {
		if r.sessions != 20 || r.reference || r.queue || r.postfix || r.limits {
			continue
		}
		found = true
		label := "target ratio>=0.5 at 20 sessions (" + r.mode + "):"
		if v, ok := r.ratio(); ok {
			fmt.Printf("  %-74s %s (%.2f)\n", label, metStr(v >= ratioMin), v)
		} else {
			fmt.Printf("  %-74s not measured (a run failed)\n", label)
		}
	}
	if !found {
		fmt.Println("  target ratio>=0.5 at 20 sessions: not measured (add 20 to -sessions)")
	}
	for _, c := range idle {
		label := fmt.Sprintf("target idle connection <=64 KiB (%s):", c.label)
		if c.err != nil && c.k == 0 {
			fmt.Printf("  %-74s not measured\n", label)
			continue
		}
		fmt.Printf("  %-74s %s (%.1f KiB)\n", label, metStr(c.rssPerConnKiB <= idleMax), c.rssPerConnKiB)
	}
	if len(idle) == 0 {
		fmt.Println("  target idle connection <=64 KiB: not measured (-idle 0)")
	}
	printLimitsTargets(rows)
	printPostfixTargets(rows, postfixNote)
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// printRelayCounters prints the relay's message counters, a check that the mail the
// rates count was relayed and not refused.
func printRelayCounters(m map[string]float64, expected int) {
	var keys []string
	for k := range m {
		if strings.HasPrefix(k, "kuberelay_relay_messages_total") || strings.HasPrefix(k, "kuberelay_relay_connections_refused_total") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	fmt.Printf("\nRelay counters after the load runs (the driver had %d messages accepted by the relay, warm-up included)\n", expected)
	if len(keys) == 0 {
		fmt.Println("  (none)")
	}
	for _, k := range keys {
		fmt.Printf("  %-100s %.0f\n", k, m[k])
	}
}

func countLogLevels(path string) (errs, warns int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	s := string(b)
	return strings.Count(s, `"level":"ERROR"`), strings.Count(s, `"level":"WARN"`)
}

// drained waits until the queue relay at httpAddr has delivered everything it holds.
func drained(httpAddr string, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		m, err := scrape(httpAddr)
		if err == nil && m["kuberelay_queue_messages"] == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("queue not empty after %s (%v messages)", bound, m["kuberelay_queue_messages"])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
