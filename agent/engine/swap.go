package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/failpoint"
	"github.com/slotd/slotd/jobspec"
)

const (
	// restoreTimeout bounds putting a lane back after a failed phase; it runs on its own
	// context, because the failure may be the operation's own deadline.
	restoreTimeout = 10 * time.Minute
)

// swapPhases are the phases of DESIGN.md §3, in order.
var swapPhases = []string{api.PhasePreflight, api.PhaseApply, api.PhaseWarm, api.PhaseSwitch, api.PhaseMonitor, api.PhaseSettle}

// swap carries out one swap of source into target, phase after phase (DESIGN.md §3).
type swap struct {
	*run
	cfg            *config.Site
	source, target *config.Slot
	// The two lanes and what they ran when the swap started.
	srcLane, tgtLane string
	srcApp, tgtApp   lanes.Source
	// The settings of the two slots when the swap started (after the exchange: as they were
	// before it); the lanes are rendered from them until the site converges to KV after.
	src, tgt store.SlotSettings
	// srcVersion and tgtVersion are the job versions of the two lanes as the swap last moved
	// or read them (for the analyses' queries).
	srcVersion, tgtVersion uint64
	// tgtSick is set when the target lane failed its checks as it left the target's routes;
	// the exchange journals it (Operation.TargetSick) for a daemon that takes the swap over.
	tgtSick bool
}

// swapOp is the operation behind POST /swap, /rollback, auto-swap and the monitor's rollback.
func (e *Engine) swapOp(cfg *config.Site, sourceName, targetName string) opFunc {
	return func(ctx context.Context, r *run) error {
		w := &swap{run: r, cfg: cfg, source: cfg.Slot(sourceName), target: cfg.Slot(targetName)}
		if err := w.load(ctx); err != nil {
			return err
		}
		return w.runPhases(ctx)
	}
}

func (w *swap) runPhases(ctx context.Context) error {
	if !w.op.Switched {
		if w.preflightDue() {
			if err := w.phase(api.PhasePreflight, api.StatePending, func() error { return w.preflight(ctx) }); err != nil {
				return err // nothing moved
			}
		}
		if w.op.Instant {
			w.skipHeld(api.PhaseApply)
			w.skipHeld(api.PhaseWarm)
		}
		if !w.done(api.PhaseApply) && !w.op.Instant {
			if err := w.phase(api.PhaseApply, api.StateApplying, func() error { return w.apply(ctx) }); err != nil {
				return w.undo(err)
			}
		}
		if w.op.Preview && !w.done(api.PhaseWarm) {
			if err := w.preview(ctx); err != nil {
				return w.undo(err)
			}
		}
		if !w.done(api.PhaseWarm) && !w.op.Instant {
			if err := w.phase(api.PhaseWarm, api.StateWarming, func() error { return w.warm(ctx) }); err != nil {
				return w.undo(err)
			}
		}
		if sw := w.op.Phase(api.PhaseSwitch); sw == nil || sw.StartedAt == nil {
			// Asked once: a switch taken over after make or break goes on without asking
			// (and an undo then would take the target's routes off both lanes).
			if err := w.beforeSwitch(ctx); err != nil {
				return w.undo(err)
			}
		}
		if err := w.phase(api.PhaseSwitch, api.StateSwitching, func() error { return w.switchSlots(ctx) }); err != nil {
			return err
		}
	} else if !w.done(api.PhaseSwitch) {
		if err := w.endTakenOverSwitch(); err != nil {
			return err
		}
	}
	return w.afterSwitch(ctx)
}

// endTakenOverSwitch ends the switch of a swap (or group operation) whose daemon stopped after
// the exchange but before the phase's end reached the journal. Make and break come before the
// exchange, so routing is done; the switch ends now, and the hold and the monitor count from here.
func (r *run) endTakenOverSwitch() error {
	p := r.op.Phase(api.PhaseSwitch)
	if p == nil {
		return nil
	}
	now := time.Now().UTC()
	if p.StartedAt == nil {
		p.StartedAt = &now
	}
	p.State, p.EndedAt = api.PhaseSucceeded, &now
	p.Message = strings.TrimPrefix(p.Message+"; taken over after the exchange", "; ")
	return r.journal()
}

