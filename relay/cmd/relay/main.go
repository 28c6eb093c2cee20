// Command relay is the SMTP relay every relay pod runs. It reads relay.yaml from
// --config-dir and the secret files it names from --secrets-dir, serves SMTP on the
// configured listeners, and hot-reloads both directories. See relay/config for the
// configuration format.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kuberelay/kuberelay/relay/config"
	"github.com/kuberelay/kuberelay/relay/metrics"
	"github.com/kuberelay/kuberelay/relay/reload"
	"github.com/kuberelay/kuberelay/relay/server"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	configDir, secretsDir, httpAddr, spoolDir, logLevel, listenHost string
	check, showVersion                                              bool
	grace, reloadInterval                                           time.Duration
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configDir, "config-dir", "/etc/kuberelay/config", "directory holding relay.yaml (a mounted ConfigMap)")
	fs.StringVar(&o.secretsDir, "secrets-dir", "/etc/kuberelay/secrets", "directory holding the secret files relay.yaml names (a mounted Secret)")
	fs.StringVar(&o.httpAddr, "http-address", ":9090", "address for /metrics, /healthz, /readyz, /status and, in Queue mode, /queue")
	fs.StringVar(&o.listenHost, "listen-host", "", "bind every listener to this host instead of the one in relay.yaml (e.g. 127.0.0.1 outside a pod)")
	fs.StringVar(&o.spoolDir, "spool-dir", os.TempDir(), "directory for messages being DKIM-signed that do not fit in memory")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: info or debug")
	fs.DurationVar(&o.grace, "shutdown-grace", 25*time.Second, "on SIGTERM, how long transactions in progress may take to finish")
	fs.DurationVar(&o.reloadInterval, "reload-interval", 30*time.Second, "re-read the configuration this often even without a change event")
	fs.BoolVar(&o.check, "check", false, "validate the configuration and its secret files, print the result and exit")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "relay: unexpected argument %q; all options are flags (see relay -h)\n", fs.Arg(0))
		return 2
	}
	if o.showVersion {
		fmt.Fprintf(stdout, "relay %s (commit %s)\n", version, commit)
		return 0
	}
	if o.check {
		l, err := config.Load(o.configDir, o.secretsDir)
		if err != nil {
			fmt.Fprintf(stderr, "configuration in %s is invalid:\n", o.configDir)
			for _, e := range splitErrors(err) {
				fmt.Fprintf(stderr, "  %s\n", e)
			}
			return 1
		}
		fmt.Fprintf(stdout, "configuration OK (hash %s)\n", l.Hash)
		return 0
	}

	level := slog.LevelInfo
	switch o.logLevel {
	case "info":
	case "debug":
		level = slog.LevelDebug
	default:
		fmt.Fprintf(stderr, "relay: --log-level %q is not one of info, debug\n", o.logLevel)
		return 2
	}
	// logr V(1) maps to slog's debug level.
	log := logr.FromSlogHandler(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := serve(o, log); err != nil {
		log.Error(err, "relay stopped")
		return 1
	}
	return 0
}

func splitErrors(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func serve(o options, log logr.Logger) error {
	m := metrics.New()
	var srv *server.Server
	w := &reload.Watcher{
		ConfigDir: o.configDir, SecretsDir: o.secretsDir, Interval: o.reloadInterval,
		Log: log.WithName("reload"), Metrics: m,
		Apply: func(l *config.Loaded) {
			if err := srv.Apply(l); err != nil {
				log.Info("configuration applied in part", "hash", l.Hash, "note", err.Error())
			}
		},
	}
	loaded, err := w.Load()
	if err != nil {
		m.ConfigReloads.WithLabelValues("failure").Inc()
		return fmt.Errorf("initial configuration: %w", err)
	}
	m.ConfigReloads.WithLabelValues("success").Inc()
	srv = server.New(loaded, server.Options{Log: log.WithName("smtp"), Metrics: m, SpoolDir: o.spoolDir, ListenHost: o.listenHost})
	if err := srv.Listen(); err != nil {
		return err
	}

	var ready atomic.Bool
	httpLn, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("http listener: %w", err)
	}
	httpSrv := &http.Server{Handler: httpHandler(m, srv, w, &ready), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := httpSrv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(err, "http server")
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go func() {
		if err := w.Run(watchCtx); err != nil {
			log.Error(err, "configuration watcher stopped; relying on restarts for changes")
		}
	}()

	srv.Serve()
	ready.Store(true)
	hash, _ := srv.Current()
	log.Info("relay started", "version", version, "hash", hash, "http", httpLn.Addr().String())
	for _, l := range loaded.Config.Listeners {
		log.Info("listening", "listener", l.Name, "address", srv.Addr(l.Name).String(), "tls", l.TLS, "requireAuth", l.RequireAuth)
	}

	<-ctx.Done()
	stop()
	log.Info("shutting down", "grace", o.grace.String())
	ready.Store(false)
	graceCtx, cancel := context.WithTimeout(context.Background(), o.grace)
	defer cancel()
	err = srv.Shutdown(graceCtx)
	stopWatch()
	shutdownCtx, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	_ = httpSrv.Shutdown(shutdownCtx)
	if err != nil {
		return err
	}
	log.Info("relay stopped cleanly")
	return nil
}

// statusResponse is the JSON served on /status; the operator reads configHash.
type statusResponse struct {
	Version    string    `json:"version"`
	ConfigHash string    `json:"configHash"`
	LoadedAt   time.Time `json:"loadedAt"`
	Ready      bool      `json:"ready"`
	// LastReloadError is the last failed load, whose configuration was not applied.
	LastReloadError string `json:"lastReloadError,omitempty"`
	// Queue is the queue's size in Queue mode.
	Queue *server.QueueStatus `json:"queue,omitempty"`
	// RateUse is what each rate-limited user, domain and upstream used today, of the
	// current minute, hour and day; those that sent nothing today are left out.
	RateUse []metrics.RateUse `json:"rateUse,omitempty"`
	// UpstreamChecks is the last round of upstream checks, if one ran.
	UpstreamChecks *server.UpstreamChecks `json:"upstreamChecks,omitempty"`
}

func httpHandler(m *metrics.Metrics, srv *server.Server, w *reload.Watcher, ready *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(rw, "ok")
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		// A draining relay is taken out of its Service: it takes no more mail.
		if !ready.Load() || srv.Draining() {
			http.Error(rw, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ok")
	})
	mux.HandleFunc("GET /status", func(rw http.ResponseWriter, _ *http.Request) {
		hash, since := srv.Current()
		st := statusResponse{Version: version, ConfigHash: hash, LoadedAt: since.UTC(), Ready: ready.Load(), Queue: srv.QueueStatus(),
			UpstreamChecks: srv.Checks()}
		for _, u := range srv.RateUse() {
			if u.Messages[2] > 0 || u.Recipients[2] > 0 {
				st.RateUse = append(st.RateUse, u)
			}
		}
		if e := w.Status().LastError; e != nil {
			st.LastReloadError = e.Error()
		}
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(st)
	})
	mux.Handle("/upstreams/check", srv.ChecksHandler())
	// The capture sink's UI and API: empty unless the configuration captures mail.
	pod, _ := os.Hostname()
	c := srv.CaptureHandler(pod)
	mux.Handle("/capture", c)
	mux.Handle("/capture/", c)
	if q := srv.QueueHandler(); q != nil {
		mux.Handle("/queue", q)
		mux.Handle("/queue/", q)
	}
	return mux
}
