package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"sync"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// deployOp registers new code or job variables into a slot's lane and binds the slot to the new
// version once Nomad's deployment succeeded and Consul shows every instance passing. On failure
// the lane goes back to the slot's bound version.
func (a *Agent) deployOp(site *config.Site, slotName string, vars map[string]string) opFunc {
	return func(ctx context.Context, r *run) error {
		slot := site.Slot(slotName)
		err := r.phase(api.PhaseDeploy, api.StateDeploying, func() error {
			st, err := a.store.loadSlots(site.Name, nil)
			if err != nil {
				return err
			}
			s := st.slot(slotName)
			if s.Lane.Value == "" {
				return fmt.Errorf("slot %s is not bound to a lane", slotName)
			}
			app, err := fileSource(site, vars)
			if err != nil {
				return err
			}
			want := steady(slot, s.settings())
			dctx, cancel := context.WithTimeout(ctx, site.DeployTimeout)
			defer cancel()
			ro, err := a.ensureLane(dctx, site, s.Lane.Value, app, want, gateHealthy)
			if err != nil {
				return a.restoreLane(site, slotName, err)
			}
			if _, err := a.store.txn(a.store.bindOps(site.Name, slotName, s, s.Lane.Value, ro.Version)); err != nil {
				return fmt.Errorf("bind %s to lane %s version %d: %w", slotName, s.Lane.Value, ro.Version, err)
			}
			a.remember(site.Name, slotName, want)
			r.note(api.PhaseDeploy, fmt.Sprintf("lane %s version %d (%s)", s.Lane.Value, ro.Version, ro.Change))
			return nil
		})
		if err == nil && slot.AutoSwap != "" {
			target := slot.AutoSwap
			r.after = func() { a.autoSwap(site.Name, slotName, target) }
		}
		return err
	}
}

// restoreLane puts a slot's lane back on the slot's bound version (its app as bound, with the
// slot's settings now) after a failed rollout.
func (a *Agent) restoreLane(site *config.Site, slotName string, cause error) error {
	ctx, cancel := a.restoreContext()
	defer cancel()
	st, err := a.store.loadSlots(site.Name, nil)
	if err != nil {
		return fmt.Errorf("%w; restoring %s failed: %v", cause, slotName, err)
	}
	s := st.slot(slotName)
	app, err := a.submission(site, s.Lane.Value, s.version(), true)
	if err != nil {
		return fmt.Errorf("%w; restoring %s failed: %v", cause, slotName, err)
	}
	ro, err := a.ensureLane(ctx, site, s.Lane.Value, app, steady(site.Slot(slotName), s.settings()), gateHealthy)
	if err != nil {
		return fmt.Errorf("%w; restoring %s failed: %v", cause, slotName, err)
	}
	_, _ = a.store.txn(a.store.bindOps(site.Name, slotName, s, s.Lane.Value, ro.Version))
	return fmt.Errorf("%w (%s restored: lane %s version %d)", cause, slotName, s.Lane.Value, ro.Version)
}

// settingsOp rolls changed settings out to the lanes of the given slots.
func (a *Agent) settingsOp(site *config.Site, slots []string) opFunc {
	return func(ctx context.Context, r *run) error {
		return r.phase(api.PhaseRollout, api.StateDeploying, func() error {
			var done []string
			for _, name := range slots {
				st, err := a.store.loadSlots(site.Name, nil)
				if err != nil {
					return err
				}
				s := st.slot(name)
				want := steady(site.Slot(name), s.settings())
				app, err := a.submission(site, s.Lane.Value, s.version(), true)
				if err != nil {
					return err
				}
				dctx, cancel := context.WithTimeout(ctx, site.DeployTimeout)
				ro, err := a.ensureLane(dctx, site, s.Lane.Value, app, want, gateHealthy)
				cancel()
				// Remember the state even on failure: the same settings are not tried again until
				// someone changes them.
				a.remember(site.Name, name, want)
				if err != nil {
					return a.restoreVersion(site, name, s, err)
				}
				if _, err := a.store.txn(a.store.bindOps(site.Name, name, s, s.Lane.Value, ro.Version)); err != nil {
					return err
				}
				done = append(done, fmt.Sprintf("%s: lane %s version %d", name, s.Lane.Value, ro.Version))
			}
			r.note(api.PhaseRollout, strings.Join(done, ", "))
			return nil
		})
	}
}

