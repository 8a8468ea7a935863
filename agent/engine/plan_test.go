package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/config"
)

func TestLaneName(t *testing.T) {
	for i, want := range map[int]string{0: "a", 1: "b", 25: "z", 26: "aa", 27: "ab", 51: "az", 52: "ba"} {
		assert.Equal(t, want, laneName(i), "lane %d", i)
	}
}

func TestAssignLanes(t *testing.T) {
	tests := []struct {
		name  string
		slots []string
		bound map[string]string
		want  map[string]string
	}{
		{"fresh site", []string{"production", "staging"}, nil, map[string]string{"production": "a", "staging": "b"}},
		{"after a swap the binding stays", []string{"production", "staging"},
			map[string]string{"production": "b", "staging": "a"}, map[string]string{"production": "b", "staging": "a"}},
		{"a new slot takes the first free lane", []string{"production", "staging", "qa"},
			map[string]string{"production": "b", "staging": "c"}, map[string]string{"production": "b", "staging": "c", "qa": "a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, assignLanes(tc.slots, tc.bound))
		})
	}
}

// TestSwapStates checks the sticky-settings rule of DESIGN.md §3 on the states of every phase:
// a lane that carries the target's sticky settings never carries the source's routes, and the
// source lane gets the target's routes only with the target's sticky settings.
func TestSwapStates(t *testing.T) {
	prod := &config.Slot{Name: "production", Tags: []string{"urlprefix-www/"}, PreviewTags: []string{"urlprefix-preview/"},
		PreviousTags: []string{"urlprefix-previous/"}}
	staging := &config.Slot{Name: "staging", Tags: []string{"urlprefix-staging/"}}
	src := store.SlotSettings{Settings: map[string]string{"FEATURE": "on"}, Sticky: map[string]string{"DB": "staging-db"}}
	tgt := store.SlotSettings{Settings: map[string]string{"FEATURE": "off"}, Sticky: map[string]string{"DB": "prod-db"}}

	a := applied(prod, src, tgt)
	assert.Equal(t, []string{"urlprefix-preview/"}, a.Tags, "apply: only the target's preview route")
	assert.Equal(t, map[string]string{"FEATURE": "on", "DB": "prod-db"}, a.Env, "apply: own swappable, target's sticky")
	assert.Equal(t, "production", a.Slot)

	// Make and break retag what the lanes run: the source lane as apply left it, the target
	// lane as it ran.
	s := lanes.Retagged(a, slotTags(prod))
	assert.Equal(t, []string{"production", "urlprefix-www/"}, s.Tags)
	assert.Equal(t, a.Env, s.Env, "switch is tags-only for the source lane")
	assert.True(t, s.InPlace)

	running := steady(prod, tgt)
	d := lanes.Retagged(running, drainedTags(prod, false))
	assert.Empty(t, d.Tags, "the target lane leaves every route")
	assert.Equal(t, map[string]string{"FEATURE": "off", "DB": "prod-db"}, d.Env, "switch is tags-only for the target lane")

	h := lanes.Retagged(running, drainedTags(prod, true))
	assert.Equal(t, []string{"urlprefix-previous/"}, h.Tags, "a held lane keeps only the target's previous_tags")
	assert.Equal(t, d.Env, h.Env, "a held lane keeps the target's settings")
	// A swap back inside the hold: the held lane as apply would have it differs in tags only.
	back := applied(prod, store.SlotSettings{Settings: tgt.Settings, Sticky: src.Sticky}, tgt)
	assert.Equal(t, h.Env, back.Env, "an instant swap back is tags-only for the held lane")

	// After the exchange the source slot holds the target's swappable settings.
	settled := steady(staging, store.SlotSettings{Settings: tgt.Settings, Sticky: src.Sticky})
	assert.Equal(t, []string{"staging", "urlprefix-staging/"}, settled.Tags)
	assert.Equal(t, map[string]string{"FEATURE": "off", "DB": "staging-db"}, settled.Env)

	for _, st := range []lanes.State{a, s, d, h, settled} {
		if st.Env["DB"] == "prod-db" {
			assert.NotContains(t, st.Tags, "urlprefix-staging/", "production secrets under a staging route in %+v", st)
		}
	}
}