// skipHeld marks a phase that an instant swap does not need.
func (w *swap) skipHeld(name string) {
	if p := w.op.Phase(name); p != nil && p.State == api.PhasePending {
		p.State = api.PhaseSkipped
		p.Message = fmt.Sprintf("lane %s is held warm as %s: switch only", w.srcLane, w.target.Name)
	}
}

// done reports whether a phase already succeeded: a swap resumed by a new leader goes on
// from the first phase that did not.
func (w *swap) done(name string) bool { return succeeded(w.op, name) }

// preflightDue reports whether the pre-flight is still to run: before apply ever started. A
// swap journaled by an older slotd, without the phase, goes on without it.
func (w *swap) preflightDue() bool {
	p, apply := w.op.Phase(api.PhasePreflight), w.op.Phase(api.PhaseApply)
	return p != nil && p.State != api.PhaseSucceeded && (apply == nil || apply.StartedAt == nil)
}

// preflight plans the source lane as apply would register it, at the target's scale, with
// Nomad's plan endpoint: when it would not place, the swap fails here with Nomad's reason,
// before any lane moved or any job version was registered.
//
// The plan also shows whether the source lane is held (DESIGN.md §3, step 4): when it already
// runs the target's identity, settings and scale, apply would change its tags only, and the
// swap is instant: it goes straight to the switch. A preview swap still stops after apply.
func (w *swap) preflight(ctx context.Context) error {
	want := applied(w.target, w.src, w.tgt)
	change, err := w.eng.lanes.Plan(ctx, w.cfg, w.srcLane, w.srcApp, want)
	if err != nil {
		return fmt.Errorf("pre-flight: %w; nothing was changed", err)
	}
	msg := fmt.Sprintf("lane %s places as %s", w.srcLane, w.target.Name)
	if want.Scale != nil {
		msg += " at " + lanes.FormatScale(want.Scale)
	}
	if change != jobspec.Restart && !w.op.Preview {
		w.op.Instant = true
		msg = fmt.Sprintf("lane %s is held warm as %s: switch only", w.srcLane, w.target.Name)
	}
	w.note(api.PhasePreflight, msg)
	return nil
}

// apply takes the source lane off the source's routes and gives it the target's sticky
// settings and identity, reachable only through the target's preview tags.
func (w *swap) apply(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.DeployTimeout)
	defer cancel()
	ro, err := w.eng.lanes.Ensure(ctx, w.cfg, w.srcLane, w.srcApp, applied(w.target, w.src, w.tgt), lanes.GateHealthy)
	if err != nil {
		return err
	}
	w.srcVersion = ro.Version
	w.note(api.PhaseApply, fmt.Sprintf("lane %s version %d (%s)", w.srcLane, ro.Version, ro.Change))
	return nil
}

// preview holds the swap after apply until it is completed or cancelled.
func (w *swap) preview(ctx context.Context) error {
	w.op.State = api.StatePreviewing
	w.op.UpdatedAt = time.Now().UTC()
	if err := w.journal(); err != nil {
		return err
	}
	w.eng.logger.Info("swap previewing", "site", w.cfg.Name, "op", w.op.ID, "preview_tags", strings.Join(w.target.PreviewTags, ","))
	return w.awaitComplete(ctx)
}

