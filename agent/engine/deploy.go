package engine

import (
	"context"
	"fmt"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// deployOp registers new code or job variables into a slot's lane and binds the slot to the new
// version once Nomad's deployment succeeded and Consul shows every instance passing. On failure
// the lane goes back to the slot's bound version.
func (e *Engine) deployOp(cfg *config.Site, slotName string, vars map[string]string) opFunc {
	return func(ctx context.Context, r *run) error {
		slot := cfg.Slot(slotName)
		err := r.phase(api.PhaseDeploy, api.StateDeploying, func() error {
			st, err := e.store.LoadSlots(cfg.Name, nil)
			if err != nil {
				return err
			}
			s := st.Slot(slotName)
			if s.Lane.Value == "" {
				return fmt.Errorf("slot %s is not bound to a lane", slotName)
			}
			app, err := lanes.FileSource(cfg, vars)
			if err != nil {
				return err
			}
			set, err := e.slotSet(ctx, cfg, slot, s)
			if err != nil {
				return err
			}
			want := steady(slot, set)
			// Pre-flight, as a swap's: a version that cannot place at the slot's scale is refused
			// before its lane moves.
			if _, err := e.lanes.Plan(ctx, cfg, s.Lane.Value, app, want); err != nil {
				return fmt.Errorf("pre-flight: %w; nothing was changed", err)
			}
			dctx, cancel := context.WithTimeout(ctx, cfg.DeployTimeout)
			defer cancel()
			ro, err := e.lanes.Ensure(dctx, cfg, s.Lane.Value, app, want, lanes.GateHealthy)
			if err != nil {
				return e.putSlotBack(ctx, cfg, slotName, err)
			}
			if _, err := e.store.Txn(e.store.BindOps(cfg.Name, slotName, s, s.Lane.Value, ro.Version)); err != nil {
				return fmt.Errorf("bind %s to lane %s version %d: %w", slotName, s.Lane.Value, ro.Version, err)
			}
			r.note(api.PhaseDeploy, fmt.Sprintf("lane %s version %d (%s)", s.Lane.Value, ro.Version, ro.Change))
			return nil
		})
		if err == nil && slot.AutoSwap != "" {
			r.op.Next = &api.FollowUp{Kind: api.KindSwap, Trigger: "auto_swap", Source: slotName, Target: slot.AutoSwap}
		}
		return err
	}
}

// putSlotBack puts a slot's lane back on what KV says after a failed phase, on a context of its
// own (the failure may be the operation's own deadline), and says how that went.
func (e *Engine) putSlotBack(ctx context.Context, cfg *config.Site, slotName string, cause error) error {
	ctx, cancel := e.restoreContext(ctx)
	defer cancel()
	st, err := e.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return fmt.Errorf("%w; restoring %s failed: %v", cause, slotName, err)
	}
	lane := st.Slot(slotName).Lane.Value
	ro, err := e.restoreSlot(ctx, cfg, slotName, lanes.GateHealthy)
	if err != nil {
		return fmt.Errorf("%w; restoring lane %s for %s failed too: %v", cause, lane, slotName, err)
	}
	return fmt.Errorf("%w (lane %s restored to %s, version %d)", cause, lane, slotName, ro.Version)
}
