package e2e

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestScaleStaysWithSlot: production declares 3 instances, staging runs the jobspec's 1. After
// a swap, production runs 3 instances of staging's new version and staging 1 of the old one,
// and no request to production failed during the swap.
func TestScaleStaysWithSlot(t *testing.T) {
	t.Parallel()
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.vars = map[string]string{"count": "1"}
		s.scale = map[string]string{"production": "{ app = 3 }"}
	})
	d := startDaemon(t, stack, site)
	lanes := d.laneJobs(site.name)
	prod, staging := site.host("production"), site.host("staging")
	waitSlot(t, d, site.name, "production", lanes["production"], 3)
	waitSlot(t, d, site.name, "staging", lanes["staging"], 1)

	dep := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Deploy(ctx, site.name, "staging", map[string]string{"app_version": "v2"})
	})
	require.Equal(t, api.StateSucceeded, dep.State, dep.Error)
	waitAnswers(t, stack, staging, 30*time.Second, "v2", func(a appAnswer) bool { return a.Version == "v2" })
	waitSlot(t, d, site.name, "staging", lanes["staging"], 1)

	smp := startSampler(t, stack, prod, 4, 10*time.Minute)
	op := d.swap(site.name, "staging", "production")
	samples := smp.stop()
	require.Equal(t, api.StateSucceeded, op.State, op.Error)
	require.False(t, smp.capped.Load(), "the sampler ran out of its bounds")
	var failed []sample
	for _, s := range samples {
		if s.err != nil || s.status != 200 {
			failed = append(failed, s)
		}
	}
	assert.Empty(t, failed, "requests to production that did not get a 200 during the swap: %s", firstSamples(failed, 20))
	t.Logf("%d requests to production during the swap; %s", len(samples), phaseTimes(op))
	assert.Contains(t, op.Phase(api.PhasePreflight).Message, "at app=3")

	waitSlot(t, d, site.name, "production", lanes["staging"], 3)
	waitSlot(t, d, site.name, "staging", lanes["production"], 1)
	waitAnswers(t, stack, prod, 30*time.Second, "v2 from "+lanes["staging"], func(a appAnswer) bool {
		return a.Version == "v2" && a.Lane == lanes["staging"]
	})
	waitAnswers(t, stack, staging, 30*time.Second, "v1 from "+lanes["production"], func(a appAnswer) bool {
		return a.Version == "v1" && a.Lane == lanes["production"]
	})
	count, _, meta := laneInNomad(t, stack, lanes["staging"])
	assert.Equal(t, 3, count, "the new production lane's job")
	assert.Equal(t, "app=3", meta, "the new production lane's slotd_scale meta")
	count, _, meta = laneInNomad(t, stack, lanes["production"])
	assert.Equal(t, 1, count, "the new staging lane's job")
	assert.Equal(t, "app=1", meta)

	s, err := d.client.Site(context.Background(), site.name)
	require.NoError(t, err)
	for _, sl := range s.Slots {
		switch sl.Name {
		case "production":
			assert.Equal(t, map[string]int{"app": 3}, sl.Scale)
			assert.Equal(t, "declared", sl.ScaleSource)
		case "staging":
			assert.Equal(t, map[string]int{"app": 1}, sl.Scale)
			assert.Equal(t, "kv", sl.ScaleSource)
		}
	}
}

// TestScaleLive: production's scale is "live"; scaled to 4 by hand in Nomad, it stays at 4
// through a swap, and staging keeps its 1.
func TestScaleLive(t *testing.T) {
	t.Parallel()
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.vars = map[string]string{"count": "1"}
		s.scale = map[string]string{"production": `"live"`}
	})
	d := startDaemon(t, stack, site)
	lanes := d.laneJobs(site.name)
	four := 4
	_, _, err := stack.Nomad.Jobs().Scale(lanes["production"], "app", &four, "e2e: scaled by hand", false, nil, nil)
	require.NoError(t, err)
	waitSlot(t, d, site.name, "production", lanes["production"], 4)

	op := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, op.State, op.Error)
	waitSlot(t, d, site.name, "production", lanes["staging"], 4)
	waitSlot(t, d, site.name, "staging", lanes["production"], 1)
	count, _, meta := laneInNomad(t, stack, lanes["staging"])
	assert.Equal(t, 4, count, "the new production lane's job")
	assert.Equal(t, "live", meta)
	count, _, _ = laneInNomad(t, stack, lanes["production"])
	assert.Equal(t, 1, count, "the new staging lane's job")
	waitServes(t, stack, site.host("production"), lanes["staging"])
}

