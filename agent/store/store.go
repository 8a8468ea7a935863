// Package store keeps each site's state in Consul KV under the layout of DESIGN.md §4: slot
// bindings, settings and scale documents, the journal of the running operation and the history.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// MaxTxnOps is Consul's limit of operations in one KV transaction.
const MaxTxnOps = 64

// The two kinds of settings a slot has, and the KV key of each one's document.
const (
	KindSwappable = "settings"
	KindSticky    = "sticky"
	// KeyScale holds a slot's instance counts per task group, a JSON object such as {"app": 3}.
	KeyScale = "scale"
	// KeySeeded holds a slot's seed record (SeedRecord), such as
	// {"settings": ["FEATURE"], "sticky": ["DATABASE_URL"]}: its declared settings that were
	// seeded once, and are not seeded again.
	KeySeeded = "seeded"
)

// KVAPI is what the store needs of Consul's KV: a seam for unit tests of the swap.
type KVAPI interface {
	List(prefix string, q *consulapi.QueryOptions) (consulapi.KVPairs, *consulapi.QueryMeta, error)
	Keys(prefix, separator string, q *consulapi.QueryOptions) ([]string, *consulapi.QueryMeta, error)
	Get(key string, q *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error)
	Txn(ops consulapi.KVTxnOps, q *consulapi.QueryOptions) (bool, *consulapi.KVTxnResponse, *consulapi.QueryMeta, error)
}

var _ KVAPI = (*consulapi.KV)(nil)

// Store keeps a site's state in Consul KV under the layout of DESIGN.md §4. A slot's settings
// are one JSON document per kind (…/slots/<slot>/settings and …/sticky), so exchanging any
// number of them is two operations of one transaction.
//
// While this daemon leads, every transaction also checks that the leader lock is still held by
// this daemon's session, so a deposed leader's late write fails instead of landing.
type Store struct {
	KV      KVAPI
	Prefix  string
	session atomic.Value // string: the leader session to check, "" for none
	// OnDeposed, if set, hears of a transaction refused because session no longer holds the lock.
	OnDeposed func(session string)
	// Logger, if set, hears of what the store leaves for later (history it could not prune).
	Logger hclog.Logger
	// writes counts, per site, the transactions on its keys that returned: a read that
	// starts after it saw n of them return sees what the first n wrote.
	writesMu sync.Mutex
	writes   map[string]uint64
}

// Fence makes every later transaction check that session holds the leader lock ("" stops it).
func (s *Store) Fence(session string) { s.session.Store(session) }

// Unfence makes every later transaction fail its check once session no longer leads, unless a
// later leadership fenced its own session already.
func (s *Store) Unfence(session string) { s.session.CompareAndSwap(session, lostSession) }

// lostSession fences a daemon that does not lead: no session holds the lock under that name,
// so every transaction fails its check.
const lostSession = "00000000-0000-0000-0000-000000000000"

// Writes counts the transactions of this store on a site's keys that returned, whatever their
// outcome.
func (s *Store) Writes(site string) uint64 {
	s.writesMu.Lock()
	defer s.writesMu.Unlock()
	return s.writes[site]
}

// wrote counts a transaction that returned on the sites whose keys it names.
func (s *Store) wrote(ops consulapi.KVTxnOps) {
	s.writesMu.Lock()
	defer s.writesMu.Unlock()
	if s.writes == nil {
		s.writes = map[string]uint64{}
	}
	counted := map[string]bool{}
	for _, op := range ops {
		site, _, ok := strings.Cut(strings.TrimPrefix(op.Key, s.SitesPrefix()), "/")
		if ok && strings.HasPrefix(op.Key, s.SitesPrefix()) && !counted[site] {
			counted[site] = true
			s.writes[site]++
		}
	}
}

// FencedBy is the session every transaction checks now ("" for none).
func (s *Store) FencedBy() string {
	session, _ := s.session.Load().(string)
	return session
}

func (s *Store) LeaderKey() string { return s.Prefix + "/leader" }

// Bounded gives q (or new options) a deadline of query.CallTimeout unless it has a context already.
func Bounded(q *consulapi.QueryOptions) (*consulapi.QueryOptions, context.CancelFunc) {
	if q == nil {
		q = &consulapi.QueryOptions{}
	}
	if q.Context() != context.Background() {
		return q, func() {}
	}
	ctx, cancel := context.WithTimeout(context.Background(), query.CallTimeout)
	return q.WithContext(ctx), cancel
}

func (s *Store) SiteKey(site string, parts ...string) string {
	return s.SitesPrefix() + site + "/" + strings.Join(parts, "/")
}

