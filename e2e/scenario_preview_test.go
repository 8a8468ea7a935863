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

// TestPreview: a preview swap stops after apply. The candidate answers on production's preview
// route with production's sticky settings, the staging route serves nothing and production is
// untouched. Cancel puts staging back as it was; a second preview, completed, swaps.
func TestPreview(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	prod, staging, preview := site.host("production"), site.host("staging"), site.preview("production")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	waitServes(t, stack, staging, lanes["staging"])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	terminal := func(o *api.Operation) bool { return api.Terminal(o.State) }

	// checkPreviewing checks what users see while a swap is previewing.
	checkPreviewing := func() {
		t.Helper()
		waitAnswers(t, stack, preview, 30*time.Second, "the candidate "+lanes["staging"]+" with production's sticky DB", func(a appAnswer) bool {
			return a.Lane == lanes["staging"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "staging-feature" && a.Slot == "production"
		})
		// The staging route is gone; until the router has caught up, whatever answers there must
		// not carry production's sticky value.
		WaitFor(t, 10*time.Second, "the staging host to serve nothing", func() (bool, string) {
			status, ans, err := get(ctx, stack, staging)
			if err == nil && status == 200 {
				require.NotEqual(t, "prod-db", ans.Env["DB"], "the staging host answered with production's sticky DB: %+v", ans)
			}
			return err == nil && status != 200, fmt.Sprintf("status %d answer %+v err %v", status, ans, err)
		})
		for i := range 10 {
			status, ans, err := get(ctx, stack, staging)
			require.NoError(t, err)
			assert.NotEqual(t, 200, status, "staging host request %d while previewing: %+v", i+1, ans)
		}
		waitAnswers(t, stack, prod, 30*time.Second, lanes["production"]+" with production's settings", func(a appAnswer) bool {
			return a.Lane == lanes["production"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "prod-feature"
		})
	}

	// Preview, then cancel.
	op := startPreview(ctx, t, d, site.name)
	checkPreviewing()
	op, err := d.client.Cancel(ctx, op.ID)
	require.NoError(t, err, "cancel the preview")
	op, err = d.client.Follow(ctx, op, terminal, nil)
	require.NoError(t, err, "follow the cancelled preview")
	require.Equal(t, api.StateCancelled, op.State, "cancelled preview: %s", op.Error)
	assert.False(t, op.Switched)
	assert.Equal(t, lanes, d.laneJobs(site.name), "a cancelled preview moves no slot")
	waitAnswers(t, stack, staging, 30*time.Second, lanes["staging"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "staging-feature" && a.Slot == "staging"
	})
	WaitFor(t, 10*time.Second, "the preview host to serve nothing after cancel", func() (bool, string) {
		status, ans, err := get(ctx, stack, preview)
		return err == nil && status != 200, fmt.Sprintf("status %d answer %+v err %v", status, ans, err)
	})
	waitServes(t, stack, prod, lanes["production"])

	// Preview again, then complete.
	op = startPreview(ctx, t, d, site.name)
	checkPreviewing()
	op, err = d.client.Complete(ctx, op.ID)
	require.NoError(t, err, "complete the preview")
	op, err = d.client.Follow(ctx, op, terminal, nil)
	require.NoError(t, err, "follow the completed preview")
	require.Equal(t, api.StateSucceeded, op.State, "completed preview: %s", op.Error)
	t.Logf("completed: %s", phaseTimes(op))
	next := d.laneJobs(site.name)
	assert.Equal(t, lanes["staging"], next["production"], "production is the former staging lane")
	assert.Equal(t, lanes["production"], next["staging"], "staging is the former production lane")
	waitAnswers(t, stack, prod, 30*time.Second, lanes["staging"]+" with production's sticky DB", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "staging-feature"
	})
	waitAnswers(t, stack, staging, 30*time.Second, lanes["production"]+" with staging's sticky DB", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "prod-feature"
	})
}

// startPreview starts a preview swap of staging into production and returns it once it
// previews (after apply).
func startPreview(ctx context.Context, t *testing.T, d *daemon, site string) *api.Operation {
	t.Helper()
	op, err := d.client.Swap(ctx, site, api.SwapRequest{Source: "staging", Target: "production", Preview: true})
	require.NoError(t, err, "start a preview swap")
	op, err = d.client.Wait(ctx, op.ID, nil)
	require.NoError(t, err, "wait for the preview swap")
	require.Equal(t, api.StatePreviewing, op.State, "preview swap: %s", op.Error)
	t.Logf("previewing: %s", phaseTimes(op))
	return op
}
