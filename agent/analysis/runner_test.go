package analysis

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/metrics"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

var _ Observer = (*metrics.Metrics)(nil)

// tick is the interval of the analyses under test: short, since only the order of the
// evaluations matters, but each query may take a tick (the runner's query timeout), which a
// loaded machine must be able to answer in.
const tick = 100 * time.Millisecond

var vars = Vars{Site: "web", Service: "web", Slot: "production", Lane: "web-b", Version: "2", OtherLane: "web-a", OtherVersion: "1"}

// testAnalysis is an analysis of max 0.01 at f, whose query renders to name{lane="web-b"}.
func testAnalysis(f *fakeProm, name string, failures int, rule string) *config.Analysis {
	return &config.Analysis{
		Name: name, Prometheus: f.URL, Query: name + `{lane="{{.Lane}}"}`, Max: ptr(0.01),
		Interval: tick, Failures: failures, OnInconclusive: rule,
		BeforeSwitch: true, BeforeSwitchFor: 3 * tick,
	}
}

func query(name string) string { return name + `{lane="web-b"}` }

var (
	unavailable = reply{http.StatusServiceUnavailable, errorBody("unavailable", "prometheus is shutting down")}
	verdicts    = func(ms []api.Measurement) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.Analysis + ":" + m.Verdict
		}
		return out
	}
)

func TestWatch(t *testing.T) {
	cases := []struct {
		name     string
		failures int
		rule     string
		replies  []reply
		stop     int    // cancel after this many measurements; 0: run until Watch returns
		failed   string // the *Failed's message; empty: Watch returns nil
		verdicts []string
		paused   []bool
	}{
		{
			name: "fails at once", failures: 1, rule: "pause", replies: []reply{pass("0.052")},
			failed: `analysis "errors" failed: 0.052 > max 0.01`, verdicts: []string{"errors:fail"},
		},
		{
			name: "fails twice in a row", failures: 2, rule: "pause", replies: []reply{pass("0.002"), pass("0.052"), pass("0.049")},
			failed:   `analysis "errors" failed 2 times in a row: 0.052 > max 0.01, 0.049 > max 0.01`,
			verdicts: []string{"errors:pass", "errors:fail", "errors:fail"},
		},
		{
			name: "a pass between resets the count", failures: 2, rule: "pause", stop: 4,
			replies:  []reply{pass("0.052"), pass("0.002"), pass("0.052"), pass("0.002")},
			verdicts: []string{"errors:fail", "errors:pass", "errors:fail", "errors:pass"},
		},
		{
			name: "inconclusive counts as a pass", failures: 2, rule: "pass", stop: 4,
			replies:  []reply{pass("0.052"), noDataReply, pass("0.052"), pass("0.002")},
			verdicts: []string{"errors:fail", "errors:inconclusive", "errors:fail", "errors:pass"},
		},
		{
			name: "inconclusive counts as a failure", failures: 2, rule: "fail", replies: []reply{pass("0.052"), noDataReply},
			failed:   `analysis "errors" failed 2 times in a row: 0.052 > max 0.01, the query returned no data`,
			verdicts: []string{"errors:fail", "errors:inconclusive"},
		},
		{
			name: "inconclusive pauses: neither resets nor counts", failures: 2, rule: "pause",
			replies:  []reply{pass("0.052"), noDataReply, pass("0.049")},
			failed:   `analysis "errors" failed 2 times in a row: 0.052 > max 0.01, 0.049 > max 0.01`,
			verdicts: []string{"errors:fail", "errors:inconclusive", "errors:fail"},
			paused:   []bool{true, false},
		},
		{
			name: "pause holds while prometheus cannot answer", failures: 1, rule: "pause", stop: 4,
			replies:  []reply{noDataReply, unavailable, pass("0.002"), pass("0.003")},
			verdicts: []string{"errors:inconclusive", "errors:inconclusive", "errors:pass", "errors:pass"},
			paused:   []bool{true, false},
		},
		{
			name: "pause while nothing is measured", failures: 1, rule: "pause", stop: 3, replies: []reply{vector("1", "2")},
			verdicts: []string{"errors:inconclusive", "errors:inconclusive", "errors:inconclusive"},
			paused:   []bool{true},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeProm(t)
			f.on(query("errors"), tc.replies...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []api.Measurement
			var paused []bool
			err := NewRunner(nil, nil).Watch(ctx, []*config.Analysis{testAnalysis(f, "errors", tc.failures, tc.rule)}, vars, "monitor",
				func(m api.Measurement) {
					got = append(got, m)
					if len(got) == tc.stop {
						cancel()
					}
				},
				func(p bool) { paused = append(paused, p) })
			require.NotErrorIs(t, ctx.Err(), context.DeadlineExceeded, "Watch ran until the test's deadline")
			if tc.failed != "" {
				var failed *Failed
				require.ErrorAs(t, err, &failed)
				assert.Equal(t, tc.failed, err.Error())
				assert.Equal(t, "errors", failed.Analysis)
			} else {
				assert.NoError(t, err)
			}
			assert.Equal(t, tc.verdicts, verdicts(got))
			assert.Equal(t, tc.paused, paused)
			for _, m := range got {
				assert.Equal(t, "monitor", m.Phase)
				assert.False(t, m.At.IsZero())
				assert.Equal(t, m.Verdict == api.VerdictInconclusive, m.Value == nil, "a value is absent exactly when nothing was measured")
			}
		})
	}
}