// SitesPrefix is the KV folder of all sites.
func (s *Store) SitesPrefix() string { return s.Prefix + "/sites/" }

// SlotSums reads the slots of these sites, as many sites to a transaction as Consul takes, and
// sums each site's up: its keys and their modify indexes, so that any key of a site's slots
// written or deleted changes that site's sum, and nothing else (its operation and history) does.
func (s *Store) SlotSums(ctx context.Context, sites []string) (map[string]string, error) {
	sums := make(map[string]string, len(sites))
	for _, site := range sites {
		sums[site] = ""
	}
	err := s.readTrees(ctx, sites, "slots/", func(site string, p *consulapi.KVPair) {
		sums[site] += p.Key + "@" + strconv.FormatUint(p.ModifyIndex, 10) + ";"
	})
	if err != nil {
		return nil, fmt.Errorf("read the slots of %d sites: %w", len(sites), err)
	}
	return sums, nil
}

// readTrees reads the keys under <site>/<sub> of every site, as many sites to a read-only
// transaction as Consul takes, and calls fn with each pair and the site it belongs to.
func (s *Store) readTrees(ctx context.Context, sites []string, sub string, fn func(site string, p *consulapi.KVPair)) error {
	for batch := range slices.Chunk(sites, MaxTxnOps) {
		ops := make(consulapi.KVTxnOps, 0, len(batch))
		for _, site := range batch {
			ops = append(ops, &consulapi.KVTxnOp{Verb: consulapi.KVGetTree, Key: s.SiteKey(site, sub)})
		}
		q, cancel := Bounded((&consulapi.QueryOptions{}).WithContext(ctx))
		ok, resp, _, err := s.KV.Txn(ops, q)
		cancel()
		if err == nil && !ok {
			err = fmt.Errorf("%d errors, the first: %s", len(resp.Errors), resp.Errors[0].What)
		}
		if err != nil {
			return err
		}
		for _, p := range resp.Results {
			site, _, _ := strings.Cut(strings.TrimPrefix(p.Key, s.SitesPrefix()), "/")
			fn(site, p)
		}
	}
	return nil
}

func (s *Store) SlotKey(site, slot string, parts ...string) string {
	return s.SiteKey(site, append([]string{"slots", slot}, parts...)...)
}

// Value is a value with the index it was read at, for check-and-set (0: absent).
type Value struct {
	Value string
	Index uint64
}

// SettingsDoc is one kind of a slot's settings: a JSON object of strings in one KV key.
type SettingsDoc struct {
	Values map[string]string
	Index  uint64
	// Legacy holds the one-key-per-setting entries of the layout before documents, still to
	// be folded into the document (see migrateOps).
	Legacy map[string]Value
}

// SlotState is one slot's binding and settings as stored in KV.
type SlotState struct {
	// Lane is the lane's short name (a, b, …); KV holds the lane's Nomad job ID (LaneKV).
	Lane     Value
	LaneKV   string
	Version  Value
	Settings SettingsDoc
	Sticky   SettingsDoc
	// Scale is the slot's sticky instance counts per task group (nil Values: none stored yet).
	Scale ScaleDoc
	// Seeded is the slot's seed record.
	Seeded SeedRecord
}

// ScaleDoc is a slot's scale document: task group → instance count.
type ScaleDoc struct {
	Values map[string]int
	Index  uint64
}

func NewSlotState() *SlotState {
	return &SlotState{
		Settings: SettingsDoc{Values: map[string]string{}, Legacy: map[string]Value{}},
		Sticky:   SettingsDoc{Values: map[string]string{}, Legacy: map[string]Value{}},
	}
}

// settings returns the slot's swappable and sticky values and the scale KV stores for it
// (resolveScale gives the scale the slot's declaration asks for).
func (s *SlotState) Values() SlotSettings {
	return SlotSettings{Settings: maps.Clone(s.Settings.Values), Sticky: maps.Clone(s.Sticky.Values), Scale: maps.Clone(s.Scale.Values)}
}

func (s *SlotState) Doc(kind string) *SettingsDoc {
	if kind == KindSticky {
		return &s.Sticky
	}
	return &s.Settings
}

// BoundTo reports whether KV binds the slot to version already (bindOps writes no version).
func (s *SlotState) BoundTo(version uint64) bool {
	return s.Version.Value == strconv.FormatUint(version, 10)
}

func (s *SlotState) BoundVersion() uint64 {
	v, _ := strconv.ParseUint(s.Version.Value, 10, 64)
	return v
}

// SiteState is a site's slots as KV holds them.
type SiteState struct {
	Slots map[string]*SlotState
	// Index is the KV index of the read, for blocking on the next change.
	Index uint64
}

