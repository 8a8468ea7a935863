package engine

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// The site's owner against a KV in memory and fake lanes: starts whose answer is lost, the
// follow-ups an operation journals, and an owner that never waits on I/O.

// ownedSite is a site whose owner runs in e under a leadership until the test ends.
func ownedSite(t *testing.T, kv *storetest.KV, cfg *config.Site) (*Engine, *fakeLanes, *site) {
	t.Helper()
	e, lanes := warmableEngine(t, kv)
	s := newSite(e, cfg)
	e.sites = map[string]*site{cfg.Name: s}
	ctx, stop := context.WithCancel(context.Background())
	lead, endLead := context.WithCancel(context.Background())
	go s.run(ctx)
	s.send(evLead{lead})
	t.Cleanup(func() {
		endLead()
		stop()
		<-s.stopped
	})
	waitUntil(t, 10*time.Second, "the site is ready", func() bool { return s.snapshot().ready })
	return e, lanes, s
}

// warmableEngine is a test engine whose lanes' instances answer warm-up requests.
func warmableEngine(t *testing.T, kv *storetest.KV) (*Engine, *fakeLanes) {
	app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(app.Close)
	lanes := &fakeLanes{versions: map[string]uint64{"a": 10, "b": 20}, instance: strings.TrimPrefix(app.URL, "http://")}
	e := testEngine(kv, lanes)
	e.httpClient = app.Client()
	return e, lanes
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// endOf waits until operation id has ended and its site is idle again; it returns the outcome.
func endOf(t *testing.T, e *Engine, s *site, id string) *api.Operation {
	t.Helper()
	waitUntil(t, 30*time.Second, "operation "+id+" to end", func() bool {
		op := e.ops.get(id)
		return op != nil && api.Terminal(op.State) && s.snapshot().running == nil
	})
	return e.ops.get(id)
}

// isCreate picks the transaction that journals a new operation: absent before (index 0).
func isCreate(ops consulapi.KVTxnOps) bool {
	for _, op := range ops {
		if strings.HasSuffix(op.Key, "/operation") && op.Verb == consulapi.KVCAS && op.Index == 0 {
			return true
		}
	}
	return false
}

// monitored is testSite with a minute's monitor window and hold, rolling back by itself.
func monitored() *config.Site {
	cfg := testSite()
	cfg.Monitor = &config.Monitor{Window: time.Minute, AutoRollback: true, Threshold: 1, RollbackWindow: time.Minute}
	return cfg
}

// monitoringSwap swaps staging into production and returns the swap once it monitors.
func monitoringSwap(t *testing.T, e *Engine) *api.Operation {
	t.Helper()
	swap, err := e.Swap("web", "staging", "production", false)
	require.NoError(t, err)
	waitUntil(t, 10*time.Second, "the swap to monitor", func() bool {
		cur := e.ops.get(swap.ID)
		return cur != nil && (cur.State == api.StateMonitoring || cur.State == api.StateHolding)
	})
	return swap
}

// findOp is the first operation this engine ran that matches.
func findOp(e *Engine, match func(*api.Operation) bool) *api.Operation {
	e.ops.mu.Lock()
	defer e.ops.mu.Unlock()
	for _, en := range e.ops.ops {
		if op := en.op; match(&op) {
			return &op
		}
	}
	return nil
}

// TestLostCreate: Consul commits a new operation's journal entry but its answer is lost. The
// start reads it back and runs it; an entry that lands only after the start gave up is
// cleared by the owner within seconds. Either way the site is free for the next operation:
// no 409 until a restart.
func TestLostCreate(t *testing.T) {
	t.Run("the entry landed: the operation runs", func(t *testing.T) {
		kv := storetest.New()
		kvSlots(kv, false)
		e, _, s := ownedSite(t, kv, testSite())
		kv.Lost = isCreate
		op, err := e.Swap("web", "staging", "production", false)
		kv.Lost = nil
		require.NoError(t, err, "the journal holds the swap: it was started")
		assert.Equal(t, api.StateSucceeded, endOf(t, e, s, op.ID).State)
		back, err := e.Rollback("web")
		require.NoError(t, err, "the site is free")
		assert.Equal(t, api.StateSucceeded, endOf(t, e, s, back.ID).State)
	})
	t.Run("the entry lands after the start gave up: cleared, nothing done", func(t *testing.T) {
		kv := storetest.New()
		kvSlots(kv, false)
		e, lanes, s := ownedSite(t, kv, testSite())
		var late sync.WaitGroup
		kv.Fail = func(ops consulapi.KVTxnOps) error {
			if !isCreate(ops) {
				return nil
			}
			for _, op := range ops {
				if strings.HasSuffix(op.Key, "/operation") {
					key, value := op.Key, string(op.Value)
					late.Go(func() {
						time.Sleep(200 * time.Millisecond)
						kv.Put(key, value)
					})
				}
			}
			return storetest.ErrLost
		}
		_, err := e.Swap("web", "staging", "production", false)
		kv.Fail = nil
		require.Error(t, err)
		assert.Contains(t, err.Error(), "looks again")
		late.Wait()
		waitUntil(t, 4*orphanCheck, "the late entry to be cleared", func() bool {
			j, err := e.store.RunningOperation("web")
			return err == nil && j == nil && s.snapshot().running == nil
		})
		hist, err := e.store.HistoryPage("web", 10, 0)
		require.NoError(t, err)
		require.Len(t, hist, 1)
		assert.Equal(t, api.StateFailed, hist[0].State)
		assert.Contains(t, hist[0].Error, "not started")
		assert.Empty(t, lanes.calls, "no lane moved")
		op, err := e.Swap("web", "staging", "production", false)
		require.NoError(t, err, "the site is free")
		assert.Equal(t, api.StateSucceeded, endOf(t, e, s, op.ID).State)
	})
}

// TestAutoRollbackIsJournaled: the monitor's decision to roll back a degraded swap is in the
// swap's journal entry before the swap ends; a rollback whose start Consul refuses is tried
// again, and one that no daemon started before it stopped is started by the next leader.
func TestAutoRollbackIsJournaled(t *testing.T) {
	t.Run("decided, refused once, started", func(t *testing.T) {
		kv := storetest.New()
		kvSlots(kv, false)
		e, lanes, s := ownedSite(t, kv, monitored())
		swap := monitoringSwap(t, e)
		var refused atomic.Int32
		kv.Fail = func(ops consulapi.KVTxnOps) error {
			if isCreate(ops) && refused.Add(1) == 1 {
				return errors.New("consul is away")
			}
			return nil
		}
		lanes.mu.Lock()
		lanes.sick = map[string]bool{"b": true}
		lanes.mu.Unlock()
		final := endOf(t, e, s, swap.ID)
		assert.Equal(t, api.StateFailed, final.State)
		require.NotNil(t, final.Next, "the decision is part of the swap's outcome")
		assert.Equal(t, api.KindRollback, final.Next.Kind)
		var rollback *api.Operation
		waitUntil(t, 20*time.Second, "the rollback to start", func() bool {
			rollback = findOp(e, func(op *api.Operation) bool { return op.Kind == api.KindRollback })
			return rollback != nil
		})
		kv.Fail = nil
		assert.GreaterOrEqual(t, refused.Load(), int32(2), "the first start was refused and tried again")
		assert.Equal(t, "monitor", rollback.Trigger)
		assert.Equal(t, swap.ID, rollback.RollbackOf)
	})
	t.Run("decided, then the daemon stopped: the next leader starts it", func(t *testing.T) {
		kv := storetest.New()
		kvSlots(kv, true)
		st := testEngine(kv, nil).store
		swap := &api.Operation{ID: "op-degraded", Site: "web", Kind: api.KindSwap, State: api.StateFailed, Source: "staging", Target: "production",
			Switched: true, Error: "production degraded: rolling back",
			Next: &api.FollowUp{Kind: api.KindRollback, Trigger: "monitor", Source: "staging", Target: "production", RollbackOf: "op-degraded"}}
		require.NoError(t, st.CreateOperation(swap))
		require.NoError(t, st.FinishOperation(swap, 0))
		e, _, _ := ownedSite(t, kv, monitored())
		var rollback *api.Operation
		waitUntil(t, 10*time.Second, "the rollback to start", func() bool {
			rollback = findOp(e, func(op *api.Operation) bool { return op.Kind == api.KindRollback })
			return rollback != nil
		})
		assert.Equal(t, "op-degraded", rollback.RollbackOf)
	})
}

// TestOwnerDoesNotWaitOnIO: comparisons of the lanes with Nomad run beside the owner, so a
// rollback asked for during a burst of settings writes, each of which compares, starts at
// once (the e2e TestRollbackNotQueuedBehindSettings is the same against the real stack).
func TestOwnerDoesNotWaitOnIO(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, true)
	st := testEngine(kv, nil).store
	last := &api.Operation{ID: "op-swap", Site: "web", Kind: api.KindSwap, State: api.StateSucceeded, Source: "staging", Target: "production", Switched: true}
	require.NoError(t, st.CreateOperation(last))
	require.NoError(t, st.FinishOperation(last, 0))
	e, lanes, s := ownedSite(t, kv, testSite())
	lanes.mu.Lock()
	lanes.differWait = 2 * time.Second // a slow Nomad answering each plan
	lanes.mu.Unlock()

	var writes sync.WaitGroup
	for i := range 20 {
		writes.Go(func() {
			_, err := e.SetSetting("web", "staging", fmt.Sprintf("K%02d", i), "v", false)
			assert.NoError(t, err)
		})
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	op, err := e.Rollback("web")
	took := time.Since(start)
	require.NoError(t, err)
	assert.LessOrEqual(t, took, time.Second, "the rollback is accepted within 1 s (DESIGN issue: 20 writes, then a rollback)")
	t.Logf("rollback accepted after %s", took.Round(time.Millisecond))
	writes.Wait()
	assert.Equal(t, api.StateSucceeded, endOf(t, e, s, op.ID).State)
}

// TestStatusFromSnapshot: while this daemon leads, a site's status is the one its owner
// published: a read costs no request to Consul or Nomad until something changed, and a read
// after a write of this daemon sees the write.
func TestStatusFromSnapshot(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	e, _, _ := ownedSite(t, kv, testSite())
	first, err := e.Status(context.Background(), "web", true)
	require.NoError(t, err)
	assert.True(t, first.Ready)
	before := kv.Requests.Load()
	for range 10 {
		again, err := e.Status(context.Background(), "web", true)
		require.NoError(t, err)
		assert.Equal(t, first.Slots, again.Slots)
	}
	assert.Zero(t, kv.Requests.Load()-before, "ten reads of an unchanged site read nothing")

	_, err = e.SetSetting("web", "staging", "FEATURE", "beta", false)
	require.NoError(t, err)
	after, err := e.Status(context.Background(), "web", true)
	require.NoError(t, err)
	var staging api.Slot
	for _, sl := range after.Slots {
		if sl.Name == "staging" {
			staging = sl
		}
	}
	require.NotNil(t, staging.Settings)
	assert.Equal(t, "beta", staging.Settings.Settings["FEATURE"], "a read after a write sees it")
	summary, err := e.Status(context.Background(), "web", false)
	require.NoError(t, err)
	assert.Nil(t, summary.Slots[0].Settings, "without detail, no settings")
	assert.Nil(t, summary.Slots[0].Instances, "without detail, no instances")
}

// TestFollowUpBeforeConverge: a pending follow-up goes before the site's own converging: a
// lane that differs from KV (the held one) is not rolled out while the rollback waits to
// start, and the rollback is not dropped for it.
func TestFollowUpBeforeConverge(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	e, lanes, s := ownedSite(t, kv, monitored())
	swap := monitoringSwap(t, e)
	var refused atomic.Int32
	kv.Fail = func(ops consulapi.KVTxnOps) error {
		if isCreate(ops) && refused.Add(1) <= 2 {
			return errors.New("consul is away")
		}
		return nil
	}
	lanes.mu.Lock()
	lanes.sick = map[string]bool{"b": true}
	lanes.differ = map[string]bool{"a": true, "b": true}
	lanes.mu.Unlock()
	endOf(t, e, s, swap.ID)
	s.poke()
	var rollback *api.Operation
	waitUntil(t, 20*time.Second, "the rollback to start", func() bool {
		rollback = findOp(e, func(op *api.Operation) bool { return op.Kind == api.KindRollback })
		return rollback != nil
	})
	kv.Fail = nil
	assert.Nil(t, findOp(e, func(op *api.Operation) bool { return op.Trigger == triggerConverge }), "no converge before the rollback")
	assert.Equal(t, swap.ID, rollback.RollbackOf)
}

// TestJournalNoOneRuns: an operation journaled for a site that no one runs (its start's
// answer was lost and it landed late, or it was left undecided) is cleared or taken over
// within seconds; the site's own converging does not turn it into a loop of refused starts.
func TestJournalNoOneRuns(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	e, lanes, s := ownedSite(t, kv, testSite())
	stray := &api.Operation{ID: "op-stray", Site: "web", Kind: api.KindSwap, State: api.StatePending, Source: "staging", Target: "production",
		Phases: []api.Phase{{Name: api.PhasePreflight, State: api.PhasePending}}}
	require.NoError(t, e.store.CreateOperation(stray))
	lanes.mu.Lock()
	lanes.differ = map[string]bool{"a": true}
	lanes.mu.Unlock()
	before := kv.Requests.Load()
	s.poke()
	waitUntil(t, 4*orphanCheck, "the stray entry to be cleared", func() bool {
		j, err := e.store.RunningOperation("web")
		return err == nil && (j == nil || j.ID != "op-stray")
	})
	assert.Less(t, kv.Requests.Load()-before, int64(500), "no loop of refused starts")
	hist, err := e.store.HistoryPage("web", 10, 0)
	require.NoError(t, err)
	var cleared *api.Operation
	for _, h := range hist {
		if h.ID == "op-stray" {
			cleared = &h
		}
	}
	require.NotNil(t, cleared, "the stray entry is in history")
	assert.Equal(t, api.StateFailed, cleared.State)
	assert.Contains(t, cleared.Error, "not started")
	waitUntil(t, 10*time.Second, "the lanes to converge after it", func() bool {
		return findOp(e, func(op *api.Operation) bool { return op.Trigger == triggerConverge && op.State == api.StateSucceeded }) != nil
	})
}
