package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestHistoryRetention: settings edits through the API, each rolled out as an operation of its
// own, leave no more than the site's history_limit history keys in Consul KV, and those are
// the newest; GET …/history pages through them newest first.
func TestHistoryRetention(t *testing.T) {
	// A rollout takes about 7 s here: 10 of them keep the test near a minute and a half.
	const (
		limit = 4
		edits = 10
		page  = 3
	)
	stack := Shared(t)
	t.Parallel()
	// One instance a lane: a rollout restarts one allocation, not two.
	site := newSite(func(s *siteSpec) { s.historyLimit = limit; s.vars = map[string]string{"count": "1"} })
	d := startDaemon(t, stack, site)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	seen := map[string]bool{}
	var ids []string // the rollouts of the edits, oldest first
	start := time.Now()
	for i := range edits {
		require.NoError(t, d.client.SetSetting(ctx, site.name, "staging", "EDIT", strconv.Itoa(i), false))
		op := nextSettingsOp(ctx, t, d, site.name, seen)
		op = waitTerminal(ctx, t, d, op)
		require.Equal(t, api.StateSucceeded, op.State, "rollout of edit %d: %s", i, op.Error)
		require.False(t, op.Unchanged, "edit %d changed staging's lane", i)
		ids = append(ids, op.ID)
	}
	t.Logf("%d edits rolled out in %s", edits, time.Since(start).Round(time.Second))
	waitIdle(t, d, site.name)

	prefix := fmt.Sprintf("slotd-%s/sites/%s/history/", site.name, site.name)
	keys, _, err := stack.Consul.KV().Keys(prefix, "", nil)
	require.NoError(t, err)
	require.Len(t, keys, limit, "history keys in Consul KV after %d edits with history_limit = %d: %v", edits, limit, keys)

	newest := slices.Clone(ids[len(ids)-limit:])
	slices.Reverse(newest)
	hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	assert.Equal(t, newest, opIDs(hist), "the history keeps the newest rollouts, newest first")
	var seqs []string
	for _, op := range hist {
		seqs = append(seqs, fmt.Sprintf("%s%020d", prefix, op.Seq))
	}
	slices.Sort(seqs)
	assert.Equal(t, keys, seqs, "the keys in KV are those of the operations the API answers")

	// Pages of 3: the newest three, then on from the last seq of each page, until none is left.
	var paged []string
	var before uint64
	for range limit {
		got, err := d.client.History(ctx, site.name, api.HistoryPage{Limit: page, Before: before})
		require.NoError(t, err)
		if len(got) == 0 {
			break
		}
		require.LessOrEqual(t, len(got), page, "a page holds at most limit operations")
		paged = append(paged, opIDs(got)...)
		before = got[len(got)-1].Seq
	}
	assert.Equal(t, newest, paged, "the pages, one after the other, are the history")

	// Asking for more than the site keeps answers what it keeps; a bad page is a 400.
	all, err := d.client.History(ctx, site.name, api.HistoryPage{Limit: 1000})
	require.NoError(t, err)
	assert.Len(t, all, limit)
	_, err = d.client.History(ctx, site.name, api.HistoryPage{Limit: -1})
	var se *api.StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 400, se.Code)
	assert.Contains(t, se.Message, "limit")

	s, err := d.client.Site(ctx, site.name)
	require.NoError(t, err)
	require.NotNil(t, s.LastOperation)
	assert.Equal(t, ids[len(ids)-1], s.LastOperation.ID, "the site's last operation is the newest")
}

// nextSettingsOp waits for the settings rollout that a settings change started: running, or
// already in the history; an operation in seen is not it, and the one found is added to seen.
func nextSettingsOp(ctx context.Context, t testing.TB, d *daemon, site string, seen map[string]bool) *api.Operation {
	t.Helper()
	var found *api.Operation
	WaitFor(t, 2*time.Minute, "a settings rollout after the change", func() (bool, string) {
		s, err := d.client.Site(ctx, site)
		if err != nil {
			return false, err.Error()
		}
		if op := s.Operation; op != nil && op.Kind == api.KindSettings && !seen[op.ID] {
			found = op
			return true, ""
		}
		hist, err := d.client.History(ctx, site, api.HistoryPage{Limit: 1})
		if err != nil {
			return false, err.Error()
		}
		if len(hist) > 0 && hist[0].Kind == api.KindSettings && !seen[hist[0].ID] {
			found = &hist[0]
			return true, ""
		}
		return false, fmt.Sprintf("running %+v, newest in history %s", s.Operation, strings.Join(opIDs(hist), ","))
	})
	seen[found.ID] = true
	return found
}

func opIDs(ops []api.Operation) []string {
	out := []string{}
	for _, op := range ops {
		out = append(out, op.ID)
	}
	return out
}