// TestSwapStatesRouted: the lanes of a swap that carry no public route (the candidate in apply,
// the target lane drained or held) roll out in one batch; a lane that carries a slot's routes
// (made, settled, steady) keeps the jobspec's update rules.
func TestSwapStatesRouted(t *testing.T) {
	prod := &config.Slot{Name: "production", Tags: []string{"urlprefix-www/"}, PreviewTags: []string{"urlprefix-preview/"},
		PreviousTags: []string{"urlprefix-previous/"}}
	staging := &config.Slot{Name: "staging", Tags: []string{"urlprefix-staging/"}}
	bare := &config.Slot{Name: "qa"}
	cfg := &config.Site{Name: "web", Slots: []*config.Slot{prod, staging, bare}}
	var set store.SlotSettings
	tests := []struct {
		name   string
		want   lanes.State
		routed bool
	}{
		{"apply: the candidate", applied(prod, set, set), false},
		{"apply into a slot without preview tags", applied(bare, set, set), false},
		{"switch, make: the candidate gets the target's routes", lanes.Retagged(applied(prod, set, set), slotTags(prod)), true},
		{"switch, break: the target lane drained", lanes.Retagged(steady(prod, set), drainedTags(prod, false)), false},
		{"switch, break: the target lane held", lanes.Retagged(steady(prod, set), drainedTags(prod, true)), false},
		{"settle: the former target lane into the source", steady(staging, set), true},
		{"steady: a slot without tags has its name", steady(bare, set), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.routed, lanes.Routed(cfg, tc.want.Tags), "tags %q", tc.want.Tags)
		})
	}
}

func TestEffectiveEnvStickyWins(t *testing.T) {
	env := effectiveEnv(map[string]string{"A": "swap", "B": "b"}, map[string]string{"A": "sticky"})
	assert.Equal(t, map[string]string{"A": "sticky", "B": "b"}, env)
}

func TestPutBack(t *testing.T) {
	base := map[string]string{"APP_VERSION": "v1", "SLOTD_SLOT": "staging"}
	tests := []struct {
		name       string
		cur        store.SlotSettings
		prev       map[string]string
		want       store.SlotSettings
		wantChange []string
	}{
		{
			name:       "a new setting is removed",
			cur:        store.SlotSettings{Settings: map[string]string{"A": "1", "BAD": "x"}, Sticky: map[string]string{}},
			prev:       map[string]string{"A": "1", "APP_VERSION": "v1", "SLOTD_SLOT": "staging"},
			want:       store.SlotSettings{Settings: map[string]string{"A": "1"}, Sticky: map[string]string{}},
			wantChange: []string{"BAD"},
		},
		{
			name:       "a changed sticky value gets its old value",
			cur:        store.SlotSettings{Settings: map[string]string{"A": "1"}, Sticky: map[string]string{"DB": "new"}},
			prev:       map[string]string{"A": "1", "DB": "old"},
			want:       store.SlotSettings{Settings: map[string]string{"A": "1"}, Sticky: map[string]string{"DB": "old"}},
			wantChange: []string{"DB"},
		},
		{
			name:       "a swappable value shadowed by a sticky one is left alone",
			cur:        store.SlotSettings{Settings: map[string]string{"DB": "swap"}, Sticky: map[string]string{"DB": "new"}},
			prev:       map[string]string{"DB": "old"},
			want:       store.SlotSettings{Settings: map[string]string{"DB": "swap"}, Sticky: map[string]string{"DB": "old"}},
			wantChange: []string{"DB"},
		},
		{
			name:       "a deleted setting comes back as sticky",
			cur:        store.SlotSettings{Settings: map[string]string{}, Sticky: map[string]string{}},
			prev:       map[string]string{"GONE": "v", "APP_VERSION": "v1", "SLOTD_SITE": "web"},
			want:       store.SlotSettings{Settings: map[string]string{}, Sticky: map[string]string{"GONE": "v"}},
			wantChange: []string{"GONE"},
		},
		{
			name:       "a setting that overrode the jobspec's own variable comes back",
			cur:        store.SlotSettings{Settings: map[string]string{}, Sticky: map[string]string{}},
			prev:       map[string]string{"APP_VERSION": "v2"},
			want:       store.SlotSettings{Settings: map[string]string{}, Sticky: map[string]string{"APP_VERSION": "v2"}},
			wantChange: []string{"APP_VERSION"},
		},
		{
			name:       "a new setting over the jobspec's own variable is removed",
			cur:        store.SlotSettings{Settings: map[string]string{"APP_VERSION": "bad"}, Sticky: map[string]string{}},
			prev:       map[string]string{"APP_VERSION": "v1"},
			want:       store.SlotSettings{Settings: map[string]string{}, Sticky: map[string]string{}},
			wantChange: []string{"APP_VERSION"},
		},
		{
			name:       "nothing to put back",
			cur:        store.SlotSettings{Settings: map[string]string{"A": "1"}, Sticky: map[string]string{"B": "2"}},
			prev:       map[string]string{"A": "1", "B": "2", "APP_VERSION": "v1"},
			want:       store.SlotSettings{Settings: map[string]string{"A": "1"}, Sticky: map[string]string{"B": "2"}},
			wantChange: []string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, changed := putBack(tc.cur, tc.prev, base)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.wantChange, changed)
		})
	}
}

func TestAcceptedStatus(t *testing.T) {
	assert.True(t, acceptedStatus(nil, 302))
	assert.False(t, acceptedStatus(nil, 404))
	assert.True(t, acceptedStatus([]int{200}, 200))
	assert.False(t, acceptedStatus([]int{200}, 204))
}
