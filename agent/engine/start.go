package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
)

// endMonitorWait is how long a start waits for the monitor of a swap it ends.
const endMonitorWait = 30 * time.Second

// startReq is an operation to start: by a request (replies) or by the site itself.
type startReq struct {
	op      *api.Operation
	phases  []string
	fn      opFunc
	replies []chan<- answer
	// followUp marks the start of a follow-up (startNext), which drops no follow-up.
	followUp bool
	// lead is the leadership its journal entry is written under.
	lead context.Context
}

// answer replies to whoever asked for the start.
func (q *startReq) answer(op *api.Operation, err error) {
	for _, r := range q.replies {
		r <- answer{op, err}
	}
	q.replies = nil
}

// start asks the site's owner to start an operation (see site.start).
func (e *Engine) start(s *site, op *api.Operation, phases []string, fn opFunc) (*api.Operation, error) {
	return s.ask(func(reply chan<- answer) event {
		return evStart{&startReq{op: op, phases: phases, fn: fn, replies: []chan<- answer{reply}}}
	})
}

// refuse answers a start that did not happen; a follow-up is tried again later.
func (s *site) refuse(req *startReq, err error) {
	req.answer(nil, err)
	if req.followUp && s.next != nil && s.lead != nil {
		s.nextAttempts++
		s.log.Warn("follow-up did not start; trying again", "kind", req.op.Kind, "after", s.next.ID, "error", err, "attempt", s.nextAttempts)
		s.after(timerNext, backoffNext(s.nextAttempts))
	}
}

// start journals req's operation as the site's running operation and carries it out. It
// refuses while another operation runs, except a swap that only monitors (or holds): the start
// ends that monitoring early, with no rollback, and goes on once the swap has ended. A
// follow-up that was waiting is dropped: whoever starts an operation now takes over.
func (s *site) start(req *startReq) {
	switch {
	case !s.eng.Leading():
		s.refuse(req, ErrNotLeader)
		return
	case s.lead == nil || !s.ready:
		// Leading, but the owner has not heard of the leadership yet or is still bringing the
		// site up.
		s.refuse(req, fmt.Errorf("site %s is %w; nothing was started, retry in a few seconds", s.name, ErrStarting))
		return
	case s.starting != nil || s.queued != nil:
		s.refuse(req, fmt.Errorf("%w: another operation is starting on site %s", store.ErrBusy, s.name))
		return
	case s.running != nil && s.running.op.GroupOperation != "":
		s.refuse(req, partOfGroup(s.running.op))
		return
	}
	if s.next != nil && !req.followUp && req.op.Trigger != triggerConverge {
		s.log.Warn("follow-up dropped: another operation starts first", "follow_up", s.next.Next.Kind, "after", s.next.ID, "kind", req.op.Kind)
		s.next = nil
	}
	if r := s.running; r != nil {
		cur := s.eng.ops.get(r.op.ID)
		if cur != nil && !api.Terminal(cur.State) && cur.State != api.StateMonitoring && cur.State != api.StateHolding {
			s.refuse(req, fmt.Errorf("%w: %s %s is %s", store.ErrBusy, r.op.Kind, r.op.ID, cur.State))
			return
		}
		if cur == nil {
			s.refuse(req, fmt.Errorf("%w: %s %s is running", store.ErrBusy, r.op.Kind, r.op.ID))
			return
		}
		// Monitoring or holding (or ended, and its owner has not heard yet): end the monitor,
		// leave the hold to this operation, and go on when the run has ended.
		select {
		case r.control <- ctlEndMonitor:
		default:
		}
		s.queued = req
		s.after(timerQueue, endMonitorWait)
		return
	}
	s.create(req, s.takeGroupHeld())
}

// partOfGroup is the refusal of a site's own operation while the site runs its part of a
// group operation: the group is acted on as one.
func partOfGroup(op *api.Operation) error {
	return fmt.Errorf("%w: site %s is part of group operation %s of group %q (%s of %s into %s); act on the group: slotd swap -group %s, slotd rollback -group %s",
		store.ErrBusy, op.Site, op.GroupOperation, op.Group, op.Kind, op.Source, op.Target, op.Group, op.Group)
}