// restoreVersion reverts a lane to the slot's bound job version after a failed settings rollout.
func (a *Agent) restoreVersion(site *config.Site, slotName string, s *slotState, cause error) error {
	id := jobID(site.Name, s.Lane.Value)
	if _, _, err := a.nomad.Jobs().Revert(id, s.version(), nil, nil, "", ""); err != nil {
		return fmt.Errorf("%w; reverting %s to version %d failed: %v", cause, id, s.version(), err)
	}
	return fmt.Errorf("%w (%s reverted to version %d)", cause, id, s.version())
}

// fingerprint identifies a lane state, to tell whether KV changed since it was rolled out.
func fingerprint(ls laneState) string {
	var b strings.Builder
	b.WriteString(ls.Slot)
	b.WriteString("\x00")
	b.WriteString(strings.Join(ls.Tags, ","))
	keys := make([]string, 0, len(ls.Env))
	for k := range ls.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString("\x00" + k + "=" + ls.Env[k])
	}
	return b.String()
}

// remember records that a slot's lane runs ls.
func (a *Agent) remember(site, slot string, ls laneState) {
	s := a.siteRunner(site)
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied[slot] = fingerprint(ls)
}

// reconcile starts a settings rollout for the slots whose effective settings differ from what
// their lanes run. It does nothing while an operation runs: the site is looked at again after.
func (a *Agent) reconcile(s *siteRunner, st *siteState) {
	cfg := s.config()
	s.mu.Lock()
	if !s.ready || s.running != nil {
		s.mu.Unlock()
		return
	}
	var changed []string
	for _, slot := range cfg.Slots {
		ss, ok := st.Slots[slot.Name]
		if !ok || ss.Lane.Value == "" {
			continue
		}
		if s.applied[slot.Name] != fingerprint(steady(slot, ss.settings())) {
			changed = append(changed, slot.Name)
		}
	}
	s.mu.Unlock()
	if len(changed) == 0 {
		return
	}
	a.logger.Info("settings changed", "site", s.name, "slots", strings.Join(changed, ","))
	op := &api.Operation{Kind: api.KindSettings, Trigger: "settings"}
	if _, err := a.start(s, op, []string{api.PhaseRollout}, a.settingsOp(cfg, changed)); err != nil && !errors.Is(err, errBusy) {
		a.logger.Error("cannot roll out settings", "site", s.name, "error", err)
	}
}

// watchSettings follows the site's slots in KV with blocking queries and reconciles on change.
func (a *Agent) watchSettings(ctx context.Context, s *siteRunner) {
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: idleWait}).WithContext(ctx)
		st, err := a.store.loadSlots(s.name, q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			a.metrics.queryErrors.WithLabelValues("consul").Inc()
			a.logger.Warn("watch settings", "site", s.name, "error", err)
			_ = sleepCtx(ctx, backoff(failures))
			continue
		}
		failures = 0
		if st.Index == index {
			continue
		}
		index = nextIndex(index, st.Index)
		a.reconcile(s, st)
	}
}

// afterOperations reconciles a site each time an operation ends.
func (a *Agent) afterOperations(ctx context.Context, s *siteRunner) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			st, err := a.store.loadSlots(s.name, nil)
			if err == nil {
				a.reconcile(s, st)
			}
		}
	}
}

