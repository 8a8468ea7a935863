package engine

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// fakeProm answers Prometheus instant queries with value ("" : no data; "down": a 503), and
// keeps the queries it was asked.
type fakeProm struct {
	mu      sync.Mutex
	value   string
	queries []string
}

func (p *fakeProm) set(v string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.value = v
}

func (p *fakeProm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	p.mu.Lock()
	v := p.value
	p.queries = append(p.queries, r.Form.Get("query"))
	p.mu.Unlock()
	switch v {
	case "down":
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
	case "":
		fmt.Fprint(w, `{"status":"success","data":{"resultType":"vector","result":[]}}`)
	default:
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%d,%q]}]}}`, time.Now().Unix(), v)
	}
}

// analysed is monitored with one analysis of the error rate against prom (max 0.01, 50 ms,
// failures 2), and a monitor window of window.
func analysed(t *testing.T, value string, window time.Duration, before bool, rule string) (*config.Site, *fakeProm) {
	prom := &fakeProm{value: value}
	srv := httptest.NewServer(prom)
	t.Cleanup(srv.Close)
	cfg := monitored()
	cfg.Monitor.Window = window
	maxRate := 0.01
	cfg.Monitor.Analyses = []*config.Analysis{{Name: "errors", Prometheus: srv.URL, Max: &maxRate,
		Query:    `sum(rate(app_requests_total{lane="{{.Lane}}",code=~"5.."}[1m])) / sum(rate(app_requests_total{lane="{{.Lane}}"}[1m])) > 0 or {{.Slot}}`,
		Interval: 50 * time.Millisecond, Failures: 2, OnInconclusive: rule, BeforeSwitch: before, BeforeSwitchFor: 100 * time.Millisecond}}
	return cfg, prom
}

func TestAnalysisRollsBackInTheMonitor(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	cfg, prom := analysed(t, "0.001", time.Minute, false, config.InconclusivePause)
	e, _, s := ownedSite(t, kv, cfg)
	rec := &recorder{}
	e.notify = rec
	swap := monitoringSwap(t, e)
	time.Sleep(200 * time.Millisecond)
	prom.set("0.05")
	final := endOf(t, e, s, swap.ID)
	assert.Equal(t, api.StateFailed, final.State)
	assert.Contains(t, final.Error, `analysis "errors" failed 2 times in a row`)
	require.NotNil(t, final.Next, "the rollback is journaled with the decision")
	var pass, fail int
	for _, m := range final.Measurements {
		assert.Equal(t, api.PhaseMonitor, m.Phase)
		switch m.Verdict {
		case api.VerdictPass:
			pass++
		case api.VerdictFail:
			fail++
		}
	}
	assert.Positive(t, pass, "the measurements before the error rate rose are kept")
	assert.Equal(t, 2, fail)
	prom.mu.Lock()
	assert.Contains(t, prom.queries[0], `lane="b"`, "the query names the lane judged")
	assert.Contains(t, prom.queries[0], "or production")
	prom.mu.Unlock()
	assert.Contains(t, rec.told(), "swap.analysis_failed")
	assert.Contains(t, rec.told(), "swap.rolled_back")
}

func TestAnalysisBeforeTheSwitch(t *testing.T) {
	t.Run("a failure fails the swap before any route moves", func(t *testing.T) {
		kv := storetest.New()
		kvSlots(kv, false)
		cfg, _ := analysed(t, "0.3", time.Minute, true, config.InconclusivePause)
		e, lanes, s := ownedSite(t, kv, cfg)
		op, err := e.Swap("web", "staging", "production", false)
		require.NoError(t, err)
		final := endOf(t, e, s, op.ID)
		assert.Equal(t, api.StateFailed, final.State)
		assert.Contains(t, final.Error, "before the switch")
		assert.False(t, final.Switched)
		assert.Equal(t, "web-a", kv.Value("slotd/sites/web/slots/production/lane"))
		require.NotEmpty(t, final.Measurements)
		assert.Equal(t, api.PhaseWarm, final.Measurements[0].Phase)
		lanes.mu.Lock()
		assert.NotContains(t, strings.Join(lanes.calls, "\n"), makeB, "no route moved")
		lanes.mu.Unlock()
	})
	t.Run("inconclusive, pause: the swap waits previewing, -complete goes on", func(t *testing.T) {
		kv := storetest.New()
		kvSlots(kv, false)
		cfg, _ := analysed(t, "down", 0, true, config.InconclusivePause)
		cfg.Monitor.RollbackWindow = 0
		e, _, s := ownedSite(t, kv, cfg)
		op, err := e.Swap("web", "staging", "production", false)
		require.NoError(t, err)
		waitState(t, e, op.ID, api.StatePreviewing)
		cur := e.ops.get(op.ID)
		assert.Contains(t, cur.Waiting, "errors")
		assert.Equal(t, api.VerdictInconclusive, cur.Measurements[0].Verdict)
		_, err = e.Complete(context.Background(), op.ID)
		require.NoError(t, err)
		final := endOf(t, e, s, op.ID)
		require.Equal(t, api.StateSucceeded, final.State, final.Error)
		assert.Equal(t, "web-b", kv.Value("slotd/sites/web/slots/production/lane"))
	})
}

// TestAnalysisPausesTheWindow: Prometheus is unreachable when the window ends: with "pause",
// the window goes on until the analysis measures again.
func TestAnalysisPausesTheWindow(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	cfg, prom := analysed(t, "down", 3*time.Second, false, config.InconclusivePause)
	cfg.Monitor.RollbackWindow = 0
	// An interval longer than a second: each step of the paused window must be long enough
	// for an evaluation (one interval after a watch starts).
	cfg.Monitor.Analyses[0].Interval = 1200 * time.Millisecond
	e, _, s := ownedSite(t, kv, cfg)
	op, err := e.Swap("web", "staging", "production", false)
	require.NoError(t, err)
	waitState(t, e, op.ID, api.StateMonitoring)
	time.Sleep(4 * time.Second)
	cur := e.ops.get(op.ID)
	require.Equal(t, api.StateMonitoring, cur.State, "the window is over but the analysis measures nothing")
	assert.Contains(t, cur.Phase(api.PhaseMonitor).Message, "waiting for analyses")
	prom.set("0.001")
	final := endOf(t, e, s, op.ID)
	assert.Equal(t, api.StateSucceeded, final.State, final.Error)
}
