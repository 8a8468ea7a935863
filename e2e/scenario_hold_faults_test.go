package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/internal/failpoint"
)

// TestKilledInInstantRollback: slotd killed (exit at a failpoint, like kill -9) inside the switch
// of a rollback that takes the held lane back, then restarted. The rollback went straight to
// the switch (its candidate is the former production lane, held warm), so the restarted daemon
// finishes it as it would a swap past its warm-up: production answers 200 all along, ends on
// the lane it had before the swap, the rollback is once in history, every setting is kept, and
// the staging host never serves production's sticky settings.
func TestKilledInInstantRollback(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	for _, fp := range []string{"switch.start", "switch.after-make", "switch.after-break", "switch.before-exchange", "switch.after-exchange"} {
		t.Run(fp, func(t *testing.T) {
			t.Parallel()
			// The hold outlasts the kill and restarts below by far; the monitor as long.
			site := newSite(func(s *siteSpec) { s.monitor = `window = "10m"` })
			prod, staging := site.host("production"), site.host("staging")
			p := startProcDaemon(t, stack, site)
			d := p.daemon()
			lanes := d.laneJobs(site.name)
			waitServes(t, stack, prod, lanes["production"])
			prodSmp := startSampler(t, stack, prod, 4, faultTestTimeout)
			stagingSmp := startSampler(t, stack, staging, 2, faultTestTimeout)

			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			swap, err := p.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
			require.NoError(t, err, "start a swap of staging into production")
			swap = waitSwitched(ctx, t, p.client, swap.ID)
			require.False(t, swap.Instant, "the first swap is a full one")

			// The failpoint is set on a restart during the hold: the swap is taken over and
			// holds on, without running a switch again.
			p.kill()
			p.restart(failpoint.Env + "=" + fp + "=exit")
			p.waitLeader(time.Minute)
			held := waitHeld(ctx, t, p.client, site.name)
			assert.Equal(t, swap.ID, held.ID, "the restarted daemon holds on in the same swap")

			rb, err := p.client.Rollback(ctx, site.name)
			require.NoError(t, err, "roll back during the hold")
			posted := time.Now()
			code := p.waitExit(5 * time.Minute)
			require.Equal(t, failpoint.ExitCode, code, "exit code of slotd at failpoint %s%s", fp, p.tail())
			t.Logf("slotd exited at %s %s after the rollback %s was started", fp, time.Since(posted).Round(time.Millisecond), rb.ID)

			p.restart()
			rb = waitSwitched(ctx, t, p.client, rb.ID)
			assert.True(t, rb.Instant, "the rollback taken over is still a switch only: %s", phaseTimes(rb))
			assert.Equal(t, api.PhaseSkipped, rb.Phase(api.PhaseApply).State, "no apply: %s", phaseTimes(rb))
			// Ending the rollback's own monitor settles its held lane now.
			_, err = p.client.Cancel(ctx, rb.ID)
			require.NoError(t, err, "end the monitor of the rollback %s", rb.ID)
			final := p.waitOp(rb.ID, 8*time.Minute)
			t.Logf("rollback %s: %s %q (%s)", rb.ID, final.State, final.Error, phaseTimes(final))
			require.Equal(t, api.StateSucceeded, final.State, "a rollback killed at %s is finished", fp)
			waitIdle(t, d, site.name)

			assert.Equal(t, lanes, d.laneJobs(site.name), "every slot is back on its lane")
			assertOnceInHistory(t, p.client, site.name, rb.ID)
			assertSlotsRouted(t, stack, p.client, site.name)
			assertSettings(t, p.client, site.name, map[string]string{"production": "prod-feature", "staging": "staging-feature"})
			waitAnswers(t, stack, staging, 2*time.Minute, lanes["staging"]+" with staging's settings", func(a appAnswer) bool {
				return a.Lane == lanes["staging"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "staging-feature"
			})
			assertAllServed(t, prodSmp, prod)
			assertNoProductionSecrets(t, stagingSmp, site)
		})
	}
}

// waitSwitched follows operation id until its switch ended (it is monitoring or holding from
// then on, where a cancel or a kill finds it); errors while the daemon restarts count as not
// yet, and an operation that ended without switching fails the test.
func waitSwitched(ctx context.Context, t testing.TB, c *api.Client, id string) *api.Operation {
	t.Helper()
	var op *api.Operation
	WaitFor(t, 10*time.Minute, "operation "+id+" to switch", func() (bool, string) {
		cur, err := c.Operation(ctx, id, 0)
		if err != nil {
			return false, err.Error()
		}
		op = cur
		require.False(t, api.Terminal(op.State) && !op.Switched, "%s %s ended without switching: %s %s (%s)", op.Kind, op.ID, op.State, op.Error, phaseTimes(op))
		sw := op.Phase(api.PhaseSwitch)
		return op.Switched && sw != nil && sw.EndedAt != nil && op.State != api.StateSwitching, op.State
	})
	return op
}

// waitHeld waits until the site's running swap holds its former target lane, and returns it.
func waitHeld(ctx context.Context, t testing.TB, c *api.Client, site string) *api.Operation {
	t.Helper()
	var op *api.Operation
	WaitFor(t, 4*time.Minute, "site "+site+" to hold a lane", func() (bool, string) {
		s, err := c.Site(ctx, site)
		if err != nil {
			return false, err.Error()
		}
		for _, sl := range s.Slots {
			if sl.HeldFor != "" && s.Ready && s.Operation != nil {
				op = s.Operation
				return true, ""
			}
		}
		return false, "no slot held"
	})
	return op
}
