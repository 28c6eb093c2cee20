package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kuberelay/kuberelay/hack/internal/proc"
)

// postfixRatioMin is the target for the queue relay's rates over Postfix's.
const postfixRatioMin = 3.0

// postfixQueues are the queue directories that hold a message until it is delivered.
var postfixQueues = []string{"incoming", "active", "deferred", "maildrop", "hold"}

// postfixInstance is a private Postfix: its own main.cf, master.cf, queue and data
// directories under the work directory, one SMTP listener on 127.0.0.1, relaying
// everything to smtp-sink. The system's Postfix, if any, is not touched: nothing here
// reads /etc/postfix/main.cf or runs the postfix command.
type postfixInstance struct {
	dir, configDir, queueDir, logPath string
	addr, version                     string
	master                            *proc.Child
	accepted                          int // 250s the driver got from it, warm-up included

	watchdog     *exec.Cmd
	watchdogPipe *os.File // the write end, which only the driver holds
	unguardOnce  sync.Once
}

// startPostfix starts the private Postfix and waits until it answers EHLO. It returns
// nil and a note saying why when Postfix cannot run here; the rows are then skipped.
// smtpdLimit is its number of smtpd processes, destConns its connections to smtp-sink.
func startPostfix(tmp, sinkAddr string, smtpdLimit, destConns int) (*postfixInstance, string) {
	if os.Geteuid() != 0 {
		return nil, "skipped: not root (Postfix's master must start as root)"
	}
	postconf, err := findTool("postconf")
	if err != nil {
		return nil, "skipped: postconf not found (Debian package postfix)"
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		return nil, "skipped: no user postfix: " + err.Error()
	}
	postdrop, err := user.LookupGroup("postdrop")
	if err != nil {
		return nil, "skipped: no group postdrop: " + err.Error()
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(postdrop.Gid)
	port, err := proc.FreePort()
	if err != nil {
		return nil, "not started: " + err.Error()
	}
	p := &postfixInstance{dir: filepath.Join(tmp, "postfix"), addr: fmt.Sprintf("127.0.0.1:%d", port)}
	p.configDir, p.queueDir, p.logPath = filepath.Join(p.dir, "etc"), filepath.Join(p.dir, "queue"), filepath.Join(p.dir, "maillog")
	if err := p.makeDirs(tmp, uid, gid); err != nil {
		return nil, "not started: " + err.Error()
	}
	if err := os.WriteFile(filepath.Join(p.configDir, "main.cf"), []byte(p.mainCF(sinkAddr, destConns)), 0o644); err != nil {
		return nil, "not started: " + err.Error()
	}
	if err := os.WriteFile(filepath.Join(p.configDir, "master.cf"), []byte(p.masterCF(smtpdLimit)), 0o644); err != nil {
		return nil, "not started: " + err.Error()
	}

	// postconf reads the private main.cf only, and warns about parameters this Postfix
	// does not know.
	var stderr bytes.Buffer
	cmd := exec.Command(postconf, "-c", p.configDir, "-h", "mail_version", "daemon_directory")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Sprintf("not started: postconf -c %s: %v: %s", p.configDir, err, strings.TrimSpace(stderr.String()))
	}
	for l := range strings.SplitSeq(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" {
			progress("%s", l)
		}
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return nil, fmt.Sprintf("not started: postconf -c %s -h mail_version daemon_directory printed %q", p.configDir, out)
	}
	p.version = f[0]
	masterBin := filepath.Join(f[1], "master")
	if _, err := os.Stat(masterBin); err != nil {
		return nil, "skipped: " + err.Error()
	}

	// master runs in the foreground, a child of the driver. -s leaves its stdout open;
	// unlike -d it still makes itself a process group leader, and its SIGTERM handler
	// kills that group (with -d the kill fails and the daemons are left to exit on their
	// own). "postfix start-fg" does not fit: it runs master as a child of a shell script
	// unless that script is PID 1, and runs post-install checks first.
	masterLog := filepath.Join(p.dir, "master.log")
	logf, err := os.Create(masterLog)
	if err != nil {
		return nil, "not started: " + err.Error()
	}
	mcmd := exec.Command(masterBin, "-c", p.configDir, "-s")
	mcmd.Stdout, mcmd.Stderr = logf, logf
	p.master, err = children.start("postfix", mcmd)
	logf.Close()
	if err != nil {
		return nil, "not started: " + err.Error()
	}
	children.afterStop(func() {
		p.unguard()
		p.reap()
	})
	if err := p.guard(); err != nil {
		p.stop()
		return nil, "not started: postfix watchdog: " + err.Error()
	}
	if err := p.waitReady(15 * time.Second); err != nil {
		p.stop()
		return nil, fmt.Sprintf("not started: %v\nmaillog %s ends:\n%s", err, p.logPath, proc.TailFile(p.logPath, 10))
	}
	return p, ""
}

