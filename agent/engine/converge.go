package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/failpoint"
	"github.com/slotd/slotd/jobspec"
)

// KV is the desired state, Nomad and Consul the observed one (DESIGN.md §3). This file holds
// how a site is brought up in KV, how its lanes are compared with KV, and how they converge.

// bootstrap brings a site's KV to its declared shape: every slot bound to a lane, declared
// settings seeded once (store.SeedOps), settings of the one-key-per-setting layout folded into their
// documents. One transaction per slot, so a site of any size starts. It returns the operation
// a stopped daemon left journaled, if any. What is already right is not written again.
func (e *Engine) bootstrap(ctx context.Context, cfg *config.Site) (*api.Operation, error) {
	if err := failpoint.Inject(ctx, "site.boot"); err != nil {
		return nil, err
	}
	st, err := e.store.LoadSlots(cfg.Name, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	bound := map[string]string{}
	for name, ss := range st.Slots {
		bound[name] = ss.Lane.Value
	}
	lanes := assignLanes(cfg.SlotNames(), bound)
	seeded := 0
	for _, slot := range cfg.Slots {
		ss := st.Slot(slot.Name)
		var ops consulapi.KVTxnOps
		switch {
		case ss.Lane.Value == "":
			ops = append(ops, store.CASOp(e.store.SlotKey(cfg.Name, slot.Name, "lane"), jobspec.JobID(cfg.Name, lanes[slot.Name]), 0))
		case ss.LaneKV != jobspec.JobID(cfg.Name, ss.Lane.Value):
			// Written by an older slotd as the lane's short name: KV holds the job ID.
			ops = append(ops, store.CASOp(e.store.SlotKey(cfg.Name, slot.Name, "lane"), jobspec.JobID(cfg.Name, ss.Lane.Value), ss.Lane.Index))
		}
		seed, err := e.store.SeedOps(cfg.Name, slot.Name, ss, store.SlotSettings{Settings: slot.Settings, Sticky: slot.Sticky})
		if err != nil {
			return nil, fmt.Errorf("site %s: %w", cfg.Name, err)
		}
		ops = append(ops, seed...)
		scale, err := e.seedScale(ctx, cfg, slot, ss, lanes[slot.Name])
		if err != nil {
			return nil, fmt.Errorf("scale of slot %s of site %s: %w", slot.Name, cfg.Name, err)
		}
		ops = append(ops, scale...)
		if _, err := e.store.Txn(ops); err != nil {
			return nil, fmt.Errorf("bind and seed slot %s of site %s: %w", slot.Name, cfg.Name, err)
		}
		seeded += len(ops)
		for _, dels := range e.store.LegacyDeletes(cfg.Name, slot.Name, ss) {
			if _, err := e.store.Txn(dels); err != nil {
				return nil, fmt.Errorf("migrate the settings of slot %s of site %s: %w", slot.Name, cfg.Name, err)
			}
			seeded += len(dels)
		}
	}
	if seeded > 0 {
		e.logger.Info("bound and seeded site", "site", cfg.Name, "keys", seeded)
	}
	op, err := e.store.PendingOperation(cfg.Name, cfg.HistoryLimit)
	if err != nil || op != nil {
		return op, err
	}
	return nil, e.startLanes(ctx, cfg)
}

// startLanes registers the lanes of the slots that were never bound to a job version (a new
// site, or a slot added by a reload) as part of bringing the site up, not as an operation:
// until they run, the site is still starting.
func (e *Engine) startLanes(ctx context.Context, cfg *config.Site) error {
	st, err := e.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(cfg.Slots))
	for i, slot := range cfg.Slots {
		ss := st.Slot(slot.Name)
		if ss.Version.Value != "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ro, err := e.rollOut(ctx, cfg, slot, ss)
			if err != nil {
				errs[i] = fmt.Errorf("start the lane of %s: %w", slot.Name, err)
				return
			}
			e.logger.Info("lane started", "site", cfg.Name, "slot", slot.Name, "lane", ss.Lane.Value, "version", ro.Version)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// differing compares every lane of a site with what KV binds and sets for its slot, by
// Nomad's own plan of the job slotd would register, and returns the slots whose lanes differ
// (a lane changed or deleted by hand, a setting edited, a route changed by a reload).
func (e *Engine) differing(ctx context.Context, cfg *config.Site) ([]string, error) {
	st, err := e.store.LoadSlots(cfg.Name, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, slot := range cfg.Slots {
		ss := st.Slot(slot.Name)
		if ss.Lane.Value == "" {
			return nil, fmt.Errorf("slot %s is bound to no lane", slot.Name)
		}
		if ss.Version.Value == "" {
			out = append(out, slot.Name)
			continue
		}
		src, err := e.lanes.Submission(ctx, cfg, ss.Lane.Value, ss.BoundVersion(), true)
		if err != nil {
			return nil, err
		}
		set, err := e.slotSet(ctx, cfg, slot, ss)
		if err != nil {
			return nil, err
		}
		differs, err := e.lanes.Differs(ctx, cfg, ss.Lane.Value, src, steady(slot, set))
		if err != nil {
			return nil, err
		}
		if differs {
			out = append(out, slot.Name)
		}
	}
	return out, nil
}

// convergeOp brings the lanes of the given slots to what KV says, as one operation. One that
// finds every lane running what KV says already says so (Unchanged): it is no event worth a
// place in the history.
func (e *Engine) convergeOp(cfg *config.Site, slots []string) opFunc {
	return func(ctx context.Context, r *run) error {
		return r.phase(api.PhaseRollout, api.StateDeploying, func() error {
			msgs, changed, err := e.converge(ctx, cfg, slots)
			r.op.Unchanged = err == nil && !changed
			r.note(api.PhaseRollout, strings.Join(msgs, "; "))
			return err
		})
	}
}

// converge makes the lanes of slots run what KV says, make before break: lanes that keep or
// gain their routes go first and are waited for with passing checks, and only then do lanes
// that carry a route they should not lose it. A lane whose rollout fails is put back, and
// settings that it could not take are put back in KV to what it ran, so that no restart or
// failover replays them. changed reports whether any lane or binding was written.
func (e *Engine) converge(ctx context.Context, cfg *config.Site, slots []string) (msgs []string, changed bool, err error) {
	st, err := e.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return nil, false, err
	}
	type step struct {
		slot  *config.Slot
		ss    *store.SlotState
		loses bool
	}
	var steps []step
	for _, name := range slots {
		slot := cfg.Slot(name)
		if slot == nil {
			continue
		}
		ss := st.Slot(name)
		want := steady(slot, ss.Values())
		cur, err := e.lanes.Job(ctx, cfg, ss.Lane.Value)
		if err != nil {
			return nil, false, err
		}
		loses := false
		if cur != nil {
			for _, t := range jobspec.ServiceTags(cur, cfg.Service) {
				if routeTag(cfg, t) && !slices.Contains(want.Tags, t) {
					loses = true
				}
			}
		}
		steps = append(steps, step{slot, ss, loses})
	}
	sort.SliceStable(steps, func(i, j int) bool { return !steps[i].loses && steps[j].loses })
	for _, s := range steps {
		ro, err := e.rollOut(ctx, cfg, s.slot, s.ss)
		if err != nil {
			// A failed rollout may have moved a lane before it was put back: never "unchanged".
			return msgs, true, err
		}
		changed = changed || ro.Change != jobspec.NoChange || !s.ss.BoundTo(ro.Version)
		msgs = append(msgs, fmt.Sprintf("%s: lane %s version %d (%s)", s.slot.Name, s.ss.Lane.Value, ro.Version, ro.Change))
	}
	return msgs, changed, nil
}

// routeTag reports whether t is a route slotd moves: a slot's name, tags, preview or previous tags.
func routeTag(cfg *config.Site, t string) bool {
	for _, s := range cfg.Slots {
		if t == s.Name || slices.Contains(s.Tags, t) || slices.Contains(s.PreviewTags, t) || slices.Contains(s.PreviousTags, t) {
			return true
		}
	}
	return false
}

// rollOut makes one slot's lane run what KV says (ss, read when the operation started) and
// binds the slot to the version that does.
func (e *Engine) rollOut(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState) (lanes.Rollout, error) {
	lane := ss.Lane.Value
	src, err := e.lanes.Submission(ctx, cfg, lane, ss.BoundVersion(), ss.Version.Value != "")
	if err != nil {
		return lanes.Rollout{}, err
	}
	set, err := e.slotSet(ctx, cfg, slot, ss)
	if err != nil {
		return lanes.Rollout{}, err
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.DeployTimeout)
	ro, err := e.lanes.Ensure(dctx, cfg, lane, src, steady(slot, set), lanes.GateHealthy)
	cancel()
	if err != nil {
		return ro, e.failRollout(ctx, cfg, slot, ss, src, err)
	}
	ops := append(e.store.BindOps(cfg.Name, slot.Name, ss, lane, ro.Version), e.firstScale(ctx, cfg, slot, ss)...)
	if _, err := e.store.Txn(ops); err != nil {
		return ro, fmt.Errorf("bind %s to lane %s version %d: %w", slot.Name, lane, ro.Version, err)
	}
	return ro, nil
}

// failRollout handles a rollout of KV's settings that Nomad could not finish: the settings
// that differ from what the slot's bound version runs are put back in KV (unless someone
// changed them again meanwhile), and the lane is put back.
func (e *Engine) failRollout(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState, src lanes.Source, cause error) error {
	cause = fmt.Errorf("roll out %s to lane %s: %w", slot.Name, ss.Lane.Value, cause)
	if ss.Version.Value == "" {
		return cause
	}
	prev, err := e.lanes.JobVersion(ctx, jobspec.JobID(cfg.Name, ss.Lane.Value), ss.BoundVersion())
	if err != nil {
		return fmt.Errorf("%w; its settings were not put back: %v", cause, err)
	}
	base, err := e.lanes.Render(cfg, ss.Lane.Value, src, lanes.State{Slot: slot.Name})
	if err != nil {
		return fmt.Errorf("%w; its settings were not put back: %v", cause, err)
	}
	prevEnv := lanes.LaneEnv(prev, cfg.Service)
	if prevEnv[jobspec.EnvSlot] != slot.Name {
		// The bound version ran as another slot (the drained lane of a swap not settled):
		// its settings are not this slot's to take.
		return fmt.Errorf("%w; its settings stay as KV has them (not applied)", cause)
	}
	back, keys := putBack(ss.Values(), prevEnv, lanes.LaneEnv(base, cfg.Service))
	// A scale set through the API that could not roll out goes back to the bound version's
	// counts too; a declared one stays as declared.
	prevScale := lanes.GroupCounts(prev)
	scaleBack := !slot.ScaleDeclared() && ss.Scale.Index != 0 && !maps.Equal(ss.Scale.Values, prevScale)
	if scaleBack {
		keys = append(keys, "scale")
	}
	note := ""
	if len(keys) > 0 {
		var ops consulapi.KVTxnOps
		ops = append(ops, e.store.DocOps(cfg.Name, slot.Name, store.KindSwappable, ss.Settings, back.Settings)...)
		ops = append(ops, e.store.DocOps(cfg.Name, slot.Name, store.KindSticky, ss.Sticky, back.Sticky)...)
		if scaleBack {
			ops = append(ops, e.store.ScaleOps(cfg.Name, slot.Name, ss.Scale, prevScale)...)
		}
		_, err := e.store.Txn(ops)
		switch {
		case errors.Is(err, store.ErrConflict):
			note = fmt.Sprintf("; settings %s were changed again meanwhile and are rolled out next", strings.Join(keys, ", "))
		case err != nil:
			note = fmt.Sprintf("; putting settings %s back failed: %v", strings.Join(keys, ", "), err)
		default:
			note = fmt.Sprintf("; settings %s of %s put back to the values its lane ran", strings.Join(keys, ", "), slot.Name)
		}
	}
	rctx, cancel := e.restoreContext(ctx)
	defer cancel()
	if _, err := e.restoreSlot(rctx, cfg, slot.Name, lanes.GateHealthy); err != nil {
		return fmt.Errorf("%w%s; putting lane %s back failed too: %v", cause, note, ss.Lane.Value, err)
	}
	return fmt.Errorf("%w%s (lane %s put back)", cause, note, ss.Lane.Value)
}

// putBack returns settings that give a lane the environment prev again, changing as few keys
// of cur as it can, and the keys it changed. base is the environment the jobspec alone gives:
// a key whose previous value is the jobspec's own was no setting, so it goes.
// A key that prev has from a setting but cur lacks (a deleted setting) comes back as sticky:
// which kind it was is not known, and a sticky value never travels to another slot.
func putBack(cur store.SlotSettings, prev, base map[string]string) (store.SlotSettings, []string) {
	out := store.SlotSettings{Settings: maps.Clone(cur.Settings), Sticky: maps.Clone(cur.Sticky)}
	if out.Settings == nil {
		out.Settings = map[string]string{}
	}
	if out.Sticky == nil {
		out.Sticky = map[string]string{}
	}
	changed := map[string]bool{}
	fix := func(m map[string]string, k string) {
		pv, had := prev[k]
		bv, inBase := base[k]
		switch {
		case !had || inBase && bv == pv:
			// The lane ran no such setting (what it had came from the jobspec itself).
			delete(m, k)
			changed[k] = true
		case m[k] != pv:
			m[k] = pv
			changed[k] = true
		}
	}
	for k := range cur.Sticky {
		fix(out.Sticky, k)
	}
	for k := range cur.Settings {
		if _, shadowed := cur.Sticky[k]; !shadowed {
			fix(out.Settings, k)
		}
	}
	for k, pv := range prev {
		_, inSet := cur.Settings[k]
		_, inSticky := cur.Sticky[k]
		if inSet || inSticky || strings.HasPrefix(k, "SLOTD_") {
			continue
		}
		if bv, ok := base[k]; ok && bv == pv {
			continue
		}
		out.Sticky[k] = pv
		changed[k] = true
	}
	keys := make([]string, 0, len(changed))
	for k := range changed {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return out, keys
}

// restoreSlot puts a slot's lane back on what KV says for the slot: the bound version's app
// with the slot's routes and settings. It is the one way slotd puts a lane back, after a
// failed deploy, rollout or swap phase, and in recovery.
func (e *Engine) restoreSlot(ctx context.Context, cfg *config.Site, slotName string, g lanes.Gate) (lanes.Rollout, error) {
	slot := cfg.Slot(slotName)
	if slot == nil {
		return lanes.Rollout{}, fmt.Errorf("slot %s is no longer declared", slotName)
	}
	st, err := e.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return lanes.Rollout{}, err
	}
	ss := st.Slot(slotName)
	src, err := e.lanes.Submission(ctx, cfg, ss.Lane.Value, ss.BoundVersion(), ss.Version.Value != "")
	if err != nil {
		return lanes.Rollout{}, err
	}
	set, err := e.slotSet(ctx, cfg, slot, ss)
	if err != nil {
		return lanes.Rollout{}, err
	}
	ro, err := e.lanes.Ensure(ctx, cfg, ss.Lane.Value, src, steady(slot, set), g)
	if err != nil {
		return ro, err
	}
	if _, err := e.store.Txn(e.store.BindOps(cfg.Name, slotName, ss, ss.Lane.Value, ro.Version)); err != nil {
		return ro, fmt.Errorf("bind %s to lane %s version %d: %w", slotName, ss.Lane.Value, ro.Version, err)
	}
	return ro, nil
}

// restoreContext bounds putting a lane back: its own deadline, because the failure may be the
// operation's own deadline or cancel; and an end when the daemon stops or the leadership the
// operation ran under (carried in ctx) ends, for a deposed leader writes nothing more.
func (e *Engine) restoreContext(ctx context.Context) (context.Context, context.CancelFunc) {
	rctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
	if lead, ok := ctx.Value(leadKey{}).(context.Context); ok {
		context.AfterFunc(lead, cancel)
	}
	go func() {
		select {
		case <-e.daemon.Done():
			cancel()
		case <-rctx.Done():
		}
	}()
	return rctx, cancel
}

// laneSick reports whether any instance of a lane fails its checks now.
func (e *Engine) laneSick(ctx context.Context, cfg *config.Site, lane string) bool {
	entries, _, err := e.lanes.Entries(ctx, cfg, lane, 0, 0)
	if err != nil {
		return false
	}
	for _, en := range entries {
		if en.Checks.AggregatedStatus() != consulapi.HealthPassing {
			return true
		}
	}
	return false
}