// beforeSwitch asks the site's before-switch gate, for a swap (a rollback does not wait for
// it): when the gate refuses or does not answer in time, the swap waits previewing, with the
// reason in Waiting, until it is completed (it goes on) or cancelled (undone).
func (w *swap) beforeSwitch(ctx context.Context) error {
	w.op.Waiting = "" // a swap taken over while it waited asks again
	if w.op.Kind != api.KindSwap {
		return nil
	}
	if err := w.checkAnalyses(ctx, "", w.run); err != nil {
		if !inconclusive(err) {
			return err
		}
		if err := w.waitUnless(ctx, err); err != nil {
			return err
		}
	}
	return w.waitUnless(ctx, w.eng.gate(ctx, w.cfg, config.GateBeforeSwitch, w.op))
}

// waitUnless waits previewing for complete or cancel when why is not nil, with why in Waiting.
func (r *run) waitUnless(ctx context.Context, why error) error {
	if why == nil {
		return nil
	}
	r.eng.logger.Warn("operation waits for complete or cancel", "site", r.op.Site, "group", r.op.Group, "op", r.op.ID, "why", why)
	r.op.State, r.op.Waiting, r.op.UpdatedAt = api.StatePreviewing, why.Error(), time.Now().UTC()
	if err := r.journal(); err != nil {
		return err
	}
	if err := r.awaitComplete(ctx); err != nil {
		return err
	}
	r.op.Waiting = ""
	return nil
}

