package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// The running operation of a site: created only when absent, so two cannot run at once.

func (s *Store) OperationKey(site string) string { return s.SiteKey(site, "operation") }

// A journal belongs to a site, or to a swap group for a group operation (Operation.Group set,
// Site empty): its running operation and its history live under the root of either.

// GroupKey is a key under a swap group's folder: <prefix>/groups/<group>/<parts>.
func (s *Store) GroupKey(group string, parts ...string) string {
	return s.Prefix + "/groups/" + group + "/" + strings.Join(parts, "/")
}

// GroupOperationKey is where a group's running group operation is journaled.
func (s *Store) GroupOperationKey(group string) string { return s.GroupKey(group, "operation") }

// root is the folder of op's journal: its group's for a group operation, else its site's.
func (s *Store) root(op *api.Operation) string {
	if op.Site == "" && op.Group != "" {
		return s.GroupKey(op.Group)
	}
	return s.SiteKey(op.Site)
}

// JournalKey is where op is journaled while it runs.
func (s *Store) JournalKey(op *api.Operation) string { return s.root(op) + "operation" }

// CreateOperation journals op as the site's running operation, in one write; ErrBusy when
// one exists. Its Seq (the history key) is the index it was created at.
func (s *Store) CreateOperation(op *api.Operation) error {
	return s.CreateOperations(op)
}

// CreateOperations journals every op as the running operation of its site or group in one
// transaction: all of them, or none (ErrBusy when any journal holds an operation already).
// A group operation and its members' parts start so.
func (s *Store) CreateOperations(ops ...*api.Operation) error {
	txn := make(consulapi.KVTxnOps, 0, len(ops))
	for _, op := range ops {
		b, err := json.Marshal(op)
		if err != nil {
			return err
		}
		txn = append(txn, CASOp(s.JournalKey(op), string(b), 0))
	}
	resp, err := s.Txn(txn)
	if errors.Is(err, ErrConflict) {
		return ErrBusy
	}
	if err != nil {
		return err
	}
	for _, op := range ops {
		op.Index = ResultIndex(resp, s.JournalKey(op), 0)
		op.Seq = op.Index
	}
	return nil
}

// UpdateOperation journals a new state of op; op.Index is the index it was last written at.
func (s *Store) UpdateOperation(op *api.Operation) error {
	journal, err := s.JournalOp(op)
	if err != nil {
		return err
	}
	resp, err := s.Txn(consulapi.KVTxnOps{journal})
	if err != nil {
		return fmt.Errorf("journal operation %s: %w", op.ID, err)
	}
	op.Index = ResultIndex(resp, s.JournalKey(op), op.Index)
	return nil
}

// JournalOp is the KV operation that journals op, for transactions that do more.
func (s *Store) JournalOp(op *api.Operation) (*consulapi.KVTxnOp, error) {
	b, err := json.Marshal(op)
	if err != nil {
		return nil, err
	}
	return CASOp(s.JournalKey(op), string(b), op.Index), nil
}

// ResultIndex is the index a transaction wrote key at.
func ResultIndex(resp *consulapi.KVTxnResponse, key string, old uint64) uint64 {
	for _, r := range resp.Results {
		if r != nil && r.Key == key {
			return r.ModifyIndex
		}
	}
	return old
}

// FinishOperation ends op's journal entry: it moves op into the site's history, and in the
// same transaction deletes the oldest entries so that at most limit remain (see
// HistoryKeeps). What does not fit into that transaction is deleted by the ones after it;
// should one of those fail, the next finished operation deletes the rest.
//
// An operation that succeeded having changed nothing (op.Unchanged) is dropped instead: it
// would only push an operation that did something out of the history.
func (s *Store) FinishOperation(op *api.Operation, limit int) error {
	if op.Unchanged && op.State == api.StateSucceeded {
		if _, err := s.Txn(consulapi.KVTxnOps{DeleteCASOp(s.JournalKey(op), op.Index)}); err != nil {
			return fmt.Errorf("drop operation %s, which changed nothing: %w", op.ID, err)
		}
		return nil
	}
	b, err := json.Marshal(op)
	if err != nil {
		return err
	}
	refs, err := s.historyRefs(s.root(op))
	if err != nil {
		return err
	}
	key := s.historyKey(s.root(op), op.Seq)
	ops := consulapi.KVTxnOps{
		CASOp(key, string(b), 0),
		DeleteCASOp(s.JournalKey(op), op.Index),
	}
	var drop []string
	for _, r := range Prunable(refs, key, limit) {
		drop = append(drop, r.Key)
	}
	n := min(len(drop), MaxTxnOps-1-len(ops)) // one more for the leader check
	for _, k := range drop[:n] {
		ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: k})
	}
	resp, err := s.Txn(ops)
	if err != nil {
		return fmt.Errorf("move operation %s to history: %w", op.ID, err)
	}
	op.Index = ResultIndex(resp, key, op.Index)
	if err := s.deleteKeys(drop[n:]); err != nil && s.Logger != nil {
		s.Logger.Warn("cannot prune the history yet; the next finished operation tries again", "site", op.Site, "error", err)
	}
	return nil
}