// TestScalePreflight: staging runs one instance that asks for 40% of the node's memory;
// production's scale is 3, which no node can hold. The swap fails in its preflight phase
// within seconds with Nomad's reason; no lane got a new job version and production serves on.
func TestScalePreflight(t *testing.T) {
	t.Parallel()
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.vars = map[string]string{"count": "1"}
		s.scale = map[string]string{"production": "{ app = 3 }"}
	})
	d := startDaemon(t, stack, site)
	lanes := d.laneJobs(site.name)
	waitSlot(t, d, site.name, "production", lanes["production"], 3)

	big := nodeMemoryMB(t, stack) * 2 / 5
	dep := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Deploy(ctx, site.name, "staging", map[string]string{"app_version": "v2", "memory": strconv.Itoa(big)})
	})
	require.Equal(t, api.StateSucceeded, dep.State, "one instance of %d MB fits the node: %s", big, dep.Error)
	waitSlot(t, d, site.name, "staging", lanes["staging"], 1)

	_, prodBefore, _ := laneInNomad(t, stack, lanes["production"])
	_, stagingBefore, _ := laneInNomad(t, stack, lanes["staging"])
	began := time.Now()
	op := d.swap(site.name, "staging", "production")
	took := time.Since(began)
	require.Equal(t, api.StateFailed, op.State)
	t.Logf("swap failed after %s: %s", took.Round(time.Millisecond), op.Error)
	assert.Less(t, took, 15*time.Second, "a pre-flight failure is quick")
	pre := op.Phase(api.PhasePreflight)
	require.NotNil(t, pre)
	assert.Equal(t, api.PhaseFailed, pre.State)
	for _, want := range []string{"pre-flight", "nomad cannot place", "at scale app=3", `task group "app"`, `exhausted "memory"`, "nothing was changed"} {
		assert.Contains(t, op.Error, want)
	}
	apply := op.Phase(api.PhaseApply)
	require.NotNil(t, apply)
	assert.Nil(t, apply.StartedAt, "apply never started")

	_, prodAfter, _ := laneInNomad(t, stack, lanes["production"])
	_, stagingAfter, _ := laneInNomad(t, stack, lanes["staging"])
	assert.Equal(t, prodBefore, prodAfter, "production's lane got no new job version")
	assert.Equal(t, stagingBefore, stagingAfter, "staging's lane got no new job version")
	waitSlot(t, d, site.name, "production", lanes["production"], 3)
	waitAnswers(t, stack, site.host("production"), 30*time.Second, "v1 from "+lanes["production"], func(a appAnswer) bool {
		return a.Version == "v1" && a.Lane == lanes["production"]
	})
}

// waitSlot waits until the slot is served by lane with n instances, all passing.
func waitSlot(t testing.TB, d *daemon, site, slot, lane string, n int) {
	t.Helper()
	WaitFor(t, 3*time.Minute, fmt.Sprintf("%s served by %s with %d passing instances", slot, lane, n), func() (bool, string) {
		s, err := d.client.Site(context.Background(), site)
		if err != nil {
			return false, err.Error()
		}
		for _, sl := range s.Slots {
			if sl.Name == slot {
				return sl.Lane == lane && sl.Total == n && sl.Healthy == n,
					fmt.Sprintf("lane %s, %d/%d healthy, scale %v", sl.Lane, sl.Healthy, sl.Total, sl.Scale)
			}
		}
		return false, "no slot " + slot
	})
}

