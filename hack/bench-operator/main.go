// Command bench-operator measures the operator at scale against a real control plane:
// it starts kube-apiserver and etcd (envtest, with kuberelay's CRDs), runs the
// manager binary as a child process against them, creates -relays SmtpRelays across
// -namespaces namespaces with -domains RelayDomains each (every 4th relay with a TLS
// certificate and a login user, so passwords are bcrypt-hashed; the first domain of
// every 2nd relay with an Ed25519 DKIM key), and reports:
//
//   - how long creating the objects took (a pool of -workers, so creation is not what
//     is measured);
//   - the time from the start of creation until every relay has its ConfigMap and
//     Secret holding all its domains and a status.configHash equal to config.Hash of
//     them (polled with List calls every 250ms, bounded by -timeout);
//   - the manager's peak resident memory (VmHWM) and its RSS at the end;
//   - the API requests the manager makes during the -idle period that follows,
//     from its rest_client_requests_total metric: writes (POST, PUT, PATCH, DELETE)
//     should be zero once everything is rendered.
//
// Then, unless -clients is 0, it measures RelayClients: it creates one more SmtpRelay
// (with TLS, admitting every namespace), -client-namespaces namespaces each with a
// RelayDomain attached to it, and -clients RelayClients spread evenly over them, and
// reports the time from the start of creation until every client is Ready=True with
// its Secret in place and its user in the relay's configuration (bounded by -timeout
// again; each client's password is bcrypt-hashed once, so this is mostly CPU), how
// often the relay's configuration hash changed, the manager's CPU, requests and peak
// memory during the phase, and its API requests during another -idle period.
//
// During each idle period the objects the operator may write are watched, so that
// any write the manager makes is reported with the objects it changed.
//
// It exits non-zero when the relays do not converge within -target, the RelayClients
// not within -timeout, or the manager writes while idle, and says which target was
// missed.
//
//	make bench-operator                   # builds bin/manager, then:
//	KUBEBUILDER_ASSETS="$(hack/envtest-assets)" go run ./hack/bench-operator -manager bin/manager [-relays 200] [-domains 5] [-clients 1000] [-client-namespaces 100] [-idle 60s]
//
// Without -manager the operator is built from the repository into a temporary
// directory. Without KUBEBUILDER_ASSETS, hack/envtest-assets is run (it builds the
// control-plane binaries on first use, which takes several minutes). Run it from the
// repository. The manager's log and the API server's audit log of write requests are
// kept in a temporary directory when the run fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kuberelay/kuberelay/internal/testenv"
)

type options struct {
	relays, domains, namespaces, workers int
	clients, clientNamespaces            int
	manager                              string
	timeout, target, idle                time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.relays, "relays", 200, "SmtpRelays to create")
	flag.IntVar(&o.domains, "domains", 5, "RelayDomains per relay")
	flag.IntVar(&o.namespaces, "namespaces", 10, "namespaces the relays are spread over")
	flag.IntVar(&o.clients, "clients", 1000, "RelayClients to create after the relays phase, on one more SmtpRelay (0: no RelayClients phase)")
	flag.IntVar(&o.clientNamespaces, "client-namespaces", 100, "namespaces the RelayClients are spread over, each with a RelayDomain")
	flag.IntVar(&o.workers, "workers", 16, "concurrent create requests")
	flag.StringVar(&o.manager, "manager", "", "operator binary (default: built from the repository into a temporary directory)")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up waiting for the relays, and then for the RelayClients, to converge after this long")
	flag.DurationVar(&o.target, "target", 60*time.Second, "fail when converging takes longer than this")
	flag.DurationVar(&o.idle, "idle", 60*time.Second, "idle period after convergence during which the manager's API requests are counted")
	flag.Parse()
	if flag.NArg() > 0 || o.relays < 1 || o.relays > 10000 || o.domains < 1 || o.domains > 100 ||
		o.namespaces < 1 || o.namespaces > 100 || o.workers < 1 || o.workers > 256 ||
		o.clients < 0 || o.clients > 10000 || o.clientNamespaces < 1 || o.clientNamespaces > 1000 ||
		o.timeout <= 0 || o.target <= 0 || o.idle < 0 {
		fmt.Fprintln(os.Stderr, "bench-operator: -relays must be 1-10000, -domains 1-100, -namespaces 1-100, -clients 0-10000, -client-namespaces 1-1000, -workers 1-256, -timeout and -target > 0, -idle >= 0; no arguments")
		os.Exit(2)
	}
	o.namespaces = min(o.namespaces, o.relays)
	o.clientNamespaces = max(1, min(o.clientNamespaces, o.clients))

	// Ctrl-C cancels the run, whose deferred cleanup stops the manager and the control
	// plane; a second Ctrl-C kills at once.
	// The driver's cache of the RelayClients phase logs nothing worth reading.
	ctrllog.SetLogger(logr.Discard())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, o)
	stop()
	switch {
	case err == nil:
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "bench-operator: interrupted")
		os.Exit(130)
	default:
		fmt.Fprintf(os.Stderr, "bench-operator: %v\n", err)
		os.Exit(1)
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "  .. "+format+"\n", args...)
}

