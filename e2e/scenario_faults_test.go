package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/internal/failpoint"
)

// faultTestTimeout bounds the sampling of one fault test; every wait inside is shorter.
const faultTestTimeout = 25 * time.Minute

// TestKilledAtFailpoint: slotd killed (exit at a failpoint, no cleanup, like kill -9) at each
// step of a swap of staging into production, then restarted. Before the warm-up succeeded the
// restarted daemon undoes the swap; from warm.end on it finishes it (DESIGN.md §3 "Recovery
// and convergence", §9). Either way the operation keeps its ID and ends once, every lane runs
// what KV binds it to, production answers 200 all along with its own sticky settings, and the
// staging host never serves production's.
func TestKilledAtFailpoint(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	for _, tc := range []struct {
		failpoint   string
		rollForward bool // the swap had warmed up when slotd died: it is finished, not undone
	}{
		{"apply.start", false},
		{"lane.after-register", false},
		{"apply.end", false},
		{"warm.start", false},
		{"warm.end", true},
		{"switch.after-make", true},
		{"switch.after-break", true},
		{"switch.before-exchange", true},
		{"switch.after-exchange", true},
		{"settle.start", true},
		{"settle.end", true},
	} {
		t.Run(tc.failpoint, func(t *testing.T) {
			t.Parallel()
			site := newSite()
			prod, staging := site.host("production"), site.host("staging")
			// lane.after-register fires while a site first registers its lanes too: every case
			// sets its failpoint only once the site stands, on a restart that registers nothing.
			p := startProcDaemon(t, stack, site)
			require.Equal(t, 0, p.stop(), "exit code of slotd stopped with SIGTERM")
			p.restart(failpoint.Env + "=" + tc.failpoint + "=exit")
			p.waitReady(site.name)
			d := p.daemon()
			lanes := d.laneJobs(site.name)
			waitServes(t, stack, prod, lanes["production"])
			waitServes(t, stack, staging, lanes["staging"])

			prodSmp := startSampler(t, stack, prod, 4, faultTestTimeout)
			stagingSmp := startSampler(t, stack, staging, 2, faultTestTimeout)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			op, err := p.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
			require.NoError(t, err, "start a swap of staging into production")
			posted := time.Now()

			code := p.waitExit(5 * time.Minute)
			require.Equal(t, failpoint.ExitCode, code, "exit code of slotd at failpoint %s%s", tc.failpoint, p.tail())
			require.Contains(t, p.log(), "failpoint "+tc.failpoint+": exiting", "slotd exited at its failpoint")
			t.Logf("slotd exited at %s %s after the swap %s was started", tc.failpoint, time.Since(posted).Round(time.Millisecond), op.ID)
			p.restart()
			final := p.waitOp(op.ID, 8*time.Minute)
			t.Logf("swap %s ended %s after the restart: %s %q (%s)", op.ID, time.Since(p.started).Round(time.Millisecond), final.State, final.Error, phaseTimes(final))
			waitIdle(t, d, site.name)
			p.waitReady(site.name)

			if tc.rollForward {
				assert.Equal(t, api.StateSucceeded, final.State, "a swap killed at %s (warm-up done) is finished: %q (%s)", tc.failpoint, final.Error, phaseTimes(final))
			} else {
				assert.Equal(t, api.StateFailed, final.State, "a swap killed at %s (before its warm-up succeeded) is undone: %q (%s)", tc.failpoint, final.Error, phaseTimes(final))
				assert.Contains(t, final.Error, "interrupted", "the error of the undone swap")
			}
			// Whatever the outcome, the site must be as it says, and have served all along.
			require.Contains(t, []string{api.StateSucceeded, api.StateFailed}, final.State, "the swap ended")
			want := map[string]string{"production": lanes["production"], "staging": lanes["staging"]}
			feature := map[string]string{"production": "prod-feature", "staging": "staging-feature"}
			if final.State == api.StateSucceeded {
				want = map[string]string{"production": lanes["staging"], "staging": lanes["production"]}
				feature = map[string]string{"production": "staging-feature", "staging": "prod-feature"}
			}
			assert.Equal(t, want, d.laneJobs(site.name), "the lane of each slot after the swap %s", final.State)

			assertOnceInHistory(t, p.client, site.name, op.ID)
			assertSlotsRouted(t, stack, p.client, site.name)
			assertSettings(t, p.client, site.name, feature)
			waitAnswers(t, stack, prod, 2*time.Minute, want["production"]+" with DB=prod-db FEATURE="+feature["production"], func(a appAnswer) bool {
				return a.Lane == want["production"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == feature["production"]
			})
			waitAnswers(t, stack, staging, 2*time.Minute, want["staging"]+" with DB=staging-db FEATURE="+feature["staging"], func(a appAnswer) bool {
				return a.Lane == want["staging"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == feature["staging"]
			})

			assertAllServed(t, prodSmp, prod)
			assertNoProductionSecrets(t, stagingSmp, site)
		})
	}
}

// TestRestartLeadsQuickly: a daemon killed with SIGKILL and started again destroys the leader
// session it held and leads within seconds, instead of waiting for that session's TTL.
func TestRestartLeadsQuickly(t *testing.T) {
	// leadBound is generous for a daemon that destroys its previous session (lock-delay 1 s);
	// one that waits for the session's TTL (15 s, which Consul may stretch to 30 s) exceeds it.
	const leadBound = 8 * time.Second
	stack := Shared(t)
	t.Parallel()
	site := newSite()
	p := startProcDaemon(t, stack, site)

	p.kill()
	p.restart()
	took := p.waitLeader(time.Minute)
	t.Logf("the restarted slotd led %s after it was started", took.Round(time.Millisecond))
	assert.Less(t, took, leadBound, "time from the restart of a killed slotd until it leads%s", p.tail())
	assert.Contains(t, p.log(), "destroyed the leader session this daemon held before it restarted")
	p.waitReady(site.name)
}

// TestDeposedLeaderFenced: the leader loses its lock in the middle of a swap's switch: its
// session is destroyed while it pauses after make (a sleep failpoint). The standby takes over
// and finishes the swap (it had warmed up); the deposed leader leaves the operation to it and
// nothing it does, during or after its pause, lands: the site ends consistent, with the swap
// once in its history, and production answers 200 all along.
func TestDeposedLeaderFenced(t *testing.T) {
	const pause = 25 * time.Second // the leader's pause after make, in the switch
	stack := Shared(t)
	t.Parallel()
	site := newSite()
	prod := site.host("production")
	ctx, cancel := context.WithTimeout(context.Background(), faultTestTimeout)
	defer cancel()

	leader, standby, lanes, smp, op := pausedAfterMake(ctx, t, stack, site, site, pause)
	time.Sleep(time.Second)
	cur, err := leader.client.Operation(ctx, op.ID, 0)
	require.NoError(t, err)
	require.Equal(t, api.StateSwitching, cur.State, "the swap pauses in its switch (%s)", phaseTimes(cur))

	leaderKey := "slotd-" + site.name + "/leader"
	pair, _, err := stack.Consul.KV().Get(leaderKey, nil)
	require.NoError(t, err, "read %s", leaderKey)
	require.NotNil(t, pair, "%s is absent", leaderKey)
	require.NotEmpty(t, pair.Session, "no session holds %s", leaderKey)
	_, err = stack.Consul.Session().Destroy(pair.Session, nil)
	require.NoError(t, err, "destroy the leader's session %s", pair.Session)
	deposed := time.Now()
	t.Logf("destroyed the leader's session %s", pair.Session)

	standby.waitLeader(time.Minute)
	t.Logf("the standby leads %s after the leader's session was destroyed", time.Since(deposed).Round(time.Millisecond))
	final := standby.waitOp(op.ID, 8*time.Minute)
	t.Logf("swap %s ended by the standby: %s %q (%s)", op.ID, final.State, final.Error, phaseTimes(final))
	require.Equal(t, api.StateSucceeded, final.State, "the standby finishes the swap, which had warmed up")
	sd := standby.daemon()
	waitIdle(t, sd, site.name)
	WaitFor(t, 30*time.Second, "the deposed leader logging that it lost the lock", func() (bool, string) {
		return strings.Contains(leader.log(), "lost the leader lock"), "not in " + leader.logPath
	})

	// What the site looks like once the new leader is done; the deposed leader's pause may not
	// be over yet. Once it is, nothing may have changed.
	before := siteFingerprint(t, stack, standby.client, site.name)
	if wake := deposed.Add(pause + 10*time.Second); time.Now().Before(wake) {
		t.Logf("waiting %s for the deposed leader's pause to be over", time.Until(wake).Round(time.Second))
		time.Sleep(time.Until(wake))
	} else {
		t.Logf("the new leader was done only after the deposed leader's pause was over: the fingerprint may hold its writes already")
	}
	leader.exitCheck("its pause to end")
	waitIdle(t, sd, site.name)
	assert.Equal(t, before, siteFingerprint(t, stack, standby.client, site.name), "lane jobs and KV bindings after the deposed leader's pause")
	log := leader.log()
	since := log[strings.LastIndex(log[:strings.Index(log, "lost the leader lock")], "\n")+1:]
	t.Logf("the deposed leader's log since it lost the lock (GET requests left out):%s", withoutGets(since))
	for line := range strings.Lines(since) {
		if strings.Contains(line, "operation finished") && strings.Contains(line, "op="+op.ID) {
			t.Errorf("the deposed leader recorded an outcome of %s after it lost the lock: %s", op.ID, line)
		}
	}

	h, err := leader.client.Health(ctx)
	require.NoError(t, err, "health of the deposed leader")
	assert.False(t, h.Leader, "the deposed leader says it leads again")
	h, err = standby.client.Health(ctx)
	require.NoError(t, err, "health of the new leader")
	assert.True(t, h.Leader, "the new leader says it no longer leads")

	assert.Equal(t, map[string]string{"production": lanes["staging"], "staging": lanes["production"]}, sd.laneJobs(site.name), "the lane of each slot")
	assertOnceInHistory(t, standby.client, site.name, op.ID)
	assertSlotsRouted(t, stack, standby.client, site.name)
	assertSettings(t, standby.client, site.name, map[string]string{"production": "staging-feature", "staging": "prod-feature"})
	waitAnswers(t, stack, prod, 2*time.Minute, lanes["staging"]+" with DB=prod-db", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "staging-feature"
	})
	assertAllServed(t, smp, prod)
}

// pausedAfterMake starts a leader of leaderSite (site as the leader sees it: its Consul address
// may be a fault proxy's) that pauses for pause after make, and a standby of site; counts every
// request to production; starts a swap of staging into production on the leader and returns
// once make is over and the leader pauses.
func pausedAfterMake(ctx context.Context, t testing.TB, stack *Stack, site, leaderSite siteSpec, pause time.Duration) (leader, standby *procDaemon, lanes map[string]string, smp *sampler, op *api.Operation) {
	t.Helper()
	prod := site.host("production")
	leader = startProcDaemon(t, stack, leaderSite, fmt.Sprintf("%s=switch.after-make=sleep(%s)", failpoint.Env, pause))
	standby = launchProcDaemon(t, stack, site)
	waitFollower(ctx, t, standby, leader)
	lanes = leader.daemon().laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	smp = startSampler(t, stack, prod, 4, faultTestTimeout)
	op, err := leader.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "start a swap of staging into production on the leader")
	waitOpState(t, leader.daemon(), op.ID, api.StateSwitching, 5*time.Minute)
	// Make is over (and the leader pauses) once Consul shows every instance of staging's lane
	// with production's slot tag as well.
	waitTagged(ctx, t, leader.client, site.name, "staging", "production")
	return leader, standby, lanes, smp, op
}

