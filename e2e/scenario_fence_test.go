package e2e

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestDeposedLeaderRegistersNothing: the leader is cut off from Consul (a black hole: its
// requests are accepted and never answered) while it pauses in a swap's switch, after make;
// Nomad it still reaches. Its session runs out, the standby leads, finishes the swap (it had
// warmed up) and settles. The old leader's pause ends while it is still cut off: it has not
// heard that it lost the lock (its lock monitor waits on Consul), so it goes on with break.
// Neither then nor once Consul is back may it register a job version: a check-and-set on a
// modify index it read just before is no fence (DESIGN.md §3 "Fenced leadership", §9 "leader
// lock lost mid-phase"). Nomad's version lists of the site's lane jobs, KV and the lanes stay as
// the standby left them, the swap is once in the history, and production answers every request.
func TestDeposedLeaderRegistersNothing(t *testing.T) {
	const (
		// pause is the leader's pause after make: long enough for its session to run out (TTL
		// 10 s, which Consul may stretch to 20 s) and for the standby to finish the swap, settle
		// included, before the old leader goes on.
		pause = 80 * time.Second
		// act is how long the old leader has, once its pause is over and Consul still cut, to
		// do what it would: its read of the target lane's health in Consul gives up after its
		// call timeout (30 s), then break registers the target lane in Nomad.
		act = 45 * time.Second
		// afterHeal is how long the test still looks once Consul is back.
		afterHeal = 15 * time.Second
	)
	stack := Shared(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), faultTestTimeout)
	defer cancel()
	tl := newTimeline(t)

	consul := NewFaultProxy(t, stack.ConsulAddr)
	site := newSite()
	leaderSite := site
	leaderSite.consul = consul.Addr()
	prod := site.host("production")
	leader, standby, lanes, smp, op := pausedAfterMake(ctx, t, stack, site, leaderSite, pause)
	tl.add("swap %s started on the leader (consul through %s)", op.ID, consul.Addr())
	made := tl.add("make over: every instance of staging's lane %s tagged production; the leader pauses %s", lanes["staging"], pause)
	wake := made.Add(pause)
	cur, err := leader.client.Operation(ctx, op.ID, 0)
	require.NoError(t, err)
	require.Equal(t, api.StateSwitching, cur.State, "the swap pauses in its switch (%s)", phaseTimes(cur))

	consul.Blackhole()
	cut := tl.add("the leader's consul black-holed")
	leader.mark("consul black-holed by the test")
	healed := false
	heal := func() {
		if !healed {
			healed = true
			consul.Heal()
		}
	}
	t.Cleanup(heal)

	standby.waitLeader(time.Minute)
	tl.add("the standby leads")
	final := standby.waitOp(op.ID, 5*time.Minute)
	tl.add("swap %s ended by the standby: %s %q (%s)", op.ID, final.State, final.Error, phaseTimes(final))
	require.Equal(t, api.StateSucceeded, final.State, "the standby finishes the swap, which had warmed up")
	sd := standby.daemon()
	waitIdle(t, sd, site.name)
	done := tl.add("the standby is done and the site idle")
	require.True(t, done.Before(wake.Add(-5*time.Second)),
		"the standby was done %s after the cut, when the old leader's pause (%s from make) was about over: "+
			"what the old leader does next would not show against it; give the pause more time",
		done.Sub(cut).Round(time.Second), pause)

	versions := laneVersions(t, stack, site.name)
	before := siteFingerprint(t, stack, standby.client, site.name)
	t.Logf("lane job versions once the standby was done: %s", versions)

	// Still cut off, the old leader wakes up and goes on. Consul is back once it has had the
	// time to do what it would, or as soon as a version shows up in Nomad.
	var newer string
	WaitFor(t, time.Until(wake.Add(act))+time.Minute, "the old leader's pause to be over and its time to act", func() (bool, string) {
		leader.exitCheck("its pause to end")
		now := laneVersions(t, stack, site.name)
		if d := now.since(versions); d != "" {
			newer = d
			return true, ""
		}
		return time.Now().After(wake.Add(act)), fmt.Sprintf("no new version; %s to go", time.Until(wake.Add(act)).Round(time.Second))
	})
	if newer != "" {
		tl.add("a new lane job version with consul still cut (%s after the old leader's pause ended): %s", time.Since(wake).Round(time.Millisecond), newer)
	}
	heal()
	healedAt := tl.add("the leader's consul healed")
	leader.mark("consul healed by the test")
	WaitFor(t, 30*time.Second, "the old leader logging that it lost the lock", func() (bool, string) {
		return strings.Contains(leader.log(), "lost the leader lock"), "not in " + leader.logPath
	})
	tl.add("the old leader logged that it lost the lock")
	time.Sleep(time.Until(healedAt.Add(afterHeal)))
	leader.exitCheck("it to settle down")
	waitIdle(t, sd, site.name)
	tl.add("looked %s after the heal; the site idle", afterHeal)

	after := laneVersions(t, stack, site.name)
	if d := after.since(versions); d != "" {
		t.Errorf("lane job versions registered after the standby was done, while the old leader was deposed (cut at %s, healed at %s):%s",
			cut.Format(clock), healedAt.Format(clock), d)
	}
	assert.Equal(t, before, siteFingerprint(t, stack, standby.client, site.name), "lane jobs and KV bindings after the old leader's pause and the heal")
	since := leader.log()
	if i := strings.Index(since, "consul black-holed by the test"); i >= 0 {
		since = since[i:]
	}
	var registers []string
	for line := range strings.Lines(since) {
		if strings.Contains(line, "register lane") {
			registers = append(registers, strings.TrimSpace(line))
		}
	}
	// What counts is what Nomad holds; a register the old leader tried and Nomad refused is
	// no harm, but says how far it went.
	t.Logf("the old leader tried %d lane registers after its consul was cut; its log since the cut (GET requests left out):%s",
		len(registers), withoutGets(since))
	tl.log()

	h, err := standby.client.Health(ctx)
	require.NoError(t, err, "health of the new leader")
	assert.True(t, h.Leader, "the new leader says it no longer leads")
	assert.Equal(t, map[string]string{"production": lanes["staging"], "staging": lanes["production"]}, sd.laneJobs(site.name), "the lane of each slot")
	assertOnceInHistory(t, standby.client, site.name, op.ID)
	assertAllServed(t, smp, prod)
}

