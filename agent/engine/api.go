package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// What the HTTP API asks of the engine. The input is checked by the caller (names, keys,
// counts, bodies); what is asked here is for sites and slots that exist.

// Site is a declared site's configuration, nil when there is none.
func (e *Engine) Site(name string) *config.Site {
	if s := e.site(name); s != nil {
		return s.config()
	}
	return nil
}

// SiteNames are the declared sites, sorted.
func (e *Engine) SiteNames() []string {
	var names []string
	for _, s := range e.siteList() {
		names = append(names, s.name)
	}
	slices.Sort(names)
	return names
}

// Ready reports whether the site is brought up under this daemon's leadership.
func (e *Engine) Ready(name string) bool {
	s := e.site(name)
	return s != nil && s.snapshot().ready
}

// SiteStates says for each site whether it is ready, starting or on a standby.
func (e *Engine) SiteStates() map[string]string {
	out := map[string]string{}
	leading := e.Leading()
	for _, s := range e.siteList() {
		switch {
		case !leading:
			out[s.name] = api.SiteStandby
		case s.snapshot().ready:
			out[s.name] = api.SiteReady
		default:
			out[s.name] = api.SiteStarting
		}
	}
	return out
}

// owner is the owner of a declared site, or ErrNotFound.
func (e *Engine) owner(name string) (*site, error) {
	s := e.site(name)
	if s == nil {
		return nil, fmt.Errorf("%w: no site %q", ErrNotFound, name)
	}
	return s, nil
}

// Deploy starts a deploy of the site's jobspec with vars into slot. The jobspec is parsed and
// checked first, so a bad variable changes nothing.
func (e *Engine) Deploy(name, slot string, vars map[string]string) (*api.Operation, error) {
	s, err := e.owner(name)
	if err != nil {
		return nil, err
	}
	cfg := s.config()
	app, err := lanes.FileSource(cfg, vars)
	if err != nil {
		return nil, err
	}
	if err := e.lanes.Check(cfg, app); err != nil {
		return nil, fmt.Errorf("%w: %v", store.ErrBadRequest, err)
	}
	op := &api.Operation{Kind: api.KindDeploy, Trigger: "api", Slot: slot, Vars: HideVars(vars, cfg.SensitiveVars)}
	return e.start(s, op, []string{api.PhaseDeploy}, e.deployOp(cfg, slot, vars))
}

// HideVars copies vars with the value of each sensitive one replaced by api.Hidden. A deploy
// keeps this copy in its operation: the values live on only in the lane's Nomad job
// submission, which convergence and recovery read, so the journal and history need none.
func HideVars(vars map[string]string, sensitive []string) map[string]string {
	if vars == nil {
		return nil
	}
	out := maps.Clone(vars)
	for _, k := range sensitive {
		if _, ok := out[k]; ok {
			out[k] = api.Hidden
		}
	}
	return out
}

// Scale starts a scale operation of slot to counts (groups left out keep theirs).
func (e *Engine) Scale(name, slot string, counts map[string]int) (*api.Operation, error) {
	s, err := e.owner(name)
	if err != nil {
		return nil, err
	}
	op := &api.Operation{Kind: api.KindScale, Trigger: "api", Slot: slot, Scale: maps.Clone(counts)}
	return e.start(s, op, []string{api.PhasePreflight, api.PhaseRollout}, e.scaleOp(s.config(), slot, counts))
}

// Swap starts a swap of source into target; preview stops it after apply.
func (e *Engine) Swap(name, source, target string, preview bool) (*api.Operation, error) {
	s, err := e.owner(name)
	if err != nil {
		return nil, err
	}
	op := &api.Operation{Kind: api.KindSwap, Trigger: "api", Source: source, Target: target, Preview: preview}
	return e.start(s, op, swapPhases, e.swapOp(s.config(), source, target))
}

// Rollback swaps back the site's last swap.
func (e *Engine) Rollback(name string) (*api.Operation, error) {
	s, err := e.owner(name)
	if err != nil {
		return nil, err
	}
	return s.ask(func(reply chan<- answer) event { return evRollback{trigger: "api", reply: reply} })
}

