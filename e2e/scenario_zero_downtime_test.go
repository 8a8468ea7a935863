package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestZeroDowntimeSwaps: 8 clients request production through Fabio for the whole of five swaps
// back and forth. Every answer is a 200, and from 2 s after each switch on every answer comes
// from the lane swapped in, until the next switch starts.
func TestZeroDowntimeSwaps(t *testing.T) {
	const (
		swaps    = 5
		clients  = 8
		converge = 2 * time.Second // the bound for the router to follow a switch
	)
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	host := site.host("production")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, host, lanes["production"])
	waitServes(t, stack, site.host("staging"), lanes["staging"])

	// A window is a stretch of time in which every request sent must be answered by lane.
	type window struct {
		from, to time.Time
		lane     string
		what     string
	}
	var windows []window
	smp := startSampler(t, stack, host, clients, 15*time.Minute)
	from, lane, what := time.Now(), lanes["production"], "before the first swap"
	for i := 1; i <= swaps; i++ {
		began := time.Now()
		op := d.swap(site.name, "staging", "production")
		require.Equal(t, api.StateSucceeded, op.State, "swap %d: %s", i, op.Error)
		sw := op.Phase(api.PhaseSwitch)
		require.NotNil(t, sw, "swap %d has no switch phase", i)
		require.NotNil(t, sw.StartedAt, "swap %d: switch phase without a start", i)
		require.NotNil(t, sw.EndedAt, "swap %d: switch phase without an end", i)
		windows = append(windows, window{from, *sw.StartedAt, lane, what})

		next := d.laneJobs(site.name)
		require.Equal(t, lanes["staging"], next["production"], "swap %d: production is now the former staging lane", i)
		require.Equal(t, lanes["production"], next["staging"], "swap %d: staging is now the former production lane", i)
		lanes = next
		from, lane = sw.EndedAt.Add(converge), lanes["production"]
		what = fmt.Sprintf("from %s after the switch of swap %d", converge, i)
		t.Logf("swap %d: %s in all, switch %s (%s), production now %s",
			i, time.Since(began).Round(time.Millisecond), sw.Duration().Round(time.Millisecond), phaseTimes(op), lane)
	}
	// The last window ends with the test's last request, sent at the latest now.
	windows = append(windows, window{from, time.Now(), lane, what})
	samples := smp.stop()
	require.False(t, smp.capped.Load(), "the sampler ran out of its bounds before the swaps ended: later answers were not checked")

	var failed []sample
	for _, s := range samples {
		if s.err != nil || s.status != 200 {
			failed = append(failed, s)
		}
	}
	assert.Empty(t, failed, "requests to %s that did not get a 200 during the swaps: %s", host, firstSamples(failed, 20))

	for _, w := range windows {
		var in, wrong []sample
		for _, s := range samples {
			if !s.at.Before(w.from) && s.at.Before(w.to) && s.err == nil && s.status == 200 {
				in = append(in, s)
				if s.ans.Lane != w.lane {
					wrong = append(wrong, s)
				}
			}
		}
		if !assert.NotEmpty(t, in, "no answer sampled %s (%s to %s)", w.what, w.from.Format("15:04:05.000"), w.to.Format("15:04:05.000")) {
			continue
		}
		assert.Empty(t, wrong, "answers %s not from %s: %s", w.what, w.lane, firstSamples(wrong, 10))
	}
	// For the log: how long after each switch the old lane still answered.
	for i, w := range windows[1:] {
		switched, lag := w.from.Add(-converge), time.Duration(0)
		for _, s := range samples {
			if !s.at.Before(switched) && s.at.Before(w.to) && s.status == 200 && s.ans.Lane != w.lane {
				lag = max(lag, s.at.Sub(switched))
			}
		}
		t.Logf("swap %d: the old lane answered until %s after the switch ended", i+1, lag.Round(time.Millisecond))
	}
	t.Logf("%d requests, %d not 200", len(samples), len(failed))
}

// phaseTimes lists an operation's phases with how long each took, for logs.
func phaseTimes(op *api.Operation) string {
	s := ""
	for i, p := range op.Phases {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s=%s/%s", p.Name, p.State, p.Duration().Round(time.Millisecond))
	}
	return s
}
