package engine

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
)

const historyPrefix = "slotd/sites/web/history/"

// finished writes n finished operations into the history of site web, seqs 1 to n: older
// than any operation the fake KV journals next.
func finished(t testing.TB, kv *storetest.KV, n int) {
	t.Helper()
	for i := range n {
		seq := uint64(1 + i)
		kv.Put(fmt.Sprintf("%s%020d", historyPrefix, seq), fmt.Sprintf(`{"id": "op-%d", "site": "web", "kind": "deploy", "state": "succeeded", "seq": %d}`, seq, seq))
	}
}

// historySeqs lists the seqs the history of site web holds, oldest first.
func historySeqs(t testing.TB, kv *storetest.KV) []uint64 {
	t.Helper()
	refs, err := (&store.Store{KV: kv, Prefix: "slotd"}).HistoryRefs("web")
	require.NoError(t, err)
	seqs := make([]uint64, len(refs))
	for i, r := range refs {
		seqs[i] = r.Seq
	}
	return seqs
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

// TestHistoryPruning: a finished operation goes into the history in the transaction that
// deletes the oldest entries beyond the limit; what does not fit into one Consul transaction
// goes in the next ones, and none holds more than Consul takes.
func TestHistoryPruning(t *testing.T) {
	tests := []struct {
		name     string
		existing int
		limit    int
		refuse   bool // Consul refuses the transactions after the first
		wantOld  []uint64
		wantTxns int
	}{
		{name: "under the limit", existing: 3, limit: 5, wantOld: seqRange(1, 3), wantTxns: 1},
		{name: "at the limit", existing: 5, limit: 5, wantOld: seqRange(2, 5), wantTxns: 1},
		{name: "a limit of one", existing: 4, limit: 1, wantTxns: 1},
		{name: "no limit given: the default", existing: 3, limit: 0, wantOld: seqRange(1, 3), wantTxns: 1},
		// 196 to delete: 61 in the move (with the leader check, the new entry and the journal),
		// then 63, 63 and 9.
		{name: "the limit lowered from 200 to 5", existing: 200, limit: 5, wantOld: seqRange(197, 200), wantTxns: 4},
		{name: "the rest refused: left for the next one", existing: 200, limit: 5, refuse: true, wantOld: seqRange(62, 200), wantTxns: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := storetest.New()
			finished(t, kv, tc.existing)
			st := &store.Store{KV: kv, Prefix: "slotd"}
			st.Fence("session")
			op := &api.Operation{ID: "op-new", Site: "web", Kind: api.KindSwap, State: api.StatePending}
			require.NoError(t, st.CreateOperation(op))
			op.State = api.StateSucceeded

			var sizes []int
			kv.Fail = func(ops consulapi.KVTxnOps) error {
				sizes = append(sizes, len(ops))
				assert.Equal(t, consulapi.KVCheckSession, ops[0].Verb, "every transaction checks the leader lock first")
				if tc.refuse && len(sizes) > 1 {
					return fmt.Errorf("consul is away")
				}
				return nil
			}
			require.NoError(t, st.FinishOperation(op, tc.limit), "a prune left for later does not fail the move")
			kv.Fail = nil

			assert.Len(t, sizes, tc.wantTxns, "transactions")
			for i, n := range sizes {
				assert.LessOrEqual(t, n, store.MaxTxnOps, "transaction %d", i)
			}
			assert.Equal(t, append(tc.wantOld, op.Seq), historySeqs(t, kv), "the history: the newest ones and the new one")
			journaled, err := st.RunningOperation("web")
			require.NoError(t, err)
			assert.Nil(t, journaled, "the journal is cleared")

			if tc.refuse {
				next := &api.Operation{ID: "op-next", Site: "web", Kind: api.KindSwap, State: api.StatePending}
				require.NoError(t, st.CreateOperation(next))
				next.State = api.StateFailed
				require.NoError(t, st.FinishOperation(next, tc.limit))
				assert.Equal(t, []uint64{op.Seq, next.Seq}, historySeqs(t, kv)[3:], "the next finished operation prunes the rest")
				assert.Len(t, historySeqs(t, kv), tc.limit)
			}
		})
	}
}

