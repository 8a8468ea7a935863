package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// TestSettingsEditedDuringSwap: settings edited while a swap runs (in apply, in warm-up, or
// while it previews) reach the lanes once the swap is over. The swappable setting edited in
// the source travels with the app, as it was at the exchange; the sticky one edited in the
// target stays with production. Production answers 200 all along.
func TestSettingsEditedDuringSwap(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	for _, tc := range []struct {
		name    string
		state   string // the swap's state when the settings are edited
		preview bool
	}{
		{"apply", api.StateApplying, false},
		{"warm", api.StateWarming, false},
		{"preview", api.StatePreviewing, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Each start of the app takes 3 s and its first 3 requests 2 s each, so apply (a
			// restart of the staging lane) and warm (3 paths per instance) last long enough to
			// edit the settings in them.
			site := newSite(func(s *siteSpec) {
				s.vars = map[string]string{"startup_delay": "3s", "slow_first": "3", "slow_delay": "2s"}
				s.warmup = `paths = ["/", "/warm1", "/warm2"]
    statuses = [200]
    timeout = "10s"
    attempts = 3
    interval = "200ms"`
			})
			d := startDaemon(t, stack, site)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			prod, staging := site.host("production"), site.host("staging")
			lanes := d.laneJobs(site.name)
			waitServes(t, stack, prod, lanes["production"])
			waitServes(t, stack, staging, lanes["staging"])

			smp := startSampler(t, stack, prod, 2, 15*time.Minute)
			op, err := d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production", Preview: tc.preview})
			require.NoError(t, err, "start the swap")
			op = waitOpState(t, d, op.ID, tc.state, 5*time.Minute)

			require.NoError(t, d.client.SetSetting(ctx, site.name, "production", "DB", "prod-db-2", true),
				"set production's sticky DB while the swap is %s", tc.state)
			require.NoError(t, d.client.SetSetting(ctx, site.name, "staging", "FEATURE", "staging-feature-2", false),
				"set staging's swappable FEATURE while the swap is %s", tc.state)
			cur, err := d.client.Operation(ctx, op.ID, 0)
			require.NoError(t, err)
			require.Equal(t, tc.state, cur.State, "the swap was still %s when both settings had been edited (%s)", tc.state, phaseTimes(cur))

			if tc.preview {
				op, err = d.client.Complete(ctx, op.ID)
				require.NoError(t, err, "complete the preview")
			}
			op = waitTerminal(ctx, t, d, op)
			require.Equal(t, api.StateSucceeded, op.State, "swap: %s (%s)", op.Error, phaseTimes(op))
			t.Logf("swap: %s", phaseTimes(op))
			waitIdle(t, d, site.name)
			require.Equal(t, lanes["staging"], d.laneJobs(site.name)["production"], "production is the former staging lane")

			waitAnswers(t, stack, prod, 2*time.Minute, lanes["staging"]+" with DB=prod-db-2 FEATURE=staging-feature-2", func(a appAnswer) bool {
				return a.Lane == lanes["staging"] && a.Env["DB"] == "prod-db-2" && a.Env["FEATURE"] == "staging-feature-2"
			})
			waitAnswers(t, stack, staging, 2*time.Minute, lanes["production"]+" with DB=staging-db FEATURE=prod-feature", func(a appAnswer) bool {
				return a.Lane == lanes["production"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "prod-feature"
			})

			set, err := d.client.Settings(ctx, site.name, "production")
			require.NoError(t, err)
			assert.Equal(t, "prod-db-2", set.Sticky["DB"], "production's sticky DB in the API")
			assert.Equal(t, "staging-feature-2", set.Settings["FEATURE"], "production's swappable FEATURE in the API")
			set, err = d.client.Settings(ctx, site.name, "staging")
			require.NoError(t, err)
			assert.Equal(t, "staging-db", set.Sticky["DB"], "staging's sticky DB in the API")
			assert.Equal(t, "prod-feature", set.Settings["FEATURE"], "staging's swappable FEATURE in the API")

			assertAllServed(t, smp, prod)
		})
	}
}

// TestManySettingsSwap: a site with 300 swappable and 100 sticky settings per slot starts, and
// a swap exchanges all the swappable ones at once while every sticky one stays, in the API, in
// the lanes' jobs and in what the app answers.
func TestManySettingsSwap(t *testing.T) {
	const swappable, sticky = 300, 100
	stack := Shared(t)
	t.Parallel()
	slots := []string{"production", "staging"}
	site := newSite(func(s *siteSpec) {
		s.settings = map[string]map[string]string{}
		s.sticky = map[string]map[string]string{}
		for _, slot := range slots {
			s.settings[slot] = numbered("S", slot+"-s", swappable)
			s.sticky[slot] = numbered("K", slot+"-k", sticky)
		}
		s.vars = map[string]string{"show_env": "FEATURE,DB,S000,S299,K000,K099"}
	})
	// declared is what the HCL declares for each slot, FEATURE and DB included.
	declared := map[string]api.Settings{
		"production": {Settings: withKey(site.settings["production"], "FEATURE", "prod-feature"), Sticky: withKey(site.sticky["production"], "DB", "prod-db")},
		"staging":    {Settings: withKey(site.settings["staging"], "FEATURE", "staging-feature"), Sticky: withKey(site.sticky["staging"], "DB", "staging-db")},
	}
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	lanes := d.laneJobs(site.name)
	for _, slot := range slots {
		set, err := d.client.Settings(ctx, site.name, slot)
		require.NoError(t, err)
		require.Empty(t, settingsDiff(declared[slot].Settings, set.Settings), "%s's swappable settings seeded from the HCL", slot)
		require.Empty(t, settingsDiff(declared[slot].Sticky, set.Sticky), "%s's sticky settings seeded from the HCL", slot)
	}

	op := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, op.State, "swap: %s (%s)", op.Error, phaseTimes(op))
	waitIdle(t, d, site.name)
	next := d.laneJobs(site.name)
	require.Equal(t, lanes["staging"], next["production"], "production is the former staging lane")

	// After the swap each slot holds the other's swappable settings and its own sticky ones.
	want := map[string]api.Settings{
		"production": {Settings: declared["staging"].Settings, Sticky: declared["production"].Sticky},
		"staging":    {Settings: declared["production"].Settings, Sticky: declared["staging"].Sticky},
	}
	for _, slot := range slots {
		set, err := d.client.Settings(ctx, site.name, slot)
		require.NoError(t, err)
		assert.Empty(t, settingsDiff(want[slot].Settings, set.Settings), "%s's swappable settings after the swap", slot)
		assert.Empty(t, settingsDiff(want[slot].Sticky, set.Sticky), "%s's sticky settings after the swap", slot)
	}

	for _, slot := range slots {
		env := withKeys(want[slot].Settings, want[slot].Sticky)
		WaitFor(t, 2*time.Minute, "the job of "+next[slot]+" with "+slot+"'s settings in its env", func() (bool, string) {
			job, _, err := stack.Nomad.Jobs().Info(next[slot], nil)
			if err != nil {
				return false, err.Error()
			}
			// The task env holds the jobspec's own variables and SLOTD_* too.
			got := map[string]string{}
			for k, v := range taskEnv(job) {
				if _, ok := env[k]; ok || settingKey.MatchString(k) {
					got[k] = v
				}
			}
			if diff := settingsDiff(env, got); diff != "" {
				return false, diff
			}
			return true, ""
		})
	}
	waitAnswers(t, stack, site.host("production"), time.Minute, "staging's swappable and production's sticky settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["S000"] == "staging-s000" && a.Env["S299"] == "staging-s299" &&
			a.Env["K000"] == "production-k000" && a.Env["K099"] == "production-k099" && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "staging-feature"
	})
	waitAnswers(t, stack, site.host("staging"), time.Minute, "production's swappable and staging's sticky settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Env["S000"] == "production-s000" && a.Env["S299"] == "production-s299" &&
			a.Env["K000"] == "staging-k000" && a.Env["K099"] == "staging-k099" && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "prod-feature"
	})
}

