package e2e

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// TestSettingsTravel: a swap moves the swappable settings with the app and leaves the sticky ones
// with the slot, and at no moment of a swap does the staging host answer with production's
// sticky value. A setting changed through the API rolls out to its slot without a swap.
func TestSettingsTravel(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod, staging := site.host("production"), site.host("staging")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	waitServes(t, stack, staging, lanes["staging"])

	// settled checks that host answers from lane with the given settings.
	settled := func(host, lane, db, feature string) {
		t.Helper()
		waitAnswers(t, stack, host, 30*time.Second, lane+" with DB="+db+" FEATURE="+feature, func(a appAnswer) bool {
			return a.Lane == lane && a.Env["DB"] == db && a.Env["FEATURE"] == feature
		})
	}
	settled(prod, lanes["production"], "prod-db", "prod-feature")
	settled(staging, lanes["staging"], "staging-db", "staging-feature")

	// Two swaps, there and back, each with the staging host sampled all along.
	for i, want := range []struct{ prodFeature, stagingFeature string }{
		{"staging-feature", "prod-feature"},
		{"prod-feature", "staging-feature"},
	} {
		smp := startSampler(t, stack, staging, 2, 10*time.Minute)
		op := d.swap(site.name, "staging", "production")
		samples := smp.stop()
		require.Equal(t, api.StateSucceeded, op.State, "swap %d: %s", i+1, op.Error)
		require.False(t, smp.capped.Load(), "swap %d: the staging sampler ran out of its bounds", i+1)

		var leaked []sample
		served := 0
		for _, s := range samples {
			if s.err == nil && s.status == 200 {
				served++
				if s.ans.Env["DB"] == "prod-db" {
					leaked = append(leaked, s)
				}
			}
		}
		assert.Empty(t, leaked, "swap %d: the staging host answered with production's sticky DB: %s", i+1, firstSamples(leaked, 10))
		t.Logf("swap %d: %d requests on the staging host, %d answered 200, %s", i+1, len(samples), served, phaseTimes(op))

		next := d.laneJobs(site.name)
		require.Equal(t, lanes["staging"], next["production"], "swap %d: production is now the former staging lane", i+1)
		lanes = next
		settled(prod, lanes["production"], "prod-db", want.prodFeature)
		settled(staging, lanes["staging"], "staging-db", want.stagingFeature)
	}

	// Settings changed through the API roll out to their slot's lane, without a swap.
	before, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	require.NoError(t, d.client.SetSetting(ctx, site.name, "staging", "FEATURE", "staging-feature-2", false))
	settled(staging, lanes["staging"], "staging-db", "staging-feature-2")
	waitIdle(t, d, site.name)
	require.NoError(t, d.client.SetSetting(ctx, site.name, "production", "DB", "prod-db-2", true))
	settled(prod, lanes["production"], "prod-db-2", "prod-feature")
	waitIdle(t, d, site.name)
	assert.Equal(t, lanes, d.laneJobs(site.name), "a settings change moves no slot")

	set, err := d.client.Settings(ctx, site.name, "production")
	require.NoError(t, err)
	assert.Equal(t, "prod-db-2", set.Sticky["DB"], "production's sticky DB in KV")
	assert.NotContains(t, set.Settings, "DB", "a sticky setting is not also swappable")
	set, err = d.client.Settings(ctx, site.name, "staging")
	require.NoError(t, err)
	assert.Equal(t, "staging-feature-2", set.Settings["FEATURE"], "staging's swappable FEATURE in KV")
	assert.Equal(t, "staging-db", set.Sticky["DB"], "staging's sticky DB stays")

	hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	var rollouts []api.Operation
	for _, op := range hist[:len(hist)-len(before)] {
		assert.NotEqual(t, api.KindSwap, op.Kind, "no swap after the settings changes")
		if op.Kind == api.KindSettings {
			rollouts = append(rollouts, op)
			assert.Equal(t, api.StateSucceeded, op.State, "settings operation %s: %s", op.ID, op.Error)
		}
	}
	assert.NotEmpty(t, rollouts, "a settings operation in the history after the settings changes (history: %d new)", len(hist)-len(before))
}