// makeDirs makes the configuration, queue and data directories with the owners and
// modes that Postfix's post-install gives them, and lets the postfix user through the
// work directory (MkdirTemp made it 0700) to reach them.
func (p *postfixInstance) makeDirs(tmp string, uid, postdrop int) error {
	if err := os.Chmod(tmp, 0o711); err != nil {
		return err
	}
	type dir struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}
	dirs := []dir{
		{p.dir, 0, 0, 0o755},
		{p.configDir, 0, 0, 0o755},
		{p.queueDir, 0, 0, 0o755},
		{filepath.Join(p.queueDir, "pid"), 0, 0, 0o755},
		{filepath.Join(p.queueDir, "maildrop"), uid, postdrop, 0o730},
		{filepath.Join(p.queueDir, "public"), uid, postdrop, 0o710},
		{filepath.Join(p.dir, "data"), uid, 0, 0o700},
	}
	for _, d := range []string{"active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private", "saved", "trace"} {
		dirs = append(dirs, dir{filepath.Join(p.queueDir, d), uid, 0, 0o700})
	}
	for _, d := range dirs {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			return err
		}
		if err := os.Chown(d.path, d.uid, d.gid); err != nil {
			return err
		}
		if err := os.Chmod(d.path, d.mode); err != nil { // past the umask
			return err
		}
	}
	return nil
}

// mainCF is the private main.cf: relay everything from the loopback to smtp-sink,
// deliver nothing locally, look nothing up in DNS, no TLS, and lift the limits that
// would throttle a benchmark (process and destination concurrency, inflow pacing,
// per-client limits). Postfix's fsync of each queue file before its 250 is as shipped.
func (p *postfixInstance) mainCF(sinkAddr string, destConns int) string {
	host, port, _ := net.SplitHostPort(sinkAddr)
	return fmt.Sprintf(`# generated by hack/bench-relay
compatibility_level = 3.6
queue_directory = %[1]s
data_directory = %[2]s
syslog_name = postfix-bench
# no syslog needed: postlogd writes the log, and only below the work directory
maillog_file = %[3]s
maillog_file_prefixes = %[4]s
myhostname = postfix.bench.localdomain
mydomain = bench.localdomain
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
relayhost = [%[5]s]:%[6]s
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
readme_directory = no
default_process_limit = 100
default_destination_concurrency_limit = %[7]d
smtp_destination_concurrency_limit = %[7]d
# no slow start from 5 concurrent deliveries
initial_destination_concurrency = %[7]d
in_flow_delay = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
`, p.queueDir, filepath.Join(p.dir, "data"), p.logPath, p.dir, host, port, destConns)
}

// masterCF is the private master.cf: the SMTP listener and the daemons relaying needs,
// none chrooted (a chroot would need copies of system files in the queue directory).
func (p *postfixInstance) masterCF(smtpdLimit int) string {
	return fmt.Sprintf(`# generated by hack/bench-relay
# service    type       private unpriv chroot wakeup maxproc command
%-12s inet       n       -      n      -      %-7d smtpd
cleanup      unix       n       -      n      -      0       cleanup
qmgr         unix       n       -      n      300    1       qmgr
rewrite      unix       -       -      n      -      -       trivial-rewrite
bounce       unix       -       -      n      -      0       bounce
defer        unix       -       -      n      -      0       bounce
trace        unix       -       -      n      -      0       bounce
verify       unix       -       -      n      -      1       verify
flush        unix       n       -      n      1000?  0       flush
proxymap     unix       -       -      n      -      -       proxymap
smtp         unix       -       -      n      -      -       smtp
relay        unix       -       -      n      -      -       smtp
showq        unix       n       -      n      -      -       showq
error        unix       -       -      n      -      -       error
retry        unix       -       -      n      -      -       error
discard      unix       -       -      n      -      -       discard
anvil        unix       -       -      n      -      1       anvil
scache       unix       -       -      n      -      1       scache
postlog      unix-dgram n       -      n      -      1       postlogd
`, p.addr, smtpdLimit)
}

