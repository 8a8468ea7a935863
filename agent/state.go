package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/api"
)

// maxTxnOps is Consul's limit of operations in one KV transaction.
const maxTxnOps = 64

// errConflict is a check-and-set that lost: someone changed the keys since they were read.
var errConflict = errors.New("consul kv changed concurrently")

// store keeps a site's state in Consul KV under the layout of DESIGN.md §4.
type store struct {
	kv     *consulapi.KV
	prefix string
}

func (s *store) siteKey(site string, parts ...string) string {
	return s.prefix + "/sites/" + site + "/" + strings.Join(parts, "/")
}

func (s *store) slotKey(site, slot string, parts ...string) string {
	return s.siteKey(site, append([]string{"slots", slot}, parts...)...)
}

// kvValue is a value with the index it was read at, for check-and-set.
type kvValue struct {
	Value string
	Index uint64
}

// slotState is one slot's binding and settings as stored in KV.
type slotState struct {
	Lane     kvValue
	Version  kvValue
	Settings map[string]kvValue
	Sticky   map[string]kvValue
}

// settings returns the slot's swappable and sticky values.
func (s *slotState) settings() slotSettings {
	return slotSettings{Settings: values(s.Settings), Sticky: values(s.Sticky)}
}

func (s *slotState) version() uint64 {
	v, _ := strconv.ParseUint(s.Version.Value, 10, 64)
	return v
}

func values(m map[string]kvValue) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v.Value
	}
	return out
}

// siteState is a site's slots as KV holds them.
type siteState struct {
	Slots map[string]*slotState
	// Index is the KV index of the read, for blocking on the next change.
	Index uint64
}

func (st *siteState) slot(name string) *slotState {
	s, ok := st.Slots[name]
	if !ok {
		s = &slotState{Settings: map[string]kvValue{}, Sticky: map[string]kvValue{}}
		st.Slots[name] = s
	}
	return s
}

// laneOf returns the slot that lane is bound to, or "".
func (st *siteState) slotOfLane(lane string) string {
	for name, s := range st.Slots {
		if s.Lane.Value == lane {
			return name
		}
	}
	return ""
}

// loadSlots reads every slot of a site. With waitIndex > 0 it blocks until the tree changes.
func (s *store) loadSlots(site string, q *consulapi.QueryOptions) (*siteState, error) {
	base := s.siteKey(site, "slots") + "/"
	pairs, meta, err := s.kv.List(base, q)
	if err != nil {
		return nil, fmt.Errorf("read slots of site %s: %w", site, err)
	}
	st := &siteState{Slots: map[string]*slotState{}, Index: meta.LastIndex}
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, base)
		parts := strings.SplitN(rest, "/", 3)
		if len(parts) < 2 || parts[0] == "" {
			continue
		}
		sl := st.slot(parts[0])
		v := kvValue{Value: string(p.Value), Index: p.ModifyIndex}
		switch {
		case len(parts) == 2 && parts[1] == "lane":
			sl.Lane = v
		case len(parts) == 2 && parts[1] == "version":
			sl.Version = v
		case len(parts) == 3 && parts[1] == "settings" && parts[2] != "":
			sl.Settings[parts[2]] = v
		case len(parts) == 3 && parts[1] == "sticky" && parts[2] != "":
			sl.Sticky[parts[2]] = v
		}
	}
	return st, nil
}

// txn runs KV operations atomically. It returns errConflict when a check-and-set lost.
func (s *store) txn(ops consulapi.KVTxnOps) (*consulapi.KVTxnResponse, error) {
	if len(ops) == 0 {
		return &consulapi.KVTxnResponse{}, nil
	}
	if len(ops) > maxTxnOps {
		return nil, fmt.Errorf("a change of %d keys is more than one consul transaction holds (%d): keep fewer settings per slot", len(ops), maxTxnOps)
	}
	ok, resp, _, err := s.kv.Txn(ops, nil)
	if err != nil {
		return nil, fmt.Errorf("consul kv transaction: %w", err)
	}
	if !ok {
		msgs := make([]string, 0, len(resp.Errors))
		for _, e := range resp.Errors {
			msgs = append(msgs, e.What)
		}
		return nil, fmt.Errorf("%w: %s", errConflict, strings.Join(msgs, "; "))
	}
	return resp, nil
}

// casOp writes key only if it still has index (0: only if absent).
func casOp(key, value string, index uint64) *consulapi.KVTxnOp {
	return &consulapi.KVTxnOp{Verb: consulapi.KVCAS, Key: key, Value: []byte(value), Index: index}
}

func deleteCASOp(key string, index uint64) *consulapi.KVTxnOp {
	return &consulapi.KVTxnOp{Verb: consulapi.KVDeleteCAS, Key: key, Index: index}
}

// putOp writes v over old: a CAS against the index old was read at.
func putOp(key, value string, old kvValue) *consulapi.KVTxnOp {
	return casOp(key, value, old.Index)
}