// TestLaneChangedByHandConverges: a lane job changed by hand in Nomad (env and service tags),
// and another one purged, are brought back to what slotd set once the site is idle, while
// production answers 200 all along.
func TestLaneChangedByHandConverges(t *testing.T) {
	// convergeBound is how long the site may stay idle with its lanes not as slotd set them.
	const convergeBound = 60 * time.Second
	stack := Shared(t)
	t.Parallel()
	site := newSite(func(s *siteSpec) { s.vars = map[string]string{"show_env": "FEATURE,DB,HAND"} })
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod, staging := site.host("production"), site.host("staging")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	waitServes(t, stack, staging, lanes["staging"])

	before := map[string]laneState{}
	for slot, feature := range map[string]string{"production": "prod-feature", "staging": "staging-feature"} {
		job, _, err := stack.Nomad.Jobs().Info(lanes[slot], nil)
		require.NoError(t, err, "read the job of %s", lanes[slot])
		before[slot] = readLaneState(job, site.name)
		require.NotEmpty(t, before[slot].tags, "the job of %s registers service %s", lanes[slot], site.name)
		require.Equal(t, feature, before[slot].env["FEATURE"], "FEATURE in the job of %s", lanes[slot])
	}

	smp := startSampler(t, stack, prod, 2, 10*time.Minute)

	// By hand: production's lane gets another tag and env (its routing tags stay), and
	// staging's lane is purged.
	job, _, err := stack.Nomad.Jobs().Info(lanes["production"], nil)
	require.NoError(t, err)
	svc := laneService(job, site.name)
	require.NotNil(t, svc, "the job of %s registers service %s", lanes["production"], site.name)
	svc.Tags = append(svc.Tags, "hand-tag")
	env := taskEnv(job)
	require.NotNil(t, env, "the job of %s has the test app's task with an env", lanes["production"])
	env["HAND"] = "1"
	env["FEATURE"] = "hand"
	// The hand change is a rolling update that Nomad does, not slotd; a shutdown delay lets
	// Fabio drop each old instance before it stops, so requests lost to it do not count
	// against slotd.
	job.TaskGroups[0].ShutdownDelay = new(2 * time.Second)
	_, _, err = stack.Nomad.Jobs().Register(job, nil)
	require.NoError(t, err, "register the hand-changed job of %s", lanes["production"])
	_, _, err = stack.Nomad.Jobs().Deregister(lanes["staging"], true, nil)
	require.NoError(t, err, "purge the job of %s", lanes["staging"])
	changed := time.Now()

	var idleSince time.Time
	WaitFor(t, 8*time.Minute, "both lanes back as slotd set them", func() (bool, string) {
		s, err := d.client.Site(ctx, site.name)
		if err != nil {
			return false, err.Error()
		}
		if s.Operation != nil {
			idleSince = time.Time{}
			return false, fmt.Sprintf("operation %s %s %s", s.Operation.ID, s.Operation.Kind, s.Operation.State)
		}
		if idleSince.IsZero() {
			idleSince = time.Now()
		}
		var seen []string
		for _, sl := range s.Slots {
			if sl.Healthy != 2 || sl.Total != 2 {
				seen = append(seen, fmt.Sprintf("%s %d/%d healthy", sl.Name, sl.Healthy, sl.Total))
			}
		}
		for _, slot := range []string{"production", "staging"} {
			if diff := laneDiff(stack, lanes[slot], site.name, before[slot]); diff != "" {
				seen = append(seen, diff)
			}
		}
		if len(seen) == 0 {
			return true, ""
		}
		if idle := time.Since(idleSince); idle > convergeBound {
			t.Fatalf("the site has been idle for %s (since %s after the hand change) and is not back as slotd set it: %s",
				idle.Round(time.Second), idleSince.Sub(changed).Round(time.Second), strings.Join(seen, "; "))
		}
		return false, strings.Join(seen, "; ")
	})
	t.Logf("lanes back as slotd set them %s after the hand change", time.Since(changed).Round(time.Second))
	assert.Equal(t, lanes, d.laneJobs(site.name), "every slot on its lane")

	waitAnswers(t, stack, staging, time.Minute, lanes["staging"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "staging-feature" && a.Env["HAND"] == ""
	})
	waitAnswers(t, stack, prod, time.Minute, lanes["production"]+" with production's settings", func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == "prod-feature" && a.Env["HAND"] == ""
	})
	assertAllServed(t, smp, prod)
	if hist, err := d.client.History(ctx, site.name, api.HistoryPage{}); err == nil && len(hist) > 0 {
		t.Logf("newest operation: %s %s %s %q", hist[0].ID, hist[0].Kind, hist[0].State, hist[0].Error)
	}
}