// Prunable is what of a history (refs, oldest first) must go so that, once key is added, at
// most limit entries remain.
func Prunable(refs []HistoryRef, key string, limit int) []HistoryRef {
	limit = HistoryKeeps(limit)
	kept := refs[:0:0]
	for _, r := range refs {
		if r.Key != key {
			kept = append(kept, r)
		}
	}
	return kept[:max(len(kept)+1-limit, 0)]
}

// HistoryKeeps is how many finished operations a site whose history_limit is limit keeps: the
// default for a site declared in code, without the defaults config.Load fills in.
func HistoryKeeps(limit int) int {
	if limit < 1 {
		return config.DefaultHistoryLimit
	}
	return limit
}

// deleteKeys deletes keys in transactions small enough for Consul.
func (s *Store) deleteKeys(keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), MaxTxnOps-1) // one more for the leader check
		ops := make(consulapi.KVTxnOps, 0, n)
		for _, k := range keys[:n] {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: k})
		}
		if _, err := s.Txn(ops); err != nil {
			return fmt.Errorf("delete %d keys: %w", len(keys), err)
		}
		keys = keys[n:]
	}
	return nil
}

func (s *Store) HistoryKey(site string, seq uint64) string {
	return s.historyKey(s.SiteKey(site), seq)
}

// HistoryKeyOf is where op is kept once it has finished.
func (s *Store) HistoryKeyOf(op *api.Operation) string { return s.historyKey(s.root(op), op.Seq) }

func (s *Store) historyKey(root string, seq uint64) string {
	return root + "history/" + fmt.Sprintf("%020d", seq)
}

// HistoryRef is one entry of a site's history, by key: its value is read only when needed.
type HistoryRef struct {
	Key string
	Seq uint64
}

// HistoryRefs lists the entries of a site's history, oldest first, from their keys alone.
// A key whose name is not a sequence number (written by hand) is no entry.
func (s *Store) HistoryRefs(site string) ([]HistoryRef, error) {
	return s.historyRefs(s.SiteKey(site))
}

func (s *Store) historyRefs(root string) ([]HistoryRef, error) {
	q, cancel := Bounded(nil)
	defer cancel()
	prefix := root + "history/"
	keys, _, err := s.KV.Keys(prefix, "", q)
	if err != nil {
		return nil, fmt.Errorf("list the history in %s: %w", root, err)
	}
	refs := make([]HistoryRef, 0, len(keys))
	for _, k := range keys {
		seq, err := strconv.ParseUint(strings.TrimPrefix(k, prefix), 10, 64)
		if err != nil {
			continue
		}
		refs = append(refs, HistoryRef{Key: k, Seq: seq})
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].Seq < refs[j].Seq })
	return refs, nil
}

// RunningOperation reads the site's running operation, or nil.
func (s *Store) RunningOperation(site string) (*api.Operation, error) {
	return s.runningAt(s.OperationKey(site))
}

// Journaled reads what op's journal (its site's or its group's) holds now, or nil.
func (s *Store) Journaled(op *api.Operation) (*api.Operation, error) {
	return s.runningAt(s.JournalKey(op))
}

// RunningGroupOperation reads the group's running group operation, or nil.
func (s *Store) RunningGroupOperation(group string) (*api.Operation, error) {
	return s.runningAt(s.GroupOperationKey(group))
}

func (s *Store) runningAt(key string) (*api.Operation, error) {
	q, cancel := Bounded(nil)
	defer cancel()
	p, _, err := s.KV.Get(key, q)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if p == nil {
		return nil, nil
	}
	return decodeOperation(p)
}

// MoveToHistory moves an operation that ended into history (see finishOperation), from
// whatever index the journal holds it at now; done already when the journal holds another
// operation or none.
func (s *Store) MoveToHistory(op *api.Operation, limit int) error {
	cur, err := s.runningAt(s.JournalKey(op))
	if err != nil {
		return err
	}
	if cur == nil || cur.ID != op.ID {
		return nil
	}
	op.Index = cur.Index
	return s.FinishOperation(op, limit)
}

// PendingOperation reads the site's journaled operation. One that already ended but whose
// move into history failed is moved now: an operation that ended is never run again.
func (s *Store) PendingOperation(site string, limit int) (*api.Operation, error) {
	op, err := s.RunningOperation(site)
	if err != nil || op == nil || !api.Terminal(op.State) {
		return op, err
	}
	if err := s.FinishOperation(op, limit); err != nil {
		return nil, err
	}
	return nil, nil
}

