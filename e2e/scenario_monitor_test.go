package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// monitorWindow is the monitor window of the sites below: far longer than any of their
// tests needs, so a monitor that runs to its end instead of ending early shows.
const monitorWindow = 90 * time.Second

func monitoredSite() siteSpec {
	return newSite(func(s *siteSpec) {
		s.monitor = fmt.Sprintf(`window = %q
    auto_rollback = true
    grace = "2s"`, monitorWindow)
	})
}

// TestMonitorEndsEarlyOnDeploy: a deploy into staging while a swap monitors production is
// accepted; it ends the monitor early, and the swap succeeds without a rollback. Production
// stays on the lane swapped in and answers 200 all along; staging gets the new version.
func TestMonitorEndsEarlyOnDeploy(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	site := monitoredSite()
	d := startDaemon(t, stack, site)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	prod, staging := site.host("production"), site.host("staging")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	waitServes(t, stack, staging, lanes["staging"])

	smp := startSampler(t, stack, prod, 2, 10*time.Minute)
	swap := swapUntilMonitoring(ctx, t, d, site)

	dep, err := d.client.Deploy(ctx, site.name, "staging", map[string]string{"app_version": "v3"})
	require.NoError(t, err, "a deploy into staging while the swap %s monitors must be accepted", swap.ID)
	dep, err = d.client.Wait(ctx, dep.ID, nil)
	require.NoError(t, err, "wait for the deploy %s (last seen %s)", dep.ID, dep.State)
	require.Equal(t, api.StateSucceeded, dep.State, "deploy into staging: %s (%s)", dep.Error, phaseTimes(dep))

	swap = waitTerminal(ctx, t, d, swap)
	t.Logf("swap: %s", phaseTimes(swap))
	checkEndedEarly(t, swap)

	assert.Equal(t, lanes["staging"], d.laneJobs(site.name)["production"], "production is still the lane swapped in")
	waitAnswers(t, stack, prod, 30*time.Second, "v1 from "+lanes["staging"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v1" && a.Env["DB"] == "prod-db"
	})
	waitAnswers(t, stack, staging, 30*time.Second, "v3 from "+lanes["production"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Version == "v3" && a.Env["DB"] == "staging-db"
	})
	waitIdle(t, d, site.name)
	assertNoRollback(ctx, t, d, site.name)
	assertAllServed(t, smp, prod)
}

// TestMonitorEndsEarlyOnCancel: cancelling a swap while it monitors ends the monitor early; the
// swap succeeds, production stays on the lane swapped in, and no rollback follows.
func TestMonitorEndsEarlyOnCancel(t *testing.T) {
	stack, site, d, ctx, lanes, smp, swap := monitoringSwap(t)
	prod := site.host("production")

	_, err := d.client.Cancel(ctx, swap.ID)
	require.NoError(t, err, "cancel the swap %s while it monitors", swap.ID)
	swap = waitTerminal(ctx, t, d, swap)
	t.Logf("swap: %s", phaseTimes(swap))
	checkEndedEarly(t, swap)
	assert.True(t, swap.Switched, "the cancelled monitor leaves the swap switched")

	assert.Equal(t, lanes["staging"], d.laneJobs(site.name)["production"], "production is still the lane swapped in")
	waitServes(t, stack, prod, lanes["staging"])
	waitIdle(t, d, site.name)
	assertNoRollback(ctx, t, d, site.name)
	assertAllServed(t, smp, prod)
}

// swapUntilMonitoring starts a swap of staging into production and follows it until it
// monitors.
func swapUntilMonitoring(ctx context.Context, t testing.TB, d *daemon, site siteSpec) *api.Operation {
	t.Helper()
	swap, err := d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "start a swap of staging into production")
	swap, err = d.client.Follow(ctx, swap, func(o *api.Operation) bool {
		return o.State == api.StateMonitoring || api.Terminal(o.State)
	}, nil)
	require.NoError(t, err, "follow the swap %s until it monitors (last seen %s)", swap.ID, swap.State)
	require.Equal(t, api.StateMonitoring, swap.State, "swap %s: %s (%s)", swap.ID, swap.Error, phaseTimes(swap))
	return swap
}

// waitTerminal follows op until it has ended, at most 5 minutes.
func waitTerminal(ctx context.Context, t testing.TB, d *daemon, op *api.Operation) *api.Operation {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	final, err := d.client.Follow(ctx, op, func(o *api.Operation) bool { return api.Terminal(o.State) }, nil)
	require.NoError(t, err, "follow %s %s until it ends (last seen %s: %s)", op.Kind, op.ID, final.State, phaseTimes(final))
	return final
}

