package engine

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// isExchange picks the swap's exchange: the transaction that binds production to lane b.
func isExchange(ops consulapi.KVTxnOps) bool {
	for _, op := range ops {
		if op.Key == "slotd/sites/web/slots/production/lane" && string(op.Value) == "web-b" {
			return true
		}
	}
	return false
}

// phased returns a swap operation whose phases after preflight have the given states, in
// swapPhases order; preflight succeeded when any state is given.
func phased(states ...string) *api.Operation {
	op := &api.Operation{ID: "op-test", Site: "web", Kind: api.KindSwap, Source: "staging", Target: "production", State: api.StatePending}
	pre := api.PhasePending
	if len(states) > 0 {
		pre = api.PhaseSucceeded
	}
	op.Phases = append(op.Phases, api.Phase{Name: api.PhasePreflight, State: pre})
	for i, p := range swapPhases[1:] {
		st := api.PhasePending
		if i < len(states) {
			st = states[i]
		}
		ph := api.Phase{Name: p, State: st}
		if st != api.PhasePending {
			now := time.Now()
			ph.StartedAt = &now
		}
		op.Phases = append(op.Phases, ph)
	}
	return op
}

// exchanged is phased with the exchange journaled: KV binds the slots the other way round.
func exchanged(states ...string) *api.Operation {
	op := phased(states...)
	op.Switched = true
	return op
}

// The lane moves of a swap of staging (lane b) into production (lane a), by name.
const (
	applyB   = "b as production [urlprefix-preview/] DB=prod-db FEATURE=staging-feature healthy"
	makeB    = "b as production [production urlprefix-www/] DB=prod-db FEATURE=staging-feature healthy"
	breakA   = "a as production [] DB=prod-db FEATURE=prod-feature tags"
	settleA  = "a as staging [staging urlprefix-staging/] DB=staging-db FEATURE=prod-feature healthy"
	restoreA = "a as production [production urlprefix-www/] DB=prod-db FEATURE=prod-feature tags"
	// giveBackA is restoreA when the switch itself fails: health-gated, as it runs.
	giveBackA = "a as production [production urlprefix-www/] DB=prod-db FEATURE=prod-feature healthy"
	restoreB  = "b as staging [staging urlprefix-staging/] DB=staging-db FEATURE=staging-feature healthy"
)

// appliedB is what lane b runs once apply moved it (applyB).
var appliedB = lanes.State{Slot: "production", Env: map[string]string{"DB": "prod-db", "FEATURE": "staging-feature"}}

