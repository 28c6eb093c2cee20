package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// relayReady mirrors each SmtpRelay's Ready condition on the manager's metrics
// endpoint, so an alert on a relay that is not Ready needs nothing but the manager's
// scrape (no kube-state-metrics custom resource configuration).
var relayReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "kuberelay_smtprelay_ready",
	Help: "1 when the SmtpRelay's Ready condition is True, 0 when it is not.",
	// Not "namespace": a scrape's own target label of that name would displace it.
}, []string{"smtprelay_namespace", "smtprelay"})

// MetricNames are the metrics the manager adds to controller-runtime's.
var MetricNames = []string{"kuberelay_smtprelay_ready"}

func init() { metrics.Registry.MustRegister(relayReady) }

func setRelayReady(k types.NamespacedName, ready bool) {
	v := 0.0
	if ready {
		v = 1
	}
	relayReady.WithLabelValues(k.Namespace, k.Name).Set(v)
}

func forgetRelayReady(k types.NamespacedName) { relayReady.DeleteLabelValues(k.Namespace, k.Name) }
