package engine

import (
	"context"
	"fmt"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// recoverOp takes over an operation that a stopped daemon left journaled. A swap rolls forward
// once its warm-up succeeded, or at once when its candidate is a held lane (the candidate is
// warm and health-gated): it goes on from the
// phase it stopped in, which is safe to run again. A swap that a daemon handed off when it
// stopped gracefully between two phases goes on from the next one, and a previewing swap waits
// again for complete or cancel. Any other swap stopped before its warm-up succeeded (a crash,
// a lost lock) is undone, make before break: the target's lane gets its routes back before
// the source's lane is put back. Any other operation is undone by
// converging every lane to KV, which still binds the slots to the versions they had before.
func (e *Engine) recoverOp(cfg *config.Site, op *api.Operation) opFunc {
	if op.GroupOperation != "" {
		// A member's part of a group operation: the group decides, from its own journal.
		return e.memberOp(cfg)
	}
	swap := op.Kind == api.KindSwap || op.Kind == api.KindRollback
	if swap && cfg.Slot(op.Source) != nil && cfg.Slot(op.Target) != nil {
		forward := op.State == api.StatePreviewing || op.Switched || op.HandedOff || op.Instant || succeeded(op, api.PhaseWarm)
		if forward && !ended(op) {
			op.HandedOff = false
			return e.swapOp(cfg, op.Source, op.Target)
		}
		return func(ctx context.Context, r *run) error {
			return e.undoInterrupted(ctx, cfg, op, fmt.Errorf("interrupted in state %s by a daemon restart", op.State))
		}
	}
	return func(ctx context.Context, r *run) error {
		if _, _, err := e.converge(ctx, cfg, cfg.SlotNames()); err != nil {
			return fmt.Errorf("interrupted in state %s by a daemon restart; putting the lanes back failed: %w", op.State, err)
		}
		return fmt.Errorf("interrupted in state %s by a daemon restart; every lane runs what KV says for its slot", op.State)
	}
}

// undoInterrupted undoes a swap that a stopped daemon left before its warm-up succeeded, make
// before break: the target's lane gets its routes back before the source's lane is put back.
func (e *Engine) undoInterrupted(ctx context.Context, cfg *config.Site, op *api.Operation, cause error) error {
	rctx, cancel := e.restoreContext(ctx)
	defer cancel()
	if _, err := e.restoreSlot(rctx, cfg, op.Target, lanes.GateTags); err != nil {
		return fmt.Errorf("%w; putting %s's lane back failed: %v", cause, op.Target, err)
	}
	return e.putSlotBack(ctx, cfg, op.Source, cause)
}

// succeeded reports whether the named phase of op succeeded.
func succeeded(op *api.Operation, phase string) bool {
	p := op.Phase(phase)
	return p != nil && p.State == api.PhaseSucceeded
}

// ended reports whether a phase of op failed or was cancelled: the operation was over, only
// its outcome did not reach the journal. It is never run forward again.
func ended(op *api.Operation) bool {
	for _, p := range op.Phases {
		if p.State == api.PhaseFailed || p.State == api.PhaseCancelled {
			return true
		}
	}
	return false
}
