package engine

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/config"
)

// TestBootstrapSeedsAndMigrates: a site's first start binds every slot and seeds any number of
// declared settings; settings kept one key per setting (the layout before documents) are
// folded into the documents, the document winning where both have a key, and the old keys
// deleted; a lane kept as its short name (before KV held job IDs) becomes the job ID; a second
// start writes nothing.
func TestBootstrapSeedsAndMigrates(t *testing.T) {
	kv := storetest.New()
	cfg := testSite()
	cfg.Slots[0].Settings = map[string]string{"FEATURE": "declared"}
	cfg.Slots[1].Sticky = map[string]string{}
	for i := range 150 {
		cfg.Slots[1].Sticky[fmt.Sprintf("K%03d", i)] = "declared"
	}
	kv.Put("slotd/sites/web/slots/production/lane", "a")
	for i := range 100 {
		kv.Put(fmt.Sprintf("slotd/sites/web/slots/production/settings/S%03d", i), "legacy")
	}
	kv.Put("slotd/sites/web/slots/production/settings/FEATURE", "edited-in-kv")
	kv.Put("slotd/sites/web/slots/staging/sticky/K000", "legacy")
	kv.Put("slotd/sites/web/slots/staging/sticky", `{"K000": "document"}`)

	e := testEngine(kv, &fakeLanes{versions: map[string]uint64{}})
	op, err := e.bootstrap(context.Background(), cfg)
	require.NoError(t, err)
	assert.Nil(t, op)

	st, err := e.store.LoadSlots("web", nil)
	require.NoError(t, err)
	prod, staging := st.Slot("production"), st.Slot("staging")
	assert.Equal(t, "a", prod.Lane.Value)
	assert.Equal(t, "b", staging.Lane.Value, "an unbound slot gets the first free lane")
	assert.Equal(t, "web-a", kv.Value("slotd/sites/web/slots/production/lane"), "a short lane name is migrated to the job ID")
	assert.Equal(t, "web-b", kv.Value("slotd/sites/web/slots/staging/lane"), "KV holds the lane's job ID")
	assert.Len(t, prod.Settings.Values, 101)
	assert.Equal(t, "legacy", prod.Settings.Values["S099"])
	assert.Equal(t, "edited-in-kv", prod.Settings.Values["FEATURE"], "KV is the truth once a key exists: no re-seed over it")
	assert.Len(t, staging.Sticky.Values, 150)
	assert.Equal(t, "document", staging.Sticky.Values["K000"], "the document wins over a leftover key")
	assert.Equal(t, "declared", staging.Sticky.Values["K149"])
	for _, k := range kv.AllKeys() {
		parts := strings.Split(strings.TrimPrefix(k, "slotd/sites/web/slots/"), "/")
		assert.LessOrEqual(t, len(parts), 2, "a one-key-per-setting entry is left: %s", k)
	}

	before := kv.Index()
	_, err = e.bootstrap(context.Background(), cfg)
	require.NoError(t, err)
	assert.Equal(t, before, kv.Index(), "a second start writes nothing")
}

// TestLoadSlotsRefusesABadDocument: a settings document edited in the Consul UI into something
// that cannot reach a lane, or that a swap could not exchange, is an error naming the key: the
// site rolls nothing out until it is fixed.
func TestLoadSlotsRefusesABadDocument(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"not JSON", `FEATURE=on`, "not a JSON object of strings"},
		{"a number", `{"PORT": 8080}`, "not a JSON object of strings"},
		{"a bad key", `{"not-a-name": "x"}`, "not an environment variable name"},
		{"a reserved key", `{"SLOTD_SLOT": "x"}`, "reserved"},
		{"a NUL byte", `{"A": "x\u0000y"}`, `the value of setting "A" holds a NUL byte`},
		{"a value over the limit", `{"BIG": "` + strings.Repeat("x", config.MaxSettingValue+1) + `"}`, `the value of setting "BIG" is 65537 bytes, over the limit of 65536 bytes`},
		{"a document over the limit", `{"A": "` + strings.Repeat("a", 50000) + `", "B": "` + strings.Repeat("b", 50000) + `", "C": "` + strings.Repeat("c", 50000) + `"}`,
			"the sticky document of 3 settings is 150035 bytes, over the limit of 131072 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := storetest.New()
			kv.Put("slotd/sites/web/slots/production/sticky", tc.doc)
			_, err := (&store.Store{KV: kv, Prefix: "slotd"}).LoadSlots("web", nil)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "slotd/sites/web/slots/production/sticky", "the error names the key to fix")
		})
	}
}

