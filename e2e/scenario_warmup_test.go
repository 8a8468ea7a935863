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

// TestWarmupGate: staging's app fails the warm-up path, so the swap fails in warm-up; production
// answers from its lane all along, and staging is back as it was.
func TestWarmupGate(t *testing.T) {
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.warmup = `paths = ["/warm"]
    statuses = [200]
    timeout = "5s"
    attempts = 2
    interval = "200ms"`
	})
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod, staging := site.host("production"), site.host("staging")
	lanes := d.laneJobs(site.name)

	op := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Deploy(ctx, site.name, "staging", map[string]string{"fail_path": "/warm", "app_version": "v2"})
	})
	require.Equal(t, api.StateSucceeded, op.State, "deploy into staging: %s", op.Error)
	waitAnswers(t, stack, staging, 30*time.Second, "v2 from "+lanes["staging"], func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v2"
	})
	waitServes(t, stack, prod, lanes["production"])
	before, err := d.client.Site(ctx, site.name)
	require.NoError(t, err)

	smp := startSampler(t, stack, prod, 2, 10*time.Minute)
	op = d.swap(site.name, "staging", "production")
	samples := smp.stop()
	t.Logf("swap: %s, error %q, %d requests on production", op.State, op.Error, len(samples))

	require.Equal(t, api.StateFailed, op.State, "a swap whose warm-up fails")
	assert.Contains(t, strings.ToLower(op.Error), "warm", "the operation's error names the warm-up")
	assert.Contains(t, op.Error, "/warm", "the operation's error names the failing path")
	if warm := op.Phase(api.PhaseWarm); assert.NotNil(t, warm) {
		assert.Equal(t, api.PhaseFailed, warm.State, "warm phase")
	}
	if sw := op.Phase(api.PhaseSwitch); assert.NotNil(t, sw) {
		assert.NotEqual(t, api.PhaseSucceeded, sw.State, "no switch after a failed warm-up")
	}
	assert.False(t, op.Switched, "the slots were not exchanged")

	require.False(t, smp.capped.Load(), "the production sampler ran out of its bounds")
	require.NotEmpty(t, samples, "no request sampled on production during the swap")
	var wrong []sample
	for _, s := range samples {
		if s.err != nil || s.status != 200 || s.ans.Lane != lanes["production"] || s.ans.Env["DB"] != "prod-db" {
			wrong = append(wrong, s)
		}
	}
	assert.Empty(t, wrong, "production answers during the failed swap that were not a 200 from %s with DB=prod-db: %s",
		lanes["production"], firstSamples(wrong, 10))

	// Staging is back as it was: its lane, its app, its settings.
	assert.Equal(t, lanes, d.laneJobs(site.name), "the failed swap moved no slot")
	waitAnswers(t, stack, staging, 30*time.Second, "v2 from "+lanes["staging"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v2" && a.Env["DB"] == "staging-db" &&
			a.Env["FEATURE"] == "staging-feature" && a.Slot == "staging"
	})
	waitAnswers(t, stack, prod, 30*time.Second, lanes["production"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Version == "v1" && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "prod-feature"
	})
	after, err := d.client.Site(ctx, site.name)
	require.NoError(t, err)
	for i, sl := range after.Slots {
		assert.Equal(t, before.Slots[i].Tags, sl.Tags, "slot %s tags", sl.Name)
		assert.Equal(t, sl.Total, sl.Healthy, "slot %s: every instance healthy", sl.Name)
		if sl.Name == "production" {
			assert.Equal(t, before.Slots[i].Version, sl.Version, "production's version is untouched")
		}
	}
}

// TestColdApp: staging's app answers its first 4 requests slowly. The swap's warm-up pays for
// them, so the first requests production gets after the switch are fast.
func TestColdApp(t *testing.T) {
	const (
		slowFirst = 4
		slowDelay = time.Second
		fast      = 500 * time.Millisecond
		firstN    = 8
	)
	stack := Shared(t)
	// Four pages per instance, the way a warm-up visits an app's main pages.
	site := newSite(func(s *siteSpec) {
		s.warmup = `paths = ["/", "/a", "/b", "/c"]
    statuses = [200]
    timeout = "5s"
    attempts = 2
    interval = "200ms"`
	})
	d := startDaemon(t, stack, site)
	prod := site.host("production")
	lanes := d.laneJobs(site.name)

	op := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Deploy(ctx, site.name, "staging", map[string]string{
			"slow_first": "4", "slow_delay": slowDelay.String(), "app_version": "v2",
		})
	})
	require.Equal(t, api.StateSucceeded, op.State, "deploy into staging: %s", op.Error)
	waitServes(t, stack, prod, lanes["production"])

	// As soon as the switch is done, production's first requests are timed; answers from the old
	// lane (the router has not caught up yet) do not count.
	type timed struct {
		took time.Duration
		s    sample
	}
	var first []timed
	var others []sample
	measured := false
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	op, err := d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err)
	op, err = d.client.Follow(ctx, op, func(o *api.Operation) bool { return api.Terminal(o.State) }, func(o *api.Operation) {
		if measured || !o.Switched {
			return
		}
		measured = true
		for i := 0; i < 10*firstN && len(first) < firstN; i++ {
			smp := sample{at: time.Now()}
			smp.status, smp.ans, smp.err = get(ctx, stack, prod)
			smp.took = time.Since(smp.at)
			if smp.err == nil && smp.status == 200 && smp.ans.Lane == lanes["staging"] {
				first = append(first, timed{smp.took, smp})
			} else {
				others = append(others, smp)
			}
		}
	})
	require.NoError(t, err, "follow the swap")
	require.Equal(t, api.StateSucceeded, op.State, "swap: %s", op.Error)
	require.True(t, measured, "the swap was never seen switched")
	t.Logf("swap: %s; answers not from the new lane first: %s", phaseTimes(op), firstSamples(others, 10))

	warm := op.Phase(api.PhaseWarm)
	require.NotNil(t, warm)
	// Each instance answers its 4 pages one after the other, each slow: the swap waited for that.
	assert.GreaterOrEqual(t, warm.Duration(), slowFirst*slowDelay, "the warm phase took the cold app's slow requests")

	require.Len(t, first, firstN, "answers from the new production lane %s", lanes["staging"])
	for i, f := range first {
		assert.Less(t, f.took, fast, "production request %d after the switch: %s", i+1, f.s)
		assert.Equal(t, "v2", f.s.ans.Version, "production request %d", i+1)
	}
}