// bootstrap brings a site to its declared shape: every slot bound to a lane, declared settings
// seeded where KV lacks them, every lane running its slot's state. What is already right is
// left alone: no KV write, no new job version.
func (a *Agent) bootstrap(ctx context.Context, s *siteRunner) error {
	cfg := s.config()
	st, err := a.store.loadSlots(cfg.Name, nil)
	if err != nil {
		return err
	}
	bound := map[string]string{}
	for name, ss := range st.Slots {
		bound[name] = ss.Lane.Value
	}
	lanes := assignLanes(cfg.SlotNames(), bound)
	var ops consulapi.KVTxnOps
	for _, slot := range cfg.Slots {
		ss := st.slot(slot.Name)
		if ss.Lane.Value == "" {
			ops = append(ops, casOp(a.store.slotKey(cfg.Name, slot.Name, "lane"), lanes[slot.Name], 0))
		}
		ops = append(ops, a.store.seedOps(cfg.Name, slot.Name, "settings", ss.Settings, slot.Settings)...)
		ops = append(ops, a.store.seedOps(cfg.Name, slot.Name, "sticky", ss.Sticky, slot.Sticky)...)
	}
	if _, err := a.store.txn(ops); err != nil {
		return fmt.Errorf("seed site %s: %w", cfg.Name, err)
	}
	if len(ops) > 0 {
		a.logger.Info("seeded site", "site", cfg.Name, "keys", len(ops))
	}

	running, err := a.store.runningOperation(cfg.Name)
	if err != nil {
		return err
	}
	if running != nil {
		return a.recover(s, running)
	}

	st, err = a.store.loadSlots(cfg.Name, nil)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(cfg.Slots))
	for i, slot := range cfg.Slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = a.bootstrapSlot(ctx, cfg, slot, st.slot(slot.Name))
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (a *Agent) bootstrapSlot(ctx context.Context, site *config.Site, slot *config.Slot, ss *slotState) error {
	lane := ss.Lane.Value
	app, err := a.submission(site, lane, ss.version(), ss.Version.Value != "")
	if err != nil {
		return err
	}
	want := steady(slot, ss.settings())
	dctx, cancel := context.WithTimeout(ctx, site.DeployTimeout)
	defer cancel()
	ro, err := a.ensureLane(dctx, site, lane, app, want, gateHealthy)
	if err != nil {
		return fmt.Errorf("start %s lane %s: %w", slot.Name, lane, err)
	}
	if _, err := a.store.txn(a.store.bindOps(site.Name, slot.Name, ss, lane, ro.Version)); err != nil {
		return fmt.Errorf("bind %s to lane %s: %w", slot.Name, lane, err)
	}
	a.remember(site.Name, slot.Name, want)
	if ro.Change != 0 {
		a.logger.Info("lane ready", "site", site.Name, "slot", slot.Name, "lane", lane, "version", ro.Version, "change", ro.Change.String())
	}
	return nil
}