// laneInNomad reads a lane job's count of group app, its version and its slotd_scale meta.
func laneInNomad(t testing.TB, stack *Stack, id string) (count int, version uint64, meta string) {
	t.Helper()
	job, _, err := stack.Nomad.Jobs().Info(id, nil)
	require.NoError(t, err, "read job %s", id)
	for _, g := range job.TaskGroups {
		if g.Name != nil && *g.Name == "app" && g.Count != nil {
			count = *g.Count
		}
	}
	return count, *job.Version, job.Meta["slotd_scale"]
}

// nodeMemoryMB is the memory the largest Nomad node of the stack offers to allocations.
func nodeMemoryMB(t testing.TB, stack *Stack) int {
	t.Helper()
	nodes, _, err := stack.Nomad.Nodes().List(nil)
	require.NoError(t, err)
	best := 0
	for _, n := range nodes {
		node, _, err := stack.Nomad.Nodes().Info(n.ID, nil)
		require.NoError(t, err)
		mem := int(node.NodeResources.Memory.MemoryMB)
		if node.ReservedResources != nil {
			mem -= int(node.ReservedResources.Memory.MemoryMB)
		}
		best = max(best, mem)
	}
	require.Positive(t, best, "no node offers memory")
	return best
}

// TestScaleAPI: PUT …/scale changes an undeclared slot's counts as a scale operation (preflight,
// then a health-gated rollout, in history); it is refused for a slot whose scale slots.hcl
// declares; and a declared count changed by hand in Nomad is drift that the site puts back.
func TestScaleAPI(t *testing.T) {
	t.Parallel()
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.vars = map[string]string{"count": "1"}
		s.scale = map[string]string{"production": "{ app = 1 }"}
	})
	d := startDaemon(t, stack, site)
	lanes := d.laneJobs(site.name)
	ctx := context.Background()

	_, err := d.client.Scale(ctx, site.name, "production", map[string]int{"app": 2})
	var se *api.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 400, se.Code)
	assert.Contains(t, se.Message, "declared in slots.hcl")

	op := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Scale(ctx, site.name, "staging", map[string]int{"app": 2})
	})
	require.Equal(t, api.StateSucceeded, op.State, op.Error)
	assert.Equal(t, api.KindScale, op.Kind)
	assert.Equal(t, api.PhaseSucceeded, op.Phase(api.PhasePreflight).State)
	waitSlot(t, d, site.name, "staging", lanes["staging"], 2)
	count, _, meta := laneInNomad(t, stack, lanes["staging"])
	assert.Equal(t, 2, count)
	assert.Equal(t, "app=2", meta)
	hist, err := d.client.History(ctx, site.name, api.HistoryPage{Limit: 1})
	require.NoError(t, err)
	require.Len(t, hist, 1)
	assert.Equal(t, op.ID, hist[0].ID, "the scale operation is in the history")

	_, err = d.client.Scale(ctx, site.name, "staging", map[string]int{"web": 2})
	require.NoError(t, err, "an unknown group is known only to the jobspec: the operation says so")
	WaitFor(t, time.Minute, "the scale operation with an unknown group failed", func() (bool, string) {
		h, err := d.client.History(ctx, site.name, api.HistoryPage{Limit: 1})
		if err != nil || len(h) == 0 || h[0].Kind != api.KindScale || h[0].ID == op.ID {
			return false, fmt.Sprint(h, err)
		}
		return h[0].State == api.StateFailed && assert.Contains(t, h[0].Error, "names task group web"), h[0].Error
	})
	count, _, _ = laneInNomad(t, stack, lanes["staging"])
	assert.Equal(t, 2, count, "a scale that failed its preflight changes nothing")

	three := 3
	_, _, err = stack.Nomad.Jobs().Scale(lanes["production"], "app", &three, "e2e: by hand", false, nil, nil)
	require.NoError(t, err)
	WaitFor(t, 2*time.Minute, "production's declared count put back", func() (bool, string) {
		n, _, _ := laneInNomad(t, stack, lanes["production"])
		return n == 1, fmt.Sprintf("count %d", n)
	})
	waitSlot(t, d, site.name, "production", lanes["production"], 1)
}