// TestFailedSettingNotReplayed: a setting whose rollout fails is put back, so staging goes on
// serving, and a restarted daemon does not roll it out again.
func TestFailedSettingNotReplayed(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	staging := site.host("staging")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, staging, lanes["staging"])
	hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	known := map[string]bool{}
	for _, op := range hist {
		known[op.ID] = true
	}

	// The app fails its health check with this setting: the rollout cannot succeed.
	require.NoError(t, d.client.SetSetting(ctx, site.name, "staging", "FAIL_HEALTHZ", "true", false))
	var op *api.Operation
	WaitFor(t, 2*time.Minute, "a settings operation after FAIL_HEALTHZ was set", func() (bool, string) {
		s, err := d.client.Site(ctx, site.name)
		if err != nil {
			return false, err.Error()
		}
		if s.Operation != nil && s.Operation.Kind == api.KindSettings {
			op = s.Operation
			return true, ""
		}
		hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
		if err != nil {
			return false, err.Error()
		}
		for i := range hist {
			if !known[hist[i].ID] && hist[i].Kind == api.KindSettings {
				op = &hist[i]
				return true, ""
			}
		}
		return false, fmt.Sprintf("running %+v, %d operations in the history", s.Operation, len(hist))
	})
	op = waitTerminal(ctx, t, d, op)
	t.Logf("settings operation %s: %s %q (%s)", op.ID, op.State, op.Error, phaseTimes(op))
	require.Equal(t, api.StateFailed, op.State, "the rollout of FAIL_HEALTHZ=true")
	assert.Contains(t, op.Error, "FAIL_HEALTHZ", "the error names the setting put back")

	waitIdle(t, d, site.name)
	set, err := d.client.Settings(ctx, site.name, "staging")
	require.NoError(t, err)
	assert.NotContains(t, set.Settings, "FAIL_HEALTHZ", "the failed swappable setting is put back (it was absent)")
	assert.NotContains(t, set.Sticky, "FAIL_HEALTHZ", "the failed setting is not sticky either")
	waitAnswers(t, stack, staging, 2*time.Minute, lanes["staging"]+" with staging's settings", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Env["DB"] == "staging-db" && a.Env["FEATURE"] == "staging-feature"
	})
	job, _, err := stack.Nomad.Jobs().Info(lanes["staging"], nil)
	require.NoError(t, err)
	version := *job.Version
	newest := func() string {
		t.Helper()
		hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
		require.NoError(t, err)
		require.NotEmpty(t, hist)
		return fmt.Sprintf("%s %s %s", hist[0].ID, hist[0].Kind, hist[0].State)
	}
	require.Equal(t, fmt.Sprintf("%s %s %s", op.ID, op.Kind, op.State), newest(), "the failed operation is the newest before the restart")

	d.restart(site.name)
	waitIdle(t, d, site.name)
	// Nothing may start in the next 10 s: a replayed rollout would.
	for quiet := time.Now().Add(10 * time.Second); time.Now().Before(quiet); time.Sleep(pollInterval) {
		s, err := d.client.Site(ctx, site.name)
		require.NoError(t, err)
		require.Nil(t, s.Operation, "an operation started after the restart")
	}
	assert.Equal(t, fmt.Sprintf("%s %s %s", op.ID, op.Kind, op.State), newest(), "no operation after the failed one in the history")
	job, _, err = stack.Nomad.Jobs().Info(lanes["staging"], nil)
	require.NoError(t, err)
	assert.Equal(t, version, *job.Version, "the job version of %s after the restart", lanes["staging"])
	assert.NotEqual(t, "true", taskEnv(job)["FAIL_HEALTHZ"], "the staging lane's env")
	waitAnswers(t, stack, staging, 30*time.Second, lanes["staging"], func(a appAnswer) bool { return a.Lane == lanes["staging"] })
}