// assertOnceInHistory checks that operation id is in the site's history exactly once.
func assertOnceInHistory(t testing.TB, client *api.Client, site, id string) {
	t.Helper()
	hist, err := client.History(context.Background(), site, api.HistoryPage{})
	require.NoError(t, err, "read the history of %s", site)
	var seen []string
	n := 0
	for _, op := range hist {
		seen = append(seen, fmt.Sprintf("%s %s/%s", op.ID, op.Kind, op.State))
		if op.ID == id {
			n++
		}
	}
	assert.Equal(t, 1, n, "times operation %s is in the history of %s: %s", id, site, strings.Join(seen, ", "))
}

// assertSlotsRouted checks that KV's bindings and Consul's tags agree: every instance of the
// lane bound to a slot is healthy and carries the slot's name as a tag, and Consul shows that
// tag on no instance of another lane.
func assertSlotsRouted(t testing.TB, stack *Stack, client *api.Client, site string) {
	t.Helper()
	s, err := client.Site(context.Background(), site)
	require.NoError(t, err, "read site %s", site)
	for _, sl := range s.Slots {
		assert.Positive(t, sl.Total, "instances of slot %s (lane %s)", sl.Name, sl.Lane)
		assert.Equal(t, sl.Total, sl.Healthy, "healthy instances of slot %s (lane %s)", sl.Name, sl.Lane)
		for _, in := range sl.Instances {
			assert.Contains(t, in.Tags, sl.Name, "tags of instance %s of slot %s (lane %s)", in.Alloc, sl.Name, sl.Lane)
		}
		entries, _, err := stack.Consul.Health().Service(site, sl.Name, false, nil)
		require.NoError(t, err, "instances of %s tagged %s in Consul", site, sl.Name)
		for _, e := range entries {
			assert.Equal(t, sl.Lane, site+"-"+e.Service.Meta["slotd_lane"], "lane job of Consul instance %s tagged %s", e.Service.ID, sl.Name)
		}
	}
}

