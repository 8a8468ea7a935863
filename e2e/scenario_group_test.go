package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/internal/failpoint"
)

// Bounds of the group scenarios (issue #22).
const (
	// groupTestTimeout bounds one group scenario; every wait inside is shorter.
	groupTestTimeout = 15 * time.Minute
	// groupAnswersApart is the bound between the first answers of the new version of
	// two members swapped as one.
	groupAnswersApart = 500 * time.Millisecond
	// groupRollbackBound is the bound for a group rollback inside the hold: a switch of
	// every member within a second.
	groupRollbackBound = time.Second
)

// TestGroupSwapUnderLoad: two sites, declared as one swap group, each with production on v1
// and staging on v2, requested through Fabio for the whole test. The group swap answers every
// request; the two production bindings change in one KV transaction (same modify index) and
// the two sites' first v2 answers are at most 0.5 s apart. Inside the hold, a group rollback is
// a switch of every member (each member's part instant: apply and warm skipped) that ends
// within 1 s of the call, and both production hosts answer v1 again from then on.
func TestGroupSwapUnderLoad(t *testing.T) {
	const hold = 3 * time.Minute
	stack := Shared(t)
	t.Parallel()
	sites := groupSites(func(s *siteSpec) {
		s.monitor = fmt.Sprintf(`window = "5s"
    rollback_window = %q`, hold)
	})
	group := "g" + Suffix()
	d := startDaemonGroup(t, stack, group, sites...)
	ctx, cancel := context.WithTimeout(context.Background(), groupTestTimeout)
	defer cancel()
	lanes := stagingOnV2(ctx, t, d, sites)
	smps := map[string]*sampler{}
	for _, s := range sites {
		waitAnswers(t, stack, s.host("production"), time.Minute, "v1 from "+lanes[s.name]["production"], func(a appAnswer) bool {
			return a.Lane == lanes[s.name]["production"] && a.Version == "v1"
		})
		waitAnswers(t, stack, s.host("staging"), time.Minute, "v2 from "+lanes[s.name]["staging"], func(a appAnswer) bool {
			return a.Lane == lanes[s.name]["staging"] && a.Version == "v2"
		})
		smps[s.name] = startSampler(t, stack, s.host("production"), 2, groupTestTimeout)
	}

	posted := time.Now()
	op, err := d.client.SwapGroup(ctx, group, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "start a swap of staging into production on group %s", group)
	checkGroupOperation(t, op, group, api.KindSwap, sites)
	op, err = d.client.Follow(ctx, op, func(o *api.Operation) bool {
		return o.State == api.StateHolding || api.Terminal(o.State)
	}, nil)
	require.NoError(t, err, "follow the group swap %s until it holds", op.ID)
	t.Logf("group swap %s: %s", op.ID, phaseTimes(op))
	require.Equal(t, api.StateHolding, op.State, "group swap %s after its monitor window: %q (%s; members %s)", op.ID, op.Error, phaseTimes(op), memberStates(op))
	checkMemberParts(ctx, t, d.client, op)

	// One KV transaction exchanged every member's bindings: the same modify index.
	indexes := map[string]uint64{}
	for _, s := range sites {
		pair := laneBinding(t, stack, sites[0], s.name, "production")
		assert.Equal(t, lanes[s.name]["staging"], pair.value, "%s's production binding after the group swap", s.name)
		indexes[s.name] = pair.index
	}
	t.Logf("modify index of slots/production/lane: %v", indexes)
	assert.Equal(t, indexes[sites[0].name], indexes[sites[1].name],
		"modify index of the production bindings of %s and %s: the group swap exchanges them in one transaction", sites[0].name, sites[1].name)

	// The first answers of the new version of the two sites.
	firstV2 := map[string]sample{}
	for _, s := range sites {
		newProd := func(a appAnswer) bool { return a.Lane == lanes[s.name]["staging"] && a.Version == "v2" }
		waitAnswers(t, stack, s.host("production"), 30*time.Second, "v2 from "+lanes[s.name]["staging"], newProd)
		smps[s.name].waitSent(t, time.Now())
		for _, smp := range smps[s.name].snapshot() {
			if !smp.at.Before(posted) && smp.err == nil && smp.status == 200 && newProd(smp.ans) {
				firstV2[s.name] = smp
				break
			}
		}
		require.Contains(t, firstV2, s.name, "no v2 answer sampled on %s after the group swap", s.host("production"))
	}
	a, b := firstV2[sites[0].name], firstV2[sites[1].name]
	apart := a.at.Sub(b.at).Abs()
	t.Logf("first v2 answers: %s %s, %s %s: sent %s apart (answered %s apart), %s after the switch ended",
		sites[0].name, a, sites[1].name, b, apart.Round(time.Millisecond),
		a.at.Add(a.took).Sub(b.at.Add(b.took)).Abs().Round(time.Millisecond),
		a.at.Sub(*op.Phase(api.PhaseSwitch).EndedAt).Round(time.Millisecond))
	assert.LessOrEqual(t, apart, groupAnswersApart, "time between the first v2 answers of %s and %s (sent)", sites[0].name, sites[1].name)

	// A group rollback inside the hold: a switch of every member.
	called := time.Now()
	rb, err := d.client.RollbackGroup(ctx, group)
	require.NoError(t, err, "a group rollback while the group swap %s holds must be accepted", op.ID)
	checkGroupOperation(t, rb, group, api.KindRollback, sites)
	rb = waitGroupSwitched(ctx, t, d.client, rb)
	t.Logf("group rollback %s (rollback of %q): %s", rb.ID, rb.RollbackOf, phaseTimes(rb))
	for _, m := range rb.Members {
		part, err := d.client.Operation(ctx, m.Operation, 0)
		require.NoError(t, err, "read %s's part %s of the group rollback", m.Site, m.Operation)
		checkInstant(t, part)
	}
	sw := rb.Phase(api.PhaseSwitch)
	switched := sw.EndedAt.Sub(called)
	t.Logf("group rollback: its switch of every member ended %s after the call (the switch itself %s: %s)",
		switched.Round(time.Millisecond), sw.Duration().Round(time.Millisecond), sw.Message)
	// Asserted: the switch of every member ended within 1 s of the call. The answers through
	// Fabio follow within the router's lag, which the second does not cover.
	assert.Less(t, switched, groupRollbackBound, "the group rollback's switch of every member ended within 1 s of the call")
	for _, s := range sites {
		previous := func(a appAnswer) bool {
			return a.Lane == lanes[s.name]["production"] && a.Version == "v1" && a.Env["DB"] == "prod-db"
		}
		waitAnswers(t, stack, s.host("production"), 30*time.Second, "v1 from "+lanes[s.name]["production"], previous)
		// The requests in flight until then are the sampler's last: steady v1 needs them.
		smps[s.name].waitSent(t, time.Now())
		samples := smps[s.name].snapshot()
		back, ok := steadyFrom(samples, called, previous)
		require.True(t, ok, "%s never settled on v1 after the group rollback; last answers: %s", s.host("production"), lastSamples(samples, 10))
		took := back.Sub(called)
		t.Logf("group rollback: %s answered only v1 from %s for every request sent from %s after the call",
			s.host("production"), lanes[s.name]["production"], took.Round(time.Millisecond))
		assert.LessOrEqual(t, took, switched+routerLag,
			"%s serves v1 again as soon as the group rollback's switch ended (plus the router's lag)", s.host("production"))
	}

	// End the rollback's own monitor; the swap it reverses has ended too.
	_, err = d.client.Cancel(ctx, rb.ID)
	require.NoError(t, err, "end the monitor of the group rollback %s", rb.ID)
	rb = waitTerminal(ctx, t, d, rb)
	assert.Equal(t, api.StateSucceeded, rb.State, "group rollback %s: %q (%s; members %s)", rb.ID, rb.Error, phaseTimes(rb), memberStates(rb))
	op = waitTerminal(ctx, t, d, op)
	assert.Equal(t, api.StateSucceeded, op.State, "the group swap %s rolled back: %q (%s; members %s)", op.ID, op.Error, phaseTimes(op), memberStates(op))
	for _, s := range sites {
		waitIdle(t, d, s.name)
		assert.Equal(t, lanes[s.name], d.laneJobs(s.name), "%s: every slot is back on its lane", s.name)
		assertAllServed(t, smps[s.name], s.host("production"))
	}
}

