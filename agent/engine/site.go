package engine

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/slotd/slotd/agent/query"
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
	// orphanCheck is how soon after a start whose journal entry Consul did not confirm the
	// owner looks whether the entry landed after all: it then adopts or clears it.
	orphanCheck = 3 * time.Second
)

// triggerConverge marks the operations that the site starts itself to converge its lanes.
const triggerConverge = "converge"

// site owns one declared site: one goroutine (run) holds its state and makes every decision,
// each following a typed event (events.go): leadership gained or lost, new declarations, the
// watches of KV, Nomad and Consul, API requests, and the answers of the work it runs beside
// itself. The owner never waits on I/O: bringing the site up, comparing its lanes, journaling
// a new operation and reading the history run on goroutines of their own and report back as
// events. Others read what it publishes (status) only.
//
// While this daemon leads, the owner brings the site up (bind and seed in KV, take over an
// operation left journaled), then keeps it converged: whenever the site is idle and something
// observed changed, it compares every lane with what KV says and starts a converge operation
// for the lanes that differ (DESIGN.md §3, "Recovery and convergence").
type site struct {
	eng  *Engine
	name string
	log  hclog.Logger

	events  chan event
	changed chan struct{}
	stopped chan struct{}

	// Owned by run.
	cfg         *config.Site
	lead        context.Context // nil while this daemon does not lead
	ready       bool
	booting     bool
	bootAttempt int
	reboot      bool // the declarations changed while booting: boot again
	running     *run
	// starting is the operation whose journal entry is being written; queued is the one that
	// waits for a monitoring swap to end (at most one of each, and neither while the other).
	starting *startReq
	queued   *startReq
	// next is an ended operation whose follow-up (its Next) has not started yet.
	next         *api.Operation
	nextAttempts int
	// comparing is set while a comparison runs beside the owner; compared counts those that
	// started; waiters wait for the first comparison that starts after they asked.
	comparing bool
	compared  int
	waiters   []waiter
	dirty     bool
	timerSeq  int
	// bootAgain is set when a boot found a journaled operation while a start was being
	// journaled: the site is brought up again once that start is decided.
	bootAgain bool
	timers    map[timerKind]*timer
	// failures counts converge operations that failed in a row; holdUntil is when the next
	// may start.
	failures  int
	holdUntil time.Time
	// groupHeld is a group operation's part that ended leaving the site's former target lane
	// held for the group's next operation (timerGroupHeld bounds the wait).
	groupHeld *api.Operation
	// unmoved is an operation that ended here but is not in history yet (Consul refused the
	// move): it is moved before anything else starts, and tried again until it is.
	unmoved *api.Operation
	// status is the site as the owner's last look saw it (look); observing is set while a look
	// runs, stale when something changed since it began; observers wait for the next.
	status    *observed
	observing bool
	stale     bool
	observers []observer

	mu   sync.Mutex
	view published
}

// published is what the owner publishes for readers on other goroutines.
type published struct {
	cfg     *config.Site
	ready   bool
	running *run
	status  *observed
}

func newSite(e *Engine, cfg *config.Site) *site {
	s := &site{
		eng: e, name: cfg.Name, log: e.logger.With("site", cfg.Name), cfg: cfg,
		events: make(chan event), changed: make(chan struct{}, 1), stopped: make(chan struct{}),
		timers: map[timerKind]*timer{},
	}
	s.publish()
	return s
}

// snapshot returns the site's published state.
func (s *site) snapshot() published {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view
}

func (s *site) config() *config.Site { return s.snapshot().cfg }

func (s *site) publish() {
	s.mu.Lock()
	s.view = published{cfg: s.cfg, ready: s.ready && s.lead != nil, running: s.running, status: s.status}
	s.mu.Unlock()
}

// send hands the owner an event; false when the owner has stopped.
func (s *site) send(ev event) bool {
	select {
	case s.events <- ev:
		return true
	case <-s.stopped:
		return false
	}
}

// ask sends a request and waits for its answer, which the owner gives at once or once the
// work it started beside itself reported back.
func (s *site) ask(request func(reply chan<- answer) event) (*api.Operation, error) {
	reply := make(chan answer, 1)
	if !s.send(request(reply)) {
		return nil, fmt.Errorf("%w: site %s is no longer managed", ErrNotFound, s.name)
	}
	select {
	case a := <-reply:
		return a.op, a.err
	case <-s.stopped:
		return nil, fmt.Errorf("%w: site %s is no longer managed", ErrNotFound, s.name)
	}
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
		case ev := <-s.events:
			s.handle(ev)
		case <-s.changed:
			s.dirty = true
			s.refresh()
			s.check()
		case <-resync.C:
			s.dirty = true
			s.check()
		}
	}
}

// unlead forgets the leadership: its timers stop, requests waiting for it are refused, and its
// running operation stops at its next phase boundary (run.phase checks the leadership). The
// watches are the engine's: they end with the leadership.
func (s *site) unlead() {
	s.lead, s.ready, s.booting, s.reboot, s.comparing, s.observing, s.status = nil, false, false, false, false, false, nil
	for _, o := range s.observers {
		o.reply <- nil
	}
	s.observers = nil
	for k, t := range s.timers {
		t.t.Stop()
		delete(s.timers, k)
	}
	for _, req := range []*startReq{s.starting, s.queued} {
		if req != nil {
			req.answer(nil, ErrNotLeader)
		}
	}
	s.starting, s.queued, s.next, s.groupHeld = nil, nil, nil, nil
	s.answerWaiters(nil, nil)
}

