package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/config"
)

// What a swap reads: the state it starts from, and what happened to a write whose answer was lost.

// load reads both slots' bindings and settings, and the app each lane runs.
func (w *swap) load(ctx context.Context) error {
	st, err := w.eng.store.LoadSlots(w.cfg.Name, nil)
	if err != nil {
		return err
	}
	s, t := st.Slots[w.source.Name], st.Slots[w.target.Name]
	if s == nil || t == nil || s.Lane.Value == "" || t.Lane.Value == "" {
		return fmt.Errorf("slots %s and %s must both be bound to a lane", w.source.Name, w.target.Name)
	}
	if w.op.Switched {
		// A swap resumed after the switch: KV already holds the exchanged bindings.
		s, t = t, s
		sset, err := w.eng.resolveScale(ctx, w.cfg, w.target, s.Lane.Value, s.Values())
		if err != nil {
			return err
		}
		tset, err := w.eng.resolveScale(ctx, w.cfg, w.source, t.Lane.Value, t.Values())
		if err != nil {
			return err
		}
		w.src, w.tgt = swappedBack(sset, tset)
		w.tgtSick = w.op.TargetSick
	} else {
		if w.src, err = w.eng.slotSet(ctx, w.cfg, w.source, s); err != nil {
			return err
		}
		if w.tgt, err = w.eng.slotSet(ctx, w.cfg, w.target, t); err != nil {
			return err
		}
		w.keepLiveScale(w.source, s, w.src)
		w.keepLiveScale(w.target, t, w.tgt)
	}
	w.srcLane, w.tgtLane = s.Lane.Value, t.Lane.Value
	w.srcVersion, w.tgtVersion = s.BoundVersion(), t.BoundVersion()
	if w.srcApp, err = w.eng.lanes.Submission(ctx, w.cfg, w.srcLane, s.BoundVersion(), true); err != nil {
		return err
	}
	if w.tgtApp, err = w.eng.lanes.Submission(ctx, w.cfg, w.tgtLane, t.BoundVersion(), true); err != nil {
		return err
	}
	return nil
}

// keepLiveScale writes the counts a "live" slot runs into its scale document as the swap
// takes them, so KV shows the scale the swap keeps; a lost race only leaves the older counts.
func (w *swap) keepLiveScale(slot *config.Slot, ss *store.SlotState, set store.SlotSettings) {
	if !slot.ScaleLive || set.Scale == nil {
		return
	}
	_, _ = w.eng.store.Txn(w.eng.store.ScaleOps(w.cfg.Name, slot.Name, ss.Scale, set.Scale))
}

// swappedBack recovers the settings of source and target as they were before the exchange,
// from the lanes' slots after it: sticky settings and scale stayed, swappable ones travelled.
func swappedBack(srcLaneSlot, tgtLaneSlot store.SlotSettings) (src, tgt store.SlotSettings) {
	// srcLaneSlot is the slot now served by the source lane (the target), tgtLaneSlot the source.
	return store.SlotSettings{Settings: srcLaneSlot.Settings, Sticky: tgtLaneSlot.Sticky, Scale: tgtLaneSlot.Scale, Live: tgtLaneSlot.Live},
		store.SlotSettings{Settings: tgtLaneSlot.Settings, Sticky: srcLaneSlot.Sticky, Scale: srcLaneSlot.Scale, Live: srcLaneSlot.Live}
}

// exchanged finds out whether an exchange whose answer was lost (cause) committed: the index
// the journal holds it at when it did, or cause when it did not and never will. The journal
// of a committed exchange says switched. One that says otherwise at the index the exchange
// checked is written again at that index: once that write lands, the exchange cannot. Consul
// is asked until it answers or the switch's deadline ends.
func (r *run) exchanged(ctx context.Context, cause error) (uint64, error) {
	kv := r.eng.store
	for attempt := 1; ; attempt++ {
		cur, err := kv.Journaled(r.op)
		switch {
		case err != nil:
		case cur == nil || cur.ID != r.op.ID:
			return 0, fmt.Errorf("%w; the journal no longer holds operation %s", cause, r.op.ID)
		case cur.Switched:
			r.eng.logger.Info("consul's answer to the exchange was lost, but it committed", "site", r.op.Site, "group", r.op.Group, "op", r.op.ID, "error", cause)
			return cur.Index, nil
		case cur.Index != r.op.Index:
			return 0, cause // the journal moved on: the exchange's check fails for good
		default:
			err = r.write()
			if err == nil {
				return 0, cause
			}
			if errors.Is(err, store.ErrStopping) {
				return 0, err
			}
			if errors.Is(err, store.ErrConflict) {
				continue // it landed meanwhile, or the journal moved: read again
			}
		}
		if r.lead.Err() != nil {
			return 0, store.ErrStopping
		}
		if serr := query.Sleep(ctx, query.Backoff(attempt)); serr != nil {
			return 0, fmt.Errorf("%w: the exchange's answer was lost (%v) and consul did not tell whether it committed (%v)", errUndecided, cause, err)
		}
	}
}