// bindOps binds slot to lane at version.
func (s *store) bindOps(site, slot string, old *slotState, lane string, version uint64) consulapi.KVTxnOps {
	var ops consulapi.KVTxnOps
	if old.Lane.Value != lane || old.Lane.Index == 0 {
		ops = append(ops, putOp(s.slotKey(site, slot, "lane"), lane, old.Lane))
	}
	v := strconv.FormatUint(version, 10)
	if old.Version.Value != v || old.Version.Index == 0 {
		ops = append(ops, putOp(s.slotKey(site, slot, "version"), v, old.Version))
	}
	return ops
}

// settingsOps turns the swappable settings of slot from old into want.
func (s *store) settingsOps(site, slot, kind string, old map[string]kvValue, want map[string]string) consulapi.KVTxnOps {
	var ops consulapi.KVTxnOps
	for _, k := range sortedKeys(want) {
		o, had := old[k]
		if had && o.Value == want[k] {
			continue
		}
		ops = append(ops, casOp(s.slotKey(site, slot, kind, k), want[k], o.Index))
	}
	for _, k := range sortedKeys(values(old)) {
		if _, keep := want[k]; !keep {
			ops = append(ops, deleteCASOp(s.slotKey(site, slot, kind, k), old[k].Index))
		}
	}
	return ops
}

// seedOps creates the declared settings that KV does not have yet: HCL seeds, KV rules.
func (s *store) seedOps(site, slot, kind string, old map[string]kvValue, declared map[string]string) consulapi.KVTxnOps {
	var ops consulapi.KVTxnOps
	for _, k := range sortedKeys(declared) {
		if _, had := old[k]; !had {
			ops = append(ops, casOp(s.slotKey(site, slot, kind, k), declared[k], 0))
		}
	}
	return ops
}

// The running operation of a site: created only when absent, so two cannot run at once.

func (s *store) operationKey(site string) string { return s.siteKey(site, "operation") }

// createOperation journals op as the site's running operation; errBusy when one exists.
func (s *store) createOperation(op *api.Operation) error {
	b, err := json.Marshal(op)
	if err != nil {
		return err
	}
	resp, err := s.txn(consulapi.KVTxnOps{casOp(s.operationKey(op.Site), string(b), 0)})
	if errors.Is(err, errConflict) {
		return errBusy
	}
	if err != nil {
		return err
	}
	op.Index = resp.Results[0].ModifyIndex
	op.Seq = op.Index
	return s.updateOperation(op)
}

// updateOperation journals a new state of op; op.Index is the index it was last written at.
func (s *store) updateOperation(op *api.Operation) error {
	b, err := json.Marshal(op)
	if err != nil {
		return err
	}
	resp, err := s.txn(consulapi.KVTxnOps{casOp(s.operationKey(op.Site), string(b), op.Index)})
	if err != nil {
		return fmt.Errorf("journal operation %s: %w", op.ID, err)
	}
	op.Index = resultIndex(resp, s.operationKey(op.Site), op.Index)
	return nil
}

// resultIndex is the index a transaction wrote key at.
func resultIndex(resp *consulapi.KVTxnResponse, key string, old uint64) uint64 {
	for _, r := range resp.Results {
		if r != nil && r.Key == key {
			return r.ModifyIndex
		}
	}
	return old
}

// finishOperation moves op into the site's history and clears the running operation.
func (s *store) finishOperation(op *api.Operation) error {
	b, err := json.Marshal(op)
	if err != nil {
		return err
	}
	ops := consulapi.KVTxnOps{
		casOp(s.historyKey(op.Site, op.Seq), string(b), 0),
		deleteCASOp(s.operationKey(op.Site), op.Index),
	}
	resp, err := s.txn(ops)
	if err != nil {
		return fmt.Errorf("move operation %s to history: %w", op.ID, err)
	}
	op.Index = resultIndex(resp, s.historyKey(op.Site, op.Seq), op.Index)
	return nil
}

func (s *store) historyKey(site string, seq uint64) string {
	return s.siteKey(site, "history", fmt.Sprintf("%020d", seq))
}

// runningOperation reads the site's running operation, or nil.
func (s *store) runningOperation(site string) (*api.Operation, error) {
	p, _, err := s.kv.Get(s.operationKey(site), nil)
	if err != nil {
		return nil, fmt.Errorf("read operation of site %s: %w", site, err)
	}
	if p == nil {
		return nil, nil
	}
	var op api.Operation
	if err := json.Unmarshal(p.Value, &op); err != nil {
		return nil, fmt.Errorf("decode operation of site %s: %w", site, err)
	}
	op.Index = p.ModifyIndex
	return &op, nil
}

// history reads a site's finished operations, newest first.
func (s *store) history(site string) ([]api.Operation, error) {
	pairs, _, err := s.kv.List(s.siteKey(site, "history")+"/", nil)
	if err != nil {
		return nil, fmt.Errorf("read history of site %s: %w", site, err)
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].Key > pairs[j].Key })
	ops := make([]api.Operation, 0, len(pairs))
	for _, p := range pairs {
		var op api.Operation
		if err := json.Unmarshal(p.Value, &op); err != nil {
			continue
		}
		op.Index = p.ModifyIndex
		ops = append(ops, op)
	}
	return ops, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