// waitReady waits until Postfix greets and answers EHLO with 250.
func (p *postfixInstance) waitReady(bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		if p.master.Exited() {
			return fmt.Errorf("postfix master exited at once (%v)", p.master.Err())
		}
		c, err := idleConn(p.addr, nil)
		if err == nil {
			_, _ = c.Write([]byte("QUIT\r\n"))
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postfix on %s not answering EHLO after %s: %v", p.addr, bound, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// warmUp sends 200 messages over 20 sessions and waits until they are delivered, so
// that the counted runs find the daemons started and the destination known.
func (p *postfixInstance) warmUp(ctx context.Context, msg []byte) {
	r := generate(ctx, p.addr, nil, 20, 200, msg)
	p.accepted += r.sent
	if r.firstErr != nil {
		progress("warm-up to postfix %s: %d sent, %d failed: %v", p.addr, r.sent, r.failed, r.firstErr)
	}
	if err := p.drained(2 * time.Minute); err != nil {
		progress("warm-up to postfix: %v", err)
	}
}

// measure runs smtp-source once against Postfix: stored is the rate of its 250s (each
// after the queue file's fsync), delivered the rate until its queue is empty again.
// Postfix's CPU time over the smtp-source run goes to stored, as the queue relay's does.
func (p *postfixInstance) measure(ctx context.Context, sourcePath string, args []string, n int, stored, delivered *acc) {
	c0 := p.cpuTime()
	t0 := time.Now()
	d, err := runSource(ctx, sourcePath, args)
	stored.addSource(n, d, err)
	stored.addCPU(c0, p.cpuTime())
	if err != nil {
		// Let what it did accept leave before the next rows are measured.
		_ = p.drained(2 * time.Minute)
		return
	}
	p.accepted += n
	if err := p.drained(2 * time.Minute); err != nil {
		delivered.addSource(n, 0, err)
	} else {
		delivered.addSource(n, time.Since(t0), nil)
	}
}

// queued counts the messages in Postfix's queue (deferred is hashed into
// subdirectories).
func (p *postfixInstance) queued() (int, error) {
	n := 0
	for _, q := range postfixQueues {
		err := filepath.WalkDir(filepath.Join(p.queueDir, q), func(_ string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) { // delivered and removed meanwhile
					return nil
				}
				return err
			}
			if !d.IsDir() {
				n++
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// drained waits until Postfix's queue is empty.
func (p *postfixInstance) drained(bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		n, err := p.queued()
		if err == nil && n == 0 {
			return nil
		}
		if p.master.Exited() {
			return fmt.Errorf("postfix master exited (%v) with %d messages queued", p.master.Err(), n)
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("postfix queue: %w", err)
			}
			return fmt.Errorf("postfix queue not empty after %s (%d messages; see %s)", bound, n, p.logPath)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procStat is what the driver reads from /proc/<pid>/stat.
type procStat struct {
	state                        byte
	pgrp                         int
	utime, stime, cutime, cstime int64 // clock ticks
}

func readProcStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	// f[0] is field 3 (state), pgrp field 5, utime to cstime fields 14-17.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 || len(f[0]) != 1 {
		return procStat{}, false
	}
	var s procStat
	var errs [5]error
	s.state = f[0][0]
	s.pgrp, errs[0] = strconv.Atoi(f[2])
	s.utime, errs[1] = strconv.ParseInt(f[11], 10, 64)
	s.stime, errs[2] = strconv.ParseInt(f[12], 10, 64)
	s.cutime, errs[3] = strconv.ParseInt(f[13], 10, 64)
	s.cstime, errs[4] = strconv.ParseInt(f[14], 10, 64)
	return s, errors.Join(errs[:]...) == nil
}

// group returns the processes other than the master in its process group: its
// daemons, which stay in it (the master leads it, -s).
func (p *postfixInstance) group(includeZombies bool) map[int]procStat {
	out := map[int]procStat{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	mpid := p.master.Pid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == mpid {
			continue
		}
		if s, ok := readProcStat(pid); ok && s.pgrp == mpid && (includeZombies || s.state != 'Z') {
			out[pid] = s
		}
	}
	return out
}

// cpuTime is the user+system time of the whole instance: the master with the daemons
// it has reaped, plus the daemons still running (-1 if the master is gone). A daemon
// reaped between the two reads is missed; the error is a process or two.
func (p *postfixInstance) cpuTime() time.Duration {
	m, ok := readProcStat(p.master.Pid())
	if !ok || p.master.Exited() {
		return -1
	}
	ticks := m.utime + m.stime + m.cutime + m.cstime
	for _, s := range p.group(true) {
		ticks += s.utime + s.stime
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// guard starts a watchdog that stops the master (SIGTERM) if the driver dies without
// doing so: the parent-death signal that proc.Start sets does not reach the master,
// as the kernel clears it when the master changes its effective uid (it opens its lock
// file as the postfix user). The watchdog waits for EOF on a pipe whose write end only
// the driver holds; stop kills it first.
func (p *postfixInstance) guard() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command("/bin/sh", "-c", `read _; kill -TERM "$1"`, "postfix-watchdog", strconv.Itoa(p.master.Pid()))
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // out of reach of a terminal's ctrl-C
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	p.watchdog, p.watchdogPipe = cmd, w
	return nil
}

// unguard kills the watchdog, before the master is stopped or found stopped.
func (p *postfixInstance) unguard() {
	p.unguardOnce.Do(func() {
		if p.watchdog == nil {
			return
		}
		_ = p.watchdog.Process.Kill()
		_ = p.watchdog.Wait()
		p.watchdogPipe.Close()
	})
}

// stop stops the master with SIGTERM (as "postfix stop" does), which passes it on to
// its daemons, and makes sure none of them is left. It says how that went.
func (p *postfixInstance) stop() string {
	p.unguard()
	if p.master.Stop(syscall.SIGTERM, 5*time.Second) {
		return fmt.Sprintf("postfix master (pid %d) did not stop within 5s of SIGTERM and was killed; %s", p.master.Pid(), p.reap())
	}
	return fmt.Sprintf("postfix master (pid %d) stopped on SIGTERM; %s", p.master.Pid(), p.reap())
}

// reap waits up to 5s for the daemons of a stopped master to exit and kills those that
// remain. They die orphaned, so it also waits for init to reap them (without that, ps
// lists them as defunct for a moment). If the driver is killed outright, the watchdog
// (guard) stops the master instead, and the master its daemons.
func (p *postfixInstance) reap() string {
	if !p.master.Exited() {
		return "master still running"
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(p.group(true)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	left := p.group(false)
	if len(left) == 0 {
		return "no process of the private instance left"
	}
	// The group's ID cannot have been reused while its members live.
	_ = syscall.Kill(-p.master.Pid(), syscall.SIGKILL)
	time.Sleep(200 * time.Millisecond)
	return fmt.Sprintf("%d of its processes were still running after 5s and were killed (%d left)", len(left), len(p.group(false)))
}

// printLog prints what Postfix's log says of the messages, a check that what the
// rates count reached smtp-sink.
func (p *postfixInstance) printLog() {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		fmt.Printf("\nPostfix log: %v\n", err)
		return
	}
	fmt.Printf("\nPostfix log %s after the load runs (the driver had %d messages accepted by Postfix, warm-up included)\n", p.logPath, p.accepted)
	for _, k := range []string{"status=sent", "status=deferred", "status=bounced", "warning:", "fatal:", "panic:"} {
		fmt.Printf("  %-16s %d\n", k, bytes.Count(b, []byte(" "+k)))
	}
}

// postfixRows are the rows of one session count.
func postfixRows(s, n int, direct, stored, delivered *acc) []row {
	st := makeRow(s, n, "postfix, stored, smtp-source", direct, stored)
	dl := makeRow(s, n, "postfix, delivered, smtp-source", direct, delivered)
	dl.relayCPU = nil
	st.postfix, dl.postfix = true, true
	return []row{st, dl}
}

// printPostfixTargets prints the queue relay's rates over Postfix's, per session count.
func printPostfixTargets(rows []row, note string) {
	if note != "" {
		fmt.Printf("  %-74s not measured (postfix %s)\n", "target queue/postfix >=3x:", strings.SplitN(note, "\n", 2)[0])
		return
	}
	rate := func(s int, mode string) float64 {
		for _, r := range rows {
			if r.sessions == s && r.mode == mode {
				return r.relay
			}
		}
		return 0
	}
	for _, r := range rows {
		if r.mode != "postfix, stored, smtp-source" {
			continue
		}
		var parts []string
		for _, k := range []string{"stored", "delivered"} {
			q, pf := rate(r.sessions, "queue, "+k+", smtp-source"), rate(r.sessions, "postfix, "+k+", smtp-source")
			if q <= 0 || pf <= 0 {
				parts = append(parts, "not measured (a run failed)")
				continue
			}
			parts = append(parts, fmt.Sprintf("%s (%.2fx)", metStr(q/pf >= postfixRatioMin), q/pf))
		}
		label := fmt.Sprintf("target queue/postfix >=3x at %d sessions (stored; delivered):", r.sessions)
		fmt.Printf("  %-74s %s\n", label, strings.Join(parts, "; "))
	}
}