// checkEndedEarly checks that a swap succeeded with its monitor ended before the window was over.
func checkEndedEarly(t testing.TB, swap *api.Operation) {
	t.Helper()
	assert.Equal(t, api.StateSucceeded, swap.State, "swap %s: %s", swap.ID, swap.Error)
	m := swap.Phase(api.PhaseMonitor)
	if !assert.NotNil(t, m, "swap %s has a monitor phase: %s", swap.ID, phaseTimes(swap)) {
		return
	}
	assert.Contains(t, m.Message, "ended early", "the monitor phase says it ended early")
	assert.NotEqual(t, api.PhaseFailed, m.State, "monitor phase")
	if assert.NotNil(t, m.EndedAt, "the monitor phase has ended") {
		assert.Less(t, m.Duration(), monitorWindow, "the monitor ended before its %s window was over", monitorWindow)
	}
}

// assertNoRollback checks that neither the history nor the running operation holds a rollback.
func assertNoRollback(ctx context.Context, t testing.TB, d *daemon, site string) {
	t.Helper()
	hist, err := d.client.History(ctx, site, api.HistoryPage{})
	require.NoError(t, err, "read the history of %s", site)
	var seen []string
	for _, op := range hist {
		seen = append(seen, op.Kind+"/"+op.State)
		assert.NotEqual(t, api.KindRollback, op.Kind, "operation %s (trigger %s) in the history", op.ID, op.Trigger)
	}
	t.Logf("history, newest first: %s", strings.Join(seen, " "))
	s, err := d.client.Site(ctx, site)
	require.NoError(t, err)
	if s.Operation != nil {
		assert.NotEqual(t, api.KindRollback, s.Operation.Kind, "the running operation %s", s.Operation.ID)
	}
}

// assertAllServed stops a sampler and checks that every request it sent got a 200.
func assertAllServed(t testing.TB, smp *sampler, host string) {
	t.Helper()
	samples := smp.stop()
	require.False(t, smp.capped.Load(), "the sampler of %s ran out of its bounds: later answers were not checked", host)
	require.NotEmpty(t, samples, "no request sampled on %s", host)
	var failed []sample
	for _, s := range samples {
		if s.err != nil || s.status != 200 {
			failed = append(failed, s)
		}
	}
	assert.Empty(t, failed, "requests to %s that did not get a 200: %s", host, firstSamples(failed, 20))
	t.Logf("%s: %d requests, %d not 200", host, len(samples), len(failed))
}

// TestRollbackDuringMonitor: `slotd rollback` while a swap monitors production (the moment a
// problem shows) rolls that swap back instead of answering that there is nothing to roll back;
// it ends the window early, and production is back on its lane, served all along.
func TestRollbackDuringMonitor(t *testing.T) {
	stack, site, d, ctx, lanes, smp, swap := monitoringSwap(t)
	prod := site.host("production")

	rb, err := d.client.Rollback(ctx, site.name)
	require.NoError(t, err, "a rollback while the swap %s monitors must be accepted", swap.ID)
	assert.Equal(t, swap.ID, rb.RollbackOf, "the rollback reverses the monitoring swap")
	rb, err = d.client.Wait(ctx, rb.ID, nil)
	require.NoError(t, err)
	require.Equal(t, api.StateSucceeded, rb.State, "rollback: %s (%s)", rb.Error, phaseTimes(rb))
	t.Logf("rollback: %s", phaseTimes(rb))

	swap = waitTerminal(ctx, t, d, swap)
	checkEndedEarly(t, swap)
	assert.Equal(t, lanes["production"], d.laneJobs(site.name)["production"], "production is back on its lane")
	waitAnswers(t, stack, prod, 30*time.Second, "v1 from "+lanes["production"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Env["DB"] == "prod-db"
	})
	waitIdle(t, d, site.name)
	assertAllServed(t, smp, prod)
}

// monitoringSwap starts a monitored site, samples production and swaps staging into it, and
// returns once the swap monitors.
func monitoringSwap(t *testing.T) (*Stack, siteSpec, *daemon, context.Context, map[string]string, *sampler, *api.Operation) {
	t.Helper()
	stack := Shared(t)
	t.Parallel()
	site := monitoredSite()
	d := startDaemon(t, stack, site)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	prod := site.host("production")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])

	smp := startSampler(t, stack, prod, 2, 10*time.Minute)
	return stack, site, d, ctx, lanes, smp, swapUntilMonitoring(ctx, t, d, site)
}