// TestSwapResumeAndRestore runs the swap, its resume after a stop and its restore paths against
// a KV in memory and fake lanes: which lane moves to which state, in which order, and what KV
// binds afterwards. Make before break shows as order: a lane gets its routes back before the
// other loses them.
func TestSwapResumeAndRestore(t *testing.T) {
	tests := []struct {
		name      string
		op        *api.Operation
		exchanged bool // KV already holds the exchanged bindings
		recover   bool // run as the next leader's recovery of op
		noWarm    bool // the lane has no instance that answers warm-up
		failLane  func(call string) bool
		failTxn   func(consulapi.KVTxnOps) error
		lostTxn   func(consulapi.KVTxnOps) bool // commits, and its answer is lost
		wantCalls []string
		wantErr   string
		wantProd  string // the lane production is bound to afterwards
	}{
		{
			name:      "a whole swap",
			op:        phased(),
			wantCalls: []string{applyB, makeB, breakA, settleA},
			wantProd:  "b",
		},
		{
			name:      "handed off by a graceful stop between apply and warm: goes on",
			op:        func() *api.Operation { o := phased(api.PhaseSucceeded); o.HandedOff = true; return o }(),
			recover:   true,
			wantCalls: []string{makeB, breakA, settleA},
			wantProd:  "b",
		},
		{
			name:      "a crash right after apply, before warm: undone",
			op:        phased(api.PhaseSucceeded),
			recover:   true,
			wantCalls: []string{restoreA, restoreB},
			wantErr:   "interrupted in state",
			wantProd:  "a",
		},
		{
			name:      "resumed after the exchange: only settle is left",
			op:        exchanged(api.PhaseSucceeded, api.PhaseSucceeded, api.PhaseSucceeded),
			exchanged: true,
			recover:   true,
			wantCalls: []string{settleA},
			wantProd:  "b",
		},
		{
			name:      "killed after the exchange, before the switch's end was journaled: the switch ends, settle is left",
			op:        exchanged(api.PhaseSucceeded, api.PhaseSucceeded, api.PhaseRunning),
			exchanged: true,
			recover:   true,
			wantCalls: []string{settleA},
			wantProd:  "b",
		},
		{
			name:      "a crash inside apply is undone, the target's lane first",
			op:        phased(api.PhaseRunning),
			recover:   true,
			wantCalls: []string{restoreA, restoreB},
			wantErr:   "interrupted in state",
			wantProd:  "a",
		},
		{
			name:      "make fails: production keeps its routes, the source lane is put back",
			op:        phased(),
			failLane:  func(c string) bool { return c == makeB },
			wantCalls: []string{applyB, makeB, giveBackA, restoreB},
			wantErr:   "give lane b the routes of production",
			wantProd:  "a",
		},
		{
			name:      "a swap journaled with a failed phase is over: never rolled forward",
			op:        phased(api.PhaseSucceeded, api.PhaseSucceeded, api.PhaseFailed),
			recover:   true,
			wantCalls: []string{restoreA, restoreB},
			wantErr:   "interrupted",
			wantProd:  "a",
		},
		{
			name:      "a crash inside warm is undone",
			op:        phased(api.PhaseSucceeded, api.PhaseRunning),
			recover:   true,
			wantCalls: []string{restoreA, restoreB},
			wantErr:   "interrupted in state",
			wantProd:  "a",
		},
		{
			name:      "a crash inside the switch rolls forward: the candidate is warm",
			op:        phased(api.PhaseSucceeded, api.PhaseSucceeded, api.PhaseRunning),
			recover:   true,
			wantCalls: []string{makeB, breakA, settleA},
			wantProd:  "b",
		},
		{
			name:      "a crash inside settle settles again",
			op:        exchanged(api.PhaseSucceeded, api.PhaseSucceeded, api.PhaseSucceeded, api.PhasePending, api.PhaseRunning),
			exchanged: true,
			recover:   true,
			wantCalls: []string{settleA},
			wantProd:  "b",
		},
		{
			name:      "warm-up fails: the source lane is put back, production untouched",
			op:        phased(),
			noWarm:    true,
			wantCalls: []string{applyB, restoreB},
			wantErr:   "no instances",
			wantProd:  "a",
		},
		{
			name:      "the break fails: production's lane gets its routes back before the source lane loses them",
			op:        phased(),
			failLane:  func(c string) bool { return c == breakA },
			wantCalls: []string{applyB, makeB, breakA, giveBackA, restoreB},
			wantErr:   "take the routes of production off lane a",
			wantProd:  "a",
		},
		{
			name: "the exchange fails: routes back to production's lane first",
			op:   phased(),
			failTxn: func(ops consulapi.KVTxnOps) error {
				for _, op := range ops {
					if op.Key == "slotd/sites/web/slots/production/lane" && string(op.Value) == "web-b" {
						return errors.New("consul is away")
					}
				}
				return nil
			},
			wantCalls: []string{applyB, makeB, breakA, giveBackA, restoreB},
			wantErr:   "exchange the bindings",
			wantProd:  "a",
		},
		{
			name:      "the exchange commits but its answer is lost: the swap goes on, switched",
			op:        phased(),
			lostTxn:   isExchange,
			wantCalls: []string{applyB, makeB, breakA, settleA},
			wantProd:  "b",
		},
		{
			name: "the exchange's answer is lost and consul refused it: fenced, then routes back first",
			op:   phased(),
			failTxn: func(ops consulapi.KVTxnOps) error {
				if isExchange(ops) {
					return storetest.ErrLost
				}
				return nil
			},
			wantCalls: []string{applyB, makeB, breakA, giveBackA, restoreB},
			wantErr:   "connection reset",
			wantProd:  "a",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
			defer app.Close()
			kv := storetest.New()
			kvSlots(kv, tc.exchanged)
			fl := &fakeLanes{versions: map[string]uint64{"a": 10, "b": 20}, fail: tc.failLane}
			if !tc.noWarm {
				fl.instance = strings.TrimPrefix(app.URL, "http://")
			}
			if succeeded(tc.op, api.PhaseApply) && !tc.exchanged {
				fl.last = map[string]lanes.State{"web/b": appliedB}
			}
			e := testEngine(kv, fl)
			e.httpClient = app.Client()
			cfg := testSite()
			require.NoError(t, e.store.CreateOperation(tc.op))
			kv.Fail, kv.Lost = tc.failTxn, tc.lostTxn
			fn := e.swapOp(cfg, "staging", "production")
			if tc.recover {
				fn = e.recoverOp(cfg, tc.op)
			}
			r := e.newRun(nil, context.Background(), tc.op)
			err := fn(context.Background(), r)
			kv.Fail, kv.Lost = nil, nil

			if tc.wantErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.wantErr)
			}
			assert.Equal(t, tc.wantCalls, fl.calls)
			assert.Equal(t, jobspec.JobID("web", tc.wantProd), kv.Value("slotd/sites/web/slots/production/lane"), "production's lane in KV")
			journaled, jerr := e.store.RunningOperation("web")
			require.NoError(t, jerr)
			require.NotNil(t, journaled)
			swapped := tc.wantProd == "b"
			assert.Equal(t, swapped, journaled.Switched, "switched in the journal is the exchange")
			if swapped {
				sw := journaled.Phase(api.PhaseSwitch)
				assert.Equal(t, api.PhaseSucceeded, sw.State, "a switched swap's switch phase ended: %+v", sw)
			}
			feature := "prod-feature"
			if swapped {
				feature = "staging-feature"
			}
			assert.JSONEq(t, `{"FEATURE": "`+feature+`"}`, kv.Value("slotd/sites/web/slots/production/settings"), "production's swappable settings")
			assert.JSONEq(t, `{"DB": "prod-db"}`, kv.Value("slotd/sites/web/slots/production/sticky"), "production's sticky settings stay")
		})
	}
}