// clock formats the times of a timeline.
const clock = "15:04:05.000"

// timeline records what a test saw when, to log it in one piece at the end.
type timeline struct {
	t      testing.TB
	mu     sync.Mutex
	events []string
	start  time.Time
}

func newTimeline(t testing.TB) *timeline { return &timeline{t: t, start: time.Now()} }

// add records and logs an event and returns its time.
func (tl *timeline) add(format string, args ...any) time.Time {
	tl.t.Helper()
	now := time.Now()
	line := fmt.Sprintf("%s (+%s) %s", now.Format(clock), now.Sub(tl.start).Round(time.Millisecond), fmt.Sprintf(format, args...))
	tl.mu.Lock()
	tl.events = append(tl.events, line)
	tl.mu.Unlock()
	tl.t.Log(line)
	return now
}

// log logs every event so far, in one piece.
func (tl *timeline) log() {
	tl.t.Helper()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.t.Logf("timeline:\n  %s", strings.Join(tl.events, "\n  "))
}

// waitTagged waits until Consul shows every instance of slot's lane with tag (as the site's
// status has them).
func waitTagged(ctx context.Context, t testing.TB, c *api.Client, site, slot, tag string) {
	t.Helper()
	WaitFor(t, 2*time.Minute, "every instance of "+slot+"'s lane tagged "+tag, func() (bool, string) {
		s, err := c.Site(ctx, site)
		if err != nil {
			return false, err.Error()
		}
		for _, sl := range s.Slots {
			if sl.Name != slot {
				continue
			}
			if len(sl.Instances) == 0 {
				return false, "no instance of " + slot + "'s lane"
			}
			for _, in := range sl.Instances {
				if !slices.Contains(in.Tags, tag) {
					return false, fmt.Sprintf("instance %s tags %q", in.Alloc, in.Tags)
				}
			}
			return true, ""
		}
		return false, "no slot " + slot
	})
}

// jobVersion is one version of a lane job in Nomad, as a late write would show.
type jobVersion struct {
	Version     uint64
	ModifyIndex uint64
	Submitted   time.Time
	Slot, DB    string   // the lane's SLOTD_SLOT and DB env
	Tags        []string // of the site's service
}

func (v jobVersion) String() string {
	return fmt.Sprintf("version %d (modify index %d) submitted %s: slot %q DB %q tags %q",
		v.Version, v.ModifyIndex, v.Submitted.Format(clock), v.Slot, v.DB, v.Tags)
}

// versionLists are the version lists of a site's lane jobs, by job ID.
type versionLists map[string][]jobVersion

func (l versionLists) String() string {
	var b strings.Builder
	for _, id := range slices.Sorted(maps.Keys(l)) {
		nums := make([]string, len(l[id]))
		for i, v := range l[id] {
			nums[i] = fmt.Sprint(v.Version)
		}
		fmt.Fprintf(&b, "%s [%s] ", id, strings.Join(nums, " "))
	}
	return strings.TrimSpace(b.String())
}

// since describes the versions of l that were not in old ("" when there are none).
func (l versionLists) since(old versionLists) string {
	var b strings.Builder
	for _, id := range slices.Sorted(maps.Keys(l)) {
		known := map[uint64]bool{}
		for _, v := range old[id] {
			known[v.ModifyIndex] = true
		}
		for _, v := range l[id] {
			if !known[v.ModifyIndex] {
				fmt.Fprintf(&b, "\n  job %s %s", id, v)
			}
		}
	}
	return b.String()
}

// laneVersions reads every version Nomad keeps of each lane job of the site (job IDs "<site>-…").
func laneVersions(t testing.TB, stack *Stack, site string) versionLists {
	t.Helper()
	jobs, _, err := stack.Nomad.Jobs().List(&nomadapi.QueryOptions{Prefix: site + "-"})
	require.NoError(t, err, "list the lane jobs of %s", site)
	out := versionLists{}
	for _, j := range jobs {
		vs, _, _, err := stack.Nomad.Jobs().Versions(j.ID, false, nil)
		require.NoError(t, err, "read the versions of job %s", j.ID)
		for _, job := range vs {
			v := jobVersion{Version: *job.Version, ModifyIndex: *job.JobModifyIndex}
			if job.SubmitTime != nil {
				v.Submitted = time.Unix(0, *job.SubmitTime)
			}
			for _, g := range job.TaskGroups {
				for _, task := range g.Tasks {
					v.Slot, v.DB = cmp.Or(v.Slot, task.Env["SLOTD_SLOT"]), cmp.Or(v.DB, task.Env["DB"])
				}
				for _, svc := range g.Services {
					if svc.Name == site {
						v.Tags = svc.Tags
					}
				}
			}
			out[j.ID] = append(out[j.ID], v)
		}
		slices.SortFunc(out[j.ID], func(a, b jobVersion) int { return cmp.Compare(a.Version, b.Version) })
	}
	return out
}
