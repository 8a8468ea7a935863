package engine

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// TestSwapScale: the scale is sticky. The candidate is planned and applied at the target's
// scale, the former target lane settles at the source's, and every path that puts a lane back
// keeps it at its own slot's scale. Production's lane a runs app=3, staging's lane b app=1.
func TestSwapScale(t *testing.T) {
	tests := []struct {
		name       string
		op         *api.Operation
		exchanged  bool
		recover    bool
		prod       func(*config.Slot) // the production slot's declaration
		staging    func(*config.Slot)
		liveA      int // lane a runs this many instances (scaled by hand), 0: as KV says
		noWarm     bool
		planErr    error
		failLane   func(call string) bool
		wantScales []string
		wantErr    string
		wantKVProd string // production's scale document afterwards, "" to skip
	}{
		{
			name: "undeclared: each slot keeps the counts KV holds for it",
			op:   phased(),
			wantScales: []string{"plan b as production app=3", "b as production app=3", "b as production app=3",
				"a as production app=3", "a as staging app=1"},
			wantKVProd: `{"app": 3}`,
		},
		{
			name:  "declared in HCL: the declaration wins over KV",
			op:    phased(),
			prod:  func(s *config.Slot) { s.Scale = map[string]int{"app": 5} },
			liveA: 5, // as the declaration made it
			wantScales: []string{"plan b as production app=5", "b as production app=5", "b as production app=5",
				"a as production app=5", "a as staging app=1"},
		},
		{
			name:  "live: production keeps what it runs in Nomad, scaled by hand to 4",
			op:    phased(),
			prod:  func(s *config.Slot) { s.ScaleLive = true },
			liveA: 4,
			wantScales: []string{"plan b as production app=4 live", "b as production app=4 live", "b as production app=4 live",
				"a as production app=4 live", "a as staging app=1"},
			wantKVProd: `{"app": 4}`,
		},
		{
			name:       "the pre-flight fails: nothing moves",
			op:         phased(),
			planErr:    errors.New("nomad cannot place web-b"),
			wantScales: []string{"plan b as production app=3"},
			wantErr:    "pre-flight: nomad cannot place web-b",
		},
		{
			name:       "warm-up fails: the source lane goes back to its own scale",
			op:         phased(),
			noWarm:     true,
			wantScales: []string{"plan b as production app=3", "b as production app=3", "b as staging app=1"},
			wantErr:    "no instances",
		},
		{
			name:    "warm-up fails with a live source: its scale is what it ran before apply, not the target's",
			op:      phased(),
			staging: func(s *config.Slot) { s.ScaleLive = true },
			noWarm:  true,
			wantScales: []string{"plan b as production app=3", "b as production app=3",
				"b as staging app=1 live"},
			wantErr: "no instances",
		},
		{
			name:     "the break fails: both lanes back at their own scales",
			op:       phased(),
			failLane: func(c string) bool { return c == breakA },
			wantScales: []string{"plan b as production app=3", "b as production app=3", "b as production app=3",
				"a as production app=3", "a as production app=3", "b as staging app=1"},
			wantErr: "take the routes of production off lane a",
		},
		{
			name:       "resumed after the exchange: the former production lane settles at staging's scale",
			op:         exchanged(api.PhaseSucceeded, api.PhaseSucceeded, api.PhaseSucceeded),
			exchanged:  true,
			recover:    true,
			wantScales: []string{"a as staging app=1"},
		},
		{
			name:       "a crash inside apply is undone: each lane at its slot's scale",
			op:         phased(api.PhaseRunning),
			recover:    true,
			wantScales: []string{"a as production app=3", "b as staging app=1"},
			wantErr:    "interrupted in state",
		},
		{
			name: "a swap journaled before the pre-flight existed goes on without it",
			op: func() *api.Operation {
				o := phased()
				o.Phases = o.Phases[1:]
				return o
			}(),
			wantScales: []string{"b as production app=3", "b as production app=3", "a as production app=3", "a as staging app=1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
			defer app.Close()
			kv := storetest.New()
			kvSlots(kv, tc.exchanged)
			kv.Put("slotd/sites/web/slots/production/scale", `{"app": 3}`)
			kv.Put("slotd/sites/web/slots/staging/scale", `{"app": 1}`)
			prodLane, stagingLane := "a", "b"
			if tc.exchanged {
				prodLane, stagingLane = "b", "a"
			}
			lanes := &fakeLanes{
				versions: map[string]uint64{"a": 10, "b": 20}, fail: tc.failLane, planErr: tc.planErr,
				counts: map[string]map[string]int{prodLane: {"app": 3}, stagingLane: {"app": 1}},
				serves: map[string]string{prodLane: "production", stagingLane: "staging"},
			}
			if tc.liveA > 0 {
				lanes.counts["a"] = map[string]int{"app": tc.liveA}
			}
			if !tc.noWarm {
				lanes.instance = strings.TrimPrefix(app.URL, "http://")
			}
			e := testEngine(kv, lanes)
			e.httpClient = app.Client()
			cfg := testSite()
			if tc.prod != nil {
				tc.prod(cfg.Slot("production"))
			}
			if tc.staging != nil {
				tc.staging(cfg.Slot("staging"))
			}
			require.NoError(t, e.store.CreateOperation(tc.op))
			fn := e.swapOp(cfg, "staging", "production")
			if tc.recover {
				fn = e.recoverOp(cfg, tc.op)
			}
			err := fn(context.Background(), e.newRun(nil, context.Background(), tc.op))
			if tc.wantErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.wantErr)
			}
			assert.Equal(t, tc.wantScales, lanes.scales)
			if tc.wantKVProd != "" {
				assert.JSONEq(t, tc.wantKVProd, kv.Value("slotd/sites/web/slots/production/scale"))
			}
			assert.JSONEq(t, `{"app": 1}`, kv.Value("slotd/sites/web/slots/staging/scale"), "staging's scale stays")
		})
	}
}
