package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// event is what the site's owner acts on: one of the ev* types below, each handled by the case
// of handle that names it.
type event interface{ isEvent() }

// answer is the reply to a request: the operation it started, or why not.
type answer struct {
	op  *api.Operation
	err error
}

// waiter is a request that waits for the next comparison of the lanes with KV.
type waiter struct {
	n     int // the comparison it waits for
	reply chan<- answer
}

// timerKind names a timer of the owner; one of each kind is pending at most.
type timerKind int

const (
	timerBoot      timerKind = iota // bring the site up again after a failure
	timerReboot                     // bring it up again once a run of an earlier owner ended
	timerCheck                      // compare the lanes again
	timerMove                       // move an ended operation into history again
	timerQueue                      // a start waited too long for a monitor to end
	timerOrphan                     // look for a journaled operation that no one runs
	timerNext                       // start a follow-up again
	timerGroupHeld                  // a group's held lane waited long enough for the group's next operation
)

type (
	// evLead: a leadership began.
	evLead struct{ lead context.Context }
	// evConfig: new declarations of the site (a reload).
	evConfig struct{ cfg *config.Site }
	// evBooted: the site was brought up in KV under lead, or could not be.
	evBooted struct {
		lead context.Context
		boot booted
		err  error
	}
	// evCompared: comparison n of the lanes with KV found these slots differ.
	evCompared struct {
		lead  context.Context
		n     int
		slots []string
		err   error
	}
	// evStart: start an operation (API requests; follow-ups come from the owner itself).
	evStart struct{ req *startReq }
	// evCreated: the journal entry of the starting operation was written, or not; moved is
	// set when an operation that had ended here was moved into history first.
	evCreated struct {
		req   *startReq
		moved bool
		err   error
	}
	// evRollback: roll the last swap back (slotd rollback).
	evRollback struct {
		trigger string
		reply   chan<- answer
	}
	// evLastSwap: the history names the last swap to roll back (nil: none).
	evLastSwap struct {
		lead    context.Context
		trigger string
		swap    *api.Operation
		err     error
		reply   chan<- answer
	}
	// evReserve: reserve the site for a member's part of a group operation (site.reserve).
	evReserve struct {
		req   *startReq
		reply chan<- answer
	}
	// evConverge: a setting was written through the API: compare now, and converge when idle.
	evConverge struct{ reply chan<- answer }
	// evEnded: an operation's run ended.
	evEnded struct{ r *run }
	// evMoved: an ended operation was moved into history, or not.
	evMoved struct {
		op  *api.Operation
		err error
	}
	// evJournal: what the journal holds, read to find an operation that no one runs.
	evJournal struct {
		lead context.Context
		op   *api.Operation
		err  error
	}
	// evObserve: a read waits for a look at the site that reflects writes transactions.
	evObserve struct {
		writes uint64
		reply  chan<- *observed
	}
	// evObserved: a look at the site saw ob, or failed.
	evObserved struct {
		lead context.Context
		ob   *observed
		err  error
	}
	// evTimer: a timer of the leadership lead ran out.
	evTimer struct {
		kind timerKind
		lead context.Context
		seq  int
	}
)

func (evLead) isEvent()     {}
func (evConfig) isEvent()   {}
func (evBooted) isEvent()   {}
func (evCompared) isEvent() {}
func (evStart) isEvent()    {}
func (evCreated) isEvent()  {}
func (evRollback) isEvent() {}
func (evLastSwap) isEvent() {}
func (evConverge) isEvent() {}
func (evReserve) isEvent()  {}
func (evEnded) isEvent()    {}
func (evMoved) isEvent()    {}
func (evJournal) isEvent()  {}
func (evObserve) isEvent()  {}
func (evObserved) isEvent() {}
func (evTimer) isEvent()    {}