// TestHoldAndInstantRollback: after the switch the former production lane holds production's
// settings with only its previous_tags until the rollback window ends, then settles; a
// swap back while it holds goes straight to the switch, and a swap that ends because another
// operation starts leaves the lane held for it.
func TestHoldAndInstantRollback(t *testing.T) {
	const (
		holdA   = "a as production [urlprefix-previous/] DB=prod-db FEATURE=prod-feature tags"
		makeA   = "a as production [production urlprefix-www/] DB=prod-db FEATURE=prod-feature healthy"
		breakB  = "b as production [] DB=prod-db FEATURE=staging-feature tags"
		settleB = "b as staging [staging urlprefix-staging/] DB=staging-db FEATURE=staging-feature healthy"
	)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer app.Close()
	setup := func(window time.Duration) (*Engine, *fakeLanes, *config.Site, *storetest.KV) {
		kv := storetest.New()
		kvSlots(kv, false)
		lanes := &fakeLanes{versions: map[string]uint64{"a": 10, "b": 20}, instance: strings.TrimPrefix(app.URL, "http://")}
		e := testEngine(kv, lanes)
		e.httpClient = app.Client()
		cfg := testSite()
		cfg.Slots[0].PreviousTags = []string{"urlprefix-previous/"}
		cfg.Monitor = &config.Monitor{RollbackWindow: window, Threshold: 1}
		return e, lanes, cfg, kv
	}
	// swapOnce runs op as a swap; during gets the run and the operation's ID (the run owns op).
	swapOnce := func(e *Engine, cfg *config.Site, op *api.Operation, during func(r *run, id string)) error {
		require.NoError(t, e.store.CreateOperation(op))
		r := e.newRun(nil, context.Background(), op)
		if during != nil {
			go during(r, op.ID)
		}
		return e.swapOp(cfg, op.Source, op.Target)(context.Background(), r)
	}

	t.Run("the hold ends with the window, then the lane settles", func(t *testing.T) {
		e, lanes, cfg, _ := setup(300 * time.Millisecond)
		op := phased()
		start := time.Now()
		require.NoError(t, swapOnce(e, cfg, op, nil))
		assert.Equal(t, []string{applyB, makeB, holdA, settleA}, lanes.calls)
		sw, settle := op.Phase(api.PhaseSwitch), op.Phase(api.PhaseSettle)
		require.NotNil(t, settle.StartedAt)
		assert.GreaterOrEqual(t, settle.StartedAt.Sub(*sw.EndedAt), 300*time.Millisecond, "settle waits for the rollback window")
		assert.Less(t, time.Since(start), 10*time.Second)
		assert.Equal(t, api.PhaseSucceeded, settle.State)
	})

	t.Run("the next operation ends the hold and leaves the lane held; a swap back is instant", func(t *testing.T) {
		e, lanes, cfg, kv := setup(time.Minute)
		op := phased()
		err := swapOnce(e, cfg, op, sendWhenHolding(e, ctlEndMonitor))
		require.NoError(t, err)
		assert.Equal(t, []string{applyB, makeB, holdA}, lanes.calls, "the held lane is not settled by the swap")
		assert.Equal(t, api.PhaseSkipped, op.Phase(api.PhaseSettle).State)
		assert.Same(t, op, leftHeld(op))
		assert.Equal(t, "web-a", strings.TrimSpace(kv.Value("slotd/sites/web/slots/staging/lane")), "KV binds staging to the held lane")

		lanes.calls = nil
		cfg.Monitor.RollbackWindow = 0
		back := phased()
		back.ID, back.Kind, back.RollbackOf = "op-back", api.KindRollback, op.ID
		require.NoError(t, e.store.FinishOperation(op, 0))
		require.NoError(t, swapOnce(e, cfg, back, nil))
		assert.True(t, back.Instant, "a swap back onto the held lane is instant")
		assert.Equal(t, api.PhaseSkipped, back.Phase(api.PhaseApply).State)
		assert.Equal(t, api.PhaseSkipped, back.Phase(api.PhaseWarm).State)
		assert.Equal(t, []string{makeA, breakB, settleB}, lanes.calls, "switch only: make, break, then the other lane settles")
		assert.Equal(t, "web-a", kv.Value("slotd/sites/web/slots/production/lane"))
	})

	t.Run("settle ends the hold now, a cancel ends the monitor and settles", func(t *testing.T) {
		for _, c := range []string{ctlSettle, ctlFinish} {
			e, lanes, cfg, _ := setup(time.Minute)
			op := phased()
			start := time.Now()
			err := swapOnce(e, cfg, op, sendWhenHolding(e, c))
			require.NoError(t, err, c)
			assert.Equal(t, []string{applyB, makeB, holdA, settleA}, lanes.calls, c)
			assert.Less(t, time.Since(start), 30*time.Second, c)
		}
	})
}