// TestUnsetDeclaredSettingStaysUnset: a setting declared in slots.hcl that an operator unsets
// stays unset through a reload and a restart of the daemon (each brings the site up in KV
// again, as a failover does); a key newly declared is seeded by the reload.
func TestUnsetDeclaredSettingStaysUnset(t *testing.T) {
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.settings = map[string]map[string]string{"production": {"EXTRA": "declared-extra"}}
		s.vars = map[string]string{"show_env": "FEATURE,DB,EXTRA,ADDED"}
	})
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod := site.host("production")
	lane := d.laneJobs(site.name)["production"]
	answers := func(what, extra, added string) {
		t.Helper()
		waitAnswers(t, stack, prod, 2*time.Minute, "production with "+what, func(a appAnswer) bool {
			return a.Lane == lane && a.Env["EXTRA"] == extra && a.Env["ADDED"] == added && a.Env["FEATURE"] == "prod-feature"
		})
	}
	inKV := func(when string, added bool) {
		t.Helper()
		set, err := d.client.Settings(ctx, site.name, "production")
		require.NoError(t, err)
		assert.NotContains(t, set.Settings, "EXTRA", "%s: the unset EXTRA is not seeded again", when)
		assert.Equal(t, "prod-feature", set.Settings["FEATURE"], when)
		if added {
			assert.Equal(t, "new", set.Settings["ADDED"], "%s: the newly declared ADDED is seeded", when)
		}
	}
	answers("EXTRA", "declared-extra", "")

	require.NoError(t, d.client.DeleteSetting(ctx, site.name, "production", "EXTRA"))
	answers("EXTRA unset", "", "")
	waitIdle(t, d, site.name)

	// A reload with the same declarations brings the site up in KV again.
	require.NoError(t, d.agent.Reload(d.cfg))
	d.waitReady(site.name)
	inKV("after a reload", false)

	// A reload that declares a new key seeds it, and only it.
	next := withDeclaredSetting(d.cfg, site.name, "production", "ADDED", "new")
	require.NoError(t, d.agent.Reload(next))
	d.cfg = next
	answers("ADDED and EXTRA still unset", "", "new")
	waitIdle(t, d, site.name)
	inKV("after a reload that declares ADDED", true)

	d.restart(site.name)
	inKV("after a restart", true)
	answers("the same after a restart", "", "new")
}

// withDeclaredSetting is cfg with one more swappable setting declared for slot of site.
func withDeclaredSetting(cfg *config.Config, site, slot, key, value string) *config.Config {
	next := *cfg
	next.Sites = nil
	for _, sc := range cfg.Sites {
		c := *sc
		c.Slots = nil
		for _, sl := range sc.Slots {
			s := *sl
			if sc.Name == site && sl.Name == slot {
				s.Settings = maps.Clone(sl.Settings)
				s.Settings[key] = value
			}
			c.Slots = append(c.Slots, &s)
		}
		next.Sites = append(next.Sites, &c)
	}
	return &next
}