// TestGroupWarmupFailsUndoesAll: member B's staging fails its warm-up. The group swap fails,
// B's part names the warm-up, and every member is undone: neither site's production changed
// (its binding in KV, its version, the lane answering, every request a 200), and both staging
// slots are back as they were.
func TestGroupWarmupFailsUndoesAll(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	sites := groupSites()
	sites[1].warmup = `paths = ["/warm"]
    statuses = [200]
    timeout = "5s"
    attempts = 2
    interval = "200ms"`
	failing := sites[1].name
	group := "g" + Suffix()
	d := startDaemonGroup(t, stack, group, sites...)
	ctx, cancel := context.WithTimeout(context.Background(), groupTestTimeout)
	defer cancel()
	deployStagingAll(ctx, t, d, sites, func(s siteSpec) map[string]string {
		if s.name == failing {
			return map[string]string{"app_version": "v2", "fail_path": "/warm"}
		}
		return map[string]string{"app_version": "v2"}
	})
	lanes := groupLanes(d, sites)
	type before struct {
		binding laneKV
		version uint64
	}
	was := map[string]before{}
	smps := map[string]*sampler{}
	for _, s := range sites {
		waitServes(t, stack, s.host("production"), lanes[s.name]["production"])
		waitServes(t, stack, s.host("staging"), lanes[s.name]["staging"])
		was[s.name] = before{laneBinding(t, stack, sites[0], s.name, "production"), slotVersion(ctx, t, d.client, s.name, "production")}
		smps[s.name] = startSampler(t, stack, s.host("production"), 2, groupTestTimeout)
	}

	op := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.SwapGroup(ctx, group, api.SwapRequest{Source: "staging", Target: "production"})
	})
	t.Logf("group swap %s: %s %q (%s; members %s)", op.ID, op.State, op.Error, phaseTimes(op), memberStates(op))
	require.Equal(t, api.StateFailed, op.State, "a group swap whose member %s fails its warm-up", failing)
	assert.Contains(t, op.Error, failing, "the group swap's error names the member that failed")
	assert.Contains(t, op.Error, "/warm", "the group swap's error names the failing path")
	assert.False(t, op.Switched, "the group swap exchanged no slot")
	if sw := op.Phase(api.PhaseSwitch); assert.NotNil(t, sw, "group swap %s has a switch phase", op.ID) {
		assert.NotEqual(t, api.PhaseSucceeded, sw.State, "no switch after a failed warm-up")
	}
	parts := groupMembers(op)
	if m, ok := parts[failing]; assert.True(t, ok, "the group swap has a part of %s: %s", failing, memberStates(op)) {
		assert.Contains(t, strings.ToLower(m.Error), "warm", "%s's part names the warm-up", failing)
		assert.Contains(t, m.Error, "/warm", "%s's part names the failing path", failing)
		assert.Contains(t, m.Error, failing, "%s's part names its site as the one that failed", failing)
		part, err := d.client.Operation(ctx, m.Operation, 0)
		require.NoError(t, err, "read %s's part %s", failing, m.Operation)
		if warm := part.Phase(api.PhaseWarm); assert.NotNil(t, warm, "%s's part has a warm phase", failing) {
			assert.Equal(t, api.PhaseFailed, warm.State, "%s's warm phase: %s", failing, warm.Message)
		}
	}
	for _, m := range op.Members {
		part, err := d.client.Operation(ctx, m.Operation, 0)
		require.NoError(t, err, "read %s's part %s", m.Site, m.Operation)
		assert.NotEqual(t, api.StateSucceeded, part.State, "%s's part of a failed group swap: %s", m.Site, phaseTimes(part))
		assert.False(t, part.Switched, "%s's part exchanged its slots", m.Site)
	}

	for _, s := range sites {
		prod, staging := lanes[s.name]["production"], lanes[s.name]["staging"]
		waitIdle(t, d, s.name)
		assert.Equal(t, lanes[s.name], d.laneJobs(s.name), "%s: the failed group swap moved no slot", s.name)
		assert.Equal(t, was[s.name].binding, laneBinding(t, stack, sites[0], s.name, "production"), "%s's production binding in KV (value, modify index)", s.name)
		assert.Equal(t, was[s.name].version, slotVersion(ctx, t, d.client, s.name, "production"), "%s's production version", s.name)

		samples := smps[s.name].stop()
		require.False(t, smps[s.name].capped.Load(), "the sampler of %s ran out of its bounds", s.host("production"))
		require.NotEmpty(t, samples, "no request sampled on %s", s.host("production"))
		var wrong []sample
		for _, smp := range samples {
			if smp.err != nil || smp.status != 200 || smp.ans.Lane != prod || smp.ans.Version != "v1" || smp.ans.Env["DB"] != "prod-db" {
				wrong = append(wrong, smp)
			}
		}
		assert.Empty(t, wrong, "answers on %s that were not a 200 of v1 from %s with DB=prod-db: %s", s.host("production"), prod, firstSamples(wrong, 10))
		t.Logf("%s: %d requests, %d not a 200 of v1 from %s", s.host("production"), len(samples), len(wrong), prod)

		waitAnswers(t, stack, s.host("staging"), time.Minute, "v2 from "+staging+" with staging's settings", func(a appAnswer) bool {
			return a.Lane == staging && a.Version == "v2" && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "staging-feature" && a.Slot == "staging"
		})
		assertSettings(t, d.client, s.name, map[string]string{"production": "prod-feature", "staging": "staging-feature"})
		assertSlotsRouted(t, stack, d.client, s.name)
	}
}