// reserve marks a member's part of a group operation as the site's starting operation when
// the site is free for it: up under this leadership, nothing running or starting. The group
// then journals every member's part with its own in one transaction and tells each owner how
// that went (evCreated), as create does for an operation of the site's own.
func (s *site) reserve(req *startReq, reply chan<- answer) {
	var err error
	switch {
	case !s.eng.Leading():
		err = ErrNotLeader
	case s.lead == nil || !s.ready:
		err = fmt.Errorf("site %s is %w; nothing was started, retry in a few seconds", s.name, ErrStarting)
	case s.starting != nil || s.queued != nil:
		err = fmt.Errorf("%w: another operation is starting on site %s", store.ErrBusy, s.name)
	case s.running != nil && s.running.op.GroupOperation != "":
		err = partOfGroup(s.running.op)
	case s.running != nil:
		state := s.running.op.State
		if cur := s.eng.ops.get(s.running.op.ID); cur != nil {
			state = cur.State
		}
		err = fmt.Errorf("%w: site %s runs %s %s (%s); wait for it to end, or settle or cancel it", store.ErrBusy, s.name, s.running.op.Kind, s.running.op.ID, state)
	case s.unmoved != nil:
		err = fmt.Errorf("%w: site %s is recording operation %s in its history; retry in a few seconds", store.ErrBusy, s.name, s.unmoved.ID)
	}
	if err != nil {
		reply <- answer{nil, err}
		return
	}
	if s.next != nil {
		s.log.Warn("follow-up dropped: a group operation starts first", "follow_up", s.next.Next.Kind, "after", s.next.ID, "group", req.op.Group)
		s.next = nil
	}
	if held := s.takeGroupHeld(); held != nil && !touchesHeld(req.op, held.Source) {
		// Left held for a group operation that does not move that lane: its part settles
		// it first, as a site's own operation would.
		req.phases = append([]string{api.PhaseSettleHeld}, req.phases...)
		req.fn = s.eng.settleFirst(s.cfg, held, req.fn)
	}
	s.prepare(req)
	c := *req.op
	reply <- answer{&c, nil}
}

// takeGroupHeld is the lane a group operation left held for the group's next one, now that
// another operation starts on the site: it settles that lane first (nil: none).
func (s *site) takeGroupHeld() *api.Operation {
	held := s.groupHeld
	s.groupHeld = nil
	s.stopTimer(timerGroupHeld)
	return held
}

// create writes the journal entry of req's operation beside the owner (evCreated). held is
// the swap whose former target lane is still held, which the operation settles first unless
// it moves that lane itself.
func (s *site) create(req *startReq, held *api.Operation) {
	op := req.op
	if held != nil && !touchesHeld(op, held.Source) {
		req.phases = append([]string{api.PhaseSettleHeld}, req.phases...)
		req.fn = s.eng.settleFirst(s.cfg, held, req.fn)
	}
	s.prepare(req)
	var unmoved *api.Operation
	if s.unmoved != nil {
		c := *s.unmoved
		unmoved = &c
	}
	limit := s.cfg.HistoryLimit
	lead := s.lead
	go func() {
		if lead.Err() != nil {
			// No write of an ended leadership: the store's fence may be a later one's already.
			s.send(evCreated{req: req, err: ErrNotLeader})
			return
		}
		if unmoved != nil {
			if err := s.eng.store.MoveToHistory(unmoved, limit); err != nil {
				s.send(evCreated{req: req, err: fmt.Errorf("%w: operation %s ended but could not be recorded in history yet: %v", store.ErrBusy, unmoved.ID, err)})
				return
			}
		}
		s.send(evCreated{req: req, moved: unmoved != nil, err: s.eng.journalNew(op, limit)})
	}()
}

// prepare fills in req's operation as the site's next one and marks it starting.
func (s *site) prepare(req *startReq) {
	op := req.op
	now := time.Now().UTC()
	op.ID, op.Site, op.State = newID(), s.name, api.StatePending
	op.CreatedAt, op.UpdatedAt = now, now
	op.Phases = nil
	for _, p := range req.phases {
		op.Phases = append(op.Phases, api.Phase{Name: p, State: api.PhasePending})
	}
	req.lead = s.lead
	s.starting = req
}

// journalNew journals op as the site's running operation. An operation that ended but was
// never moved into history is moved first. When Consul's answer is lost (the create may have
// landed), the journal is read back: the create landed exactly when it holds op.
func (e *Engine) journalNew(op *api.Operation, limit int) error {
	err := e.store.CreateOperation(op)
	if errors.Is(err, store.ErrBusy) {
		if pending, perr := e.store.PendingOperation(op.Site, limit); perr == nil && pending == nil {
			err = e.store.CreateOperation(op)
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrBusy):
		return fmt.Errorf("%w: another operation is journaled in consul for site %s", store.ErrBusy, op.Site)
	case errors.Is(err, store.ErrStopping):
		return err
	}
	cur, rerr := e.store.RunningOperation(op.Site)
	if rerr == nil && cur != nil && cur.ID == op.ID {
		op.Index, op.Seq = cur.Index, cur.Seq
		e.logger.Info("consul's answer to a create was lost, but the operation is journaled", "site", op.Site, "op", op.ID, "error", err)
		return nil
	}
	return &lostCreate{err}
}

