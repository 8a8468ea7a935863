package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/internal/failpoint"
)

// TestTakenOverSwapKeepsWarmedLane (#19 item 2): slotd exits after a swap's warm-up, before its
// switch (an exit failpoint at switch.start). While no daemon runs, an operator changes
// production's sticky DB and staging's swappable FEATURE directly in Consul KV. The next daemon
// takes the swap over and switches the lane it finds warm: make changes its tags only, so the
// lane keeps its allocations under production's routes (no restart as it takes them on), and
// production answers every request. Once the swap has ended, the site converges to KV:
// production answers with the new sticky DB and the FEATURE that travelled from staging.
func TestTakenOverSwapKeepsWarmedLane(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	// No hold (the former production lane settles at once) and a monitor that outlasts the
	// checks below: the lanes stay as the switch left them until the test cancels the swap.
	site := newSite(func(s *siteSpec) {
		s.monitor = fmt.Sprintf(`window = %q
    rollback_window = "0s"`, monitorWindow)
	})
	prod, staging := site.host("production"), site.host("staging")
	p := startProcDaemon(t, stack, site, failpoint.Env+"=switch.start=exit")
	d := p.daemon()
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	waitServes(t, stack, staging, lanes["staging"])
	smp := startSampler(t, stack, prod, 4, faultTestTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	op, err := p.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "start a swap of staging into production")
	code := p.waitExit(5 * time.Minute)
	require.Equal(t, failpoint.ExitCode, code, "exit code of slotd at failpoint switch.start%s", p.tail())
	warmed := runningAllocs(t, stack, lanes["staging"])
	require.NotEmpty(t, warmed, "running allocations of the warmed lane %s", lanes["staging"])
	t.Logf("slotd exited before the switch of %s; lane %s runs %v", op.ID, lanes["staging"], warmed)

	putSetting(t, stack, site, "production", "sticky", "DB", "prod-db-2")
	putSetting(t, stack, site, "staging", "settings", "FEATURE", "staging-feature-2")
	p.restart()
	sw := waitSwitched(ctx, t, p.client, op.ID)
	t.Logf("swap %s taken over and switched: %s", op.ID, phaseTimes(sw))
	assert.Equal(t, warmed, runningAllocs(t, stack, lanes["staging"]),
		"allocations of lane %s before and after it took production's routes (make must change its tags only)", lanes["staging"])
	// Production is the lane as warm-up warmed it: production's sticky DB as it was at apply.
	waitAnswers(t, stack, prod, 30*time.Second, lanes["staging"]+" with DB=prod-db FEATURE=staging-feature", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "staging-feature"
	})

	waitOpState(t, d, op.ID, api.StateMonitoring, 5*time.Minute)
	_, err = p.client.Cancel(ctx, op.ID)
	require.NoError(t, err, "end the monitor of the swap %s", op.ID)
	final := p.waitOp(op.ID, 5*time.Minute)
	t.Logf("swap %s: %s %q (%s)", op.ID, final.State, final.Error, phaseTimes(final))
	checkEndedEarly(t, final)

	waitAnswers(t, stack, prod, 3*time.Minute, lanes["staging"]+" with DB=prod-db-2 FEATURE=staging-feature-2", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "prod-db-2" && a.Env["FEATURE"] == "staging-feature-2"
	})
	waitAnswers(t, stack, staging, 3*time.Minute, lanes["production"]+" with DB=staging-db FEATURE=prod-feature", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "prod-feature"
	})
	waitIdle(t, d, site.name)
	assert.Equal(t, map[string]string{"production": lanes["staging"], "staging": lanes["production"]}, d.laneJobs(site.name), "the lane of each slot after the swap")
	assertOnceInHistory(t, p.client, site.name, op.ID)
	assertSlotsRouted(t, stack, p.client, site.name)
	assertAllServed(t, smp, prod)
}

// putSetting writes key=value into a settings document of a slot (kind "settings" or
// "sticky") directly in Consul KV, as an operator may while no daemon runs.
func putSetting(t testing.TB, stack *Stack, site siteSpec, slot, kind, key, value string) {
	t.Helper()
	path := site.kvPrefix() + "/sites/" + site.name + "/slots/" + slot + "/" + kind
	pair, _, err := stack.Consul.KV().Get(path, nil)
	require.NoError(t, err, "read %s", path)
	require.NotNil(t, pair, "%s is absent", path)
	doc := map[string]string{}
	require.NoError(t, json.Unmarshal(pair.Value, &doc), "decode %s: %s", path, pair.Value)
	doc[key] = value
	b, err := json.Marshal(doc)
	require.NoError(t, err)
	ok, _, err := stack.Consul.KV().CAS(&consulapi.KVPair{Key: path, Value: b, ModifyIndex: pair.ModifyIndex}, nil)
	require.NoError(t, err, "write %s", path)
	require.True(t, ok, "%s changed while the test wrote it", path)
}

