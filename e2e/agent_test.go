package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestSwapBasic: bootstrap binds production to lane a and staging to lane b; one swap moves
// staging's app into production with production's sticky settings, and back.
func TestSwapBasic(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()

	lanes := d.laneJobs(site.name)
	prodLane, stagingLane := lanes["production"], lanes["staging"]
	waitServes(t, stack, site.host("production"), prodLane)
	waitServes(t, stack, site.host("staging"), stagingLane)

	op := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, op.State, "swap: %s", op.Error)
	waitServes(t, stack, site.host("production"), stagingLane)
	waitServes(t, stack, site.host("staging"), prodLane)

	_, ans, err := get(ctx, stack, site.host("production"))
	require.NoError(t, err)
	assert.Equal(t, "prod-db", ans.Env["DB"], "production's sticky setting stays with production")
	assert.Equal(t, "staging-feature", ans.Env["FEATURE"], "the swappable setting travels with the app")
	_, ans, err = get(ctx, stack, site.host("staging"))
	require.NoError(t, err)
	assert.Equal(t, "staging-db", ans.Env["DB"])
	assert.Equal(t, "prod-feature", ans.Env["FEATURE"])
}

// TestStopMidSwapResumes: a daemon stopped in the middle of a swap finishes the running phase,
// leaves the operation journaled in KV, and the next daemon goes on from the next phase.
func TestStopMidSwapResumes(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	stagingLane := d.laneJobs(site.name)["staging"]

	op, err := d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err)
	WaitFor(t, time.Minute, "the swap applying", func() (bool, string) {
		cur, err := d.client.Operation(ctx, op.ID, 0)
		if err != nil {
			return false, err.Error()
		}
		return cur.State == api.StateApplying, cur.State
	})
	d.stop()

	key := "slotd-" + site.name + "/sites/" + site.name + "/operation"
	pair, _, err := stack.Consul.KV().Get(key, nil)
	require.NoError(t, err)
	require.NotNil(t, pair, "the stopped daemon left the swap journaled")
	var journaled api.Operation
	require.NoError(t, json.Unmarshal(pair.Value, &journaled))
	assert.Equal(t, api.PhaseSucceeded, journaled.Phase(api.PhaseApply).State, "the running phase finished before the stop")

	d.start()
	final, err := d.client.Wait(ctx, op.ID, nil)
	require.NoError(t, err)
	require.Equal(t, api.StateSucceeded, final.State, final.Error)
	assert.Equal(t, api.PhaseSucceeded, final.Phase(api.PhaseSwitch).State)
	waitServes(t, stack, site.host("production"), stagingLane)
}

// TestDriftRestored: a lane changed outside slotd (here: its job stopped in Nomad) is noticed
// through a blocking query and brought back to its slot.
func TestDriftRestored(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	stagingLane := d.laneJobs(site.name)["staging"]

	_, _, err := stack.Nomad.Jobs().Deregister(stagingLane, false, nil)
	require.NoError(t, err)
	WaitFor(t, 3*time.Minute, "the stopped staging lane restored", func() (bool, string) {
		job, _, err := stack.Nomad.Jobs().Info(stagingLane, nil)
		if err != nil {
			return false, err.Error()
		}
		if job.Stop != nil && *job.Stop {
			return false, "still stopped"
		}
		cur, err := d.client.Site(ctx, site.name)
		if err != nil {
			return false, err.Error()
		}
		st := cur.Slots[1]
		return cur.Operation == nil && st.Healthy == 2, fmt.Sprintf("staging %d/%d healthy, op %v", st.Healthy, st.Total, cur.Operation != nil)
	})
	waitServes(t, stack, site.host("staging"), stagingLane)
}

// TestDeployFailureKeepsSlot: a deploy whose instances never pass their checks fails with
// Nomad's reason, and the slot goes on serving its previous version.
func TestDeployFailureKeepsSlot(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	stagingLane := d.laneJobs(site.name)["staging"]

	op := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Deploy(ctx, site.name, "staging", map[string]string{"app_version": "v9", "fail_healthz": "true"})
	})
	require.Equal(t, api.StateFailed, op.State)
	assert.Contains(t, op.Error, "deployment")
	assert.Contains(t, op.Error, "restored")

	waitServes(t, stack, site.host("staging"), stagingLane)
	_, ans, err := get(ctx, stack, site.host("staging"))
	require.NoError(t, err)
	assert.Equal(t, "v1", ans.Version, "staging still runs the version it had")
	after, err := d.client.Site(ctx, site.name)
	require.NoError(t, err)
	assert.Equal(t, 2, after.Slots[1].Healthy)
}