// Settle ends the hold of the swap that holds its former target lane now: that lane takes
// the source's settings and routes, and the monitor goes on.
func (e *Engine) Settle(ctx context.Context, name string) (*api.Operation, error) {
	s, err := e.owner(name)
	if err != nil {
		return nil, err
	}
	cfg := s.config()
	if r := s.snapshot().running; r != nil && r.op.GroupOperation != "" {
		return nil, partOfGroup(r.op)
	}
	if r := s.snapshot().running; r != nil {
		cur := e.ops.get(r.op.ID)
		if _, _, ok := holding(cfg, cur); ok && (cur.State == api.StateMonitoring || cur.State == api.StateHolding) {
			return e.signal(ctx, r, ctlSettle, cur.Index)
		}
	}
	return nil, fmt.Errorf("%w: site %s holds no lane: only a swap that is monitoring or holding its former target lane can settle", store.ErrBadRequest, name)
}

// Settings are a slot's settings as KV holds them.
func (e *Engine) Settings(name, slot string) (api.Settings, error) {
	st, err := e.store.LoadSlots(name, nil)
	if err != nil {
		return api.Settings{}, err
	}
	set := st.Slot(slot).Values()
	return api.Settings{Settings: set.Settings, Sticky: set.Sticky}, nil
}

// SetSetting writes one setting; a key that changes kind (swappable ↔ sticky) moves in the
// same transaction. The site converges its lane to the change by itself.
func (e *Engine) SetSetting(name, slot, key, value string, sticky bool) (api.Settings, error) {
	kind, other := store.KindSwappable, store.KindSticky
	if sticky {
		kind, other = other, kind
	}
	return e.changeSetting(name, slot, func(ss *store.SlotState) map[string]map[string]string {
		into, from := ss.Doc(kind).Values, ss.Doc(other).Values
		into[key] = value
		delete(from, key)
		return map[string]map[string]string{kind: into, other: from}
	})
}

// DeleteSetting deletes one setting of either kind; ErrNotFound when the slot has none.
func (e *Engine) DeleteSetting(name, slot, key string) (api.Settings, error) {
	found := false
	set, err := e.changeSetting(name, slot, func(ss *store.SlotState) map[string]map[string]string {
		_, inSet := ss.Settings.Values[key]
		_, inSticky := ss.Sticky.Values[key]
		found = inSet || inSticky
		delete(ss.Settings.Values, key)
		delete(ss.Sticky.Values, key)
		return map[string]map[string]string{store.KindSwappable: ss.Settings.Values, store.KindSticky: ss.Sticky.Values}
	})
	if err == nil && !found {
		return api.Settings{}, fmt.Errorf("%w: slot %s has no setting %q", ErrNotFound, slot, key)
	}
	return set, err
}

// settingRetries is how often a settings write is tried again after another won the race.
const settingRetries = 20

// changeSetting applies a change to one slot's settings documents, check-and-set against the
// documents as read, retrying on a race. change edits the values it is given (copies) and
// returns the documents by kind.
func (e *Engine) changeSetting(name, slot string, change func(*store.SlotState) map[string]map[string]string) (api.Settings, error) {
	for attempt := 0; ; attempt++ {
		st, err := e.store.LoadSlots(name, nil)
		if err != nil {
			return api.Settings{}, err
		}
		ss := st.Slot(slot)
		old := map[string]store.SettingsDoc{store.KindSwappable: ss.Settings, store.KindSticky: ss.Sticky}
		edit := store.NewSlotState()
		edit.Settings.Values, edit.Sticky.Values = ss.Values().Settings, ss.Values().Sticky
		var ops consulapi.KVTxnOps
		for kind, values := range change(edit) {
			// Checked here, before anything is written: a document that KV would hold but a
			// swap could not exchange must not be found at the switch.
			if err := config.CheckSettings(kind, values); err != nil {
				return api.Settings{}, fmt.Errorf("%w: slot %s: %v", store.ErrBadRequest, slot, err)
			}
			ops = append(ops, e.store.DocOps(name, slot, kind, old[kind], values)...)
		}
		_, err = e.store.Txn(ops)
		if errors.Is(err, store.ErrConflict) && attempt < settingRetries {
			// Another write of the slot's documents won: read them again, after a pause
			// that grows and spreads the writers that lost, so a burst of writes lands.
			time.Sleep(time.Duration(rand.Int64N(int64(attempt+1) * int64(10*time.Millisecond))))
			continue
		}
		if err != nil {
			return api.Settings{}, err
		}
		if s := e.site(name); s != nil {
			if _, err := s.ask(func(reply chan<- answer) event { return evConverge{reply} }); err != nil {
				e.logger.Warn("settings changed; rolling them out waits for the next look", "site", name, "error", err)
			}
		}
		return e.Settings(name, slot)
	}
}

