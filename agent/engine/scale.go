package engine

import (
	"context"
	"fmt"
	"maps"
	"strings"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// A slot's scale is sticky, like Azure's scale settings: the instance counts per task group
// belong to the slot, not to the code a swap moves (DESIGN.md §3). KV holds each slot's counts
// in …/slots/<slot>/scale; a declared scale wins over KV, and a "live" one is what Nomad runs.

// resolveScale gives set the scale of slot: the declared counts, or for "live" the counts the
// slot's lane runs in Nomad now, or else the counts KV stores (set.Scale as read).
func (e *Engine) resolveScale(ctx context.Context, cfg *config.Site, slot *config.Slot, lane string, set store.SlotSettings) (store.SlotSettings, error) {
	switch {
	case slot.Scale != nil:
		set.Scale = maps.Clone(slot.Scale)
	case slot.ScaleLive:
		// What the lane runs while it serves the slot; a lane that runs as another slot (the
		// middle of a swap) tells nothing of this slot's size: KV has it from before.
		set.Live = true
		counts, serves, err := e.lanes.Counts(ctx, cfg, lane)
		if err != nil {
			return set, err
		}
		if counts != nil && serves == slot.Name {
			set.Scale = counts
		}
	}
	return set, nil
}

// slotSet is a slot's settings and resolved scale, from what KV holds for it.
func (e *Engine) slotSet(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState) (store.SlotSettings, error) {
	return e.resolveScale(ctx, cfg, slot, ss.Lane.Value, ss.Values())
}

// seedScale is what a slot's scale document needs at start: the declared counts (a changed
// declaration is a scale change), or, where KV holds none yet, the counts the slot's lane runs,
// so an undeclared slot keeps the size it had when it was first bound; a "live" slot's document
// follows what its lane runs. A lane not started yet gets its jobspec's counts, recorded when
// it starts (firstScale).
func (e *Engine) seedScale(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState, lane string) (consulapi.KVTxnOps, error) {
	if slot.Scale != nil {
		return e.store.ScaleOps(cfg.Name, slot.Name, ss.Scale, slot.Scale), nil
	}
	if ss.Scale.Index != 0 && !slot.ScaleLive {
		return nil, nil
	}
	counts, serves, err := e.lanes.Counts(ctx, cfg, lane)
	if err != nil {
		return nil, err
	}
	if counts == nil || serves != "" && serves != slot.Name {
		// No lane yet, or one that runs as another slot (a swap under way): nothing to learn.
		return nil, nil
	}
	return e.store.ScaleOps(cfg.Name, slot.Name, ss.Scale, counts), nil
}

// firstScale records the counts a lane started with as its slot's scale, when KV holds none.
func (e *Engine) firstScale(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState) consulapi.KVTxnOps {
	if slot.ScaleDeclared() || ss.Scale.Index != 0 {
		return nil
	}
	counts, _, err := e.lanes.Counts(ctx, cfg, ss.Lane.Value)
	if err != nil || counts == nil {
		return nil // recorded at the next start
	}
	return e.store.ScaleOps(cfg.Name, slot.Name, ss.Scale, counts)
}

// scaleOp changes the counts of task groups of a slot whose scale is not declared in HCL: a
// pre-flight plans the slot's lane at the new counts, then KV takes them and the lane rolls
// out, health-gated; a rollout that fails puts the lane and the counts back (failRollout).
func (e *Engine) scaleOp(cfg *config.Site, slotName string, counts map[string]int) opFunc {
	return func(ctx context.Context, r *run) error {
		slot := cfg.Slot(slotName)
		var ss *store.SlotState
		var want map[string]int
		err := r.phase(api.PhasePreflight, api.StatePending, func() error {
			st, err := e.store.LoadSlots(cfg.Name, nil)
			if err != nil {
				return err
			}
			ss = st.Slot(slotName)
			if ss.Lane.Value == "" || ss.Version.Value == "" {
				return fmt.Errorf("slot %s runs no lane yet", slotName)
			}
			set, err := e.slotSet(ctx, cfg, slot, ss)
			if err != nil {
				return err
			}
			if set.Scale == nil {
				if set.Scale, _, err = e.lanes.Counts(ctx, cfg, ss.Lane.Value); err != nil {
					return err
				}
			}
			want = maps.Clone(set.Scale)
			if want == nil {
				want = map[string]int{}
			}
			maps.Copy(want, counts)
			set.Scale = want
			src, err := e.lanes.Submission(ctx, cfg, ss.Lane.Value, ss.BoundVersion(), true)
			if err != nil {
				return err
			}
			if _, err := e.lanes.Plan(ctx, cfg, ss.Lane.Value, src, steady(slot, set)); err != nil {
				return fmt.Errorf("pre-flight: %w; nothing was changed", err)
			}
			r.note(api.PhasePreflight, fmt.Sprintf("lane %s places at %s", ss.Lane.Value, lanes.FormatScale(want)))
			return nil
		})
		if err != nil {
			return err
		}
		return r.phase(api.PhaseRollout, api.StateDeploying, func() error {
			if _, err := e.store.Txn(e.store.ScaleOps(cfg.Name, slotName, ss.Scale, want)); err != nil {
				return fmt.Errorf("write the scale of %s: %w", slotName, err)
			}
			msgs, _, err := e.converge(ctx, cfg, []string{slotName})
			r.note(api.PhaseRollout, strings.Join(msgs, "; "))
			return err
		})
	}
}

// scaleSource says where a slot's scale comes from, for status.
func scaleSource(slot *config.Slot) string {
	switch {
	case slot.ScaleLive:
		return "live"
	case slot.Scale != nil:
		return "declared"
	default:
		return "kv"
	}
}
