package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestRollback: a rollback after a swap puts production back on its original lane.
func TestRollback(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod, staging := site.host("production"), site.host("staging")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])

	swap := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, swap.State, "swap: %s", swap.Error)
	waitServes(t, stack, prod, lanes["staging"])

	rb := d.run(func(ctx context.Context) (*api.Operation, error) { return d.client.Rollback(ctx, site.name) })
	require.Equal(t, api.StateSucceeded, rb.State, "rollback: %s", rb.Error)
	assert.Equal(t, api.KindRollback, rb.Kind)
	assert.Equal(t, "api", rb.Trigger)
	assert.Equal(t, swap.ID, rb.RollbackOf, "the rollback names the swap it reverses")
	t.Logf("rollback: %s", phaseTimes(rb))

	assert.Equal(t, lanes, d.laneJobs(site.name), "every slot is back on its original lane")
	waitAnswers(t, stack, prod, 30*time.Second, lanes["production"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "prod-feature"
	})
	waitAnswers(t, stack, staging, 30*time.Second, lanes["staging"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "staging-feature"
	})
	hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	require.NotEmpty(t, hist)
	assert.Equal(t, rb.ID, hist[0].ID, "the rollback is the newest operation in the history")
}

// TestMonitorRollback: after a swap the monitor watches production; when the new production's
// checks fail for longer than the grace period, the swap fails and a rollback by the monitor
// puts production back on its original lane.
func TestMonitorRollback(t *testing.T) {
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.monitor = `window = "90s"
    auto_rollback = true
    grace = "3s"`
	})
	d := startDaemon(t, stack, site)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	prod := site.host("production")
	lanes := d.laneJobs(site.name)
	dg := degradeAfterSwap(ctx, t, stack, d, site)
	swap, rb, sickAt := dg.swap, dg.rollback, dg.sickAt
	// A rollback takes about as long as a swap (~25 s here); 3 minutes is generous.
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer rcancel()
	rb, err := d.client.Follow(rctx, rb, func(o *api.Operation) bool { return api.Terminal(o.State) }, nil)
	require.NoError(t, err, "follow the rollback by the monitor: it did not end within 3m (last seen %s %q: %s)", rb.State, rb.Error, phaseTimes(rb))
	t.Logf("rollback ended %s after production turned sick: %s %q; %s",
		time.Since(sickAt).Round(time.Millisecond), rb.State, rb.Error, phaseTimes(rb))
	assert.Equal(t, api.StateSucceeded, rb.State, "rollback by the monitor: %s", rb.Error)

	waitAnswers(t, stack, prod, 30*time.Second, "v1 from "+lanes["production"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Version == "v1" && a.Env["DB"] == "prod-db"
	})
	assert.Equal(t, lanes["production"], d.laneJobs(site.name)["production"], "production is bound to its original lane")

	hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	for _, op := range hist {
		if op.ID == swap.ID {
			assert.Equal(t, api.StateFailed, op.State, "the swap in the history")
			assert.Contains(t, strings.ToLower(op.Error), "degraded", "the swap's error in the history")
		}
	}
}