// sendWhenHolding sends control c to a run once its operation holds.
func sendWhenHolding(e *Engine, c string) func(r *run, id string) {
	return func(r *run, id string) {
		for cur := e.ops.get(id); cur == nil || cur.State != api.StateHolding; cur = e.ops.get(id) {
			time.Sleep(5 * time.Millisecond)
		}
		r.control <- c
	}
}

// TestTouchesHeld: which operations settle a lane that a swap left held before they run.
func TestTouchesHeld(t *testing.T) {
	tests := []struct {
		op   api.Operation
		want bool
	}{
		{api.Operation{Kind: api.KindRollback, Source: "staging", Target: "production"}, true},
		{api.Operation{Kind: api.KindSwap, Source: "qa", Target: "staging"}, true},
		{api.Operation{Kind: api.KindSwap, Source: "qa", Target: "production"}, false},
		{api.Operation{Kind: api.KindDeploy, Slot: "staging"}, true},
		{api.Operation{Kind: api.KindDeploy, Slot: "production"}, false},
		{api.Operation{Kind: api.KindScale, Slot: "production"}, false},
		{api.Operation{Kind: api.KindSettings}, false},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, touchesHeld(&tc.op, "staging"), "%+v", tc.op)
	}
}

// TestOperationEnds: however an operation ends (a panic inside it, a history that Consul
// refuses for a while or for good), it ends once: in history, never run again.
func TestOperationEnds(t *testing.T) {
	historyKey := func(ops consulapi.KVTxnOps) bool {
		for _, op := range ops {
			if strings.Contains(op.Key, "/history/") {
				return true
			}
		}
		return false
	}
	tests := []struct {
		name         string
		fn           opFunc
		refuse       int // how many moves into history Consul refuses
		wantState    string
		wantErr      string
		wantPending  bool // still journaled after the run (a later start moves it)
		wantHistoryN int
	}{
		{name: "a panic fails the operation", fn: func(context.Context, *run) error { panic("boom") },
			wantState: api.StateFailed, wantErr: "panic: boom", wantHistoryN: 1},
		{name: "a refused move is tried again", fn: func(context.Context, *run) error { return nil }, refuse: 2,
			wantState: api.StateSucceeded, wantHistoryN: 1},
		{name: "a move refused for good is done by the next reader, not re-run", fn: func(context.Context, *run) error { return errors.New("nope") },
			refuse: 100, wantState: api.StateFailed, wantErr: "nope", wantPending: true, wantHistoryN: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := storetest.New()
			e := testEngine(kv, &fakeLanes{versions: map[string]uint64{}})
			op := phased()
			require.NoError(t, e.store.CreateOperation(op))
			refused := 0
			kv.Fail = func(ops consulapi.KVTxnOps) error {
				if historyKey(ops) && refused < tc.refuse {
					refused++
					return errors.New("consul is away")
				}
				return nil
			}
			r := e.newRun(nil, context.Background(), op)
			r.execute(tc.fn)
			kv.Fail = nil

			journaled, err := e.store.RunningOperation("web")
			require.NoError(t, err)
			if tc.wantPending {
				require.NotNil(t, journaled, "the outcome stays journaled")
				assert.Equal(t, tc.wantState, journaled.State, "the journal holds the outcome, so it is never run again")
				pending, err := e.store.PendingOperation("web", 0)
				require.NoError(t, err)
				assert.Nil(t, pending, "an ended operation is moved, not handed out to run")
			} else {
				assert.Nil(t, journaled)
			}
			hist, err := e.store.HistoryPage("web", 10, 0)
			require.NoError(t, err)
			require.Len(t, hist, tc.wantHistoryN)
			assert.Equal(t, tc.wantState, hist[0].State)
			if tc.wantErr != "" {
				assert.Contains(t, hist[0].Error, tc.wantErr)
			}
		})
	}
}