// TestGroupSwapKilledAtSwitch: slotd killed (exit at a failpoint, like kill -9) at each step of
// a group's switch, then restarted. The group operation ends, and the two sites agree: both
// productions on the new lane or both on the old, in KV and in what answers through Fabio,
// never one switched and the other not; production answers 200 all along.
func TestGroupSwapKilledAtSwitch(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	for _, fp := range []string{"group.switch.after-make", "group.switch.after-break", "group.switch.before-exchange", "group.switch.after-exchange"} {
		t.Run(fp, func(t *testing.T) {
			t.Parallel()
			sites := groupSites()
			group := "g" + Suffix()
			p := startProcDaemonGroup(t, stack, group, sites, failpoint.Env+"="+fp+"=exit")
			d := p.daemon()
			ctx, cancel := context.WithTimeout(context.Background(), groupTestTimeout)
			defer cancel()
			lanes := stagingOnV2(ctx, t, d, sites)
			smps := map[string]*sampler{}
			for _, s := range sites {
				waitServes(t, stack, s.host("production"), lanes[s.name]["production"])
				smps[s.name] = startSampler(t, stack, s.host("production"), 2, groupTestTimeout)
			}

			op, err := p.client.SwapGroup(ctx, group, api.SwapRequest{Source: "staging", Target: "production"})
			require.NoError(t, err, "start a swap of staging into production on group %s", group)
			posted := time.Now()
			code := p.waitExit(5 * time.Minute)
			require.Equal(t, failpoint.ExitCode, code, "exit code of slotd at failpoint %s%s", fp, p.tail())
			require.Contains(t, p.log(), "failpoint "+fp+": exiting", "slotd exited at its failpoint")
			t.Logf("slotd exited at %s %s after the group swap %s was started", fp, time.Since(posted).Round(time.Millisecond), op.ID)
			p.restart()
			final := p.waitOp(op.ID, 8*time.Minute)
			t.Logf("group swap %s ended %s after the restart: %s %q (%s; members %s)", op.ID, time.Since(p.started).Round(time.Millisecond),
				final.State, final.Error, phaseTimes(final), memberStates(final))
			for _, s := range sites {
				waitIdle(t, d, s.name)
				p.waitReady(s.name)
			}
			// Every failpoint is past every member's warm-up: the next leader finishes the swap.
			require.Equal(t, api.StateSucceeded, final.State, "a group swap killed at %s after every member warmed is finished by the next leader", fp)

			// Both sites agree, and agree with the outcome.
			switched := final.State == api.StateSucceeded
			moved := map[string]bool{}
			for _, s := range sites {
				moved[s.name] = laneBinding(t, stack, sites[0], s.name, "production").value == lanes[s.name]["staging"]
			}
			require.Equal(t, moved[sites[0].name], moved[sites[1].name], "production bindings in KV after a kill at %s: %s switched %t, %s switched %t",
				fp, sites[0].name, moved[sites[0].name], sites[1].name, moved[sites[1].name])
			assert.Equal(t, switched, moved[sites[0].name], "the productions are switched exactly when the group swap succeeded (%s)", final.State)

			for _, m := range final.Members {
				assertOnceInHistory(t, p.client, m.Site, m.Operation)
			}
			for _, s := range sites {
				want, version := lanes[s.name], "v1"
				if switched {
					want, version = map[string]string{"production": lanes[s.name]["staging"], "staging": lanes[s.name]["production"]}, "v2"
				}
				assert.Equal(t, want, d.laneJobs(s.name), "%s: the lane of each slot after the group swap %s", s.name, final.State)
				for slot, lane := range want {
					assert.Equal(t, lane, laneBinding(t, stack, sites[0], s.name, slot).value, "%s's %s binding in KV", s.name, slot)
				}
				assertSlotsRouted(t, stack, p.client, s.name)
				waitAnswers(t, stack, s.host("production"), 2*time.Minute, version+" from "+want["production"]+" with DB=prod-db", func(a appAnswer) bool {
					return a.Lane == want["production"] && a.Version == version && a.Env["DB"] == "prod-db"
				})
				assertAllServed(t, smps[s.name], s.host("production"))
			}
		})
	}
}