// lostCreate is a create whose outcome is not known: its journal entry may still land.
type lostCreate struct{ err error }

func (l *lostCreate) Error() string { return l.err.Error() }
func (l *lostCreate) Unwrap() error { return l.err }

// created takes the outcome of a journal entry's write: the operation runs, or the request is
// refused.
func (s *site) created(ev evCreated) {
	req := ev.req
	if s.starting == req {
		s.starting = nil
	}
	if ev.moved {
		s.unmoved = nil
	}
	defer s.afterCreate()
	var lost *lostCreate
	switch {
	case req.lead != s.lead:
		// The leadership ended meanwhile: an entry that landed under a later one of this
		// daemon is looked for, as one that landed late.
		req.answer(nil, ErrNotLeader)
		if s.lead != nil {
			s.after(timerOrphan, orphanCheck)
		}
		return
	case errors.As(ev.err, &lost):
		// It may land still: look again soon, and adopt or clear what landed.
		s.after(timerOrphan, orphanCheck)
		s.refuse(req, fmt.Errorf("journal operation %s: %w (slotd looks again in %s and clears it should it have landed)", req.op.ID, ev.err, orphanCheck))
		return
	case errors.Is(ev.err, store.ErrBusy):
		// The journal holds an operation that no one here runs: look at it.
		s.after(timerOrphan, orphanCheck)
		s.refuse(req, ev.err)
		return
	case ev.err != nil:
		s.refuse(req, ev.err)
		if req.op.Trigger == triggerConverge {
			s.dirty, s.holdUntil = true, time.Now().Add(checkRetry)
			s.after(timerCheck, checkRetry)
		}
		return
	case s.running != nil:
		// Something took the site over meanwhile (a boot resumed the journal): one executor.
		s.refuse(req, fmt.Errorf("%w: %s %s runs on site %s", store.ErrBusy, s.running.op.Kind, s.running.op.ID, s.name))
		return
	}
	if req.followUp {
		s.next = nil
	}
	op := req.op
	s.eng.metrics.OpsStarted.WithLabelValues(s.name, op.Kind).Inc()
	s.eng.tell(op, evStarted, nil)
	s.log.Info("operation started", "op", op.ID, "kind", op.Kind, "trigger", op.Trigger)
	s.execute(op, req.fn)
	req.answer(s.eng.ops.get(op.ID), nil)
}

// afterCreate brings the site up again when a boot found the journal busy while a start was
// being journaled, now that the start is decided: what the journal holds then is run once.
func (s *site) afterCreate() {
	if !s.bootAgain {
		return
	}
	s.bootAgain = false
	if s.running == nil && s.lead != nil {
		s.ready = false
		s.boot()
	}
}

// resume takes over an operation that a stopped daemon left journaled.
func (s *site) resume(op *api.Operation) {
	s.log.Info("recovering operation", "op", op.ID, "kind", op.Kind, "state", op.State)
	s.execute(op, s.eng.recoverOp(s.cfg, op))
}

// execute runs fn as op's run in the background; the owner hears when it ended (evEnded).
func (s *site) execute(op *api.Operation, fn opFunc) {
	r := s.eng.newRun(s, s.lead, op)
	r.historyLimit = s.cfg.HistoryLimit
	s.running = r
	s.eng.track(s.name, r)
	go func() {
		r.execute(fn)
		s.eng.untrack(s.name, r)
		s.send(evEnded{r})
	}()
}