// handle is the owner's one decision point.
func (s *site) handle(ev event) {
	switch ev := ev.(type) {
	case evLead:
		s.unlead()
		s.lead = ev.lead
		s.boot()
	case evConfig:
		s.cfg = ev.cfg
		if s.lead != nil {
			s.ready = false
			s.reboot = s.booting // a boot under way started with the old declarations
			s.boot()
		}
	case evBooted:
		s.booted(ev)
	case evCompared:
		s.comparedLanes(ev)
	case evStart:
		s.start(ev.req)
	case evCreated:
		s.created(ev)
	case evReserve:
		s.reserve(ev.req, ev.reply)
	case evRollback:
		s.rollback(ev.trigger, ev.reply)
	case evLastSwap:
		switch {
		case ev.lead != s.lead:
			ev.reply <- answer{nil, ErrNotLeader}
		case ev.err != nil:
			ev.reply <- answer{nil, ev.err}
		case ev.swap == nil:
			ev.reply <- answer{nil, fmt.Errorf("%w: site %s has no completed swap to roll back", store.ErrBadRequest, s.name)}
		default:
			s.rollbackOf(ev.swap, ev.trigger, ev.reply)
		}
	case evConverge:
		s.convergeNow(ev.reply)
	case evEnded:
		s.ended(ev.r)
	case evMoved:
		if s.unmoved == nil || s.unmoved.ID != ev.op.ID {
			return
		}
		if ev.err != nil {
			s.after(timerMove, checkRetry)
			return
		}
		s.log.Info("finished operation taken out of the journal", "op", ev.op.ID, "in_history", !ev.op.Unchanged)
		s.unmoved = nil
		s.dirty = true
		s.check()
	case evJournal:
		s.adoptOrphan(ev)
	case evObserve:
		if s.status != nil && s.status.writes >= ev.writes {
			ev.reply <- s.status
			return
		}
		if s.lead == nil || !s.ready {
			ev.reply <- nil
			return
		}
		s.observers = append(s.observers, observer(ev))
		s.refresh()
	case evObserved:
		s.observedSite(ev)
	case evTimer:
		if t := s.timers[ev.kind]; ev.lead != s.lead || s.lead == nil || t == nil || t.seq != ev.seq {
			return // a leadership's that ended, or a timer replaced since
		}
		delete(s.timers, ev.kind)
		s.timer(ev.kind)
	}
}

// timer acts on a timer that ran out under the leadership under way.
func (s *site) timer(kind timerKind) {
	switch kind {
	case timerBoot:
		s.tryBoot()
	case timerReboot:
		s.ready = false
		s.boot()
	case timerCheck:
		s.check()
	case timerMove:
		if s.unmoved != nil {
			s.retryMove()
		}
	case timerQueue:
		if q := s.queued; q != nil && s.running != nil {
			s.queued = nil
			q.answer(nil, fmt.Errorf("%w: the monitor of %s did not end", store.ErrBusy, s.running.op.ID))
		}
	case timerOrphan:
		if !s.idle() {
			// Whatever runs or starts owns the journal now; look again once it is done.
			s.after(timerOrphan, orphanCheck)
			return
		}
		lead, name := s.lead, s.name
		go func() {
			op, err := s.eng.store.RunningOperation(name)
			s.send(evJournal{lead: lead, op: op, err: err})
		}()
	case timerNext:
		if s.next != nil {
			s.startNext()
		}
	case timerGroupHeld:
		s.log.Info("the group's held lane was not taken by a group operation; the site converges it", "op", s.groupHeld.ID)
		s.groupHeld, s.dirty = nil, true
		s.check()
	}
}