func (st *SiteState) Slot(name string) *SlotState {
	s, ok := st.Slots[name]
	if !ok {
		s = NewSlotState()
		st.Slots[name] = s
	}
	return s
}

// LoadSlots reads every slot of a site. With a WaitIndex in q it blocks until the tree changes.
// A settings document that is not a JSON object of strings (a bad edit in the Consul UI) is an
// error that names the key, so nothing acts on half-understood settings.
func (s *Store) LoadSlots(site string, q *consulapi.QueryOptions) (*SiteState, error) {
	base := s.SiteKey(site, "slots") + "/"
	if q == nil || q.WaitIndex == 0 {
		var cancel context.CancelFunc
		q, cancel = Bounded(q)
		defer cancel()
	}
	pairs, meta, err := s.KV.List(base, q)
	if err != nil {
		return nil, fmt.Errorf("read slots of site %s: %w", site, err)
	}
	st := &SiteState{Slots: map[string]*SlotState{}, Index: meta.LastIndex}
	var bad []error
	for _, p := range pairs {
		parts := strings.SplitN(strings.TrimPrefix(p.Key, base), "/", 3)
		if len(parts) < 2 || parts[0] == "" {
			continue
		}
		sl := st.Slot(parts[0])
		v := Value{Value: string(p.Value), Index: p.ModifyIndex}
		switch {
		case len(parts) == 2 && parts[1] == "lane":
			sl.Lane, sl.LaneKV = Value{Value: LaneOf(site, v.Value), Index: v.Index}, v.Value
		case len(parts) == 2 && parts[1] == "version":
			sl.Version = v
		case len(parts) == 2 && (parts[1] == KindSwappable || parts[1] == KindSticky):
			values, err := DecodeSettings(parts[1], p.Value)
			if err != nil {
				bad = append(bad, fmt.Errorf("%s: %w: fix or delete it in Consul KV", p.Key, err))
				continue
			}
			d := sl.Doc(parts[1])
			d.Values, d.Index = values, p.ModifyIndex
		case len(parts) == 2 && parts[1] == KeyScale:
			counts, err := DecodeScale(p.Value)
			if err != nil {
				bad = append(bad, fmt.Errorf("%s: %w: fix or delete it in Consul KV", p.Key, err))
				continue
			}
			sl.Scale = ScaleDoc{Values: counts, Index: p.ModifyIndex}
		case len(parts) == 2 && parts[1] == KeySeeded:
			keys, err := decodeSeeded(p.Value)
			if err != nil {
				bad = append(bad, fmt.Errorf("%s: %w: fix or delete it in Consul KV", p.Key, err))
				continue
			}
			sl.Seeded = SeedRecord{Keys: keys, Index: p.ModifyIndex}
		case len(parts) == 3 && (parts[1] == KindSwappable || parts[1] == KindSticky) && parts[2] != "":
			sl.Doc(parts[1]).Legacy[parts[2]] = v
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("settings of site %s: %w", site, errors.Join(bad...))
	}
	return st, nil
}

// DecodeSettings reads a settings document of kind: a JSON object whose values are strings,
// whose keys are environment variable names outside slotd's reserved SLOTD_ prefix, within
// the limits of config.CheckSettings.
func DecodeSettings(kind string, b []byte) (map[string]string, error) {
	values := map[string]string{}
	if strings.TrimSpace(string(b)) == "" {
		return values, nil
	}
	if err := json.Unmarshal(b, &values); err != nil {
		return nil, fmt.Errorf(`not a JSON object of strings such as {"KEY": "value"} (%v)`, err)
	}
	for k := range values {
		if err := CheckSettingKey(k); err != nil {
			return nil, err
		}
	}
	if err := config.CheckSettings(kind, values); err != nil {
		return nil, err
	}
	return values, nil
}

// DecodeScale reads a scale document: a JSON object of whole counts from 0 to config.MaxScale.
func DecodeScale(b []byte) (map[string]int, error) {
	counts := map[string]int{}
	if strings.TrimSpace(string(b)) == "" {
		return nil, nil
	}
	if err := json.Unmarshal(b, &counts); err != nil {
		return nil, fmt.Errorf(`not a JSON object of task group counts such as {"app": 3} (%v)`, err)
	}
	for g, n := range counts {
		if err := CheckCount(g, n); err != nil {
			return nil, err
		}
	}
	return counts, nil
}

// CheckCount checks one task group's count, as KV and the API take it.
func CheckCount(group string, n int) error {
	if strings.TrimSpace(group) == "" {
		return errors.New("a task group name is empty")
	}
	if n < 0 || n > config.MaxScale {
		return fmt.Errorf("count %d of task group %q is outside 0 to %d", n, group, config.MaxScale)
	}
	return nil
}

// EncodeScale writes a scale document, one group a line, for the Consul UI.
func EncodeScale(counts map[string]int) string {
	if counts == nil {
		counts = map[string]int{}
	}
	b, _ := json.MarshalIndent(counts, "", "  ")
	return string(b)
}

// ScaleOps turns a slot's scale document from old into want: one operation, or none when equal.
func (s *Store) ScaleOps(site, slot string, old ScaleDoc, want map[string]int) consulapi.KVTxnOps {
	if old.Index != 0 && maps.Equal(old.Values, want) {
		return nil
	}
	return consulapi.KVTxnOps{CASOp(s.SlotKey(site, slot, KeyScale), EncodeScale(want), old.Index)}
}

// Txn runs KV operations atomically. It returns ErrConflict when a check-and-set lost.
func (s *Store) Txn(ops consulapi.KVTxnOps) (*consulapi.KVTxnResponse, error) {
	if len(ops) == 0 {
		return &consulapi.KVTxnResponse{}, nil
	}
	if session, _ := s.session.Load().(string); session != "" {
		ops = append(consulapi.KVTxnOps{{Verb: consulapi.KVCheckSession, Key: s.LeaderKey(), Session: session}}, ops...)
	}
	if len(ops) > MaxTxnOps {
		return nil, fmt.Errorf("a change of %d keys is more than one consul transaction holds (%d)", len(ops), MaxTxnOps)
	}
	q, cancel := Bounded(nil)
	defer cancel()
	ok, resp, _, err := s.KV.Txn(ops, q)
	s.wrote(ops)
	if err != nil {
		return nil, fmt.Errorf("consul kv transaction: %w", err)
	}
	if session, _ := s.session.Load().(string); !ok && session != "" && len(resp.Errors) > 0 && resp.Errors[0].OpIndex == 0 {
		// The leader check failed: this daemon no longer holds the lock, whatever its lock
		// monitor has seen so far.
		if s.OnDeposed != nil {
			s.OnDeposed(session)
		}
		return nil, ErrDeposed
	}
	if !ok {
		msgs := make([]string, 0, len(resp.Errors))
		for _, e := range resp.Errors {
			msgs = append(msgs, e.What)
		}
		return nil, fmt.Errorf("%w: %s", ErrConflict, strings.Join(msgs, "; "))
	}
	return resp, nil
}

// CASOp writes key only if it still has index (0: only if absent).
func CASOp(key, value string, index uint64) *consulapi.KVTxnOp {
	return &consulapi.KVTxnOp{Verb: consulapi.KVCAS, Key: key, Value: []byte(value), Index: index}
}

func DeleteCASOp(key string, index uint64) *consulapi.KVTxnOp {
	return &consulapi.KVTxnOp{Verb: consulapi.KVDeleteCAS, Key: key, Index: index}
}

// BindOps binds slot to lane at version.
func (s *Store) BindOps(site, slot string, old *SlotState, lane string, version uint64) consulapi.KVTxnOps {
	var ops consulapi.KVTxnOps
	if old.LaneKV != jobspec.JobID(site, lane) || old.Lane.Index == 0 {
		ops = append(ops, CASOp(s.SlotKey(site, slot, "lane"), jobspec.JobID(site, lane), old.Lane.Index))
	}
	v := strconv.FormatUint(version, 10)
	if old.Version.Value != v || old.Version.Index == 0 {
		ops = append(ops, CASOp(s.SlotKey(site, slot, "version"), v, old.Version.Index))
	}
	return ops
}

// DocOps turns one settings document of slot from old into want: one operation, or none when
// they are equal. Check-and-set against the index old was read at.
func (s *Store) DocOps(site, slot, kind string, old SettingsDoc, want map[string]string) consulapi.KVTxnOps {
	if old.Index != 0 && maps.Equal(old.Values, want) {
		return nil
	}
	return consulapi.KVTxnOps{CASOp(s.SlotKey(site, slot, kind), config.EncodeSettings(want), old.Index)}
}

// SeedOps folds what a slot's settings documents need at start into one write: the entries of
// the one-key-per-setting layout (the document wins where both have a key), and each declared
// setting that the document does not hold and the slot's seed record does not list, so a
// declared key is seeded once: an operator's unset stays unset, and a key newly declared is
// seeded. The record (KeySeeded) is written in the same transaction and lists the keys declared
// now, so a key declared again after it was left out is a new declaration. A slot without a
// record (one bound before records, or a new slot) is seeded where keys are absent, once.
// The Legacy keys are deleted afterwards by LegacyDeletes, so a crash between the two loses
// nothing. A document that seeding would make larger than config.CheckSettings takes is an
// error: nothing is written.
func (s *Store) SeedOps(site, slot string, ss *SlotState, declared SlotSettings) (consulapi.KVTxnOps, error) {
	var ops consulapi.KVTxnOps
	record := map[string][]string{}
	for _, kind := range []string{KindSwappable, KindSticky} {
		old := *ss.Doc(kind)
		decl := declared.Settings
		if kind == KindSticky {
			decl = declared.Sticky
		}
		want := maps.Clone(old.Values)
		for k, v := range old.Legacy {
			if _, ok := want[k]; !ok {
				want[k] = v.Value
			}
		}
		for k, v := range decl {
			if _, ok := want[k]; !ok && !slices.Contains(ss.Seeded.Keys[kind], k) {
				want[k] = v
			}
		}
		if err := config.CheckSettings(kind, want); err != nil {
			return nil, fmt.Errorf("seed %s of slot %s: %w", kind, slot, err)
		}
		ops = append(ops, s.DocOps(site, slot, kind, old, want)...)
		record[kind] = SortedKeys(decl)
	}
	if ss.Seeded.Index == 0 || !maps.EqualFunc(ss.Seeded.Keys, record, slices.Equal) {
		ops = append(ops, CASOp(s.SlotKey(site, slot, KeySeeded), encodeSeeded(record), ss.Seeded.Index))
	}
	return ops, nil
}

// SeedRecord is a slot's seed record (KeySeeded): by kind, the declared settings that were
// seeded into the slot, or found there, when they were declared. It belongs to the slot, as
// the declarations in slots.hcl do, and a swap does not exchange it: a swap moves what the
// swappable documents hold, and a declaration of the slot that was seeded once is not seeded
// again into the app that moved in.
type SeedRecord struct {
	Keys  map[string][]string
	Index uint64 // 0: no record
}

// encodeSeeded writes a seed record, one kind a line, for the Consul UI.
func encodeSeeded(keys map[string][]string) string {
	b, _ := json.MarshalIndent(keys, "", "  ")
	return string(b)
}

// decodeSeeded reads a seed record: a JSON object of the two kinds, each a list of setting keys.
func decodeSeeded(b []byte) (map[string][]string, error) {
	keys := map[string][]string{}
	if err := json.Unmarshal(b, &keys); err != nil {
		return nil, fmt.Errorf(`not a JSON object of setting keys by kind such as {"settings": ["FEATURE"], "sticky": []} (%v)`, err)
	}
	for kind, list := range keys {
		if kind != KindSwappable && kind != KindSticky {
			return nil, fmt.Errorf("kind %q is neither %q nor %q", kind, KindSwappable, KindSticky)
		}
		for _, k := range list {
			if err := CheckSettingKey(k); err != nil {
				return nil, err
			}
		}
	}
	return keys, nil
}

// LegacyDeletes removes the one-key-per-setting entries of a slot once its document holds
// them, in transactions small enough for Consul.
func (s *Store) LegacyDeletes(site, slot string, ss *SlotState) []consulapi.KVTxnOps {
	var all consulapi.KVTxnOps
	for _, kind := range []string{KindSwappable, KindSticky} {
		legacy := ss.Doc(kind).Legacy
		for _, k := range SortedKeys(valuesOf(legacy)) {
			all = append(all, DeleteCASOp(s.SlotKey(site, slot, kind, k), legacy[k].Index))
		}
	}
	var out []consulapi.KVTxnOps
	for len(all) > 0 {
		n := min(len(all), MaxTxnOps-1) // one more for the leader check
		out = append(out, all[:n])
		all = all[n:]
	}
	return out
}

func valuesOf(m map[string]Value) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v.Value
	}
	return out
}

func SortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// SlotSettings are one slot's swappable and sticky settings.
type SlotSettings struct {
	Settings map[string]string
	Sticky   map[string]string
	// Scale is the slot's instance counts per task group: sticky, like Sticky. Nil leaves the
	// jobspec's counts. Live marks a slot whose scale is "live" (what Nomad runs decides).
	Scale map[string]int
	Live  bool
}

// LaneOf is the lane whose job ID KV holds for a slot of site. A value without the site's
// prefix is the short name older versions wrote, migrated at start.
func LaneOf(site, value string) string {
	if lane, ok := strings.CutPrefix(value, site+"-"); ok && lane != "" {
		return lane
	}
	return value
}