// TestSettingValuesReachTheAppExactly: values that look like Nomad's interpolation (${…}), a
// consul-template action ({{ … }}) or an HCL template (%{ … }) reach the app exactly as set,
// swappable and sticky, also after a swap moves them; Nomad interpolates ${…} in a task's env,
// so such values take another way into the task.
func TestSettingValuesReachTheAppExactly(t *testing.T) {
	stack := Shared(t)
	values := map[string]string{
		"ALLOC":  "${NOMAD_ALLOC_ID}",
		"NODE":   "id=${node.unique.id} os=${attr.kernel.name}",
		"OTHER":  "${FEATURE}/${SLOTD_SLOT}",
		"ESC":    "$${NOMAD_TASK_NAME} and $NOMAD_TASK_NAME",
		"UNSET":  "${NO_SUCH_VARIABLE}",
		"TMPL":   `{{ env "HOME" }} %{ if true }x%{ endif } "quoted" 'single' \back\slash # not a comment`,
		"LINES":  "one\ntwo\tthree\r\n{{",
		"UTF":    "é 日本 ${NOMAD_JOB_NAME} \u2028",
		"PLAIN":  "no interpolation here",
		"EMPTY":  "",
		"SPACES": "  ${NOMAD_DC}  ",
	}
	keys := slices.Sorted(maps.Keys(values))
	site := newSite(func(s *siteSpec) {
		s.vars = map[string]string{"show_env": "FEATURE,DB," + strings.Join(keys, ",")}
	})
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod, staging := site.host("production"), site.host("staging")
	for _, k := range keys {
		// Swappable on staging, sticky on production.
		require.NoError(t, d.client.SetSetting(ctx, site.name, "staging", k, values[k], false))
		require.NoError(t, d.client.SetSetting(ctx, site.name, "production", k, "p"+values[k], true))
	}
	exactly := func(host, prefix string) {
		t.Helper()
		waitAnswers(t, stack, host, 3*time.Minute, host+" with every value exactly", func(a appAnswer) bool {
			for _, k := range keys {
				if a.Env[k] != prefix+values[k] {
					return false
				}
			}
			return true
		})
	}
	exactly(staging, "")
	exactly(prod, "p")
	waitIdle(t, d, site.name)

	op := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, op.State, op.Error)
	// production's sticky values stay; staging keeps no swappable ones of its own now, and
	// production's swappable ones are staging's.
	exactly(prod, "p")
	set, err := d.client.Settings(ctx, site.name, "production")
	require.NoError(t, err)
	for _, k := range keys {
		assert.Equal(t, values[k], set.Settings[k], "production's swappable %s in KV after the swap", k)
	}
}

// TestKVEditOverTheLimitsRefused: a settings document edited in the Consul UI with a value a
// task cannot carry, or larger than a swap can exchange, is refused with an error that names
// its key and the limit, and nothing is rolled out until it is fixed.
func TestKVEditOverTheLimitsRefused(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod := site.host("production")
	lane := d.laneJobs(site.name)["production"]
	serves := func(db string) {
		t.Helper()
		waitAnswers(t, stack, prod, 2*time.Minute, "production with DB="+db, func(a appAnswer) bool {
			return a.Lane == lane && a.Env["DB"] == db
		})
	}
	serves("prod-db")
	key := site.kvPrefix() + "/sites/" + site.name + "/slots/production/sticky"
	put := func(doc string) {
		t.Helper()
		_, err := stack.Consul.KV().Put(&consulapi.KVPair{Key: key, Value: []byte(doc)}, nil)
		require.NoError(t, err, "write %s", key)
	}
	big := strings.Repeat("x", 50000)
	for _, tc := range []struct{ name, doc, want string }{
		{"a NUL byte", `{"DB": "edited\u0000"}`, `the value of setting "DB" holds a NUL byte`},
		{"a document over 128 KiB", `{"DB": "edited", "A": "` + big + `", "B": "` + big + `", "C": "` + big + `"}`,
			"over the limit of 131072 bytes (128 KiB)"},
	} {
		put(tc.doc)
		WaitFor(t, time.Minute, tc.name+": the settings refused, naming the key", func() (bool, string) {
			_, err := d.client.Settings(ctx, site.name, "production")
			if err == nil {
				return false, "the settings are read without an error"
			}
			return strings.Contains(err.Error(), key) && strings.Contains(err.Error(), tc.want), err.Error()
		})
		// The lane keeps what it ran: sampled for a while, as nothing tells of a rollout that
		// does not happen.
		for range 10 {
			status, ans, err := get(ctx, stack, prod)
			require.NoError(t, err)
			require.Equal(t, 200, status)
			require.Equal(t, "prod-db", ans.Env["DB"], "%s: nothing is rolled out", tc.name)
			time.Sleep(500 * time.Millisecond)
		}
	}
	put(`{"DB": "fixed"}`)
	serves("fixed")
}