// TestGroupConflicts: a member busy with its own (preview) swap makes a group swap answer 409
// naming that site; during a group operation (a preview group swap) a member's own swap or
// deploy answers 409 naming the group operation, and every member shows the group operation as
// its own. Complete finishes the group operation: both sites switched.
func TestGroupConflicts(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	sites := groupSites()
	group := "g" + Suffix()
	d := startDaemonGroup(t, stack, group, sites...)
	ctx, cancel := context.WithTimeout(context.Background(), groupTestTimeout)
	defer cancel()
	lanes := groupLanes(d, sites)
	busy := sites[0].name
	swapReq := api.SwapRequest{Source: "staging", Target: "production"}

	own := startPreview(ctx, t, d, busy)
	_, err := d.client.SwapGroup(ctx, group, swapReq)
	assertConflict(t, err, "a group swap while member "+busy+" previews its own swap", busy, own.ID)
	own, err = d.client.Cancel(ctx, own.ID)
	require.NoError(t, err, "cancel %s's own preview", busy)
	own = waitTerminal(ctx, t, d, own)
	require.Equal(t, api.StateCancelled, own.State, "%s's own preview after cancel: %q", busy, own.Error)
	waitIdle(t, d, busy)

	gop, err := d.client.SwapGroup(ctx, group, api.SwapRequest{Source: "staging", Target: "production", Preview: true})
	require.NoError(t, err, "start a preview group swap on %s once %s is idle", group, busy)
	checkGroupOperation(t, gop, group, api.KindSwap, sites)
	gop, err = d.client.Wait(ctx, gop.ID, nil)
	require.NoError(t, err, "wait for the preview group swap %s", gop.ID)
	require.Equal(t, api.StatePreviewing, gop.State, "preview group swap %s: %q (%s; members %s)", gop.ID, gop.Error, phaseTimes(gop), memberStates(gop))

	for _, s := range sites {
		_, err := d.client.Swap(ctx, s.name, swapReq)
		assertConflict(t, err, "member "+s.name+"'s own swap during the group swap", "group operation", gop.ID, group)
		st, err := d.client.Site(ctx, s.name)
		require.NoError(t, err, "read site %s", s.name)
		if assert.NotNil(t, st.Operation, "%s shows an operation during the group swap", s.name) {
			assert.Equal(t, gop.ID, st.Operation.ID, "%s's operation is the group operation", s.name)
			assert.Equal(t, group, st.Operation.Group, "%s's operation names the group", s.name)
		}
	}
	_, err = d.client.Deploy(ctx, sites[1].name, "staging", map[string]string{"app_version": "v2"})
	assertConflict(t, err, "a deploy into member "+sites[1].name+"'s staging during the group swap", "group operation", gop.ID, group)
	groups, err := d.client.Groups(ctx)
	require.NoError(t, err, "list the groups")
	var listed *api.Group
	for i := range groups {
		if groups[i].Name == group {
			listed = &groups[i]
		}
	}
	if assert.NotNil(t, listed, "GET /v1/groups lists %s: %+v", group, groups) {
		assert.ElementsMatch(t, []string{sites[0].name, sites[1].name}, listed.Sites, "the members of %s", group)
		if assert.NotNil(t, listed.Operation, "%s shows its running operation", group) {
			assert.Equal(t, gop.ID, listed.Operation.ID, "%s's running operation", group)
		}
	}

	gop, err = d.client.Complete(ctx, gop.ID)
	require.NoError(t, err, "complete the preview group swap %s", gop.ID)
	gop = waitTerminal(ctx, t, d, gop)
	t.Logf("completed group swap %s: %s (members %s)", gop.ID, phaseTimes(gop), memberStates(gop))
	require.Equal(t, api.StateSucceeded, gop.State, "completed group swap %s: %q", gop.ID, gop.Error)
	for _, s := range sites {
		waitIdle(t, d, s.name)
		assert.Equal(t, map[string]string{"production": lanes[s.name]["staging"], "staging": lanes[s.name]["production"]},
			d.laneJobs(s.name), "%s: the lane of each slot after the completed group swap", s.name)
		waitServes(t, stack, s.host("production"), lanes[s.name]["staging"])
	}
	for _, m := range gop.Members {
		assertOnceInHistory(t, d.client, m.Site, m.Operation)
	}
}