// awaitComplete waits while the operation previews, until it is completed (nil) or cancelled.
func (r *run) awaitComplete(ctx context.Context) error {
	for {
		select {
		case c := <-r.control:
			switch c {
			case ctlComplete:
				return nil
			case ctlCancel:
				return fmt.Errorf("%w while previewing", errCancelled)
			}
		case <-r.eng.daemon.Done():
			return store.ErrStopping
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// warm sends the site's warm-up requests to every instance of the source lane, directly.
func (w *swap) warm(ctx context.Context) error {
	entries, _, err := w.eng.lanes.Entries(ctx, w.cfg, w.srcLane, 0, 0)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("lane %s has no instances in consul to warm up", w.srcLane)
	}
	err = warmInstances(ctx, w.eng.httpClient, w.cfg.Warmup, entries)
	if err != nil {
		w.eng.metrics.WarmupFailures.WithLabelValues(w.cfg.Name).Inc()
		return err
	}
	w.note(api.PhaseWarm, fmt.Sprintf("%d instances answered %d paths", len(entries), len(w.cfg.Warmup.Paths)))
	return nil
}

// switchSlots moves the target's routes to the source lane, make before break, then exchanges
// the bindings and swappable settings in one KV transaction.
func (w *swap) switchSlots(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.DeployTimeout)
	defer cancel()
	t0 := time.Now()
	made, err := w.retag(ctx, w.srcLane, w.srcApp, slotTags(w.target), lanes.GateHealthy)
	t1 := time.Now()
	if err == nil {
		err = failpoint.Inject(ctx, "switch.after-make")
	}
	if errors.Is(err, store.ErrStopping) {
		return err
	}
	if err != nil {
		return w.restoreBoth(fmt.Errorf("give lane %s the routes of %s: %w", w.srcLane, w.target.Name, err))
	}
	w.tgtSick = w.eng.laneSick(ctx, w.cfg, w.tgtLane)
	broken, err := w.retag(ctx, w.tgtLane, w.tgtApp, drainedTags(w.target, w.holdFor() > 0), lanes.GateTags)
	if err == nil {
		err = failpoint.Inject(ctx, "switch.after-break")
	}
	if errors.Is(err, store.ErrStopping) {
		return err
	}
	if err != nil {
		return w.restoreBoth(fmt.Errorf("take the routes of %s off lane %s: %w", w.target.Name, w.tgtLane, err))
	}
	t2 := time.Now()
	w.srcVersion, w.tgtVersion = made.Version, broken.Version
	if err := w.exchange(ctx, made.Version, broken.Version); err != nil {
		if w.op.Switched || errors.Is(err, store.ErrStopping) || errors.Is(err, errUndecided) {
			return err // after the exchange the site converges what is left; deposed: nothing
		}
		// KV still binds the target to its lane: give that lane its routes back before the
		// source lane loses them.
		return w.restoreBoth(err)
	}
	// Where the switch's time went: what is ours (render, plan, register: "registered") and
	// what is Nomad's and Consul's (the rest of make and break, until Consul shows the tags).
	w.note(api.PhaseSwitch, fmt.Sprintf("%s; make %s (registered after %s), break %s (registered after %s), exchange %s",
		w.op.Phase(api.PhaseSwitch).Message, roundMs(t1.Sub(t0)), roundMs(made.Registered), roundMs(t2.Sub(t1)), roundMs(broken.Registered), roundMs(time.Since(t2))))
	return nil
}

// retag gives lane other routes and nothing else: make and break change tags only, in place,
// of what the lane runs (for make: what apply registered and warm warmed). The settings and
// scale KV asks for now may have changed since apply (a swap taken over by the next leader, a
// setting written meanwhile): the site converges to them once the swap has ended, through its
// update rules, and never by restarting a lane as it takes on or leaves a route.
func (w *swap) retag(ctx context.Context, lane string, app lanes.Source, tags []string, g lanes.Gate) (lanes.Rollout, error) {
	runs, err := w.eng.lanes.Running(ctx, w.cfg, lane, app)
	if err != nil {
		return lanes.Rollout{}, err
	}
	return w.eng.lanes.Ensure(ctx, w.cfg, lane, app, lanes.Retagged(runs, tags), g)
}

// ms rounds a duration to the millisecond, for messages.
func roundMs(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// exchange binds the target to the source lane and the source to the target lane, and swaps
// their swappable settings, in one transaction together with the journal entry that says so:
// switched is true in KV exactly when the exchange is. Settings edited during the swap are
// exchanged as they are now; the site converges the lanes to them once the swap ends.
func (w *swap) exchange(ctx context.Context, srcLaneVersion, tgtLaneVersion uint64) error {
	kv := w.eng.store
	if err := failpoint.Inject(ctx, "switch.before-exchange"); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		x, err := w.exchangeOps(srcLaneVersion, tgtLaneVersion)
		if err != nil {
			return err
		}
		if w.lead.Err() != nil {
			return store.ErrStopping
		}
		resp, err := kv.Txn(append(x.ops, x.journal))
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			// A setting was edited meanwhile, or the journal moved: read both again. The
			// journal must still be this operation's.
			if err := w.rereadJournal(); err != nil {
				return err
			}
			continue
		}
		if err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrStopping) {
			// No answer, or a broken one: the transaction may have committed all the same.
			// What is true decides: the journal says whether it did, and a journal write at
			// the index the exchange checks makes sure it never does later.
			var committed uint64
			if committed, err = w.exchanged(ctx, err); err == nil {
				x.next.Index = committed
				resp = &consulapi.KVTxnResponse{}
			}
		}
		if err != nil {
			return fmt.Errorf("exchange the bindings of %s and %s: %w", w.source.Name, w.target.Name, err)
		}
		w.exchangedTo(x, resp)
		w.eng.tell(w.op, evSwitched, nil)
		// Past the exchange the swap is done as far as routing goes: a failure here is the
		// switch's, not a reason to undo it.
		return failpoint.Inject(ctx, "switch.after-exchange")
	}
}

// exchangeWrite is one swap's part of an exchange: the writes of the bindings and swappable
// settings, the journal entry that says switched, and the slots as they were read.
type exchangeWrite struct {
	ops     consulapi.KVTxnOps
	journal *consulapi.KVTxnOp
	next    *api.Operation
	s, t    *store.SlotState
}

