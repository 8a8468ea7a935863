// Package metrics holds the daemon's Prometheus series, served at /v1/metrics.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/slotd/slotd/api"
)

// Metrics are the daemon's Prometheus series.
type Metrics struct {
	Registry       *prometheus.Registry
	OpsStarted     *prometheus.CounterVec
	OpsFinished    *prometheus.CounterVec
	PhaseSeconds   *prometheus.HistogramVec
	WarmupFailures *prometheus.CounterVec
	Rollbacks      *prometheus.CounterVec
	Instances      *prometheus.GaugeVec
	QueryErrors    *prometheus.CounterVec
	WatchRequests  *prometheus.CounterVec
	Leader         prometheus.Gauge
	// AnalysisValue is what each analysis measured last; absent while it measures nothing.
	AnalysisValue       *prometheus.GaugeVec
	AnalysisEvaluations *prometheus.CounterVec
}

func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		OpsStarted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_operations_started_total", Help: "Operations started, by site and kind.",
		}, []string{"site", "kind"}),
		OpsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_operations_finished_total", Help: "Operations finished, by site, kind and outcome (succeeded, failed, cancelled).",
		}, []string{"site", "kind", "state"}),
		PhaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "slotd_phase_duration_seconds",
			Help:    "Duration of operation phases, by site, kind, phase and outcome.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"site", "kind", "phase", "state"}),
		WarmupFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_warmup_failures_total", Help: "Swaps stopped because an instance did not warm up.",
		}, []string{"site"}),
		Rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_rollbacks_total", Help: "Rollbacks started, by site and trigger (api, monitor).",
		}, []string{"site", "trigger"}),
		Instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "slotd_instances", Help: "Instances per slot as Consul shows them, by health (passing or not).",
		}, []string{"site", "slot", "health"}),
		QueryErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_blocking_query_errors_total", Help: "Failed queries to Consul or Nomad.",
		}, []string{"backend"}),
		WatchRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_watch_requests_total", Help: "Blocking queries sent by the watches of a site, by site and watch (kv, nomad, consul).",
		}, []string{"site", "watch"}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "slotd_leader", Help: "1 while this daemon holds the Leader lock.",
		}),
		AnalysisValue: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "slotd_analysis_value", Help: "The value an analysis measured last, by site and analysis; absent while it measures nothing.",
		}, []string{"site", "analysis"}),
		AnalysisEvaluations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slotd_analysis_evaluations_total", Help: "Evaluations of analyses, by site, analysis and verdict (pass, fail, inconclusive).",
		}, []string{"site", "analysis", "verdict"}),
	}
	m.Registry.MustRegister(m.OpsStarted, m.OpsFinished, m.PhaseSeconds, m.WarmupFailures,
		m.Rollbacks, m.Instances, m.QueryErrors, m.WatchRequests, m.Leader, m.AnalysisValue, m.AnalysisEvaluations,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) Finished(op *api.Operation) {
	site := op.Site
	if site == "" && op.Group != "" {
		site = "group/" + op.Group // a group operation; its members' parts count for their sites
	}
	m.OpsFinished.WithLabelValues(site, op.Kind, op.State).Inc()
	if op.Kind == api.KindRollback {
		m.Rollbacks.WithLabelValues(site, op.Trigger).Inc()
	}
}

// Measured counts one evaluation of an analysis of site (analysis.Observer).
func (m *Metrics) Measured(site string, ms api.Measurement) {
	m.AnalysisEvaluations.WithLabelValues(site, ms.Analysis, ms.Verdict).Inc()
	if ms.Value == nil {
		m.AnalysisValue.DeleteLabelValues(site, ms.Analysis)
		return
	}
	m.AnalysisValue.WithLabelValues(site, ms.Analysis).Set(*ms.Value)
}