// TestRollbackOfRemovedSlot: the last swap moved a slot that a reload removed since; a rollback
// answers a clear error instead of taking the daemon down.
func TestRollbackOfRemovedSlot(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	e := testEngine(kv, &fakeLanes{versions: map[string]uint64{}})
	last := &api.Operation{ID: "op-old", Site: "web", Kind: api.KindSwap, State: api.StateSucceeded, Source: "qa", Target: "production", Switched: true}
	require.NoError(t, e.store.CreateOperation(last))
	require.NoError(t, e.store.FinishOperation(last, 0))

	s := newSite(e, testSite())
	s.lead, s.ready = context.Background(), true
	reply := make(chan answer, 1)
	s.rollback("api", reply)
	s.handle(<-s.events) // the history's answer, read beside the owner
	a := <-reply
	op, err := a.op, a.err
	require.Error(t, err)
	assert.Nil(t, op)
	assert.ErrorIs(t, err, store.ErrBadRequest)
	assert.Contains(t, err.Error(), "no longer both declared")
}

// TestTakenOverSwapKnowsTargetWasSick: a rollback away from a degraded production (its lane
// failing its checks at the break) whose daemon dies right after the exchange. The next leader
// knows from the journal that the former production lane was sick: it is not held, and its
// settle is not health-gated (Nomad cannot finish a health-gated rollout of it).
func TestTakenOverSwapKnowsTargetWasSick(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer app.Close()
	kv := storetest.New()
	kvSlots(kv, false)
	cfg := testSite()
	cfg.Monitor = &config.Monitor{RollbackWindow: time.Minute, Threshold: 1}
	newLanes := func() *fakeLanes {
		return &fakeLanes{versions: map[string]uint64{"a": 10, "b": 20}, instance: strings.TrimPrefix(app.URL, "http://"), sick: map[string]bool{"a": true}}
	}

	// The first daemon: everything after the exchange is lost, as if it died there.
	first := testEngine(kv, newLanes())
	first.httpClient = app.Client()
	exchangedOnce := false
	kv.Fail = func(ops consulapi.KVTxnOps) error {
		if isExchange(ops) && !exchangedOnce {
			exchangedOnce = true
			return nil
		}
		if exchangedOnce {
			return errors.New("the daemon is dead")
		}
		return nil
	}
	op := phased()
	require.NoError(t, first.store.CreateOperation(op))
	_ = first.swapOp(cfg, "staging", "production")(context.Background(), first.newRun(nil, context.Background(), op))
	kv.Fail = nil
	require.True(t, exchangedOnce)
	journaled, err := first.store.RunningOperation("web")
	require.NoError(t, err)
	require.True(t, journaled.Switched)

	// The next leader takes it over.
	lanes := newLanes()
	next := testEngine(kv, lanes)
	next.httpClient = app.Client()
	start := time.Now()
	err = next.recoverOp(cfg, journaled)(context.Background(), next.newRun(nil, context.Background(), journaled))
	require.NoError(t, err)
	assert.Less(t, time.Since(start), 20*time.Second, "no hold of a sick lane")
	assert.Equal(t, []string{"a as staging [staging urlprefix-staging/] DB=staging-db FEATURE=prod-feature none"}, lanes.calls,
		"the sick former production lane settles at once, not health-gated")
}