// groupSites are the two member sites of a group scenario, one instance a lane (the machine's
// cores are few), with opts applied to each.
func groupSites(opts ...func(*siteSpec)) []siteSpec {
	one := func(s *siteSpec) { s.vars = map[string]string{"count": "1"} }
	return []siteSpec{newSite(append([]func(*siteSpec){one}, opts...)...), newSite(append([]func(*siteSpec){one}, opts...)...)}
}

// groupLanes maps each site to the lane job of each of its slots.
func groupLanes(d *daemon, sites []siteSpec) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, s := range sites {
		out[s.name] = d.laneJobs(s.name)
	}
	return out
}

// deployStagingAll deploys vars(site) into every site's staging slot, the sites side by side,
// and requires every deploy to succeed.
func deployStagingAll(ctx context.Context, t testing.TB, d *daemon, sites []siteSpec, vars func(siteSpec) map[string]string) {
	t.Helper()
	ops := make([]*api.Operation, len(sites))
	for i, s := range sites {
		op, err := d.client.Deploy(ctx, s.name, "staging", vars(s))
		require.NoError(t, err, "deploy %v into %s's staging", vars(s), s.name)
		ops[i] = op
	}
	for i, op := range ops {
		final, err := d.client.Wait(ctx, op.ID, nil)
		require.NoError(t, err, "wait for the deploy %s into %s's staging", op.ID, sites[i].name)
		require.Equal(t, api.StateSucceeded, final.State, "deploy %v into %s's staging: %s (%s)", vars(sites[i]), sites[i].name, final.Error, phaseTimes(final))
	}
}

