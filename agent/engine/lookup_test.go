package engine

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
)

// TestLookupCost: looking an operation up by ID reads Consul a bounded number of times,
// whatever the number of sites and the length of their histories. Unknown IDs cost one read of
// every site's journal each (one transaction per 64 sites) and one read of every history per
// rescanGap, not a walk of every history per ID (sites × (history_limit + 2) reads each,
// before).
func TestLookupCost(t *testing.T) {
	const sites, kept = 10, 20
	kv := storetest.New()
	e := testEngine(kv, &fakeLanes{versions: map[string]uint64{}})
	e.sites = map[string]*site{}
	for i := range sites {
		name := fmt.Sprintf("s%02d", i)
		cfg := testSite()
		cfg.Name, cfg.HistoryLimit = name, kept
		e.sites[name] = newSite(e, cfg)
		for j := range kept {
			op := &api.Operation{ID: fmt.Sprintf("op-%s-%02d", name, j), Site: name, Kind: api.KindDeploy, State: api.StateSucceeded}
			require.NoError(t, e.store.CreateOperation(op))
			require.NoError(t, e.store.FinishOperation(op, kept))
		}
	}
	running := &api.Operation{ID: "op-running", Site: "s03", Kind: api.KindDeploy, State: api.StateDeploying}
	require.NoError(t, e.store.CreateOperation(running))

	cost := func(id string) (*api.Operation, int64, error) {
		before := kv.Requests.Load()
		op, err := e.findOperation(id)
		return op, kv.Requests.Load() - before, err
	}

	op, reads, err := cost("op-s07-05")
	require.NoError(t, err)
	assert.Equal(t, "s07", op.Site)
	t.Logf("a known ID, first look-up: %d reads", reads)
	assert.LessOrEqual(t, reads, int64(3), "the journals, every history (the index is empty), the entry")

	var unknown int64
	for i := range 100 {
		_, reads, err := cost(fmt.Sprintf("op-nope-%03d", i))
		require.ErrorIs(t, err, ErrNotFound)
		unknown += reads
	}
	t.Logf("100 unknown IDs: %d reads (a walk of every history per ID read %d)", unknown, 100*sites*(kept+2))
	assert.LessOrEqual(t, unknown, int64(100+1), "one read of the journals each, at most one scan of the histories")

	op, reads, err = cost("op-running")
	require.NoError(t, err)
	assert.Equal(t, api.StateDeploying, op.State)
	assert.Equal(t, int64(1), reads, "a running operation is in the journals")

	running.State = api.StateSucceeded
	require.NoError(t, e.store.FinishOperation(running, kept))
	op, reads, err = cost("op-running")
	require.NoError(t, err, "an operation seen running is found in its site's history once it ended")
	assert.Equal(t, api.StateSucceeded, op.State)
	assert.LessOrEqual(t, reads, int64(3), "the journals, the site's history, the entry")

	op, reads, err = cost("op-s01-19")
	require.NoError(t, err)
	assert.Equal(t, "s01", op.Site)
	assert.LessOrEqual(t, reads, int64(2), "indexed: the journals and the entry")
}