// TestResumedSwapMakesWhatWasWarmed: a swap taken over after its warm-up, with production's
// sticky value, staging's swappable value and production's scale changed in KV since apply.
// Make gives the candidate production's routes with exactly what apply registered and warm
// warmed (tags only: no instance restarts under production's routes), and break takes them off
// production's lane with what it runs. KV's new values reach the lanes after the swap.
func TestResumedSwapMakesWhatWasWarmed(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer app.Close()
	kv := storetest.New()
	kvSlots(kv, false)
	fl := &fakeLanes{versions: map[string]uint64{"a": 10, "b": 20}, instance: strings.TrimPrefix(app.URL, "http://"),
		last: map[string]lanes.State{"web/b": appliedB, "web/a": {Slot: "production", Env: map[string]string{"DB": "prod-db", "FEATURE": "prod-feature"}}}}
	e := testEngine(kv, fl)
	e.httpClient = app.Client()
	op := phased(api.PhaseSucceeded, api.PhaseSucceeded) // applied and warmed; the daemon died
	require.NoError(t, e.store.CreateOperation(op))
	kv.Put("slotd/sites/web/slots/production/sticky", `{"DB": "new-prod-db"}`)
	kv.Put("slotd/sites/web/slots/staging/settings", `{"FEATURE": "newer-feature"}`)
	kv.Put("slotd/sites/web/slots/production/scale", `{"app": 7}`)

	err := e.recoverOp(testSite(), op)(context.Background(), e.newRun(nil, context.Background(), op))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(fl.calls), 2)
	assert.Equal(t, []string{makeB, breakA}, fl.calls[:2], "make and break change tags only, of what the lanes run")
	assert.Equal(t, "b as production jobspec", fl.scales[0], "make keeps the scale that was warmed")
}