// TestWatchFirstAfterAnInterval: the first evaluation is one interval after the call, and
// nothing is recorded once Watch returned.
func TestWatchFirstAfterAnInterval(t *testing.T) {
	f := newFakeProm(t)
	f.on(query("errors"), pass("0.002"))
	a := testAnalysis(f, "errors", 1, "pause")
	a.Interval = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	recorded := 0
	err := NewRunner(nil, nil).Watch(ctx, []*config.Analysis{a}, vars, "monitor", func(api.Measurement) { recorded++ }, nil)
	assert.NoError(t, err, "Watch returns nil when its context ends")
	assert.Zero(t, recorded, "no evaluation before one interval")
	time.Sleep(2 * a.Interval)
	assert.Zero(t, recorded, "no evaluation after Watch returned")
	assert.Empty(t, f.asked)
}

// TestWatchSeveral: each analysis is counted on its own, and the one that fails is named.
func TestWatchSeveral(t *testing.T) {
	f := newFakeProm(t)
	f.on(query("errors"), pass("0.002"))
	f.on(query("latency"), pass("0.002"), pass("0.3"), pass("0.002"), pass("0.4"), pass("0.5"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []api.Measurement
	err := NewRunner(nil, nil).Watch(ctx, []*config.Analysis{
		testAnalysis(f, "errors", 2, "pause"), testAnalysis(f, "latency", 2, "pause"),
	}, vars, "monitor", func(m api.Measurement) { got = append(got, m) }, nil)
	var failed *Failed
	require.ErrorAs(t, err, &failed)
	assert.Equal(t, "latency", failed.Analysis)
	assert.Equal(t, []*float64{ptr(0.4), ptr(0.5)}, failed.Values())
	var latency []string
	for _, m := range got {
		if m.Analysis == "latency" {
			latency = append(latency, m.Message)
		}
	}
	assert.Equal(t, []string{"0.002 ≤ max 0.01", "0.3 > max 0.01", "0.002 ≤ max 0.01", "0.4 > max 0.01", "0.5 > max 0.01"}, latency)
	assert.Contains(t, verdicts(got), "errors:pass", "the other analysis was evaluated meanwhile")
}

func TestWatchRendersTheQuery(t *testing.T) {
	f := newFakeProm(t)
	f.on(`sum(rate(app_requests_total{lane="web-b",code=~"5.."}[1m])) - sum(rate(app_requests_total{lane="web-a",code=~"5.."}[1m]))`, scalar("0.5"))
	a := testAnalysis(f, "errors", 1, "pause")
	a.Query = `sum(rate(app_requests_total{lane="{{.Lane}}",code=~"5.."}[1m])) - sum(rate(app_requests_total{lane="{{.OtherLane}}",code=~"5.."}[1m]))`
	err := NewRunner(nil, nil).Watch(context.Background(), []*config.Analysis{a}, vars, "monitor", nil, nil)
	assert.EqualError(t, err, `analysis "errors" failed: 0.5 > max 0.01`)
}

func TestWatchNothingToWatch(t *testing.T) {
	assert.NoError(t, NewRunner(nil, nil).Watch(context.Background(), nil, vars, "monitor", nil, nil))
}

// TestMetrics: every measurement reaches the observer; the value gauge is absent while the
// analysis measures nothing.
func TestMetrics(t *testing.T) {
	f := newFakeProm(t)
	f.on(query("errors"), pass("0.002"), pass("0.004"), noDataReply, pass("0.05"))
	m := metrics.New()
	err := NewRunner(nil, m).Watch(context.Background(), []*config.Analysis{testAnalysis(f, "errors", 1, "pause")}, vars, "monitor",
		func(ms api.Measurement) {
			switch ms.Message {
			case "0.004 ≤ max 0.01":
				assert.Equal(t, map[string]float64{"analysis=errors/site=web": 0.004}, gauges(t, m))
			case "the query returned no data":
				assert.Empty(t, gauges(t, m))
			}
		}, nil)
	require.Error(t, err)
	assert.Equal(t, map[string]float64{"analysis=errors/site=web": 0.05}, gauges(t, m))
	assert.Equal(t, map[string]float64{"analysis=errors/site=web/verdict=pass": 2, "analysis=errors/site=web/verdict=inconclusive": 1, "analysis=errors/site=web/verdict=fail": 1}, counters(t, m))
}

func family(t testing.TB, m *metrics.Metrics, name string) []*dto.Metric {
	t.Helper()
	fams, err := m.Registry.Gather()
	require.NoError(t, err)
	for _, fam := range fams {
		if fam.GetName() == name {
			return fam.GetMetric()
		}
	}
	return nil
}

func labels(m *dto.Metric) string {
	s := ""
	for _, l := range m.GetLabel() {
		if s != "" {
			s += "/"
		}
		s += l.GetName() + "=" + l.GetValue()
	}
	return s
}

func gauges(t testing.TB, m *metrics.Metrics) map[string]float64 {
	out := map[string]float64{}
	for _, s := range family(t, m, "slotd_analysis_value") {
		out[labels(s)] = s.GetGauge().GetValue()
	}
	return out
}

func counters(t testing.TB, m *metrics.Metrics) map[string]float64 {
	out := map[string]float64{}
	for _, s := range family(t, m, "slotd_analysis_evaluations_total") {
		out[labels(s)] = s.GetCounter().GetValue()
	}
	return out
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name         string
		failures     int
		rule         string
		replies      []reply
		failed       string // the *Failed's message
		inconclusive string // the *Inconclusive's message
		verdicts     []string
	}{
		{
			name: "passes", failures: 1, rule: "pause", replies: []reply{pass("0.002")},
			verdicts: []string{"errors:pass", "errors:pass", "errors:pass"},
		},
		{
			name: "fails", failures: 2, rule: "pause", replies: []reply{pass("0.002"), pass("0.052"), pass("0.049")},
			failed:   `analysis "errors" failed 2 times in a row: 0.052 > max 0.01, 0.049 > max 0.01`,
			verdicts: []string{"errors:pass", "errors:fail", "errors:fail"},
		},
		{
			name: "fails as soon as it failed", failures: 1, rule: "pause", replies: []reply{pass("0.052")},
			failed: `analysis "errors" failed: 0.052 > max 0.01`, verdicts: []string{"errors:fail"},
		},
		{
			name: "measured nothing, pause", failures: 1, rule: "pause", replies: []reply{noDataReply, unavailable, noDataReply},
			inconclusive: `analysis "errors" measured nothing in 3 evaluation(s) before the switch (last: the query returned no data); on_inconclusive = "pause" holds the swap`,
			verdicts:     []string{"errors:inconclusive", "errors:inconclusive", "errors:inconclusive"},
		},
		{
			name: "measured nothing, fail", failures: 5, rule: "fail", replies: []reply{noDataReply},
			failed:   `analysis "errors" failed 3 times in a row: the query returned no data, the query returned no data, the query returned no data`,
			verdicts: []string{"errors:inconclusive", "errors:inconclusive", "errors:inconclusive"},
		},
		{
			name: "measured nothing, pass", failures: 1, rule: "pass", replies: []reply{noDataReply},
			verdicts: []string{"errors:inconclusive", "errors:inconclusive", "errors:inconclusive"},
		},
		{
			name: "measured something, pause", failures: 1, rule: "pause", replies: []reply{noDataReply, pass("0.002"), unavailable},
			verdicts: []string{"errors:inconclusive", "errors:pass", "errors:inconclusive"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeProm(t)
			f.on(query("errors"), tc.replies...)
			f.on(query("later"), pass("0.9"))
			later := testAnalysis(f, "later", 1, "pause")
			later.BeforeSwitch = false
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []api.Measurement
			err := NewRunner(nil, nil).Check(ctx, []*config.Analysis{testAnalysis(f, "errors", tc.failures, tc.rule), later}, vars, "warm",
				func(m api.Measurement) { got = append(got, m) })
			switch {
			case tc.failed != "":
				var failed *Failed
				require.ErrorAs(t, err, &failed)
				assert.Equal(t, tc.failed, err.Error())
			case tc.inconclusive != "":
				var inc *Inconclusive
				require.ErrorAs(t, err, &inc)
				assert.Equal(t, tc.inconclusive, err.Error())
				assert.Equal(t, "errors", inc.Analysis)
			default:
				assert.NoError(t, err)
			}
			assert.Equal(t, tc.verdicts, verdicts(got), "before_switch_for / interval evaluations, of the analyses with before_switch only")
			for _, m := range got {
				assert.Equal(t, "warm", m.Phase)
			}
		})
	}
}

func TestCheckCancelled(t *testing.T) {
	f := newFakeProm(t)
	f.on(query("errors"), pass("0.002"))
	a := testAnalysis(f, "errors", 1, "pause")
	a.BeforeSwitchFor = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	err := NewRunner(nil, nil).Check(ctx, []*config.Analysis{a}, vars, "warm", func(api.Measurement) {
		if n++; n == 2 {
			cancel()
		}
	})
	assert.True(t, errors.Is(err, context.Canceled), "a check cut short passed nothing: %v", err)
}
