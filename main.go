// Command manager is the kuberelay operator: it reconciles SmtpRelays, Smarthosts and
// RelayDomains into running relay fleets.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	relayv1alpha1 "github.com/kuberelay/kuberelay/api/v1alpha1"
	"github.com/kuberelay/kuberelay/controllers"
	"github.com/kuberelay/kuberelay/controllers/render"
)

var (
	version = "dev"
	commit  = "unknown"
)

// defaultRelayImage is the image relay pods run unless --relay-image or an
// SmtpRelay's spec.image says otherwise: the operator's own image, which holds both
// binaries.
const defaultRelayImage = "ghcr.io/kuberelay/kuberelay"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var (
		metricsAddr, probeAddr, relayImage, namespaces, logLevel string
		leaderElect, showVersion                                 bool
		concurrency                                              int
	)
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 disables it)")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&leaderElect, "leader-elect", false, "elect a leader so that only one of several manager replicas reconciles")
	fs.StringVar(&relayImage, "relay-image", defaultRelayImage+":"+version, "image of the relay pods, unless an SmtpRelay sets spec.image")
	fs.StringVar(&namespaces, "namespaces", "", "comma-separated namespaces to watch (default: all)")
	fs.StringVar(&logLevel, "log-level", "info", "log level: info or debug")
	fs.IntVar(&concurrency, "concurrency", 4, "SmtpRelays reconciled at the same time")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if concurrency < 1 {
		fmt.Fprintf(os.Stderr, "manager: --concurrency must be at least 1, not %d\n", concurrency)
		return 2
	}
	if showVersion {
		fmt.Printf("manager %s (commit %s)\n", version, commit)
		return 0
	}
	level := slog.LevelInfo
	switch logLevel {
	case "info":
	case "debug":
		level = slog.LevelDebug
	default:
		fmt.Fprintf(os.Stderr, "manager: --log-level: %q is not info or debug\n", logLevel)
		return 2
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctrl.SetLogger(log)

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		log.Error(err, "building the scheme")
		return 1
	}
	if err := relayv1alpha1.AddToScheme(scheme); err != nil {
		log.Error(err, "building the scheme")
		return 1
	}
	var nsList []string
	for ns := range strings.SplitSeq(namespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			nsList = append(nsList, ns)
		}
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "no Kubernetes configuration: set KUBECONFIG or run in a cluster")
		return 1
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         controllers.CacheOptions(nsList),
		Metrics:                       metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:        probeAddr,
		LeaderElection:                leaderElect,
		LeaderElectionID:              "manager.relay.kuberelay.io",
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error(err, "creating the manager")
		return 1
	}
	ctx := ctrl.SetupSignalHandler()
	if err := controllers.Setup(ctx, mgr, controllers.Options{RelayImage: relayImage, Hasher: render.NewDefaultHasher(), Concurrency: concurrency}); err != nil {
		log.Error(err, "setting up the controllers")
		return 1
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "adding the health check")
		return 1
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "adding the readiness check")
		return 1
	}
	log.Info("starting manager", "version", version, "commit", commit, "relayImage", relayImage)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "manager stopped")
		return 1
	}
	return 0
}