// booted takes the outcome of bringing the site up.
func (s *site) booted(ev evBooted) {
	if ev.lead != s.lead {
		return
	}
	if s.reboot {
		s.reboot, s.bootAttempt = false, 0
		s.tryBoot()
		return
	}
	if ev.err != nil {
		s.log.Error("site not ready", "error", ev.err, "attempt", s.bootAttempt)
		s.after(timerBoot, backoffNext(s.bootAttempt))
		return
	}
	s.booting, s.ready = false, true
	s.log.Info("site ready")
	s.look()
	if op := ev.boot.pending; op != nil && s.starting != nil {
		// Most likely the entry of the start being journaled: decide once it is.
		s.bootAgain = true
		return
	}
	if op := ev.boot.pending; op != nil && s.running == nil {
		if r := s.eng.inflight(s.name); r != nil {
			// A run of an earlier owner of this site (removed by a reload, then declared
			// again) still executes it: take over once it stopped.
			lead := s.lead
			go func() {
				<-r.done
				s.send(evTimer{kind: timerReboot, lead: lead})
			}()
			return
		}
		s.resume(op)
		return
	}
	if ev.boot.next != nil && s.running == nil {
		// A follow-up that the last operation journaled and no daemon started.
		s.next, s.nextAttempts = ev.boot.next, 0
		s.startNext()
		return
	}
	s.dirty = true
	s.check()
}

// comparedLanes takes the outcome of a comparison of the lanes with KV.
func (s *site) comparedLanes(ev evCompared) {
	if ev.lead != s.lead {
		return
	}
	s.comparing = false
	var now, later []waiter
	for _, w := range s.waiters {
		if w.n <= ev.n {
			now = append(now, w)
		} else {
			later = append(later, w)
		}
	}
	s.waiters = later
	switch {
	case ev.err != nil:
		s.log.Warn("cannot compare the lanes with kv", "error", ev.err)
		for _, w := range now {
			w.reply <- answer{nil, ev.err}
		}
		s.dirty = true
		s.after(timerCheck, checkRetry)
	case len(ev.slots) > 0 && s.idle() && s.next == nil:
		s.converge(ev.slots, now)
	default:
		for _, w := range now {
			w.reply <- answer{}
		}
		s.check()
	}
	if !s.comparing {
		// No comparison follows (an operation starts or runs): it reads KV as it is then.
		s.answerWaiters(nil, nil)
	}
}

// convergeNow compares the lanes with KV now, beside the owner, and starts converging them
// when the site is idle: a settings change made through the API is running when its answer
// leaves. A comparison under way started before the change: the next one answers.
func (s *site) convergeNow(reply chan<- answer) {
	s.dirty = true
	if !s.idle() {
		reply <- answer{}
		return
	}
	if !s.comparing {
		if time.Until(s.holdUntil) > 0 {
			reply <- answer{}
			s.check()
			return
		}
		s.compare()
		s.waiters = append(s.waiters, waiter{n: s.compared, reply: reply})
		return
	}
	s.waiters = append(s.waiters, waiter{n: s.compared + 1, reply: reply})
}

// adoptOrphan takes over an operation journaled for the site that no one runs: one whose
// create Consul did not confirm (its journal entry may have landed after all). One that never
// started is cleared, recorded as not started; one that did is taken over as after a restart.
func (s *site) adoptOrphan(ev evJournal) {
	if ev.lead != s.lead {
		return
	}
	if ev.err != nil || !s.idle() || s.eng.inflight(s.name) != nil {
		s.after(timerOrphan, orphanCheck)
		return
	}
	op := ev.op
	if op == nil {
		s.dirty = true
		s.check()
		return
	}
	if api.Terminal(op.State) {
		s.unmoved = op
		s.retryMove()
		return
	}
	if !begun(op) && op.GroupOperation == "" {
		// (A member's part is the group's to decide: it is resumed, and joins the group.)
		s.log.Warn("clearing an operation whose start consul did not confirm", "op", op.ID, "kind", op.Kind)
		s.execute(op, func(context.Context, *run) error { return errNotStarted })
		return
	}
	s.resume(op)
}

// errNotStarted ends an operation that was journaled but never begun, because its start was
// answered with an error: it changed nothing.
var errNotStarted = errors.New("not started: consul did not confirm its journal entry when it was created; nothing was changed, start it again")

// begun reports whether any phase of op started.
func begun(op *api.Operation) bool {
	for _, p := range op.Phases {
		if p.StartedAt != nil {
			return true
		}
	}
	return false
}