// TestSetSettingRefusesTooMuch: a setting that would make its slot's document larger than a
// swap can exchange is refused as bad input, and nothing is written.
func TestSetSettingRefusesTooMuch(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	e, _, _ := ownedSite(t, kv, testSite())
	big := strings.Repeat("x", config.MaxSettingValue)
	_, err := e.SetSetting("web", "staging", "A", big, false)
	require.NoError(t, err)
	_, err = e.SetSetting("web", "staging", "B", big, true)
	require.NoError(t, err, "the other kind is another document")
	before := kv.Index()

	_, err = e.SetSetting("web", "staging", "C", big, false)
	require.ErrorIs(t, err, store.ErrBadRequest)
	assert.ErrorContains(t, err, "slot staging: the settings document of 3 settings is")
	assert.ErrorContains(t, err, "over the limit of 131072 bytes (128 KiB)")
	assert.Equal(t, before, kv.Index(), "nothing is written")

	_, err = e.SetSetting("web", "staging", "D", "x\x00", true)
	require.ErrorIs(t, err, store.ErrBadRequest)
	assert.ErrorContains(t, err, `the value of setting "D" holds a NUL byte`)
}

// TestBootstrapSeedsOnce: a declared setting that an operator unset stays unset through every
// later start (a reload, a failover), after a swap too; a key newly declared is seeded.
func TestBootstrapSeedsOnce(t *testing.T) {
	kv := storetest.New()
	cfg := testSite()
	cfg.Slots[0].Settings = map[string]string{"FEATURE": "declared"}
	cfg.Slots[0].Sticky = map[string]string{"DB": "prod-db"}
	e := testEngine(kv, &fakeLanes{versions: map[string]uint64{}})
	boot := func() store.SlotSettings {
		t.Helper()
		_, err := e.bootstrap(context.Background(), cfg)
		require.NoError(t, err)
		st, err := e.store.LoadSlots("web", nil)
		require.NoError(t, err)
		return st.Slot("production").Values()
	}
	prod := boot()
	assert.Equal(t, map[string]string{"FEATURE": "declared"}, prod.Settings)
	assert.Equal(t, map[string]string{"DB": "prod-db"}, prod.Sticky)
	assert.JSONEq(t, `{"settings": ["FEATURE"], "sticky": ["DB"]}`, kv.Value("slotd/sites/web/slots/production/seeded"))

	// The operator unsets both (slotd settings … unset).
	kv.Put("slotd/sites/web/slots/production/settings", `{}`)
	kv.Put("slotd/sites/web/slots/production/sticky", `{}`)
	before := kv.Index()
	prod = boot()
	assert.Empty(t, prod.Settings, "an unset swappable key stays unset")
	assert.Empty(t, prod.Sticky, "an unset sticky key stays unset")
	assert.Equal(t, before, kv.Index(), "nothing is written")

	// A key newly declared is seeded; the unset ones stay unset.
	cfg.Slots[0].Settings["NEW"] = "fresh"
	prod = boot()
	assert.Equal(t, map[string]string{"NEW": "fresh"}, prod.Settings)
	assert.Empty(t, prod.Sticky)

	// A swap moves the swappable documents, not the records: production now holds what
	// staging's app had, and its own declarations, seeded once, are not seeded into it.
	kv.Put("slotd/sites/web/slots/staging/settings", `{"NEW": "fresh"}`)
	kv.Put("slotd/sites/web/slots/production/settings", `{"OTHER": "staging's"}`)
	prod = boot()
	assert.Equal(t, map[string]string{"OTHER": "staging's"}, prod.Settings)
}

// TestBootstrapSeedsAnUpgradedSiteOnce: a site whose slots have no seed record yet (bound by
// an older slotd) is seeded where keys are absent, as before, once; then it has a record.
func TestBootstrapSeedsAnUpgradedSiteOnce(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	cfg := testSite()
	cfg.Slots[0].Settings = map[string]string{"FEATURE": "declared", "MISSING": "declared"}
	e := testEngine(kv, &fakeLanes{versions: map[string]uint64{}})
	_, err := e.bootstrap(context.Background(), cfg)
	require.NoError(t, err)
	st, err := e.store.LoadSlots("web", nil)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"FEATURE": "prod-feature", "MISSING": "declared"}, st.Slot("production").Settings.Values)
	assert.JSONEq(t, `{"settings": ["FEATURE", "MISSING"], "sticky": []}`, kv.Value("slotd/sites/web/slots/production/seeded"))
	assert.JSONEq(t, `{"settings": [], "sticky": []}`, kv.Value("slotd/sites/web/slots/staging/seeded"))

	kv.Put("slotd/sites/web/slots/production/settings", `{"FEATURE": "prod-feature"}`)
	_, err = e.bootstrap(context.Background(), cfg)
	require.NoError(t, err)
	st, err = e.store.LoadSlots("web", nil)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"FEATURE": "prod-feature"}, st.Slot("production").Settings.Values, "unset after the upgrade: stays unset")
}
