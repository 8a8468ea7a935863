package engine

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// TestSettleHeldThenOwn: with three slots, a swap of qa into production during the hold of a
// swap of staging into production settles staging's held lane first (settle-held), then holds
// and settles its own former production lane into qa: two settles, each done once.
func TestSettleHeldThenOwn(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	kv.Put("slotd/sites/web/slots/qa/lane", "web-c")
	kv.Put("slotd/sites/web/slots/qa/version", "7")
	kv.Put("slotd/sites/web/slots/qa/settings", `{"FEATURE": "qa-feature"}`)
	kv.Put("slotd/sites/web/slots/qa/sticky", `{"DB": "qa-db"}`)
	cfg := testSite()
	cfg.Slots = append(cfg.Slots, &config.Slot{Name: "qa", Tags: []string{"urlprefix-qa/"}})
	cfg.Monitor = &config.Monitor{Window: time.Minute, Threshold: 1, RollbackWindow: time.Minute}
	e, lanes, _ := ownedSite(t, kv, cfg)
	lanes.mu.Lock()
	lanes.versions["c"] = 30
	lanes.mu.Unlock()

	first, err := e.Swap("web", "staging", "production", false)
	require.NoError(t, err)
	waitUntil(t, 10*time.Second, "the first swap to hold", func() bool {
		cur := e.ops.get(first.ID)
		return cur != nil && (cur.State == api.StateMonitoring || cur.State == api.StateHolding)
	})

	second, err := e.Swap("web", "qa", "production", false)
	require.NoError(t, err)
	waitUntil(t, 20*time.Second, "the first swap to end", func() bool {
		cur := e.ops.get(first.ID)
		return cur != nil && api.Terminal(cur.State)
	})
	held := e.ops.get(first.ID)
	assert.Equal(t, api.PhaseSkipped, held.Phase(api.PhaseSettle).State, "the first swap left its lane held")

	waitUntil(t, 20*time.Second, "the second swap to hold", func() bool {
		cur := e.ops.get(second.ID)
		return cur != nil && (cur.State == api.StateMonitoring || cur.State == api.StateHolding)
	})
	cur := e.ops.get(second.ID)
	names := make([]string, len(cur.Phases))
	for i, p := range cur.Phases {
		names[i] = p.Name
	}
	assert.Equal(t, 1, countOf(names, api.PhaseSettle), "one settle phase of its own: %v", names)
	assert.Equal(t, api.PhaseSettleHeld, names[0], "the held lane is settled first: %v", names)
	require.NotNil(t, cur.Phase(api.PhaseSettleHeld), "phases: %v", names)
	assert.Equal(t, api.PhaseSucceeded, cur.Phase(api.PhaseSettleHeld).State)
	assert.Equal(t, api.PhasePending, cur.Phase(api.PhaseSettle).State, "the swap holds its own former production lane")
	waitUntil(t, 10*time.Second, "the site to show the hold", func() bool {
		site, err := e.Status(context.Background(), "web", false)
		if err != nil {
			return false
		}
		for _, sl := range site.Slots {
			if sl.Name == "qa" && sl.HeldFor == "production" {
				return true
			}
		}
		return false
	})

	_, err = e.Settle(context.Background(), "web")
	require.NoError(t, err)
	waitUntil(t, 20*time.Second, "the second swap to settle", func() bool {
		cur := e.ops.get(second.ID)
		return cur != nil && cur.Phase(api.PhaseSettle).State == api.PhaseSucceeded
	})
	lanes.mu.Lock()
	calls := slices.Clone(lanes.calls)
	lanes.mu.Unlock()
	assert.Contains(t, calls, "a as staging [staging urlprefix-staging/] DB=staging-db FEATURE=prod-feature healthy", "staging's held lane settled")
	assert.Contains(t, calls, "b as qa [qa urlprefix-qa/] DB=qa-db FEATURE=staging-feature healthy", "qa got production's former lane with its own settings and routes")
}

func countOf(names []string, name string) int {
	n := 0
	for _, x := range names {
		if x == name {
			n++
		}
	}
	return n
}