// assertSettings checks each slot's settings in the API: its own sticky DB, and the swappable
// FEATURE given for it.
func assertSettings(t testing.TB, client *api.Client, site string, feature map[string]string) {
	t.Helper()
	for slot, db := range map[string]string{"production": "prod-db", "staging": "staging-db"} {
		set, err := client.Settings(context.Background(), site, slot)
		require.NoError(t, err, "read the settings of %s", slot)
		assert.Equal(t, db, set.Sticky["DB"], "%s's sticky DB", slot)
		assert.Equal(t, feature[slot], set.Settings["FEATURE"], "%s's swappable FEATURE", slot)
	}
}

// assertNoProductionSecrets stops a sampler of the site's staging host and checks that it was
// served and that no answer carried production's sticky DB. Answers other than 200 are allowed:
// the staging host serves nothing while its lane is on its way to production (DESIGN.md §3).
func assertNoProductionSecrets(t testing.TB, smp *sampler, site siteSpec) {
	t.Helper()
	host := site.host("staging")
	samples := smp.stop()
	require.False(t, smp.capped.Load(), "the sampler of %s ran out of its bounds: later answers were not checked", host)
	var served, leaked, foreign []sample
	for _, s := range samples {
		if s.err != nil || s.status != 200 {
			continue
		}
		served = append(served, s)
		switch {
		case s.ans.Env["SLOTD_SITE"] != site.name:
			foreign = append(foreign, s)
		case s.ans.Env["DB"] == "prod-db":
			leaked = append(leaked, s)
		}
	}
	assert.NotEmpty(t, served, "no answer of 200 sampled on %s", host)
	assert.Empty(t, leaked, "answers on %s with production's DB: %s", host, firstSamples(leaked, 20))
	// Only a port that Nomad gave one of this site's instances while another stack's task
	// held it can do that (stacks side by side share Nomad's dynamic port range by chance).
	assert.Empty(t, foreign, "answers on %s from an app of another site: %s", host, firstSamples(foreign, 5))
	t.Logf("%s: %d requests, %d answered 200", host, len(samples), len(served))
}

