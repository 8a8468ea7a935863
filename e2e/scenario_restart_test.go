package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestRestartChangesNothing: stopping and starting the agent between operations registers no
// new job version in Nomad and writes no slot or history key in Consul KV.
func TestRestartChangesNothing(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()

	op := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, op.State, "swap: %s", op.Error)
	waitIdle(t, d, site.name)
	lanes := d.laneJobs(site.name)

	prefix := "slotd-" + site.name + "/"
	versions := func() map[string]uint64 {
		t.Helper()
		out := map[string]uint64{}
		for _, id := range lanes {
			job, _, err := stack.Nomad.Jobs().Info(id, nil)
			require.NoError(t, err, "read job %s", id)
			out[id] = *job.Version
		}
		return out
	}
	kv := func() map[string]uint64 {
		t.Helper()
		pairs, _, err := stack.Consul.KV().List(prefix, nil)
		require.NoError(t, err, "list %s", prefix)
		out := map[string]uint64{}
		for _, p := range pairs {
			out[p.Key] = p.ModifyIndex
		}
		return out
	}
	beforeJobs, beforeKV := versions(), kv()
	hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)

	d.restart(site.name)
	// A restarted daemon that meant to change something would start at once; give it a few
	// seconds to show it does not: no operation runs and none is added to the history.
	quiet := 0
	WaitFor(t, time.Minute, "the restarted daemon to stay idle for 5s", func() (bool, string) {
		s, err := d.client.Site(ctx, site.name)
		if err != nil {
			quiet = 0
			return false, err.Error()
		}
		if s.Operation != nil {
			t.Fatalf("the restarted daemon started %s %s (%s)", s.Operation.Kind, s.Operation.ID, s.Operation.State)
		}
		quiet++
		return quiet >= 50, fmt.Sprintf("%d idle looks", quiet)
	})

	assert.Equal(t, beforeJobs, versions(), "job versions of the lanes after a restart")
	afterKV := kv()
	for key, idx := range beforeKV {
		rel := strings.TrimPrefix(key, prefix+"sites/"+site.name+"/")
		switch {
		case strings.HasPrefix(rel, "slots/"), strings.HasPrefix(rel, "history/"):
			got, ok := afterKV[key]
			if assert.True(t, ok, "key %s is gone after a restart", key) {
				assert.Equal(t, idx, got, "ModifyIndex of %s after a restart", key)
			}
		case afterKV[key] != idx:
			t.Logf("changed by the restart (not checked): %s", key)
		}
	}
	for key := range afterKV {
		if _, ok := beforeKV[key]; !ok {
			rel := strings.TrimPrefix(key, prefix+"sites/"+site.name+"/")
			assert.False(t, strings.HasPrefix(rel, "slots/") || strings.HasPrefix(rel, "history/") || rel == "operation",
				"key %s appeared after a restart", key)
		}
	}
	after, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	assert.Len(t, after, len(hist), "operations in the history after a restart")
	assert.Equal(t, lanes, d.laneJobs(site.name), "bindings after a restart")
	waitServes(t, stack, site.host("production"), lanes["production"])
}
