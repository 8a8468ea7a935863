package engine

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Swap groups against a KV in memory and fake lanes: two sites, web and shop, in group store.

// shopSite is testSite named shop, with routes of its own (the fake's calls tell the two apart).
func shopSite() *config.Site {
	cfg := testSite()
	cfg.Name, cfg.Service = "shop", "shop"
	cfg.Slots[0].Tags, cfg.Slots[0].PreviewTags = []string{"urlprefix-shop/"}, []string{"urlprefix-shop-preview/"}
	cfg.Slots[1].Tags = []string{"urlprefix-shop-staging/"}
	return cfg
}

// groupEngine runs web and shop (with KV bound as kvSite writes) under one leadership, in
// group "store"; lead ends the leadership (the test's end does too).
type groupEngine struct {
	e     *Engine
	lanes *fakeLanes
	sites map[string]*site
	lead  context.CancelFunc
}

func newGroupEngine(t *testing.T, kv *storetest.KV, cfgs ...*config.Site) *groupEngine {
	t.Helper()
	e, fl := warmableEngine(t, kv)
	e.groupRuns = map[string]*groupRun{}
	e.groups = []*config.Group{{Name: "store", Sites: []string{"web", "shop"}}}
	g := &groupEngine{e: e, lanes: fl, sites: map[string]*site{}}
	e.sites = map[string]*site{}
	for _, cfg := range cfgs {
		s := newSite(e, cfg)
		e.sites[cfg.Name], g.sites[cfg.Name] = s, s
	}
	ctx, stop := context.WithCancel(context.Background())
	lead, endLead := context.WithCancel(context.Background())
	g.lead = endLead
	for _, s := range g.sites {
		go s.run(ctx)
	}
	for _, s := range g.sites {
		s.send(evLead{lead})
	}
	go e.leadGroups(lead) // Lead without its watches of Consul and Nomad
	t.Cleanup(func() {
		endLead()
		stop()
		for _, s := range g.sites {
			<-s.stopped
		}
	})
	waitUntil(t, 10*time.Second, "the sites are ready", func() bool {
		for _, s := range g.sites {
			if !s.snapshot().ready {
				return false
			}
		}
		return true
	})
	return g
}

// end waits until the group operation id and its parts have ended.
func (g *groupEngine) end(t *testing.T, id string) *api.Operation {
	t.Helper()
	waitUntil(t, 30*time.Second, "group operation "+id+" to end", func() bool {
		op := g.e.ops.get(id)
		if op == nil || !api.Terminal(op.State) || g.e.groupRun(id) != nil {
			return false
		}
		for _, s := range g.sites {
			if s.snapshot().running != nil {
				return false
			}
		}
		return true
	})
	return g.e.ops.get(id)
}

func TestGroupSwapExchangesInOneTransaction(t *testing.T) {
	kv := storetest.New()
	kvSite(kv, "web", false)
	kvSite(kv, "shop", false)
	var mu sync.Mutex
	var exchanges []consulapi.KVTxnOps
	kv.Fail = func(ops consulapi.KVTxnOps) error {
		for _, op := range ops {
			if strings.HasSuffix(op.Key, "/slots/production/lane") {
				mu.Lock()
				exchanges = append(exchanges, ops)
				mu.Unlock()
				break
			}
		}
		return nil
	}
	g := newGroupEngine(t, kv, testSite(), shopSite())

	op, err := g.e.GroupSwap("store", "staging", "production", false)
	require.NoError(t, err)
	assert.Equal(t, "store", op.Group)
	assert.Empty(t, op.Site)
	require.Len(t, op.Members, 2)
	final := g.end(t, op.ID)
	require.Equal(t, api.StateSucceeded, final.State, final.Error)
	assert.True(t, final.Switched)

	assert.Equal(t, "web-b", kv.Value("slotd/sites/web/slots/production/lane"))
	assert.Equal(t, "shop-b", kv.Value("slotd/sites/shop/slots/production/lane"))
	assert.JSONEq(t, `{"FEATURE":"staging-feature"}`, kv.Value("slotd/sites/shop/slots/production/settings"))
	mu.Lock()
	require.Len(t, exchanges, 1, "both bindings change in one transaction")
	keys := map[string]bool{}
	for _, o := range exchanges[0] {
		keys[o.Key] = true
	}
	mu.Unlock()
	for _, k := range []string{"slotd/sites/web/slots/production/lane", "slotd/sites/shop/slots/production/lane",
		"slotd/sites/web/operation", "slotd/sites/shop/operation", "slotd/groups/store/operation"} {
		assert.True(t, keys[k], "the exchange writes %s", k)
	}

	for _, m := range final.Members {
		assert.Equal(t, api.StateSucceeded, m.State, m.Site)
		part, err := g.e.Operation(context.Background(), m.Operation, 0)
		require.NoError(t, err)
		assert.Equal(t, op.ID, part.GroupOperation)
		assert.True(t, part.Switched)
	}
	hist, err := g.e.GroupHistory("store", 10, 0)
	require.NoError(t, err)
	require.Len(t, hist, 1)
	assert.Equal(t, op.ID, hist[0].ID)
	for _, site := range []string{"web", "shop"} {
		h, err := g.e.History(site, 10, 0)
		require.NoError(t, err)
		require.NotEmpty(t, h, site)
		assert.Equal(t, op.ID, h[0].GroupOperation, "%s keeps its part in its history", site)
	}
	assert.Empty(t, kv.Value("slotd/groups/store/operation"))

	_, err = g.e.Rollback("web")
	require.ErrorIs(t, err, store.ErrBadRequest, "a member's part is rolled back with its group")
	assert.Contains(t, err.Error(), "slotd rollback -group store")
	g.e.ops = newOpRegistry() // forgotten: read back from KV
	found, err := g.e.Operation(context.Background(), op.ID, 0)
	require.NoError(t, err)
	assert.Equal(t, api.StateSucceeded, found.State)
}