// TestHistoryPage: pages come newest first, before= goes on from a page's last seq, and
// entries pruned or written by hand are left out.
func TestHistoryPage(t *testing.T) {
	kv := storetest.New()
	finished(t, kv, 12)
	kv.Put(historyPrefix+"notes", "written by hand")
	st := &store.Store{KV: kv, Prefix: "slotd"}

	seqs := func(ops []api.Operation) []uint64 {
		out := []uint64{}
		for _, op := range ops {
			out = append(out, op.Seq)
		}
		return out
	}
	page, err := st.HistoryPage("web", 5, 0)
	require.NoError(t, err)
	assert.Equal(t, []uint64{12, 11, 10, 9, 8}, seqs(page))
	assert.Equal(t, "op-12", page[0].ID)

	page, err = st.HistoryPage("web", 5, page[len(page)-1].Seq)
	require.NoError(t, err)
	assert.Equal(t, []uint64{7, 6, 5, 4, 3}, seqs(page))

	page, err = st.HistoryPage("web", 5, 3)
	require.NoError(t, err)
	assert.Equal(t, []uint64{2, 1}, seqs(page), "the last page is short")

	page, err = st.HistoryPage("web", 5, 1)
	require.NoError(t, err)
	assert.Empty(t, page, "nothing is older than the oldest")

	// An entry pruned between the listing of keys and the read of its value is left out.
	reads := 0
	err = st.WalkHistory("web", 0, 3, func(op *api.Operation) bool {
		if reads == 0 {
			_, _, _, _ = kv.Txn(consulapi.KVTxnOps{{Verb: consulapi.KVDelete, Key: fmt.Sprintf("%s%020d", historyPrefix, 11)}}, nil)
		}
		reads++
		return true
	})
	require.NoError(t, err)
	assert.Equal(t, 2, reads, "a walk reads at most as many entries as it is bounded to")
}

// TestUnchangedConvergeIsNotKept: a settings rollout that found every lane running what KV
// says already is dropped from the journal and never reaches the history; one that changed a
// lane, or failed, is kept.
func TestUnchangedConvergeIsNotKept(t *testing.T) {
	// A Nomad that knows no job: converge asks it which routes a lane has now.
	nomad := httptest.NewServer(http.NotFoundHandler())
	defer nomad.Close()
	tests := []struct {
		name          string
		keep          bool
		fail          bool
		wantState     string
		wantUnchanged bool
		wantKept      bool
	}{
		{name: "nothing to change", keep: true, wantState: api.StateSucceeded, wantUnchanged: true},
		{name: "a lane rolled out", wantState: api.StateSucceeded, wantKept: true},
		{name: "a rollout failed", keep: true, fail: true, wantState: api.StateFailed, wantKept: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kv := storetest.New()
			kvSlots(kv, false)
			lanes := &fakeLanes{versions: map[string]uint64{"a": 3, "b": 5}, keep: tc.keep}
			if tc.fail {
				lanes.fail = func(string) bool { return true }
			}
			e := testEngine(kv, lanes)
			var err error
			e.nomad, err = nomadapi.NewClient(&nomadapi.Config{Address: nomad.URL})
			require.NoError(t, err)
			op := &api.Operation{ID: "op-converge", Site: "web", Kind: api.KindSettings, Trigger: triggerConverge,
				State: api.StatePending, Phases: []api.Phase{{Name: api.PhaseRollout, State: api.PhasePending}}}
			require.NoError(t, e.store.CreateOperation(op))

			r := e.newRun(nil, context.Background(), op)
			r.historyLimit = 10
			r.execute(e.convergeOp(testSite(), []string{"production", "staging"}))

			seen := e.ops.get(op.ID)
			require.NotNil(t, seen)
			assert.Equal(t, tc.wantState, seen.State, seen.Error)
			assert.Equal(t, tc.wantUnchanged, seen.Unchanged, "what a client following the operation sees")
			journaled, err := e.store.RunningOperation("web")
			require.NoError(t, err)
			assert.Nil(t, journaled, "the journal is cleared either way")
			hist, err := e.store.HistoryPage("web", 10, 0)
			require.NoError(t, err)
			if tc.wantKept {
				require.Len(t, hist, 1)
				assert.Equal(t, op.ID, hist[0].ID)
			} else {
				assert.Empty(t, hist, "an operation that changed nothing is no history entry")
			}
		})
	}
}