// exchangeOps reads both slots and writes what the exchange changes, check-and-set against
// what was read: the source lane bound to the target at srcLaneVersion, the target lane to the
// source at tgtLaneVersion, the swappable settings the other way round.
func (w *swap) exchangeOps(srcLaneVersion, tgtLaneVersion uint64) (*exchangeWrite, error) {
	kv := w.eng.store
	st, err := kv.LoadSlots(w.cfg.Name, nil)
	if err != nil {
		return nil, fmt.Errorf("exchange the bindings of %s and %s: %w", w.source.Name, w.target.Name, err)
	}
	x := &exchangeWrite{s: st.Slot(w.source.Name), t: st.Slot(w.target.Name)}
	x.ops = append(x.ops, kv.BindOps(w.cfg.Name, w.target.Name, x.t, w.srcLane, srcLaneVersion)...)
	x.ops = append(x.ops, kv.BindOps(w.cfg.Name, w.source.Name, x.s, w.tgtLane, tgtLaneVersion)...)
	x.ops = append(x.ops, kv.DocOps(w.cfg.Name, w.source.Name, store.KindSwappable, x.s.Settings, x.t.Settings.Values)...)
	x.ops = append(x.ops, kv.DocOps(w.cfg.Name, w.target.Name, store.KindSwappable, x.t.Settings, x.s.Settings.Values)...)
	next := *w.op
	next.Phases = append([]api.Phase(nil), w.op.Phases...)
	next.Switched, next.TargetSick = true, w.tgtSick
	if p := next.Phase(api.PhaseSwitch); p != nil {
		p.Message = fmt.Sprintf("%s → lane %s, %s → lane %s", w.target.Name, w.srcLane, w.source.Name, w.tgtLane)
	}
	x.next = &next
	if x.journal, err = kv.JournalOp(&next); err != nil {
		return nil, err
	}
	return x, nil
}

// rereadJournal takes the index the journal holds the operation at now, after a lost race;
// an error when it no longer holds this operation.
func (w *swap) rereadJournal() error {
	cur, err := w.eng.store.RunningOperation(w.cfg.Name)
	if err != nil || cur == nil || cur.ID != w.op.ID {
		return fmt.Errorf("exchange the bindings of %s and %s: the journal no longer holds operation %s", w.source.Name, w.target.Name, w.op.ID)
	}
	w.op.Index = cur.Index
	return nil
}

// exchangedTo takes the outcome of an exchange that committed: the journal entry it wrote, and
// the settings as KV has them now (the scales stay as the swap resolved them: a live slot's
// counts were read from its lane before this lane moved).
func (w *swap) exchangedTo(x *exchangeWrite, resp *consulapi.KVTxnResponse) {
	if x.next.Index == w.op.Index {
		x.next.Index = store.ResultIndex(resp, w.eng.store.OperationKey(w.cfg.Name), w.op.Index)
	}
	*w.op = *x.next
	w.eng.ops.publish(w.op)
	src, tgt := x.s.Values(), x.t.Values()
	src.Scale, src.Live, tgt.Scale, tgt.Live = w.src.Scale, w.src.Live, w.tgt.Scale, w.tgt.Live
	w.src, w.tgt = src, tgt
}

// holdFor is how long the former target lane is held after the switch: the site's rollback
// window, unless the lane was failing its checks as it left (nothing to roll back to).
func (w *swap) holdFor() time.Duration {
	if w.tgtSick || w.cfg.Monitor == nil {
		return 0
	}
	return w.cfg.Monitor.RollbackWindow
}

