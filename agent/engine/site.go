package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"

	"github.com/hashicorp/go-hclog"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

const (
	// resyncEvery is how often an idle site is compared with Nomad and Consul even when no
	// watch said anything changed: a safety net, not the way changes are noticed.
	resyncEvery = 10 * time.Minute
	// checkRetry is the pause before comparing again after a comparison failed.
	checkRetry = 5 * time.Second
	// checkTimeout bounds one comparison: a Nomad or Consul that hangs must not stop the
	// site from ever comparing again.
	checkTimeout = 2 * time.Minute
	// convergeHold is the pause after a converge operation failed before the same lanes are
	// tried again (doubling with each failure in a row, up to maxConvergeHold), so a lane that
	// cannot be placed does not turn into a loop of failing operations.
	convergeHold    = 30 * time.Second
	maxConvergeHold = 10 * time.Minute
)

// triggerConverge marks the operations that the site starts itself to converge its lanes.
const triggerConverge = "converge"

// site owns one declared site: one goroutine (run) holds its state and makes every decision,
// fed by events: leadership gained or lost, new declarations, the watches of KV, Nomad and
// Consul, API requests, operations ending. Others read the published view only.
//
// While this daemon leads, the owner brings the site up (bind and seed in KV, take over an
// operation left journaled), then keeps it converged: whenever the site is idle and something
// observed changed, it compares every lane with what KV says and starts a converge operation
// for the lanes that differ (DESIGN.md §3, "Recovery and convergence").
type site struct {
	eng  *Engine
	name string
	log  hclog.Logger

	calls   chan func()
	changed chan struct{}
	stopped chan struct{}

	// Owned by run.
	cfg        *config.Site
	lead       context.Context // nil while this daemon does not lead
	ready      bool
	booting    bool
	checking   bool
	dirty      bool
	running    *run
	reboot     bool // the declarations changed while booting: boot again
	bootTimer  *time.Timer
	checkTimer *time.Timer
	// failures counts converge operations that failed in a row; holdUntil is when the next
	// may start.
	failures  int
	holdUntil time.Time
	// unmoved is an operation that ended here but is not in history yet (Consul refused the
	// move): it is moved before anything else starts, and tried again until it is.
	unmoved *api.Operation

	mu   sync.Mutex
	view siteView
}

// siteView is what the owner publishes for readers on other goroutines.
type siteView struct {
	cfg     *config.Site
	ready   bool
	running *run
}

func newSite(e *Engine, cfg *config.Site) *site {
	s := &site{
		eng: e, name: cfg.Name, log: e.logger.With("site", cfg.Name), cfg: cfg,
		calls: make(chan func()), changed: make(chan struct{}, 1), stopped: make(chan struct{}),
	}
	s.publish()
	return s
}

// snapshot returns the site's published state.
func (s *site) snapshot() siteView {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view
}

func (s *site) config() *config.Site { return s.snapshot().cfg }

func (s *site) publish() {
	s.mu.Lock()
	s.view = siteView{cfg: s.cfg, ready: s.ready && s.lead != nil, running: s.running}
	s.mu.Unlock()
}

// post runs fn on the owner goroutine; it returns false when the owner has stopped.
func (s *site) post(fn func()) bool {
	select {
	case s.calls <- fn:
		return true
	case <-s.stopped:
		return false
	}
}

// do runs fn on the owner goroutine and returns its answer.
func (s *site) do(fn func() (*api.Operation, error)) (*api.Operation, error) {
	type answer struct {
		op  *api.Operation
		err error
	}
	ch := make(chan answer, 1)
	if !s.post(func() { op, err := fn(); ch <- answer{op, err} }) {
		return nil, fmt.Errorf("%w: site %s is no longer managed", ErrNotFound, s.name)
	}
	ans := <-ch
	return ans.op, ans.err
}

// poke tells the owner that something it observes may have changed.
func (s *site) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// run is the owner goroutine. It returns when ctx ends (the site was removed or the daemon
// stops); an operation still running goes on and is journaled as usual.
func (s *site) run(ctx context.Context) {
	defer close(s.stopped)
	defer s.unlead()
	resync := time.NewTicker(resyncEvery)
	defer resync.Stop()
	for {
		s.publish()
		var lost <-chan struct{}
		if s.lead != nil {
			lost = s.lead.Done()
		}
		select {
		case <-ctx.Done():
			return
		case <-lost:
			s.unlead()
		case fn := <-s.calls:
			fn()
		case <-s.changed:
			s.dirty = true
			s.check()
		case <-resync.C:
			s.dirty = true
			s.check()
		}
	}
}

// setLead hands the site the context of a leadership: it ends when the lock is lost.
func (s *site) setLead(lead context.Context) {
	s.post(func() {
		s.unlead()
		s.lead = lead
		s.boot()
	})
}