// refresh has the owner look at the site again: something it shows changed.
func (s *site) refresh() {
	if s.observing {
		s.stale = true
		return
	}
	s.look()
}

// after sends the owner a timer event of kind after d, unless the leadership it was planned
// under has ended by then; a later call of the same kind replaces the earlier.
func (s *site) after(kind timerKind, d time.Duration) {
	if t := s.timers[kind]; t != nil {
		t.t.Stop()
	}
	s.timerSeq++
	t := &timer{seq: s.timerSeq}
	ev := evTimer{kind: kind, lead: s.lead, seq: t.seq}
	t.t = time.AfterFunc(d, func() { s.send(ev) })
	s.timers[kind] = t
}

// timer is a pending timer of the owner; seq tells it from one that replaced it.
type timer struct {
	t   *time.Timer
	seq int
}

// stopTimer stops the pending timer of kind, if any.
func (s *site) stopTimer(kind timerKind) {
	if t := s.timers[kind]; t != nil {
		t.t.Stop()
		delete(s.timers, kind)
	}
}

// boot brings the site up in KV beside the owner: lanes bound, settings seeded and migrated,
// then an operation that a stopped daemon left journaled is taken over (evBooted).
func (s *site) boot() {
	if s.lead == nil || s.booting {
		return
	}
	s.booting, s.bootAttempt = true, 0
	s.tryBoot()
}

func (s *site) tryBoot() {
	s.bootAttempt++
	lead, cfg := s.lead, s.cfg // each attempt with the declarations as they are now
	go func() {
		var b booted
		var err error
		b.pending, err = s.eng.bootstrap(lead, cfg)
		if err == nil && b.pending == nil {
			b.next, err = s.eng.unstartedFollowUp(cfg)
		}
		s.send(evBooted{lead: lead, boot: b, err: err})
	}()
}

// booted is what bringing a site up found: an operation left journaled, or else an ended
// operation whose follow-up no daemon started.
type booted struct {
	pending, next *api.Operation
}

// followUpLookBack is how many of the newest operations in history are looked through for a
// follow-up that did not start: converge operations that ran in between are passed over.
const followUpLookBack = 5

// unstartedFollowUp is the newest operation in the site's history, converge operations passed
// over, when it asks for a follow-up (Operation.Next): nothing has started since, so its
// daemon stopped before starting it.
func (e *Engine) unstartedFollowUp(cfg *config.Site) (*api.Operation, error) {
	var next *api.Operation
	err := e.store.WalkHistory(cfg.Name, 0, followUpLookBack, func(op *api.Operation) bool {
		if op.Trigger == triggerConverge {
			return true
		}
		if op.Next != nil {
			next = op
		}
		return false
	})
	return next, err
}

// check compares the lanes with KV when the site is idle and something may have changed.
func (s *site) check() {
	if !s.idle() || s.comparing || !s.dirty || s.next != nil || s.timers[timerOrphan] != nil {
		// A follow-up goes first; a journal that may hold an operation no one runs is looked
		// at first.
		return
	}
	if wait := time.Until(s.holdUntil); wait > 0 {
		s.after(timerCheck, wait)
		return
	}
	s.compare()
}

// idle reports whether the site may start something of its own: it is up under a
// leadership, and no operation runs or starts.
func (s *site) idle() bool {
	return s.lead != nil && s.ready && s.running == nil && s.starting == nil && s.queued == nil && s.unmoved == nil && s.groupHeld == nil
}

// compare runs a comparison of every lane with KV beside the owner (evCompared).
func (s *site) compare() {
	s.comparing, s.dirty = true, false
	s.compared++
	n, lead, cfg := s.compared, s.lead, s.cfg
	go func() {
		ctx, cancel := context.WithTimeout(lead, checkTimeout)
		slots, err := s.eng.differing(ctx, cfg)
		cancel()
		s.send(evCompared{lead: lead, n: n, slots: slots, err: err})
	}()
}

// converge starts a converge operation of slots, by the site itself; waiters get it.
func (s *site) converge(slots []string, waiters []waiter) {
	s.log.Info("lanes differ from kv; converging", "slots", fmt.Sprint(slots))
	op := &api.Operation{Kind: api.KindSettings, Trigger: triggerConverge}
	req := &startReq{op: op, phases: []string{api.PhaseRollout}, fn: s.eng.convergeOp(s.cfg, slots)}
	for _, w := range waiters {
		req.replies = append(req.replies, w.reply)
	}
	s.start(req)
}

// answerWaiters answers every waiter of a comparison.
func (s *site) answerWaiters(op *api.Operation, err error) {
	for _, w := range s.waiters {
		w.reply <- answer{op, err}
	}
	s.waiters = nil
}

// retryMove moves the operation that ended here but is not in history yet, beside the owner.
func (s *site) retryMove() {
	op, limit := *s.unmoved, s.cfg.HistoryLimit
	go func() {
		s.send(evMoved{op: &op, err: s.eng.store.MoveToHistory(&op, limit)})
	}()
}

// backoffNext is the pause before a follow-up that did not start is tried again.
func backoffNext(attempt int) time.Duration { return query.Backoff(attempt + 2) }