// siteFingerprint is what a late write would change: each lane job's version and modify index
// in Nomad, and the modify index of each key of the site's slots in KV.
func siteFingerprint(t testing.TB, stack *Stack, client *api.Client, site string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	s, err := client.Site(context.Background(), site)
	require.NoError(t, err, "read site %s", site)
	for _, sl := range s.Slots {
		id := sl.Lane // the lane's job ID
		job, _, err := stack.Nomad.Jobs().Info(id, nil)
		require.NoError(t, err, "read job %s", id)
		out["job "+id+" version"] = *job.Version
		out["job "+id+" modify index"] = *job.JobModifyIndex
	}
	prefix := "slotd-" + site + "/sites/" + site + "/slots/"
	pairs, _, err := stack.Consul.KV().List(prefix, nil)
	require.NoError(t, err, "list %s", prefix)
	for _, p := range pairs {
		out["kv "+p.Key] = p.ModifyIndex
	}
	return out
}

// TestFailoverAfterKill: the leader is killed with SIGKILL while idle; its session lives on
// until Consul's TTL runs out, then the standby leads and the site is ready on it. The time
// from the kill to the standby leading is printed (it is Consul's session TTL at work: 10 s,
// which Consul may stretch to twice that).
func TestFailoverAfterKill(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	site := newSite()
	leader := startProcDaemon(t, stack, site)
	standby := launchProcDaemon(t, stack, site)
	ctx, cancel := context.WithTimeout(context.Background(), faultTestTimeout)
	defer cancel()
	waitFollower(ctx, t, standby, leader)
	killed := time.Now()
	leader.kill()
	standby.waitLeader(2 * time.Minute)
	t.Logf("failover: the standby leads %s after the leader was killed", time.Since(killed).Round(10*time.Millisecond))
	standby.waitReady(site.name)
	t.Logf("failover: the site is ready on the standby %s after the kill", time.Since(killed).Round(10*time.Millisecond))
}