// TestReloadStopsRemovedSiteAddsSlot: a reload that removes a site and adds a slot to another
// starts the new slot on a lane of its own, served with its settings, and stops managing the
// removed site: a change to its KV tree or its lanes starts nothing.
func TestReloadStopsRemovedSiteAddsSlot(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	first, removed := newSite(), newSite()
	d := startDaemonSites(t, stack, first, removed)
	ctx := context.Background()
	removedLanes := d.laneJobs(removed.name)

	WaitFor(t, 30*time.Second, "the watches shared by all sites counted", func() (bool, string) {
		n, lines, err := watchRequests(d.addr, "*")
		if err != nil {
			return false, err.Error()
		}
		return n > 0, fmt.Sprintf("%v in %q", n, lines)
	})

	next := first
	next.slots = fmt.Sprintf(`slot "qa" {
    tags     = ["urlprefix-%s/"]
    settings = { FEATURE = "qa-feature" }
    sticky   = { DB = "qa-db" }
  }`, first.host("qa"))
	path := filepath.Join(t.TempDir(), "slots.hcl")
	require.NoError(t, os.WriteFile(path, []byte(next.hcl(t, stack, d.addr)), 0o644))
	cfg, err := config.Load(path)
	require.NoError(t, err, "load the reloaded slots.hcl")
	require.Nil(t, cfg.Site(removed.name), "the reloaded slots.hcl has no site %s", removed.name)
	require.NoError(t, d.agent.Reload(cfg))
	d.cfg = cfg

	var qaLane string
	WaitFor(t, 4*time.Minute, "slot qa of "+first.name+" bound and healthy", func() (bool, string) {
		s, err := d.client.Site(ctx, first.name)
		if err != nil {
			return false, err.Error()
		}
		for _, sl := range s.Slots {
			if sl.Name == "qa" {
				qaLane = sl.Lane
				return sl.Lane != "" && sl.Healthy >= 1 && sl.Healthy == sl.Total, fmt.Sprintf("lane %q %d/%d healthy", sl.Lane, sl.Healthy, sl.Total)
			}
		}
		return false, fmt.Sprintf("no slot qa in %d slots", len(s.Slots))
	})
	waitAnswers(t, stack, first.host("qa"), 2*time.Minute, "slot qa with its settings", func(a appAnswer) bool {
		return a.Lane == qaLane && a.Slot == "qa" && a.Env["DB"] == "qa-db" && a.Env["FEATURE"] == "qa-feature"
	})

	// The removed site is not managed any more: a change in its KV tree and in one of its lanes
	// starts no operation on it, and the daemon watches nothing of its own for it.
	prefix := "slotd-" + first.name + "/sites/" + removed.name
	history, _, err := stack.Consul.KV().Keys(prefix+"/history/", "", nil)
	require.NoError(t, err)
	key := prefix + "/slots/production/settings"
	_, err = stack.Consul.KV().Put(&consulapi.KVPair{Key: key, Value: []byte(`{"FEATURE":"x"}`)}, nil)
	require.NoError(t, err, "write %s", key)
	stopped := removedLanes["staging"]
	if _, _, err := stack.Nomad.Jobs().Info(stopped, nil); err == nil {
		_, _, err = stack.Nomad.Jobs().Deregister(stopped, false, nil)
		require.NoError(t, err, "stop the job of %s", stopped)
	}
	time.Sleep(5 * time.Second)
	journaled, _, err := stack.Consul.KV().Get(prefix+"/operation", nil)
	require.NoError(t, err)
	assert.Nil(t, journaled, "no operation journaled for the removed site %s", removed.name)
	after, _, err := stack.Consul.KV().Keys(prefix+"/history/", "", nil)
	require.NoError(t, err)
	assert.Equal(t, history, after, "the history of the removed site %s", removed.name)
	own, lines, err := watchRequests(d.addr, removed.name)
	require.NoError(t, err)
	assert.Zero(t, own, "watch requests of the removed site's own: %q", lines)
	if job, _, err := stack.Nomad.Jobs().Info(stopped, nil); err == nil {
		assert.True(t, job.Stop != nil && *job.Stop, "the stopped lane %s of the removed site stays stopped", stopped)
	}
}