// TestTakenOverRollbackFromSickLane (#19 item 8): production swapped in (v2) turns sick while
// its swap holds the former production lane; a rollback takes that lane back (a switch only)
// and slotd exits right after the exchange (an exit failpoint at switch.after-exchange). The
// next daemon takes the rollback over knowing, from the journal, that the lane it rolled away
// from was failing its checks: it does not hold that lane for the rollback window (10 minutes)
// nor wait for its health, but settles it into staging at once, and the rollback ends.
func TestTakenOverRollbackFromSickLane(t *testing.T) {
	const hold = 10 * time.Minute
	stack := Shared(t)
	t.Parallel()
	site := holdSite("5s", hold)
	prod, staging := site.host("production"), site.host("staging")
	sick := filepath.Join(t.TempDir(), "sick")
	p := startProcDaemon(t, stack, site)
	// Registered after the daemon, so it runs before the daemon's cleanup: a lane waiting for
	// its checks can pass them then.
	t.Cleanup(func() { _ = os.Remove(sick) })
	d := p.daemon()
	lanes := d.laneJobs(site.name)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	deployStaging(t, d, site, map[string]string{"fail_healthz_file": sick, "app_version": "v2"})
	swap := swapUntilMonitoring(ctx, t, d, site)

	// The failpoint is set on a restart during the hold: the swap is taken over and holds on.
	p.kill()
	p.restart(failpoint.Env + "=switch.after-exchange=exit")
	p.waitLeader(time.Minute)
	held := waitHeld(ctx, t, p.client, site.name)
	require.Equal(t, swap.ID, held.ID, "the restarted daemon holds on in the same swap")
	waitAnswers(t, stack, prod, 30*time.Second, "v2 from "+lanes["staging"], func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v2"
	})

	require.NoError(t, os.WriteFile(sick, []byte("sick\n"), 0o644))
	WaitFor(t, 2*time.Minute, "production's lane "+lanes["staging"]+" failing its checks", func() (bool, string) {
		s, err := p.client.Site(ctx, site.name)
		if err != nil {
			return false, err.Error()
		}
		for _, sl := range s.Slots {
			if sl.Name == "production" {
				return sl.Lane == lanes["staging"] && sl.Total > 0 && sl.Healthy == 0, fmt.Sprintf("lane %s %d/%d healthy", sl.Lane, sl.Healthy, sl.Total)
			}
		}
		return false, "no slot production"
	})

	rb, err := p.client.Rollback(ctx, site.name)
	require.NoError(t, err, "roll back away from the sick production during the hold")
	code := p.waitExit(5 * time.Minute)
	require.Equal(t, failpoint.ExitCode, code, "exit code of slotd at failpoint switch.after-exchange%s", p.tail())
	p.restart()
	restarted := time.Now()
	// With the hold of a healthy lane, the rollback would end only after the 10 minutes.
	rb = p.waitOp(rb.ID, 3*time.Minute)
	t.Logf("rollback %s ended %s after the restart: %s %q (%s)", rb.ID, time.Since(restarted).Round(time.Millisecond), rb.State, rb.Error, phaseTimes(rb))
	require.Equal(t, api.StateSucceeded, rb.State, "the rollback taken over after its exchange: %s", rb.Error)
	assert.True(t, rb.Instant, "the rollback took the held lane back, a switch only: %s", phaseTimes(rb))
	assert.True(t, rb.TargetSick, "the rollback journaled that the lane it left was sick")
	sw, settle := rb.Phase(api.PhaseSwitch), rb.Phase(api.PhaseSettle)
	require.True(t, sw != nil && sw.EndedAt != nil, "rollback %s has an ended switch: %s", rb.ID, phaseTimes(rb))
	if assert.NotNil(t, settle, "rollback %s has a settle phase", rb.ID) && assert.NotNil(t, settle.StartedAt, "the settle started") {
		assert.Equal(t, api.PhaseSucceeded, settle.State, "settle of the rollback: %s", settle.Message)
		assert.Contains(t, settle.Message, "not waited for", "the settle says it did not wait for the sick lane")
		assert.Less(t, settle.StartedAt.Sub(*sw.EndedAt), time.Minute, "the settle started at once, not after the %s hold", hold)
	}
	s, err := p.client.Site(ctx, site.name)
	require.NoError(t, err, "read site %s", site.name)
	for _, sl := range s.Slots {
		assert.Empty(t, sl.HeldFor, "slot %s after the rollback", sl.Name)
	}

	waitAnswers(t, stack, prod, 30*time.Second, "v1 from "+lanes["production"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Version == "v1" && a.Env["DB"] == "prod-db"
	})
	require.NoError(t, os.Remove(sick), "heal the lane rolled away from")
	waitAnswers(t, stack, staging, 2*time.Minute, "v2 from "+lanes["staging"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v2" && a.Env["DB"] == "staging-db"
	})
	waitIdle(t, d, site.name)
	assert.Equal(t, lanes, d.laneJobs(site.name), "every slot is back on its lane")
	assertOnceInHistory(t, p.client, site.name, rb.ID)
}