// stagingOnV2 deploys v2 into every site's staging slot and returns each site's lanes.
func stagingOnV2(ctx context.Context, t testing.TB, d *daemon, sites []siteSpec) map[string]map[string]string {
	t.Helper()
	deployStagingAll(ctx, t, d, sites, func(siteSpec) map[string]string { return map[string]string{"app_version": "v2"} })
	return groupLanes(d, sites)
}

// laneKV is a KV key binding a slot to its lane: the lane's job ID and the key's modify index.
type laneKV struct {
	value string
	index uint64
}

// laneBinding reads the KV key that binds a slot of site to its lane, under the kv_prefix of
// the daemon's first site.
func laneBinding(t testing.TB, stack *Stack, first siteSpec, site, slot string) laneKV {
	t.Helper()
	key := first.kvPrefix() + "/sites/" + site + "/slots/" + slot + "/lane"
	pair, _, err := stack.Consul.KV().Get(key, nil)
	require.NoError(t, err, "read %s", key)
	require.NotNil(t, pair, "%s is absent", key)
	return laneKV{value: string(pair.Value), index: pair.ModifyIndex}
}

// slotVersion is the version of the job that serves a slot of the site, as the site shows it.
func slotVersion(ctx context.Context, t testing.TB, c *api.Client, site, slot string) uint64 {
	t.Helper()
	s, err := c.Site(ctx, site)
	require.NoError(t, err, "read site %s", site)
	for _, sl := range s.Slots {
		if sl.Name == slot {
			return sl.Version
		}
	}
	require.Failf(t, "no such slot", "site %s has no slot %s", site, slot)
	return 0
}