// recover takes over an operation that a stopped daemon left journaled. A swap that stopped
// between two phases goes on from the next one (a previewing swap waits again for complete or
// cancel); a swap past its switch is settled; a swap or deploy that stopped inside a phase
// before the switch is undone, because its lanes may be half-way.
func (a *Agent) recover(s *siteRunner, op *api.Operation) error {
	cfg := s.config()
	a.logger.Info("recovering operation", "site", cfg.Name, "op", op.ID, "kind", op.Kind, "state", op.State)
	s.mu.Lock()
	r := a.newRun(s, op)
	s.mu.Unlock()
	var fn opFunc
	switch {
	case (op.Kind == api.KindSwap || op.Kind == api.KindRollback) && cfg.Slot(op.Source) != nil && cfg.Slot(op.Target) != nil:
		if op.State == api.StatePreviewing || op.Switched || !midPhase(op) {
			fn = a.swapOp(cfg, op.Source, op.Target)
		} else {
			fn = func(ctx context.Context, r *run) error {
				w := &swap{run: r, site: cfg, source: cfg.Slot(op.Source), target: cfg.Slot(op.Target)}
				if err := w.load(ctx); err != nil {
					return err
				}
				cause := fmt.Errorf("interrupted in state %s by a daemon restart", op.State)
				// A switch may have taken the target's routes off its lane: give them back
				// before the source lane loses them.
				if _, err := w.restore(w.tgtLane, w.tgtApp, steady(w.target, w.tgt), gateTags); err != nil {
					return fmt.Errorf("%w; restoring the target lane failed: %v", cause, err)
				}
				return w.restoreSource(cause)
			}
		}
	default:
		fn = func(ctx context.Context, r *run) error {
			var errs []error
			for _, slot := range cfg.Slots {
				st, err := a.store.loadSlots(cfg.Name, nil)
				if err != nil {
					return err
				}
				errs = append(errs, a.bootstrapSlot(ctx, cfg, slot, st.slot(slot.Name)))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			return fmt.Errorf("interrupted in state %s by a daemon restart; slots restored to their bound versions", op.State)
		}
	}
	go r.execute(fn)
	return nil
}

// midPhase reports whether an operation stopped inside a phase (a crash) rather than between
// two (a graceful stop, which finishes the running phase and journals it first).
func midPhase(op *api.Operation) bool {
	for _, p := range op.Phases {
		if p.State == api.PhaseRunning {
			return true
		}
	}
	return false
}

// autoSwap starts the swap that a deploy into a slot with auto_swap asks for.
func (a *Agent) autoSwap(site, source, target string) {
	s := a.siteRunner(site)
	if s == nil {
		return
	}
	op := &api.Operation{Kind: api.KindSwap, Trigger: "auto_swap", Source: source, Target: target}
	if _, err := a.start(s, op, swapPhases, a.swapOp(s.config(), source, target)); err != nil {
		a.logger.Error("auto-swap did not start", "site", site, "source", source, "target", target, "error", err)
	}
}

// autoRollback starts the rollback that the monitor asks for.
func (a *Agent) autoRollback(site, swapID string) {
	if _, err := a.rollback(site, "monitor"); err != nil {
		a.logger.Error("auto-rollback did not start", "site", site, "swap", swapID, "error", err)
	}
}

// rollback swaps back the newest swap of the site whose switch happened.
func (a *Agent) rollback(site, trigger string) (*api.Operation, error) {
	s := a.siteRunner(site)
	if s == nil {
		return nil, fmt.Errorf("%w: site %s", errNotFound, site)
	}
	hist, err := a.store.history(site)
	if err != nil {
		return nil, err
	}
	var last *api.Operation
	for i := range hist {
		h := hist[i]
		if (h.Kind == api.KindSwap || h.Kind == api.KindRollback) && h.Switched {
			last = &h
			break
		}
	}
	if last == nil {
		return nil, fmt.Errorf("%w: site %s has no completed swap to roll back", errBadRequest, site)
	}
	op := &api.Operation{Kind: api.KindRollback, Trigger: trigger, Source: last.Source, Target: last.Target, RollbackOf: last.ID}
	return a.start(s, op, swapPhases, a.swapOp(s.config(), last.Source, last.Target))
}

func copyVars(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	return maps.Clone(m)
}

// watchLanes follows the site's lane jobs in Nomad with a blocking query. When a lane changes
// while no operation runs (someone ran `nomad job run` on it, or it was stopped), the lanes
// whose job no longer matches their slot are rolled back to it, as a settings rollout.
func (a *Agent) watchLanes(ctx context.Context, s *siteRunner) {
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		q := (&nomadapi.QueryOptions{Prefix: s.name + "-", WaitIndex: index, WaitTime: idleWait}).WithContext(ctx)
		_, meta, err := a.nomad.Jobs().List(q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			a.metrics.queryErrors.WithLabelValues("nomad").Inc()
			_ = sleepCtx(ctx, backoff(failures))
			continue
		}
		failures = 0
		first := index == 0
		if meta.LastIndex == index {
			continue
		}
		index = nextIndex(index, meta.LastIndex)
		if first {
			continue
		}
		s.mu.Lock()
		busy := !s.ready || s.running != nil
		s.mu.Unlock()
		if busy {
			continue // our own operation changes the lanes; it leaves them right
		}
		drifted := a.driftedSlots(ctx, s.config())
		if len(drifted) == 0 {
			continue
		}
		a.logger.Warn("lanes changed outside slotd; restoring them", "site", s.name, "slots", strings.Join(drifted, ","))
		for _, slot := range drifted {
			s.mu.Lock()
			delete(s.applied, slot)
			s.mu.Unlock()
		}
		s.poke()
	}
}

// driftedSlots are the slots whose lane job differs from what the slot's binding and settings
// make of it, by Nomad's own plan.
func (a *Agent) driftedSlots(ctx context.Context, site *config.Site) []string {
	st, err := a.store.loadSlots(site.Name, nil)
	if err != nil {
		return nil
	}
	var out []string
	for _, slot := range site.Slots {
		ss := st.slot(slot.Name)
		if ss.Lane.Value == "" {
			continue
		}
		app, err := a.submission(site, ss.Lane.Value, ss.version(), true)
		if err != nil {
			continue
		}
		job, err := a.render(site, ss.Lane.Value, app, steady(slot, ss.settings()))
		if err != nil {
			continue
		}
		plan, _, err := a.nomad.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(ctx))
		if err == nil && classify(plan) != jobspec.NoChange {
			out = append(out, slot.Name)
		}
	}
	return out
}
