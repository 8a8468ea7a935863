package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestSwapDuringAnotherHold (#19 item 3): three slots, each on its own version (production v1,
// staging v2, qa v3). staging is swapped into production and holds production's former lane;
// during that hold qa is swapped into production. The second swap first settles the lane held
// by the first (its own phase, settle-held: staging answers again, v1 with staging's
// settings), then switches, and holds its own former target lane for qa as any swap does:
// exactly one settle of its own, still to come. `slotd settle` ends that hold: qa's host then
// answers v2, the version production had before the second swap, with qa's settings.
// Production answers every request throughout.
func TestSwapDuringAnotherHold(t *testing.T) {
	const hold = 60 * time.Second
	site := holdSite("60s", hold)
	site.slots = fmt.Sprintf(`slot "qa" {
    tags     = ["urlprefix-%s/"]
    settings = { FEATURE = "qa-feature" }
    sticky   = { DB = "qa-db" }
  }`, site.host("qa"))
	h := startHoldSetup(t, site, nil, 4, map[string]string{"app_version": "v2"})
	stack, d, ctx, lanes := h.stack, h.d, h.ctx, h.lanes
	prod, staging, qa := h.prod, h.staging, site.host("qa")
	dep := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Deploy(ctx, site.name, "qa", map[string]string{"app_version": "v3"})
	})
	require.Equal(t, api.StateSucceeded, dep.State, "deploy v3 into qa: %s (%s)", dep.Error, phaseTimes(dep))
	waitAnswers(t, stack, qa, time.Minute, "v3 from "+lanes["qa"]+" with qa's settings", func(a appAnswer) bool {
		return a.Lane == lanes["qa"] && a.Version == "v3" && a.Env["DB"] == "qa-db"
	})

	first := swapUntilMonitoring(ctx, t, d, site)
	assertHolds(ctx, t, d.client, site.name, first, hold)
	waitAnswers(t, stack, prod, 30*time.Second, "v2 from "+lanes["staging"], func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v2" && a.Env["DB"] == "prod-db"
	})

	second, err := d.client.Swap(ctx, site.name, api.SwapRequest{Source: "qa", Target: "production"})
	require.NoError(t, err, "a swap of qa into production while the swap %s holds must be accepted", first.ID)
	second, err = d.client.Follow(ctx, second, func(o *api.Operation) bool {
		return o.State == api.StateMonitoring || api.Terminal(o.State)
	}, nil)
	require.NoError(t, err, "follow the swap %s until it monitors (last seen %s)", second.ID, second.State)
	t.Logf("second swap: %s", phaseTimes(second))
	require.Equal(t, api.StateMonitoring, second.State, "swap %s: %s (%s)", second.ID, second.Error, phaseTimes(second))
	require.NotEmpty(t, second.Phases)
	if p := second.Phases[0]; assert.Equal(t, api.PhaseSettleHeld, p.Name, "the first phase of the second swap: %s", phaseTimes(second)) {
		assert.Equal(t, api.PhaseSucceeded, p.State, "settle-held of the second swap: %s", p.Message)
		assert.Contains(t, p.Message, first.ID, "settle-held names the swap whose lane it settled")
	}
	settles := 0
	for _, p := range second.Phases {
		if p.Name == api.PhaseSettle {
			settles++
			assert.Equal(t, api.PhasePending, p.State, "the second swap's own settle waits for its hold: %s", p.Message)
		}
	}
	assert.Equal(t, 1, settles, "settle phases of the second swap: %s", phaseTimes(second))
	assert.False(t, second.Instant, "the second swap is a full one: %s", phaseTimes(second))

	first = waitTerminal(ctx, t, d, first)
	t.Logf("first swap: %s", phaseTimes(first))
	checkEndedEarly(t, first)
	if p := first.Phase(api.PhaseSettle); assert.NotNil(t, p, "swap %s has a settle phase", first.ID) {
		assert.Equal(t, api.PhaseSkipped, p.State, "the first swap leaves its held lane to the next operation: %s", p.Message)
	}

	assertHolds(ctx, t, d.client, site.name, second, hold)
	waitAnswers(t, stack, prod, 30*time.Second, "v3 from "+lanes["qa"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["qa"] && a.Version == "v3" && a.Env["DB"] == "prod-db"
	})
	waitAnswers(t, stack, staging, 30*time.Second, "v1 from "+lanes["production"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Version == "v1" && a.Env["DB"] == "staging-db" && a.Env["SLOTD_SLOT"] == "staging"
	})
	for range 6 {
		status, ans, err := get(ctx, stack, qa)
		assert.False(t, err == nil && status == 200, "the qa host answered during the second swap's hold: %+v", ans)
	}

	settled := settleHeld(ctx, t, d, site.name, second)
	if p := settled.Phase(api.PhaseSettle); assert.NotNil(t, p) {
		assert.Equal(t, api.PhaseSucceeded, p.State, "the second swap's settle: %s", p.Message)
	}
	waitAnswers(t, stack, qa, 30*time.Second, "v2 from "+lanes["staging"]+" with qa's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v2" && a.Env["DB"] == "qa-db" && a.Env["SLOTD_SLOT"] == "qa"
	})

	_, err = d.client.Cancel(ctx, second.ID)
	require.NoError(t, err, "end the monitor of the swap %s", second.ID)
	second = waitTerminal(ctx, t, d, second)
	checkEndedEarly(t, second)
	waitIdle(t, d, site.name)
	assert.Equal(t, map[string]string{"production": lanes["qa"], "staging": lanes["production"], "qa": lanes["staging"]},
		d.laneJobs(site.name), "the lane of each slot after both swaps")
	assertAllServed(t, h.prodSmp, prod)
	assertNoProductionSecrets(t, h.stagingSmp, site)
}