// checkGroupOperation checks what POST /v1/groups/{group}/… answers: an operation of the group
// (no site of its own) of that kind, with one part for each member site.
func checkGroupOperation(t testing.TB, op *api.Operation, group, kind string, sites []siteSpec) {
	t.Helper()
	require.NotEmpty(t, op.ID, "the group operation has an ID")
	assert.Equal(t, group, op.Group, "%s's group", op.ID)
	assert.Empty(t, op.Site, "%s belongs to no one site", op.ID)
	assert.Equal(t, kind, op.Kind, "%s's kind", op.ID)
	var names []string
	for _, m := range op.Members {
		names = append(names, m.Site)
	}
	assert.ElementsMatch(t, []string{sites[0].name, sites[1].name}, names, "the members of group operation %s", op.ID)
}

// checkMemberParts checks that every member's part of the group operation is an operation of
// that site naming the group and the group operation.
func checkMemberParts(ctx context.Context, t testing.TB, c *api.Client, op *api.Operation) {
	t.Helper()
	for _, m := range op.Members {
		require.NotEmpty(t, m.Operation, "%s's part of %s has an ID", m.Site, op.ID)
		part, err := c.Operation(ctx, m.Operation, 0)
		require.NoError(t, err, "read %s's part %s of %s", m.Site, m.Operation, op.ID)
		assert.Equal(t, m.Site, part.Site, "the site of part %s", part.ID)
		assert.Equal(t, op.Group, part.Group, "the group of part %s", part.ID)
		assert.Equal(t, op.ID, part.GroupOperation, "the group operation of part %s", part.ID)
	}
}

// waitGroupSwitched follows a group operation until its switch has ended (it monitors or holds
// from then on, or it ended), and requires that switch to have succeeded.
func waitGroupSwitched(ctx context.Context, t testing.TB, c *api.Client, op *api.Operation) *api.Operation {
	t.Helper()
	op, err := c.Follow(ctx, op, func(o *api.Operation) bool {
		return o.State == api.StateMonitoring || o.State == api.StateHolding || api.Terminal(o.State)
	}, nil)
	require.NoError(t, err, "follow %s %s until it switched", op.Kind, op.ID)
	sw := op.Phase(api.PhaseSwitch)
	require.True(t, sw != nil && sw.State == api.PhaseSucceeded && sw.EndedAt != nil,
		"%s %s switched: %s %q (%s; members %s)", op.Kind, op.ID, op.State, op.Error, phaseTimes(op), memberStates(op))
	return op
}

// groupMembers maps each member site to its part of a group operation.
func groupMembers(op *api.Operation) map[string]api.GroupMember {
	out := map[string]api.GroupMember{}
	for _, m := range op.Members {
		out[m.Site] = m
	}
	return out
}

// memberStates lists the parts of a group operation, for logs.
func memberStates(op *api.Operation) string {
	var parts []string
	for _, m := range op.Members {
		s := fmt.Sprintf("%s %s %s", m.Site, m.Operation, m.State)
		if m.Error != "" {
			s += fmt.Sprintf(" %q", m.Error)
		}
		parts = append(parts, s)
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// assertConflict checks that err is a 409 whose message names every one of names.
func assertConflict(t testing.TB, err error, what string, names ...string) {
	t.Helper()
	var se *api.StatusError
	if !assert.True(t, errors.As(err, &se), "%s: want a 409, got %v", what, err) {
		return
	}
	assert.Equal(t, http.StatusConflict, se.Code, "%s: %s", what, se.Message)
	for _, n := range names {
		assert.Contains(t, se.Message, n, "%s: the 409 names %s", what, n)
	}
}
