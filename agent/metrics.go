package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/slotd/slotd/api"
)

// metrics are the daemon's Prometheus series, served at /v1/metrics.
type metrics struct {
	registry       *prometheus.Registry
	opsStarted     *prometheus.CounterVec
	opsFinished    *prometheus.CounterVec
	phaseSeconds   *prometheus.HistogramVec
	warmupFailures *prometheus.CounterVec
	rollbacks      *prometheus.CounterVec
	instances      *prometheus.GaugeVec
	queryErrors    *prometheus.CounterVec
	watchRequests  *prometheus.CounterVec
	leader         prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		opsStarted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_operations_started_total", Help: "Operations started, by site and kind.",
		}, []string{"site", "kind"}),
		opsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_operations_finished_total", Help: "Operations finished, by site, kind and outcome (succeeded, failed, cancelled).",
		}, []string{"site", "kind", "state"}),
		phaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "slotd_phase_duration_seconds",
			Help:    "Duration of operation phases, by site, kind, phase and outcome.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"site", "kind", "phase", "state"}),
		warmupFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_warmup_failures_total", Help: "Swaps stopped because an instance did not warm up.",
		}, []string{"site"}),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_rollbacks_total", Help: "Rollbacks started, by site and trigger (api, monitor).",
		}, []string{"site", "trigger"}),
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "slotd_instances", Help: "Instances per slot as Consul shows them, by health (passing or not).",
		}, []string{"site", "slot", "health"}),
		queryErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_blocking_query_errors_total", Help: "Failed queries to Consul or Nomad.",
		}, []string{"backend"}),
		watchRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_watch_requests_total", Help: "Blocking queries sent by the watches of a site, by site and watch (kv, nomad, consul).",
		}, []string{"site", "watch"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "slotd_leader", Help: "1 while this daemon holds the leader lock.",
		}),
	}
	m.registry.MustRegister(m.opsStarted, m.opsFinished, m.phaseSeconds, m.warmupFailures,
		m.rollbacks, m.instances, m.queryErrors, m.watchRequests, m.leader,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) finished(op *api.Operation) {
	m.opsFinished.WithLabelValues(op.Site, op.Kind, op.State).Inc()
	if op.Kind == api.KindRollback {
		m.rollbacks.WithLabelValues(op.Site, op.Trigger).Inc()
	}
}