// afterSwitch is DESIGN.md §3 steps 4 and 5. The target's health is watched for the monitor
// window while the former target lane holds, warm with the target's settings and no public
// route, for the rollback window; it settles into the source when the hold ends, at once
// when there is none. Both are counted from the journal, so a daemon that takes the swap over
// only waits out what is left.
func (w *swap) afterSwitch(ctx context.Context) error {
	switchEnd := time.Now()
	if p := w.op.Phase(api.PhaseSwitch); p != nil && p.EndedAt != nil {
		switchEnd = *p.EndedAt
	}
	holdEnd := switchEnd.Add(w.holdFor())
	if !w.done(api.PhaseSettle) && !time.Now().Before(holdEnd) {
		if err := w.settlePhase(ctx); err != nil {
			return err
		}
	}
	m := w.cfg.Monitor
	if (m == nil || m.Window <= 0) && w.done(api.PhaseSettle) {
		w.skip(api.PhaseMonitor, "no monitor window")
		return nil
	}
	monStart := switchEnd
	if p := w.op.Phase(api.PhaseSettle); w.holdFor() == 0 && p != nil && p.EndedAt != nil {
		monStart = *p.EndedAt // no hold: the window starts once the swap has settled
	}
	var monEnd time.Time
	if m != nil {
		monEnd = monStart.Add(m.Window)
	}
	started := time.Now()
	return w.phase(api.PhaseMonitor, api.StateMonitoring, func() error {
		return w.monitorAndHold(ctx, swapHolder{w: w, m: m, want: w.instanceCount(ctx), p: &pausedSet{}}, monEnd, holdEnd, started)
	})
}

// holder is what the monitor and hold watch and settle: one swap's target and held lane, or
// every member's of a group operation.
type holder interface {
	// watch returns when ctx ends (nil) or the target degraded (why).
	watch(ctx context.Context) error
	// settleHeld settles the held lanes now; the monitor goes on.
	settleHeld(ctx context.Context) error
	// autoRollback reports whether a degradation rolls back by itself.
	autoRollback() bool
	// heldLanes names the lanes held, for messages.
	heldLanes() string
	// stateIs tells of a new state of the operation (monitoring or holding).
	stateIs(state string)
	// paused names the analyses that pause on "inconclusive" and measure nothing now;
	// pauseStep is long enough for each of them to evaluate once.
	paused() string
	pauseStep() time.Duration
}

// monitorAndHold runs until both the monitor window and the hold are over. What ends them
// early: another operation starting (the hold is left to it), slotd settle (the hold only), a
// cancel (both, settled now), the target degrading (with auto_rollback: the swap ends and a
// rollback takes the held lane back, instantly; without: the monitor reports it and the hold
// goes on, so a rollback by hand is still instant).
func (r *run) monitorAndHold(ctx context.Context, h holder, monEnd, holdEnd, started time.Time) error {
	var degraded error
	watching := time.Now().Before(monEnd)
	for {
		holding := !succeeded(r.op, api.PhaseSettle)
		if holding && !time.Now().Before(holdEnd) {
			if err := h.settleHeld(ctx); err != nil {
				return err
			}
			continue
		}
		paused := h.paused()
		if paused != "" && !time.Now().Before(monEnd.Add(monEnd.Sub(started))) {
			// Paused as long as the window itself: the window ends, and says so.
			r.note(api.PhaseMonitor, fmt.Sprintf("window ended while analyses of %s measured nothing for as long as the window (on_inconclusive = \"pause\"); no automatic rollback", paused))
			paused = ""
		}
		if msg := fmt.Sprintf("window over; waiting for analyses of %s: inconclusive (on_inconclusive = \"pause\")", paused); watching && paused != "" &&
			!time.Now().Before(monEnd) && r.op.Phase(api.PhaseMonitor).Message != msg {
			r.note(api.PhaseMonitor, msg)
		}
		watching = watching && (time.Now().Before(monEnd) || paused != "")
		if !watching && !holding {
			break
		}
		deadline, state := holdEnd, api.StateHolding
		if watching && !time.Now().Before(monEnd) {
			// The window is over, but an analysis that pauses on "inconclusive" measures
			// nothing: the window goes on until it measures again, a step at a time long
			// enough for an evaluation (a cancel ends it).
			deadline, state = time.Now().Add(h.pauseStep()), api.StateMonitoring
		}
		if watching && time.Now().Before(monEnd) {
			deadline, state = monEnd, api.StateMonitoring
			if holding && holdEnd.Before(monEnd) {
				deadline = holdEnd
			}
		}
		if r.op.State != state {
			r.op.State, r.op.UpdatedAt = state, time.Now().UTC()
			_ = r.journal()
			h.stateIs(state)
		}
		var watch func(context.Context) error
		if watching {
			watch = h.watch
		}
		ev, err := r.await(ctx, deadline, watch)
		switch {
		case err != nil:
			return err
		case ev.degraded != nil:
			watching = false
			if h.autoRollback() {
				if holding {
					r.skip(api.PhaseSettle, fmt.Sprintf("%s stays held for the rollback", h.heldLanes()))
				}
				// Journaled before the swap ends: should this daemon stop before the rollback
				// starts, the next leader starts it.
				r.op.Next = &api.FollowUp{Kind: api.KindRollback, Trigger: "monitor", Source: r.op.Source, Target: r.op.Target, RollbackOf: r.op.ID}
				if err := r.journal(); err != nil {
					return err
				}
				r.eng.tell(r.op, evRolledBack, nil)
				return fmt.Errorf("%w: rolling back", ev.degraded)
			}
			degraded = ev.degraded
			r.note(api.PhaseMonitor, fmt.Sprintf("%v; no automatic rollback (auto_rollback is off)", degraded))
		case ev.control == ctlEndMonitor:
			msg := fmt.Sprintf("ended early after %s: another operation started; no automatic rollback", time.Since(started).Round(time.Second))
			if holding {
				r.skip(api.PhaseSettle, fmt.Sprintf("%s left held for the next operation, which settles it", h.heldLanes()))
			}
			r.note(api.PhaseMonitor, msg)
			return degraded
		case ev.control == ctlFinish:
			watching = false
			r.note(api.PhaseMonitor, fmt.Sprintf("ended early after %s: the swap was cancelled; no automatic rollback", time.Since(started).Round(time.Second)))
			holdEnd = time.Now()
		case ev.control == ctlSettle:
			holdEnd = time.Now()
		}
	}
	return degraded
}

