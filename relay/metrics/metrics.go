// Package metrics holds the relay's Prometheus metrics. They live in their own
// registry, served on the relay's HTTP port, never on an SMTP port.
package metrics

import (
	"regexp"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "kuberelay_relay"

// Message outcomes, the values of the "outcome" label.
const (
	// OutcomeRelayed: the upstream accepted the message and the client got 250.
	OutcomeRelayed = "relayed"
	// OutcomeRejected: the client got a 5xx for the message.
	OutcomeRejected = "rejected"
	// OutcomeDeferred: the client got a 4xx and keeps the message to retry.
	OutcomeDeferred = "deferred"
	// OutcomeQueued: the message was stored in the queue (Queue mode) and the client got
	// 250; its deliveries are kuberelay_queue_deliveries_total.
	OutcomeQueued = "queued"
	// OutcomeCaptured: the capture sink kept the message and the client got 250;
	// nothing was sent anywhere.
	OutcomeCaptured = "captured"
)

// Metrics are the relay's collectors.
type Metrics struct {
	Registry *prometheus.Registry

	Sessions           *prometheus.CounterVec
	ConnectionsOpen    *prometheus.GaugeVec
	ConnectionsRefused *prometheus.CounterVec
	Messages           *prometheus.CounterVec
	Recipients         *prometheus.CounterVec
	MessageBytes       prometheus.Histogram
	UpstreamLatency    *prometheus.HistogramVec
	AuthFailures       *prometheus.CounterVec
	AuthThrottled      *prometheus.CounterVec
	ConfigReloads      *prometheus.CounterVec
	ConfigInfo         *prometheus.GaugeVec
	ConfigLastSuccess  prometheus.Gauge
	// QueueDeliveries counts delivery attempts' results per recipient in Queue mode.
	QueueDeliveries *prometheus.CounterVec
	// RateLimited counts what rate limits refused.
	RateLimited *prometheus.CounterVec
	// CaptureEvicted counts captured messages dropped to make room in the sink.
	CaptureEvicted prometheus.Counter
}

// New creates and registers every metric, with Go runtime and process collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "sessions_total",
			Help: "SMTP connections accepted, by listener.",
		}, []string{"listener"}),
		ConnectionsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_open",
			Help: "SMTP connections open now, by listener.",
		}, []string{"listener"}),
		ConnectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "connections_refused_total",
			Help: "SMTP connections answered 421 and closed, by listener and reason (limit, listener-limit, client-limit, shutdown).",
		}, []string{"listener", "reason"}),
		Messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "messages_total",
			Help: "Messages by outcome (relayed, rejected, deferred, queued), reason and upstream.",
		}, []string{"outcome", "reason", "upstream"}),
		Recipients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "recipients_total",
			Help: "RCPT TO commands by outcome (accepted, rejected, deferred) and upstream.",
		}, []string{"outcome", "upstream"}),
		MessageBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "message_size_bytes",
			Help:    "Size of relayed messages as received from the client.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 9),
		}),
		UpstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "upstream_data_seconds",
			Help:    "Time from the client's final dot to the upstream's reply, by upstream.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"upstream"}),
		AuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "auth_failures_total",
			Help: "Failed AUTH attempts, by listener.",
		}, []string{"listener"}),
		AuthThrottled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "auth_throttled_total",
			Help: "AUTH attempts refused with 421 because a failure budget was spent, by listener and scope (client, user).",
		}, []string{"listener", "scope"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "config_reloads_total",
			Help: "Configuration loads by result (success, failure). A failure keeps the last good config.",
		}, []string{"result"}),
		ConfigInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "config_info",
			Help: "Always 1, labelled with the hash of the configuration in use.",
		}, []string{"hash"}),
		ConfigLastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in use was loaded, in Unix seconds.",
		}),
		QueueDeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kuberelay", Subsystem: "queue", Name: "deliveries_total",
			Help: "Queued recipients by the result of a delivery attempt (delivered, deferred, failed, expired), reason (4xx, 5xx, connection, no-upstream, local, damaged; empty when delivered) and upstream.",
		}, []string{"outcome", "reason", "upstream"}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "rate_limited_total",
			Help: "Messages, recipients and sessions refused by a rate limit, by what the limit bounds (user, domain, upstream), unit (messages, recipients, sessions) and window (minute, hour, day; empty for sessions).",
		}, []string{"kind", "unit", "window"}),
		CaptureEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kuberelay", Subsystem: "capture", Name: "evicted_total",
			Help: "Captured messages dropped, oldest first, to keep the capture sink within its cap.",
		}),
	}
	m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Registry.MustRegister(m.own()...)
	m.ConfigReloads.WithLabelValues("success")
	m.ConfigReloads.WithLabelValues("failure")
	return m
}

// own are the relay's own collectors (not the Go runtime's and the process's).
func (m *Metrics) own() []prometheus.Collector {
	return []prometheus.Collector{m.Sessions, m.ConnectionsOpen, m.ConnectionsRefused, m.Messages, m.Recipients,
		m.MessageBytes, m.UpstreamLatency, m.AuthFailures, m.AuthThrottled, m.ConfigReloads, m.ConfigInfo,
		m.ConfigLastSuccess, m.QueueDeliveries, m.RateLimited, m.CaptureEvicted}
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Names lists the names of the metrics the relay serves, its own and Queue mode's,
// so that dashboards and alerts can be checked to query only metrics that exist.
// Histograms are served as <name>_bucket, _sum and _count.
func Names() []string {
	m := New()
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range append(m.own(), &queueCollector{}, &rateCollector{}, &captureCollector{}) {
			c.Describe(ch)
		}
		close(ch)
	}()
	var out []string
	for d := range ch {
		if n := fqName.FindStringSubmatch(d.String()); n != nil {
			out = append(out, n[1])
		}
	}
	sort.Strings(out)
	return out
}