// unlead forgets the leadership and stops the site's timers; its running operation stops at
// its next phase boundary (run.phase checks the leadership). The watches are the daemon's
// (watchShared): they end with the leadership.
func (s *site) unlead() {
	s.lead, s.ready, s.booting, s.checking, s.reboot = nil, false, false, false, false
	for _, t := range []*time.Timer{s.bootTimer, s.checkTimer} {
		if t != nil {
			t.Stop()
		}
	}
}

// setConfig takes new declarations of the site (a reload): added slots are bound and seeded,
// and changed routes or settings reach the lanes through convergence.
func (s *site) setConfig(cfg *config.Site) {
	s.post(func() {
		s.cfg = cfg
		if s.lead != nil {
			s.ready = false
			s.reboot = s.booting // a boot under way started with the old declarations
			s.boot()
		}
	})
}

// later runs fn on the owner after d on timer t, unless the leadership it was planned under
// ended; a later call on the same timer replaces the earlier.
func (s *site) later(t **time.Timer, d time.Duration, fn func()) {
	lead := s.lead
	if *t != nil {
		(*t).Stop()
	}
	*t = time.AfterFunc(d, func() {
		s.post(func() {
			if s.lead == lead && lead != nil {
				fn()
			}
		})
	})
}

// boot brings the site up in KV: lanes bound, settings seeded and migrated; then takes over an
// operation that a stopped daemon left journaled, or compares the lanes.
func (s *site) boot() {
	if s.lead == nil || s.booting {
		return
	}
	s.booting = true
	lead := s.lead
	attempt := 0
	var try func()
	try = func() {
		attempt++
		cfg := s.cfg // each attempt with the declarations as they are now
		go func() {
			op, err := s.eng.bootstrap(lead, cfg)
			s.post(func() {
				if s.lead != lead {
					return
				}
				if s.reboot {
					s.reboot, attempt = false, 0
					try()
					return
				}
				if err != nil {
					s.log.Error("site not ready", "error", err, "attempt", attempt)
					s.later(&s.bootTimer, query.Backoff(attempt+2), try)
					return
				}
				s.booting, s.ready = false, true
				s.log.Info("site ready")
				if op != nil && s.running == nil {
					if r := s.eng.inflight(s.name); r != nil {
						// A run of an earlier owner of this site (removed by a reload, then
						// declared again) still executes it: take over once it stopped.
						go func() {
							<-r.done
							s.post(func() {
								if s.lead == lead {
									s.ready = false
									s.boot()
								}
							})
						}()
						return
					}
					s.resume(op)
					return
				}
				s.dirty = true
				s.check()
			})
		}()
	}
	try()
}

// check compares the lanes with KV when the site is idle and something may have changed, and
// starts a converge operation for the slots whose lanes differ.
func (s *site) check() {
	if s.lead == nil || !s.ready || s.running != nil || s.checking || !s.dirty || s.unmoved != nil {
		return
	}
	if wait := time.Until(s.holdUntil); wait > 0 {
		s.later(&s.checkTimer, wait, s.check)
		return
	}
	s.checking, s.dirty = true, false
	lead, cfg := s.lead, s.cfg
	go func() {
		ctx, cancel := context.WithTimeout(lead, checkTimeout)
		slots, err := s.eng.differing(ctx, cfg)
		cancel()
		s.post(func() {
			if s.lead != lead {
				return
			}
			s.checking = false
			switch {
			case err != nil:
				s.log.Warn("cannot compare the lanes with kv", "error", err)
				s.dirty = true
				s.later(&s.checkTimer, checkRetry, s.check)
			case len(slots) > 0 && s.running == nil:
				s.log.Info("lanes differ from kv; converging", "slots", fmt.Sprint(slots))
				op := &api.Operation{Kind: api.KindSettings, Trigger: triggerConverge}
				if _, err := s.startOp(op, []string{api.PhaseRollout}, s.eng.convergeOp(cfg, slots)); err != nil {
					s.log.Warn("cannot start converging", "error", err)
				}
			default:
				s.check()
			}
		})
	}()
}

// convergeNow compares the lanes with KV at once, on the owner, and starts converging them when
// the site is idle: a settings change made through the API is running when its answer leaves.
// A comparison that a watch started meanwhile finds the operation running and starts nothing.
func (s *site) convergeNow() (*api.Operation, error) {
	s.dirty = true
	if s.lead == nil || !s.ready || s.running != nil || s.unmoved != nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(s.lead, checkTimeout)
	slots, err := s.eng.differing(ctx, s.cfg)
	cancel()
	if err != nil || len(slots) == 0 {
		return nil, err
	}
	s.dirty = false
	op := &api.Operation{Kind: api.KindSettings, Trigger: triggerConverge}
	return s.startOp(op, []string{api.PhaseRollout}, s.eng.convergeOp(s.cfg, slots))
}

