package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestRollbackNotQueuedBehindSettings: a release pipeline writes a site's 20 settings again, in
// a burst, all of them as they are (a declarative pipeline sets them every run), and an operator
// calls a rollback of the last swap at once. The rollback is accepted within a second: the
// site's owner, which starts operations, must not sit behind one Nomad plan of every slot per
// settings write. Nomad answers as a busy one does, each read taking tens of milliseconds
// (slotd reaches it through a FaultProxy that delays it), which is what makes the queue show.
// Production answers every request.
func TestRollbackNotQueuedBehindSettings(t *testing.T) {
	const (
		writes = 20
		// nomadDelay is how long the proxy holds each piece of data on its way to or from
		// Nomad, from the burst until the rollback is accepted: a plan, a read, takes about
		// twice that.
		nomadDelay = 20 * time.Millisecond
		// accepted is how soon the rollback must be accepted: the bound, not a
		// generous timeout.
		accepted = time.Second
	)
	stack := Shared(t)
	t.Parallel()
	nomad := NewFaultProxy(t, strings.TrimPrefix(stack.NomadAddr, "http://"))
	settings := map[string]map[string]string{"production": {}, "staging": {}}
	for i := range writes / 2 {
		settings["production"][fmt.Sprintf("PROD_%02d", i)] = fmt.Sprintf("prod-%02d", i)
		settings["staging"][fmt.Sprintf("STAGING_%02d", i)] = fmt.Sprintf("staging-%02d", i)
	}
	site := newSite(func(s *siteSpec) {
		s.nomad = "http://" + nomad.Addr()
		s.settings = settings
	})
	d := startDaemon(t, stack, site)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	prod := site.host("production")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	smp := startSampler(t, stack, prod, 4, 10*time.Minute)

	swap := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, swap.State, "swap of staging into production: %s (%s)", swap.Error, phaseTimes(swap))
	waitIdle(t, d, site.name)
	waitServes(t, stack, prod, lanes["staging"])

	// The burst writes every setting of both slots as it is now (the swap exchanged them).
	type write struct{ slot, key, value string }
	var burst []write
	for _, slot := range []string{"production", "staging"} {
		set, err := d.client.Settings(ctx, site.name, slot)
		require.NoError(t, err, "read the settings of %s", slot)
		for _, k := range slices.Sorted(maps.Keys(set.Settings)) {
			if strings.HasPrefix(k, "PROD_") || strings.HasPrefix(k, "STAGING_") {
				burst = append(burst, write{slot, k, set.Settings[k]})
			}
		}
	}
	require.Len(t, burst, writes, "declared settings found in the slots: %v", burst)

	nomad.Delay(nomadDelay)
	began := time.Now()
	var wg sync.WaitGroup
	took := make([]time.Duration, len(burst))
	errs := make([]error, len(burst))
	for i, w := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.client.SetSetting(ctx, site.name, w.slot, w.key, w.value, false)
			took[i] = time.Since(began)
		}()
	}
	// Time for every write to be in: each has read KV and waits for the site's owner.
	time.Sleep(100 * time.Millisecond)
	called := time.Now()
	rb, err := d.client.Rollback(ctx, site.name)
	answered := time.Since(called)
	nomad.Heal()
	wg.Wait()
	slices.Sort(took)
	t.Logf("%d settings writes answered after %s to %s (Nomad delayed %s a piece of data); the rollback called %s after the burst began, answered after %s",
		len(burst), took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), nomadDelay,
		called.Sub(began).Round(time.Millisecond), answered.Round(time.Millisecond))
	for i, err := range errs {
		assert.NoError(t, err, "write %s=%s on %s", burst[i].key, burst[i].value, burst[i].slot)
	}
	require.NoError(t, err, "a rollback of the swap %s must be accepted", swap.ID)
	assert.Equal(t, swap.ID, rb.RollbackOf, "the rollback reverses the last swap")
	assert.LessOrEqual(t, answered, accepted, "time from the rollback call to its 202 answer, with %d settings writes before it", len(burst))

	rb = waitTerminal(ctx, t, d, rb)
	t.Logf("rollback: %s %q (%s)", rb.State, rb.Error, phaseTimes(rb))
	require.Equal(t, api.StateSucceeded, rb.State, "rollback %s: %s", rb.ID, rb.Error)
	waitIdle(t, d, site.name)
	assert.Equal(t, lanes, d.laneJobs(site.name), "every slot is back on its original lane")
	waitServes(t, stack, prod, lanes["production"])
	assertAllServed(t, smp, prod)
}