// TestFrozenLeaderFenced: the leader is frozen (SIGSTOP) in the middle of apply. Its session
// runs out, the standby leads and undoes the swap (it had not warmed up). Then the old leader
// is thawed (SIGCONT) with its swap still in flight: whatever it tries now is refused, so
// nothing in KV or Nomad changes, and production answers every request throughout.
func TestFrozenLeaderFenced(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	site := newSite(func(s *siteSpec) { s.vars = map[string]string{"startup_delay": "8s"} })
	prod := site.host("production")
	ctx, cancel := context.WithTimeout(context.Background(), faultTestTimeout)
	defer cancel()

	leader := startProcDaemon(t, stack, site)
	standby := launchProcDaemon(t, stack, site)
	waitFollower(ctx, t, standby, leader)
	lanes := leader.daemon().laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	smp := startSampler(t, stack, prod, 4, faultTestTimeout)

	op, err := leader.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "start a swap on the leader")
	waitOpState(t, leader.daemon(), op.ID, api.StateApplying, 2*time.Minute)
	require.NoError(t, syscall.Kill(leader.pid(), syscall.SIGSTOP), "freeze the leader")
	frozen := time.Now()
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			_ = syscall.Kill(leader.pid(), syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)

	standby.waitLeader(2 * time.Minute)
	t.Logf("the standby leads %s after the leader was frozen", time.Since(frozen).Round(10*time.Millisecond))
	final := standby.waitOp(op.ID, 8*time.Minute)
	t.Logf("swap %s ended by the standby: %s %q (%s)", op.ID, final.State, final.Error, phaseTimes(final))
	require.Equal(t, api.StateFailed, final.State, "the standby undoes a swap that had not warmed up")
	assert.Contains(t, final.Error, "interrupted")
	sd := standby.daemon()
	waitIdle(t, sd, site.name)
	before := siteFingerprint(t, stack, standby.client, site.name)

	thaw()
	t.Logf("thawed the old leader %s after it was frozen", time.Since(frozen).Round(time.Second))
	WaitFor(t, time.Minute, "the thawed leader logging that it lost the lock", func() (bool, string) {
		return strings.Contains(leader.log(), "lost the leader lock"), "not in " + leader.logPath
	})
	time.Sleep(15 * time.Second) // whatever it was doing when frozen has had time to try
	leader.exitCheck("it to settle down")
	waitIdle(t, sd, site.name)
	assert.Equal(t, before, siteFingerprint(t, stack, standby.client, site.name), "lane jobs and KV bindings after the old leader thawed")
	t.Logf("the thawed leader's log (GET requests left out):%s", withoutGets(leader.log()[strings.LastIndex(leader.log(), "operation started"):]))

	h, err := standby.client.Health(ctx)
	require.NoError(t, err)
	assert.True(t, h.Leader, "the standby still leads")
	h, err = leader.client.Health(ctx)
	require.NoError(t, err)
	assert.False(t, h.Leader, "the thawed leader does not lead")
	assert.Equal(t, lanes, sd.laneJobs(site.name), "the lane of each slot is as before the swap")
	assertOnceInHistory(t, standby.client, site.name, op.ID)
	assertSlotsRouted(t, stack, standby.client, site.name)
	assertSettings(t, standby.client, site.name, map[string]string{"production": "prod-feature", "staging": "staging-feature"})
	assertAllServed(t, smp, prod)
}

// waitFollower waits until standby answers as a follower of leader.
func waitFollower(ctx context.Context, t testing.TB, standby, leader *procDaemon) {
	t.Helper()
	WaitFor(t, time.Minute, "the standby answering as a follower of "+leader.addr, func() (bool, string) {
		standby.exitCheck("it to answer")
		h, err := standby.client.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		return !h.Leader && strings.Contains(h.LeaderAddress, leader.addr), fmt.Sprintf("%+v", *h)
	})
}