func run(ctx context.Context, o options) (err error) {
	tmp, err := os.MkdirTemp("", "bench-operator-")
	if err != nil {
		return err
	}
	defer func() {
		if err == nil {
			os.RemoveAll(tmp)
		} else {
			fmt.Fprintf(os.Stderr, "bench-operator: the manager's log and kubeconfig are kept in %s\n", tmp)
		}
	}()

	managerBin, err := managerBinary(ctx, o.manager, tmp)
	if err != nil {
		return err
	}
	// Keys and certificates are made before the clock starts.
	p, err := buildPlan(o)
	if err != nil {
		return err
	}
	var cp *clientPlan
	if o.clients > 0 {
		if cp, err = buildClientPlan(o); err != nil {
			return err
		}
	}

	progress("starting kube-apiserver and etcd")
	env, err := startControlPlane(tmp)
	if err != nil {
		return err
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "bench-operator: stopping the control plane: %v\n", err)
		}
	}()
	kubeconfig := filepath.Join(tmp, "kubeconfig")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return err
	}

	progress("starting %s", managerBin)
	mgr, err := startManager(ctx, managerBin, kubeconfig, filepath.Join(tmp, "manager.log"))
	if err != nil {
		return err
	}
	defer mgr.stop()
	if err := mgr.waitReady(ctx, 30*time.Second); err != nil {
		return err
	}

	// The driver's own client is not rate-limited (client-go's default is 5 requests/s),
	// so creating and polling never wait on the client side.
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = -1, 0
	c, err := client.New(cfg, client.Options{Scheme: testenv.Scheme})
	if err != nil {
		return err
	}

	r := report{opts: o, plan: p, managerVersion: mgr.version}
	progress("creating %d objects with %d workers", p.count(), o.workers)
	start := time.Now()
	if err := p.create(ctx, c, o.workers); err != nil {
		return mgr.withLog(err)
	}
	r.createTime = time.Since(start)

	progress("waiting for %d relays to converge (at most %v)", o.relays, o.timeout)
	conv := newConverger(c, p, o.domains)
	convergeTime, err := conv.wait(ctx, start, o.timeout, mgr)
	if err != nil {
		if ctx.Err() == nil {
			if hwm, rss, merr := mgr.memory(); merr == nil {
				fmt.Fprintf(os.Stderr, "bench-operator: manager peak RSS %.1f MiB, RSS now %.1f MiB\n", mib(hwm), mib(rss))
			}
		}
		return mgr.withLog(err)
	}
	r.convergeTime = convergeTime

	if o.idle > 0 {
		progress("converged in %v; counting the manager's API requests for %v", convergeTime.Round(time.Millisecond), o.idle)
		if r.idle, err = measureIdle(ctx, mgr, env, o.idle); err != nil {
			return err
		}
		// Confirm the relays are still converged: idle means nothing left to do.
		if r.convergedAfterIdle, _, err = conv.poll(ctx, true); err != nil {
			return err
		}
	}
	if r.hwm, r.rss, err = mgr.memory(); err != nil {
		return err
	}

	r.print(os.Stdout)
	missed := r.missed()

	if cp != nil {
		cr, err := runClients(ctx, o, cp, c, env, mgr)
		if err != nil {
			if len(missed) > 0 {
				err = fmt.Errorf("%w\n(the relays phase missed: %s)", err, strings.Join(missed, "; "))
			}
			return err
		}
		cr.print(os.Stdout)
		missed = append(missed, cr.missed()...)
	}
	if len(missed) > 0 {
		return fmt.Errorf("missed: %s", strings.Join(missed, "; "))
	}
	return nil
}

func mib(bytes int64) float64 { return float64(bytes) / (1 << 20) }