// HistoryPage reads at most limit of a site's finished operations, newest first: those older
// than before (its Seq), or the newest when before is 0.
func (s *Store) HistoryPage(site string, limit int, before uint64) ([]api.Operation, error) {
	return s.historyPage(s.SiteKey(site), limit, before)
}

// GroupHistoryPage is HistoryPage of a group's finished group operations.
func (s *Store) GroupHistoryPage(group string, limit int, before uint64) ([]api.Operation, error) {
	return s.historyPage(s.GroupKey(group), limit, before)
}

func (s *Store) historyPage(root string, limit int, before uint64) ([]api.Operation, error) {
	ops := []api.Operation{}
	err := s.walkHistory(root, before, limit, func(op *api.Operation) bool {
		ops = append(ops, *op)
		return true
	})
	return ops, err
}

// WalkHistory calls fn with a site's finished operations, newest first, from the one before
// before (0: the newest), until fn returns false or bound entries were read. It lists the keys
// once and reads one value at a time, so a walk that stops early reads little.
func (s *Store) WalkHistory(site string, before uint64, bound int, fn func(*api.Operation) bool) error {
	return s.walkHistory(s.SiteKey(site), before, bound, fn)
}

// WalkGroupHistory is WalkHistory of a group's finished group operations.
func (s *Store) WalkGroupHistory(group string, before uint64, bound int, fn func(*api.Operation) bool) error {
	return s.walkHistory(s.GroupKey(group), before, bound, fn)
}

func (s *Store) walkHistory(root string, before uint64, bound int, fn func(*api.Operation) bool) error {
	refs, err := s.historyRefs(root)
	if err != nil {
		return err
	}
	read := 0
	for i := len(refs) - 1; i >= 0 && read < bound; i-- {
		if before > 0 && refs[i].Seq >= before {
			continue
		}
		read++
		op, err := s.HistoryEntry(refs[i])
		if err != nil {
			return err
		}
		if op != nil && !fn(op) {
			return nil
		}
	}
	return nil
}

// HistoryEntry reads one entry of a history; nil when it was pruned since it was listed, or
// holds no operation (written by hand).
func (s *Store) HistoryEntry(ref HistoryRef) (*api.Operation, error) {
	q, cancel := Bounded(nil)
	defer cancel()
	p, _, err := s.KV.Get(ref.Key, q)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ref.Key, err)
	}
	if p == nil {
		return nil, nil
	}
	var op api.Operation
	if err := json.Unmarshal(p.Value, &op); err != nil {
		return nil, nil
	}
	op.Index = p.ModifyIndex
	if op.Seq == 0 {
		op.Seq = ref.Seq
	}
	return &op, nil
}

// Looking an operation up by ID costs a bounded number of reads, whatever the number of sites
// and the length of their histories: the running operations of all sites in one transaction
// per MaxTxnOps sites, and the histories likewise when the caller's index of them is stale.

// RunningOperations reads the running operation of each of sites that has one.
func (s *Store) RunningOperations(ctx context.Context, sites []string) (map[string]*api.Operation, error) {
	out := map[string]*api.Operation{}
	var bad error
	err := s.readTrees(ctx, sites, "operation", func(site string, p *consulapi.KVPair) {
		if p.Key != s.OperationKey(site) {
			return
		}
		op, err := decodeOperation(p)
		if err != nil {
			bad = err
			return
		}
		out[site] = op
	})
	if err == nil {
		err = bad
	}
	if err != nil {
		return nil, fmt.Errorf("read the operations of %d sites: %w", len(sites), err)
	}
	return out, nil
}

// HistoryIndex reads the histories of sites and says where each operation in them is kept:
// its ID → its history key.
func (s *Store) HistoryIndex(ctx context.Context, sites []string) (map[string]string, error) {
	out := map[string]string{}
	err := s.readTrees(ctx, sites, "history/", func(_ string, p *consulapi.KVPair) {
		var op struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(p.Value, &op) == nil && op.ID != "" {
			out[op.ID] = p.Key
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read the histories of %d sites: %w", len(sites), err)
	}
	return out, nil
}

// OperationAt reads the operation kept at a history key, nil when there is none.
func (s *Store) OperationAt(key string) (*api.Operation, error) {
	ref := HistoryRef{Key: key}
	if i := strings.LastIndex(key, "/"); i >= 0 {
		ref.Seq, _ = strconv.ParseUint(key[i+1:], 10, 64)
	}
	return s.HistoryEntry(ref)
}

// decodeOperation reads an operation from its KV pair.
func decodeOperation(p *consulapi.KVPair) (*api.Operation, error) {
	var op api.Operation
	if err := json.Unmarshal(p.Value, &op); err != nil {
		return nil, fmt.Errorf("decode %s: %w", p.Key, err)
	}
	op.Index = p.ModifyIndex
	if op.Seq == 0 {
		op.Seq = p.CreateIndex
	}
	return &op, nil
}
