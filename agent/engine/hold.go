package engine

import (
	"context"
	"fmt"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// leftHeld returns the swap that ended leaving its former target lane held for the next
// operation, or nil.
func leftHeld(op *api.Operation) *api.Operation {
	p := op.Phase(api.PhaseSettle)
	if (op.Kind != api.KindSwap && op.Kind != api.KindRollback) || !op.Switched || p == nil || p.State != api.PhaseSkipped {
		return nil
	}
	return op
}

// touchesHeld reports whether op moves the lane of the slot whose lane is held anyway: a swap
// from or into it (an instant swap back, or one that moves the lane through its own phases),
// a deploy or scale of it (its rollout gives the lane the slot's settings). Any other
// operation settles the held lane first.
func touchesHeld(op *api.Operation, slot string) bool {
	switch op.Kind {
	case api.KindSwap, api.KindRollback:
		return op.Source == slot || op.Target == slot
	case api.KindDeploy, api.KindScale:
		return op.Slot == slot
	}
	return false
}

// settleFirst runs the settle that a swap left to the next operation (the hold ended because
// this operation started) as this operation's first phase, then the operation itself.
func (e *Engine) settleFirst(cfg *config.Site, swap *api.Operation, fn opFunc) opFunc {
	return func(ctx context.Context, r *run) error {
		err := r.phase(api.PhaseSettleHeld, api.StateSettling, func() error {
			sctx, cancel := context.WithTimeout(ctx, cfg.DeployTimeout)
			defer cancel()
			ro, err := e.restoreSlot(sctx, cfg, swap.Source, lanes.GateHealthy)
			if err != nil {
				return fmt.Errorf("settle the lane held by swap %s into %s: %w", swap.ID, swap.Source, err)
			}
			r.note(api.PhaseSettleHeld, fmt.Sprintf("lane held by swap %s: version %d serves %s", swap.ID, ro.Version, swap.Source))
			return nil
		})
		if err != nil {
			return err
		}
		return fn(ctx, r)
	}
}

// holdEvent is what ended a wait of the monitor and hold: a control sent to the run, or the
// target's degradation; neither on the deadline.
type holdEvent struct {
	control  string
	degraded error
}

// await blocks until deadline, a control that the monitor and hold act on, the daemon
// stopping, or watch (when not nil) returning an error: the target degrading past the
// threshold for the grace period.
func (r *run) await(ctx context.Context, deadline time.Time, watch func(context.Context) error) (holdEvent, error) {
	wctx, cancel := context.WithDeadline(ctx, deadline)
	degraded := make(chan error, 1)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if watch != nil {
			if err := watch(wctx); err != nil {
				degraded <- err
			}
		}
	}()
	defer func() { cancel(); <-watched }() // the watch journals notes: it ends before the run goes on
	for {
		select {
		case c := <-r.control:
			switch c {
			case ctlEndMonitor, ctlSettle, ctlFinish:
				return holdEvent{control: c}, nil
			}
		case err := <-degraded:
			return holdEvent{degraded: err}, nil
		case <-r.eng.daemon.Done():
			return holdEvent{}, store.ErrStopping
		case <-wctx.Done():
			if err := ctx.Err(); err != nil {
				return holdEvent{}, err
			}
			return holdEvent{}, nil
		}
	}
}

// watchHealth blocks until ctx ends (nil) or the target lane's passing fraction stays below
// the threshold for the grace period (an error that says what was seen).
func (w *swap) watchHealth(ctx context.Context, m *config.Monitor, want int) error {
	var badSince time.Time
	var degraded error
	_ = w.eng.follow.Follow(ctx, query.Opts{Backend: "consul", Wait: query.BlockingWait, Always: true},
		func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
			if !badSince.IsZero() {
				wait = time.Second // look again when the grace period may have run out
			}
			entries, idx, err := w.eng.lanes.Entries(ctx, w.cfg, w.srcLane, index, wait)
			if err != nil {
				return 0, err
			}
			passing := 0
			for _, e := range entries {
				if e.Checks.AggregatedStatus() == consulapi.HealthPassing {
					passing++
				}
			}
			total := max(want, len(entries))
			healthy := total > 0 && float64(passing)/float64(total) >= m.Threshold
			switch {
			case healthy:
				badSince = time.Time{}
			case badSince.IsZero():
				badSince = time.Now()
				w.noteWatch(api.PhaseMonitor, fmt.Sprintf("%d/%d instances of %s passing", passing, total, w.target.Name))
			case time.Since(badSince) >= m.Grace:
				degraded = fmt.Errorf("%s degraded: %d/%d instances passing for %s (threshold %.0f%%)",
					w.target.Name, passing, total, time.Since(badSince).Round(time.Second), m.Threshold*100)
			}
			return idx, nil
		},
		func(uint64) bool { return degraded != nil })
	return degraded
}

// instanceCount is how many instances the target lane has as the monitor starts; fewer
// instances than that later counts as unhealthy.
func (w *swap) instanceCount(ctx context.Context) int {
	entries, _, err := w.eng.lanes.Entries(ctx, w.cfg, w.srcLane, 0, 0)
	if err != nil {
		return 0
	}
	return len(entries)
}