// SetConfigHash makes hash the only value of the config_info metric.
func (m *Metrics) SetConfigHash(hash string) {
	m.ConfigInfo.Reset()
	m.ConfigInfo.WithLabelValues(hash).Set(1)
}

// QueueStats are what WatchQueue reads from the queue at each scrape.
type QueueStats struct {
	Messages int
	Bytes    int64
	Oldest   time.Time // zero when empty
	// Flushes of the spool's filesystem and the commits they made durable.
	Flushes, Commits int64
}

// WatchQueue exports the queue's size and age, read from stats once per scrape:
// kuberelay_queue_messages, _bytes, _oldest_seconds, and the group commit's
// kuberelay_queue_flushes_total and _commits_total (their ratio is the batch size).
func (m *Metrics) WatchQueue(stats func() QueueStats) {
	m.Registry.MustRegister(&queueCollector{stats: stats})
}

// RateUse is one rate-limited key's use in the current windows.
type RateUse struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
	// Messages and Recipients are the counts of the current minute, hour and day.
	Messages   [3]int64 `json:"messages"`
	Recipients [3]int64 `json:"recipients"`
}

// WatchRates exports kuberelay_relay_rate_limit_used{kind,name,unit,window}: what each
// rate-limited user, domain and upstream used of the current windows, read at each
// scrape.
func (m *Metrics) WatchRates(use func() []RateUse) {
	m.Registry.MustRegister(&rateCollector{use: use})
}

var rateUsedDesc = prometheus.NewDesc("kuberelay_relay_rate_limit_used",
	"What a rate-limited user, sender domain or upstream used of the current window (minute, hour, UTC day), in this process.",
	[]string{"kind", "name", "unit", "window"}, nil)

type rateCollector struct{ use func() []RateUse }

func (c *rateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rateUsedDesc }

func (c *rateCollector) Collect(ch chan<- prometheus.Metric) {
	windows := [3]string{"minute", "hour", "day"}
	for _, u := range c.use() {
		for w, name := range windows {
			ch <- prometheus.MustNewConstMetric(rateUsedDesc, prometheus.GaugeValue, float64(u.Messages[w]), u.Kind, u.Name, "messages", name)
			ch <- prometheus.MustNewConstMetric(rateUsedDesc, prometheus.GaugeValue, float64(u.Recipients[w]), u.Kind, u.Name, "recipients", name)
		}
	}
}

var (
	queueMessagesDesc = prometheus.NewDesc("kuberelay_queue_messages", "Messages in the queue.", nil, nil)
	queueBytesDesc    = prometheus.NewDesc("kuberelay_queue_bytes", "Bytes of message data in the queue.", nil, nil)
	queueOldestDesc   = prometheus.NewDesc("kuberelay_queue_oldest_seconds", "Age of the oldest queued message, 0 when the queue is empty.", nil, nil)
	queueFlushesDesc  = prometheus.NewDesc("kuberelay_queue_flushes_total", "Flushes of the spool's filesystem, each shared by the commits waiting for it.", nil, nil)
	queueCommitsDesc  = prometheus.NewDesc("kuberelay_queue_commits_total", "Messages made durable in the queue.", nil, nil)
)

// queueCollector reads the queue's stats once for all its metrics.
type queueCollector struct{ stats func() QueueStats }

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queueMessagesDesc, queueBytesDesc, queueOldestDesc, queueFlushesDesc, queueCommitsDesc} {
		ch <- d
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	oldest := 0.0
	if !st.Oldest.IsZero() {
		oldest = time.Since(st.Oldest).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(queueMessagesDesc, prometheus.GaugeValue, float64(st.Messages))
	ch <- prometheus.MustNewConstMetric(queueBytesDesc, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, oldest)
	ch <- prometheus.MustNewConstMetric(queueFlushesDesc, prometheus.CounterValue, float64(st.Flushes))
	ch <- prometheus.MustNewConstMetric(queueCommitsDesc, prometheus.CounterValue, float64(st.Commits))
}

var (
	captureMessagesDesc = prometheus.NewDesc("kuberelay_capture_messages", "Messages the capture sink holds.", nil, nil)
	captureBytesDesc    = prometheus.NewDesc("kuberelay_capture_bytes", "Bytes of the messages the capture sink holds.", nil, nil)
)

// WatchCapture exports kuberelay_capture_messages and _bytes, read from stats at each
// scrape.
func (m *Metrics) WatchCapture(stats func() (int, int64)) {
	m.Registry.MustRegister(&captureCollector{stats: stats})
}

type captureCollector struct{ stats func() (int, int64) }

func (c *captureCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- captureMessagesDesc
	ch <- captureBytesDesc
}

func (c *captureCollector) Collect(ch chan<- prometheus.Metric) {
	n, b := c.stats()
	ch <- prometheus.MustNewConstMetric(captureMessagesDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(captureBytesDesc, prometheus.GaugeValue, float64(b))
}
