package agent

import (
	"context"
	"fmt"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// recoverOp takes over an operation that a stopped daemon left journaled. A swap that stopped
// between two phases goes on from the next one (a previewing swap waits again for complete or
// cancel); a swap past its switch is settled; a swap that stopped inside a phase before its
// switch is undone, make before break: the target's lane gets its routes back before the
// source's lane is put back. Any other operation is undone by converging every lane to KV,
// which still binds the slots to the versions they had before it.
func (a *Agent) recoverOp(cfg *config.Site, op *api.Operation) opFunc {
	swap := op.Kind == api.KindSwap || op.Kind == api.KindRollback
	if swap && cfg.Slot(op.Source) != nil && cfg.Slot(op.Target) != nil {
		if op.State == api.StatePreviewing || op.Switched || !midPhase(op) {
			return a.swapOp(cfg, op.Source, op.Target)
		}
		return func(ctx context.Context, r *run) error {
			cause := fmt.Errorf("interrupted in state %s by a daemon restart", op.State)
			rctx, cancel := a.restoreContext()
			defer cancel()
			if _, err := a.restoreSlot(rctx, cfg, op.Target, gateTags); err != nil {
				return fmt.Errorf("%w; putting %s's lane back failed: %v", cause, op.Target, err)
			}
			return a.putSlotBack(cfg, op.Source, cause)
		}
	}
	return func(ctx context.Context, r *run) error {
		if _, err := a.converge(ctx, cfg, cfg.SlotNames()); err != nil {
			return fmt.Errorf("interrupted in state %s by a daemon restart; putting the lanes back failed: %w", op.State, err)
		}
		return fmt.Errorf("interrupted in state %s by a daemon restart; every lane runs what KV says for its slot", op.State)
	}
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