// settingKey matches the names numbered gives the settings of TestManySettingsSwap.
var settingKey = regexp.MustCompile(`^[SK][0-9]{3}$`)

// waitOpState polls operation id every 50 ms until it is in state, and fails when the operation
// ends first; a phase shorter than the poll interval can be missed, so callers make it last.
func waitOpState(t testing.TB, d *daemon, id, state string, timeout time.Duration) *api.Operation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var seen []string
	last := "nothing yet"
	for {
		op, err := d.client.Operation(ctx, id, 0)
		if err == nil {
			if len(seen) == 0 || seen[len(seen)-1] != op.State {
				seen = append(seen, op.State)
			}
			if op.State == state {
				return op
			}
			if api.Terminal(op.State) {
				t.Fatalf("operation %s ended before it was %s: states seen %v, error %q (%s)", id, state, seen, op.Error, phaseTimes(op))
			}
			last = fmt.Sprintf("states seen %v", seen)
		} else {
			last = fmt.Sprintf("states seen %v, then %v", seen, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for operation %s to be %s; last seen: %s", timeout, id, state, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// numbered returns n settings <prefix>000… with values <valuePrefix>000….
func numbered(prefix, valuePrefix string, n int) map[string]string {
	out := make(map[string]string, n)
	for i := range n {
		out[fmt.Sprintf("%s%03d", prefix, i)] = fmt.Sprintf("%s%03d", valuePrefix, i)
	}
	return out
}

// withKey returns a copy of m with key set to value.
func withKey(m map[string]string, key, value string) map[string]string {
	return withKeys(m, map[string]string{key: value})
}

// withKeys returns a copy of m overlaid by each of more.
func withKeys(m map[string]string, more ...map[string]string) map[string]string {
	out := maps.Clone(m)
	for _, o := range more {
		maps.Copy(out, o)
	}
	return out
}

// settingsDiff says which keys of want got lacks or holds with another value, and which keys got
// has beyond want (at most 10 of each kind); "" when they are equal.
func settingsDiff(want, got map[string]string) string {
	var missing, wrong, extra []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		v, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case v != want[k]:
			wrong = append(wrong, fmt.Sprintf("%s=%q (want %q)", k, v, want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing)+len(wrong)+len(extra) == 0 {
		return ""
	}
	list := func(s []string) string {
		if len(s) > 10 {
			return strings.Join(s[:10], " ") + " …"
		}
		return strings.Join(s, " ")
	}
	return fmt.Sprintf("%d of %d: %d missing [%s], %d different [%s], %d extra [%s]",
		len(missing)+len(wrong), len(want), len(missing), list(missing), len(wrong), list(wrong), len(extra), list(extra))
}

// taskEnv is the env of the test app's task in a lane job, nil when it has none.
func taskEnv(job *nomadapi.Job) map[string]string {
	for _, tg := range job.TaskGroups {
		for _, task := range tg.Tasks {
			if task.Name == jpTask {
				return task.Env
			}
		}
	}
	return nil
}

// laneService is the service named name in a lane job, nil when it has none.
func laneService(job *nomadapi.Job, name string) *nomadapi.Service {
	for _, tg := range job.TaskGroups {
		for _, s := range tg.Services {
			if s.Name == name {
				return s
			}
		}
		for _, task := range tg.Tasks {
			for _, s := range task.Services {
				if s.Name == name {
					return s
				}
			}
		}
	}
	return nil
}

// laneState is what slotd sets in a lane job: its task's env and its service's tags (sorted).
type laneState struct {
	env  map[string]string
	tags []string
}

func readLaneState(job *nomadapi.Job, service string) laneState {
	st := laneState{env: maps.Clone(taskEnv(job))}
	if s := laneService(job, service); s != nil {
		st.tags = slices.Sorted(slices.Values(s.Tags))
	}
	return st
}

// laneDiff says how the running job id differs from want; "" when it runs as want says.
func laneDiff(stack *Stack, id, service string, want laneState) string {
	job, _, err := stack.Nomad.Jobs().Info(id, nil)
	if err != nil {
		return id + ": " + err.Error()
	}
	if job.Stop != nil && *job.Stop || job.Status == nil || *job.Status != "running" {
		return fmt.Sprintf("%s: stop %v status %v", id, job.Stop != nil && *job.Stop, job.Status)
	}
	got := readLaneState(job, service)
	var diffs []string
	if d := settingsDiff(want.env, got.env); d != "" {
		diffs = append(diffs, "env "+d)
	}
	if !slices.Equal(want.tags, got.tags) {
		diffs = append(diffs, fmt.Sprintf("tags %q (want %q)", got.tags, want.tags))
	}
	if len(diffs) == 0 {
		return ""
	}
	return id + ": " + strings.Join(diffs, ", ")
}

// watchRequests sums the daemon's slotd_watch_requests_total series of a site over their other
// labels, and returns those series' lines.
func watchRequests(addr, site string) (float64, []string, error) {
	const metric = "slotd_watch_requests_total"
	resp, err := metricsClient.Get("http://" + addr + "/v1/metrics")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, nil, fmt.Errorf("GET /v1/metrics: %d %s", resp.StatusCode, body)
	}
	var sum float64
	var lines []string
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		rest, ok := strings.CutPrefix(line, metric+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "}")
		if !ok || !strings.Contains(","+labels+",", fmt.Sprintf(",site=%q,", site)) {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			return 0, nil, fmt.Errorf("no value in %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, nil, fmt.Errorf("value of %q: %w", line, err)
		}
		sum += v
		lines = append(lines, line)
	}
	return sum, lines, nil
}

var metricsClient = &http.Client{Timeout: 10 * time.Second}