// History is a page of a site's finished operations, newest first: at most limit of them,
// older than before (its Seq) when it is not 0.
func (e *Engine) History(name string, limit int, before uint64) ([]api.Operation, error) {
	return e.store.HistoryPage(name, limit, before)
}

// Operation answers an operation; with index it blocks until the index differs or ctx ends.
func (e *Engine) Operation(ctx context.Context, id string, index uint64) (*api.Operation, error) {
	if op := e.ops.get(id); op != nil {
		if index != 0 {
			op = e.ops.wait(ctx, id, index)
		}
		return e.withParts(op), nil
	}
	return e.findOperation(id)
}

// withParts is a running group operation with its members' parts as they are now (the group
// journals their states at its own phase boundaries only).
func (e *Engine) withParts(op *api.Operation) *api.Operation {
	if op == nil || op.Site != "" || api.Terminal(op.State) {
		return op
	}
	op.Members = slices.Clone(op.Members)
	for i, m := range op.Members {
		if part := e.ops.get(m.Operation); part != nil {
			op.Members[i].State, op.Members[i].Error = part.State, part.Error
		}
	}
	return op
}

// running finds the run of an operation in flight in this daemon, and its state now.
func (e *Engine) running(id string) (*run, *api.Operation, error) {
	if !e.Leading() {
		return nil, nil, ErrNotLeader
	}
	if g := e.groupRun(id); g != nil {
		if cur := e.ops.get(id); cur != nil {
			return g.run, cur, nil
		}
	}
	for _, s := range e.siteList() {
		if r := s.snapshot().running; r != nil && r.op.ID == id {
			if r.op.GroupOperation != "" {
				return nil, nil, partOfGroup(r.op)
			}
			if cur := e.ops.get(id); cur != nil {
				return r, cur, nil
			}
		}
	}
	if _, err := e.findOperation(id); err != nil {
		return nil, nil, err
	}
	return nil, nil, fmt.Errorf("%w: operation %s is not running", store.ErrBusy, id)
}

// Complete finishes a previewing swap.
func (e *Engine) Complete(ctx context.Context, id string) (*api.Operation, error) {
	r, cur, err := e.running(id)
	if err != nil {
		return nil, err
	}
	if cur.State != api.StatePreviewing {
		return nil, fmt.Errorf("%w: operation %s is not previewing", store.ErrBusy, cur.ID)
	}
	return e.signal(ctx, r, ctlComplete, cur.Index)
}

// Cancel cancels a previewing swap (its source lane goes back), a swap before its switch, a
// deploy or settings rollout (the lane goes back to its bound version), or ends the monitor of
// a swap. A swap that is switching or settling cannot be cancelled half-way.
func (e *Engine) Cancel(ctx context.Context, id string) (*api.Operation, error) {
	r, cur, err := e.running(id)
	if err != nil {
		return nil, err
	}
	switch cur.State {
	case api.StatePreviewing:
		return e.signal(ctx, r, ctlCancel, cur.Index)
	case api.StateMonitoring, api.StateHolding:
		return e.signal(ctx, r, ctlFinish, cur.Index)
	case api.StateSwitching, api.StateSettling:
		return nil, fmt.Errorf("%w: operation %s is %s and cannot stop half-way; roll back after it ends", store.ErrBusy, id, cur.State)
	}
	r.cancelled.Store(true)
	r.cancel()
	ctx, cancel := context.WithTimeout(ctx, answerWait)
	defer cancel()
	return e.ops.wait(ctx, id, cur.Index), nil
}

// answerWait is how long a control waits for the operation to move on before it answers.
const answerWait = 5 * time.Second

// signal sends a control to a run and answers with the operation once it moved on.
func (e *Engine) signal(ctx context.Context, r *run, c string, index uint64) (*api.Operation, error) {
	select {
	case r.control <- c:
	default:
		return nil, fmt.Errorf("%w: operation %s is already handling a request", store.ErrBusy, r.op.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, answerWait)
	defer cancel()
	return e.ops.wait(ctx, r.op.ID, index), nil
}