func TestGroupSwapFailingMemberUndoesAll(t *testing.T) {
	kv := storetest.New()
	kvSite(kv, "web", false)
	kvSite(kv, "shop", false)
	g := newGroupEngine(t, kv, testSite(), shopSite())
	g.lanes.fail = func(call string) bool { return strings.Contains(call, "[urlprefix-shop-preview/]") }

	op, err := g.e.GroupSwap("store", "staging", "production", false)
	require.NoError(t, err)
	final := g.end(t, op.ID)
	assert.Equal(t, api.StateFailed, final.State)
	assert.Contains(t, final.Error, "shop: ")
	assert.Contains(t, final.Error, "members put back: web (lane b restored to staging")
	assert.False(t, final.Switched)
	assert.Equal(t, "web-a", kv.Value("slotd/sites/web/slots/production/lane"))
	assert.Equal(t, "shop-a", kv.Value("slotd/sites/shop/slots/production/lane"))
	g.lanes.mu.Lock()
	calls := strings.Join(g.lanes.calls, "\n")
	g.lanes.mu.Unlock()
	assert.Contains(t, calls, restoreB, "web's candidate went back to staging")
	assert.NotContains(t, calls, makeB, "no route moved")
}

func TestGroupConflicts(t *testing.T) {
	kv := storetest.New()
	kvSite(kv, "web", false)
	kvSite(kv, "shop", false)
	g := newGroupEngine(t, kv, testSite(), shopSite())

	own, err := g.e.Swap("shop", "staging", "production", true)
	require.NoError(t, err)
	g.waitState(t, own.ID, api.StatePreviewing)
	_, err = g.e.GroupSwap("store", "staging", "production", false)
	require.ErrorIs(t, err, store.ErrBusy)
	assert.Contains(t, err.Error(), "member shop")
	assert.Contains(t, err.Error(), own.ID)
	_, err = g.e.Cancel(context.Background(), own.ID)
	require.NoError(t, err)
	waitUntil(t, 10*time.Second, "shop to be idle", func() bool { return g.sites["shop"].snapshot().running == nil })

	op, err := g.e.GroupSwap("store", "staging", "production", true)
	require.NoError(t, err)
	g.waitState(t, op.ID, api.StatePreviewing)
	_, err = g.e.Swap("web", "staging", "production", false)
	require.ErrorIs(t, err, store.ErrBusy)
	assert.Contains(t, err.Error(), op.ID, "a member's own swap names the group operation")
	_, err = g.e.Rollback("web")
	require.ErrorIs(t, err, store.ErrBusy)
	_, err = g.e.Complete(context.Background(), op.Members[0].Operation)
	require.ErrorIs(t, err, store.ErrBusy, "a part is completed through its group")

	_, err = g.e.Complete(context.Background(), op.ID)
	require.NoError(t, err)
	final := g.end(t, op.ID)
	require.Equal(t, api.StateSucceeded, final.State, final.Error)
	assert.Equal(t, "web-b", kv.Value("slotd/sites/web/slots/production/lane"))
	assert.Equal(t, "shop-b", kv.Value("slotd/sites/shop/slots/production/lane"))
}