// startOp journals op as the site's running operation and carries it out in the background.
// It refuses while another operation runs, except a swap that only monitors: a new operation
// ends that monitoring early, with no rollback. Runs on the owner.
func (s *site) startOp(op *api.Operation, phases []string, fn opFunc) (*api.Operation, error) {
	e := s.eng
	if !e.Leading() {
		return nil, ErrNotLeader
	}
	if s.lead == nil || !s.ready {
		// Leading, but the owner has not heard of the leadership yet or is still bringing
		// the site up.
		return nil, fmt.Errorf("site %s is %w; nothing was started, retry in a few seconds", s.name, ErrStarting)
	}
	var held *api.Operation
	if r := s.running; r != nil {
		if err := r.endMonitor(); err != nil {
			return nil, err
		}
		s.running = nil
		held = leftHeld(r.op)
	}
	if err := s.moveUnmoved(); err != nil {
		return nil, fmt.Errorf("%w: operation %s ended but could not be recorded in history yet: %v", store.ErrBusy, s.unmoved.ID, err)
	}
	if held != nil && !touchesHeld(op, held.Source) {
		phases = append([]string{api.PhaseSettle}, phases...)
		fn = s.eng.settleFirst(s.cfg, held, fn)
	}
	now := time.Now().UTC()
	op.ID, op.Site, op.State = newID(), s.name, api.StatePending
	op.CreatedAt, op.UpdatedAt = now, now
	for _, p := range phases {
		op.Phases = append(op.Phases, api.Phase{Name: p, State: api.PhasePending})
	}
	err := e.store.CreateOperation(op)
	if errors.Is(err, store.ErrBusy) {
		// An operation that ended but was never moved into history is moved now.
		if pending, perr := e.store.PendingOperation(s.name, s.cfg.HistoryLimit); perr == nil && pending == nil {
			err = e.store.CreateOperation(op)
		}
	}
	if err != nil {
		if errors.Is(err, store.ErrBusy) {
			return nil, fmt.Errorf("%w: another operation is journaled in consul for site %s", store.ErrBusy, s.name)
		}
		return nil, err
	}
	e.metrics.OpsStarted.WithLabelValues(s.name, op.Kind).Inc()
	s.log.Info("operation started", "op", op.ID, "kind", op.Kind, "trigger", op.Trigger)
	s.execute(op, fn)
	return e.ops.get(op.ID), nil
}

// resume takes over an operation that a stopped daemon left journaled.
func (s *site) resume(op *api.Operation) {
	s.log.Info("recovering operation", "op", op.ID, "kind", op.Kind, "state", op.State)
	s.execute(op, s.eng.recoverOp(s.cfg, op))
}

// execute runs fn as op's run in the background; the owner hears when it ended.
func (s *site) execute(op *api.Operation, fn opFunc) {
	r := s.eng.newRun(s, s.lead, op)
	r.historyLimit = s.cfg.HistoryLimit
	s.running = r
	s.eng.track(s.name, r)
	go func() {
		r.execute(fn)
		s.eng.untrack(s.name, r)
		s.post(func() { s.ended(r) })
	}()
}

// ended is the owner's part of an operation's end: the site is idle again, so the follow-up
// the operation asked for starts, or the lanes are compared with KV.
func (s *site) ended(r *run) {
	if s.running == r {
		s.running = nil
	}
	if r.unmoved {
		op := *r.op
		s.unmoved = &op
		s.retryMove()
	}
	if r.left && s.lead != nil && s.lead != r.lead {
		// The run stopped with a leadership this daemon has won back since: the operation is
		// still journaled, and now there is no other executor of it.
		s.ready = false
		s.boot()
		return
	}
	if r.op.Trigger == triggerConverge {
		if r.op.State == api.StateFailed {
			s.failures++
			hold := min(convergeHold<<min(s.failures-1, 5), maxConvergeHold)
			s.holdUntil = time.Now().Add(hold)
			s.log.Warn("converging failed; trying again later", "in", hold, "error", r.op.Error)
		} else {
			s.failures, s.holdUntil = 0, time.Time{}
		}
	}
	if r.after != nil && s.running == nil {
		r.after(s)
	}
	s.dirty = true
	s.check()
}

// moveUnmoved moves the operation that ended here but is not in history yet, if any.
func (s *site) moveUnmoved() error {
	if s.unmoved == nil {
		return nil
	}
	if err := s.eng.store.MoveToHistory(s.unmoved, s.cfg.HistoryLimit); err != nil {
		return err
	}
	s.log.Info("finished operation taken out of the journal", "op", s.unmoved.ID, "in_history", !s.unmoved.Unchanged)
	s.unmoved = nil
	return nil
}

// retryMove tries moveUnmoved again until it succeeds; then the site is compared again.
func (s *site) retryMove() {
	time.AfterFunc(checkRetry, func() {
		s.post(func() {
			if s.unmoved == nil || s.lead == nil {
				s.unmoved = nil // a leader that follows finds it in the journal
				return
			}
			if err := s.moveUnmoved(); err != nil {
				s.retryMove()
				return
			}
			s.dirty = true
			s.check()
		})
	})
}