// ended is the owner's part of an operation's end: the site is idle again, so a start that
// waited for it goes on, or the follow-up the operation journaled starts, or the lanes are
// compared with KV.
func (s *site) ended(r *run) {
	if s.running == r {
		s.running = nil
	}
	s.refresh()
	if r.unmoved {
		op := *r.op
		s.unmoved = &op
		s.after(timerMove, checkRetry)
	}
	if r.left && s.lead != nil && s.lead != r.lead {
		// The run stopped with a leadership this daemon has won back since: the operation is
		// still journaled, and now there is no other executor of it.
		if q := s.queued; q != nil {
			s.queued = nil
			q.answer(nil, fmt.Errorf("site %s is %w; nothing was started, retry in a few seconds", s.name, ErrStarting))
		}
		s.ready = false
		s.boot()
		return
	}
	if r.left && s.lead != nil && !s.eng.stopping() {
		// Left journaled while this daemon still leads (a write whose outcome is not known):
		// look at the journal soon and take it over from what it says.
		s.after(timerOrphan, orphanCheck)
	}
	if q := s.queued; q != nil {
		s.queued = nil
		s.stopTimer(timerQueue)
		switch {
		case s.lead == nil:
			q.answer(nil, ErrNotLeader)
			return
		case r.left:
			q.answer(nil, fmt.Errorf("site %s is %w; nothing was started, retry in a few seconds", s.name, ErrStarting))
			return
		}
		s.create(q, leftHeld(r.op))
		return
	}
	if held := leftHeld(r.op); held != nil && r.op.GroupOperation != "" && !r.left && s.lead != nil {
		// A group operation left its former target lane held for the group's next operation
		// (its rollback): the site starts nothing of its own on that lane until the group
		// does, or endMonitorWait passed.
		s.groupHeld = held
		s.after(timerGroupHeld, endMonitorWait)
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
	if r.op.Next != nil && !r.left && s.lead != nil {
		s.next, s.nextAttempts = r.op, 0
		s.startNext()
		return
	}
	s.dirty = true
	s.check()
}

// startNext starts the follow-up that an ended operation journaled (Operation.Next): the
// monitor's rollback of a degraded swap, or a deploy's auto_swap. A start that fails is tried
// again (refuse) until it starts, another operation starts first, or the leadership ends: the
// next leader finds it journaled with the operation in history (unstartedFollowUp).
func (s *site) startNext() {
	from := s.next
	next := from.Next
	if s.cfg.Slot(next.Source) == nil || s.cfg.Slot(next.Target) == nil {
		s.log.Error("follow-up dropped: its slots are no longer both declared", "kind", next.Kind, "source", next.Source, "target", next.Target)
		s.next = nil
		return
	}
	op := &api.Operation{Kind: next.Kind, Trigger: next.Trigger, Source: next.Source, Target: next.Target, RollbackOf: next.RollbackOf}
	s.start(&startReq{op: op, phases: swapPhases, fn: s.eng.swapOp(s.cfg, next.Source, next.Target), followUp: true})
}

// rollback swaps back the newest swap of the site whose switch happened: the one monitoring or
// holding now, else the newest in history (read beside the owner: evLastSwap).
func (s *site) rollback(trigger string, reply chan<- answer) {
	if !s.eng.Leading() {
		reply <- answer{nil, ErrNotLeader} // before the history is read for nothing
		return
	}
	if r := s.running; r != nil && r.op.GroupOperation != "" {
		reply <- answer{nil, partOfGroup(r.op)}
		return
	}
	if r := s.running; r != nil {
		// A swap still monitoring its window, or holding its former target lane, is the one to
		// roll back: the start ends the window, and the rollback takes the held lane back with
		// a switch only. Anything else running is a conflict there.
		if cur := s.eng.ops.get(r.op.ID); cur != nil && (cur.State == api.StateMonitoring || cur.State == api.StateHolding) && cur.Switched &&
			(cur.Kind == api.KindSwap || cur.Kind == api.KindRollback) {
			s.rollbackOf(cur, trigger, reply)
			return
		}
	}
	lead, name, limit := s.lead, s.name, store.HistoryKeeps(s.cfg.HistoryLimit)
	go func() {
		last, err := s.eng.lastSwap(name, limit)
		s.send(evLastSwap{lead: lead, trigger: trigger, swap: last, err: err, reply: reply})
	}()
}

// lastSwap is the newest swap in a site's history whose switch happened, nil when none.
func (e *Engine) lastSwap(site string, limit int) (*api.Operation, error) {
	var last *api.Operation
	err := e.store.WalkHistory(site, 0, limit, func(h *api.Operation) bool {
		if (h.Kind == api.KindSwap || h.Kind == api.KindRollback) && h.Switched {
			last = h
		}
		return last == nil
	})
	return last, err
}

// rollbackOf swaps back the given swap.
func (s *site) rollbackOf(last *api.Operation, trigger string, reply chan<- answer) {
	if last.GroupOperation != "" {
		reply <- answer{nil, fmt.Errorf("%w: the last swap of site %s was its part of group operation %s of group %q: roll the group back as one (slotd rollback -group %s), or swap this site's slots yourself",
			store.ErrBadRequest, s.name, last.GroupOperation, last.Group, last.Group)}
		return
	}
	if s.cfg.Slot(last.Source) == nil || s.cfg.Slot(last.Target) == nil {
		reply <- answer{nil, fmt.Errorf("%w: the last swap of site %s moved slots %s and %s, which are no longer both declared", store.ErrBadRequest, s.name, last.Source, last.Target)}
		return
	}
	op := &api.Operation{Kind: api.KindRollback, Trigger: trigger, Source: last.Source, Target: last.Target, RollbackOf: last.ID}
	s.start(&startReq{op: op, phases: swapPhases, fn: s.eng.swapOp(s.cfg, last.Source, last.Target), replies: []chan<- answer{reply}})
}