// TestGroupTakenOver: a daemon stopped with a group swap journaled. Past every member's
// warm-up the next leader finishes it (both switched, in one exchange); before, it undoes
// every member (neither switched).
func TestGroupTakenOver(t *testing.T) {
	for _, tc := range []struct {
		name     string
		states   []string // the phases after preflight, of the group and of each part
		switched bool
	}{
		{"in apply: undone", []string{api.PhaseRunning}, false},
		{"warmed: finished", []string{api.PhaseSucceeded, api.PhaseSucceeded}, true},
		{"after the exchange: finished", []string{api.PhaseSucceeded, api.PhaseSucceeded, api.PhaseRunning}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := storetest.New()
			kvSite(kv, "web", tc.switched && len(tc.states) == 3)
			kvSite(kv, "shop", tc.switched && len(tc.states) == 3)
			gop := phased(tc.states...)
			gop.ID, gop.Site, gop.Group = "op-group", "", "store"
			gop.Switched = len(tc.states) == 3
			var parts []*api.Operation
			for _, site := range []string{"web", "shop"} {
				p := phased(tc.states...)
				p.ID, p.Site, p.Group, p.GroupOperation, p.Switched = "op-"+site, site, "store", gop.ID, gop.Switched
				parts = append(parts, p)
				gop.Members = append(gop.Members, api.GroupMember{Site: site, Operation: p.ID, State: api.StateApplying})
			}
			st := testEngine(kv, nil).store
			require.NoError(t, st.CreateOperations(append([]*api.Operation{gop}, parts...)...))

			g := newGroupEngine(t, kv, testSite(), shopSite())
			final := g.end(t, gop.ID)
			want := "web-a"
			if tc.switched {
				want = "web-b"
				require.Equal(t, api.StateSucceeded, final.State, final.Error)
			} else {
				require.Equal(t, api.StateFailed, final.State)
				assert.Contains(t, final.Error, "interrupted")
			}
			assert.Equal(t, want, kv.Value("slotd/sites/web/slots/production/lane"))
			assert.Equal(t, strings.Replace(want, "web", "shop", 1), kv.Value("slotd/sites/shop/slots/production/lane"))
			for _, p := range parts {
				part, err := g.e.Operation(context.Background(), p.ID, 0)
				require.NoError(t, err)
				assert.Equal(t, final.State, part.State, p.Site)
			}
		})
	}
}

// monitoredShop is shopSite with monitored's monitor.
func monitoredShop() *config.Site {
	cfg := shopSite()
	cfg.Monitor = monitored().Monitor
	return cfg
}

// holdingGroup swaps the group and returns the group swap once it monitors.
func (g *groupEngine) holdingGroup(t *testing.T) *api.Operation {
	t.Helper()
	op, err := g.e.GroupSwap("store", "staging", "production", false)
	require.NoError(t, err)
	g.waitState(t, op.ID, api.StateMonitoring)
	return op
}

// waitState waits until operation id is in state.
func (g *groupEngine) waitState(t *testing.T, id, state string) { waitState(t, g.e, id, state) }

// waitState waits until operation id of e is in state.
func waitState(t *testing.T, e *Engine, id, state string) {
	t.Helper()
	waitUntil(t, 10*time.Second, "operation "+id+" to be "+state, func() bool {
		cur := e.ops.get(id)
		return cur != nil && cur.State == state
	})
}

// TestGroupRollbackInTheHold: a group rollback while the group swap holds is a switch of every
// member's held lane; so is the rollback the monitor starts when one member degrades.
func TestGroupRollbackInTheHold(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trigger string
	}{{"by hand", "api"}, {"one member degraded", "monitor"}} {
		t.Run(tc.name, func(t *testing.T) {
			kv := storetest.New()
			kvSite(kv, "web", false)
			kvSite(kv, "shop", false)
			g := newGroupEngine(t, kv, monitored(), monitoredShop())
			swap := g.holdingGroup(t)
			g.lanes.mu.Lock()
			before := len(g.lanes.calls)
			g.lanes.mu.Unlock()
			if tc.trigger == "api" {
				_, err := g.e.GroupRollback("store")
				require.NoError(t, err)
			} else {
				g.lanes.mu.Lock()
				g.lanes.sick = map[string]bool{"b": true} // shop's (and web's) new production lane
				g.lanes.mu.Unlock()
				g.e.logger.Info("sick")
			}
			var rollback *api.Operation
			waitUntil(t, 40*time.Second, "the group rollback to switch", func() bool {
				rollback = findOp(g.e, func(op *api.Operation) bool {
					return op.Group == "store" && op.Site == "" && op.Kind == api.KindRollback && op.Switched
				})
				return rollback != nil
			})
			assert.Equal(t, swap.ID, rollback.RollbackOf)
			assert.Equal(t, tc.trigger, rollback.Trigger)
			assert.True(t, rollback.Instant, "every member's lane was held: a switch only")
			assert.Equal(t, "web-a", kv.Value("slotd/sites/web/slots/production/lane"))
			assert.Equal(t, "shop-a", kv.Value("slotd/sites/shop/slots/production/lane"))
			ended := g.e.ops.get(swap.ID)
			assert.Equal(t, api.PhaseSkipped, ended.Phase(api.PhaseSettle).State, "the held lanes were left to the rollback")
			g.lanes.mu.Lock()
			calls := g.lanes.calls[before:]
			g.lanes.mu.Unlock()
			for _, c := range calls {
				assert.NotContains(t, c, "as staging", "nothing settled a held lane before the rollback took it: %v", calls)
			}
		})
	}
}