// swapHolder is the holder of one swap: its target watched against the site's monitor (its
// health, with as many instances as it had when the monitor started, and its analyses).
type swapHolder struct {
	w    *swap
	m    *config.Monitor
	want int
	p    *pausedSet
}

func (h swapHolder) watch(ctx context.Context) error {
	return allOf(ctx,
		func(ctx context.Context) error { return h.w.watchHealth(ctx, h.m, h.want) },
		func(ctx context.Context) error { return h.w.watchAnalyses(ctx, "", h.p.tell(h.w.cfg.Name), h.w.run) })
}
func (h swapHolder) paused() string                       { return h.p.any() }
func (h swapHolder) pauseStep() time.Duration             { return pauseStep(h.w.cfg) }
func (h swapHolder) settleHeld(ctx context.Context) error { return h.w.settleDuringMonitor(ctx) }
func (h swapHolder) autoRollback() bool                   { return h.m.AutoRollback }
func (h swapHolder) heldLanes() string                    { return "lane " + h.w.tgtLane }
func (swapHolder) stateIs(string)                         {}

// settleDuringMonitor settles the held lane while the swap's state is monitoring or holding;
// the end of the settle phase is journaled with that state back, in one write.
func (w *swap) settleDuringMonitor(ctx context.Context) error {
	state := w.op.State
	return w.phase(api.PhaseSettle, api.StateSettling, func() error {
		err := w.settle(ctx)
		w.op.State = state
		return err
	})
}

func (w *swap) settlePhase(ctx context.Context) error {
	return w.phase(api.PhaseSettle, api.StateSettling, func() error { return w.settle(ctx) })
}

// settle gives the former target lane the source's sticky settings and routes, in one rollout.
func (w *swap) settle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.DeployTimeout)
	defer cancel()
	drain := lanes.RouterDrain
	if p := w.op.Phase(api.PhaseSwitch); p != nil && p.EndedAt != nil {
		drain -= time.Since(*p.EndedAt) // held: routers dropped it long ago
	}
	if err := query.Sleep(ctx, max(drain, 0)); err != nil {
		return err
	}
	st, err := w.eng.store.LoadSlots(w.cfg.Name, nil)
	if err != nil {
		return err
	}
	s := st.Slot(w.source.Name)
	set := s.Values()
	set.Scale, set.Live = w.src.Scale, w.src.Live
	want := steady(w.source, set)
	g := lanes.GateHealthy
	if w.tgtSick {
		// The lane failed its checks before it left the target (a rollback away from a degraded
		// production): Nomad cannot finish a health-gated rollout of it, and it carries no
		// routes. It takes the source's settings and routes as Nomad replaces its instances.
		g = lanes.GateNone
	}
	ro, err := w.eng.lanes.Ensure(ctx, w.cfg, w.tgtLane, w.tgtApp, want, g)
	if err != nil {
		return fmt.Errorf("settle lane %s into %s: %w", w.tgtLane, w.source.Name, err)
	}
	if _, err := w.eng.store.Txn(w.eng.store.BindOps(w.cfg.Name, w.source.Name, s, w.tgtLane, ro.Version)); err != nil {
		return fmt.Errorf("bind %s to lane %s version %d: %w", w.source.Name, w.tgtLane, ro.Version, err)
	}
	msg := fmt.Sprintf("lane %s version %d serves %s", w.tgtLane, ro.Version, w.source.Name)
	if w.tgtSick {
		msg = fmt.Sprintf("lane %s version %d serves %s; it was failing its checks before the swap and is not waited for", w.tgtLane, ro.Version, w.source.Name)
	}
	w.note(api.PhaseSettle, msg)
	return nil
}

// undo puts the source lane back after apply, a preview or warm failed; a run that lost its
// leadership puts nothing back: the next leader does.
func (w *swap) undo(cause error) error {
	if errors.Is(cause, store.ErrStopping) || w.lead.Err() != nil {
		return cause
	}
	return w.restoreSource(cause)
}

// restoreSource puts the source lane back as KV says for the source, and leaves the target alone.
func (w *swap) restoreSource(cause error) error {
	return w.eng.putSlotBack(w.ctx, w.cfg, w.source.Name, cause)
}

// restoreBoth undoes a switch that failed after it began, make before break: the target's lane
// gets the target's routes back with the settings it runs (a tags-only change, in place), and
// once Consul shows them passing and routers had time to see it, the source lane is put back.
// Settings edited meanwhile reach the lanes through convergence afterwards. A lane that was
// already failing its checks (a rollback away from it) is waited for by its tags only.
func (w *swap) restoreBoth(cause error) error {
	ctx, cancel := w.eng.restoreContext(w.ctx)
	defer cancel()
	g := lanes.GateHealthy
	if w.tgtSick {
		g = lanes.GateTags
	}
	ro, err := w.eng.lanes.Ensure(ctx, w.cfg, w.tgtLane, w.tgtApp, steady(w.target, w.tgt), g)
	if err != nil {
		return fmt.Errorf("%w; giving lane %s the routes of %s back failed too: %v", cause, w.tgtLane, w.target.Name, err)
	}
	if st, err := w.eng.store.LoadSlots(w.cfg.Name, nil); err == nil {
		t := st.Slot(w.target.Name)
		if t.Lane.Value == w.tgtLane {
			_, _ = w.eng.store.Txn(w.eng.store.BindOps(w.cfg.Name, w.target.Name, t, w.tgtLane, ro.Version))
		}
	}
	if err := query.Sleep(ctx, lanes.RouterDrain); err != nil {
		return fmt.Errorf("%w; putting lane %s back was stopped: %v", cause, w.srcLane, err)
	}
	return w.restoreSource(cause)
}
