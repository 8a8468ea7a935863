package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// What the HTTP API asks of the engine about swap groups, and how a group operation starts.

// Group is a declared group's configuration, nil when there is none.
func (e *Engine) Group(name string) *config.Group {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, g := range e.groups {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// GroupNames are the declared groups, sorted.
func (e *Engine) GroupNames() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := make([]string, 0, len(e.groups))
	for _, g := range e.groups {
		names = append(names, g.Name)
	}
	slices.Sort(names)
	return names
}

// GroupStatus is a group with its running group operation and its newest finished one.
func (e *Engine) GroupStatus(ctx context.Context, name string) (*api.Group, error) {
	g := e.Group(name)
	if g == nil {
		return nil, fmt.Errorf("%w: no group %q", ErrNotFound, name)
	}
	out := &api.Group{Name: g.Name, Sites: slices.Clone(g.Sites)}
	if run := e.activeGroup(name); run != nil {
		out.Operation = e.withParts(e.ops.get(run.id))
	} else {
		op, err := e.store.RunningGroupOperation(name)
		if err != nil {
			return nil, err
		}
		out.Operation = op
	}
	last, err := e.store.GroupHistoryPage(name, 1, 0)
	if err != nil {
		return nil, err
	}
	if len(last) > 0 {
		out.LastOperation = &last[0]
	}
	return out, nil
}

// groupHistoryLimit is how many finished group operations a group keeps.
func (e *Engine) groupHistoryLimit() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.historyLimit
}

// GroupHistory is a page of a group's finished group operations, newest first.
func (e *Engine) GroupHistory(name string, limit int, before uint64) ([]api.Operation, error) {
	if e.Group(name) == nil {
		return nil, fmt.Errorf("%w: no group %q", ErrNotFound, name)
	}
	return e.store.GroupHistoryPage(name, limit, before)
}

// GroupSwap starts a swap of source into target on every member site of the group, as one
// operation; preview stops every member after apply.
func (e *Engine) GroupSwap(name, source, target string, preview bool) (*api.Operation, error) {
	op := &api.Operation{Kind: api.KindSwap, Trigger: "api", Source: source, Target: target, Preview: preview}
	g := e.Group(name)
	if g == nil {
		return nil, fmt.Errorf("%w: no group %q", ErrNotFound, name)
	}
	return e.startGroup(name, g.Sites, op, nil)
}

// GroupRollback swaps back the group's last group swap on every member: the one monitoring or
// holding now (its monitor ends, and the rollback is a switch of every member's held lane),
// else the newest in the group's history whose switch happened.
func (e *Engine) GroupRollback(name string) (*api.Operation, error) {
	if e.Group(name) == nil {
		return nil, fmt.Errorf("%w: no group %q", ErrNotFound, name)
	}
	if !e.Leading() {
		return nil, ErrNotLeader
	}
	var last *api.Operation
	if g := e.activeGroup(name); g != nil {
		cur := e.ops.get(g.id)
		if cur == nil || !cur.Switched || (cur.State != api.StateMonitoring && cur.State != api.StateHolding) {
			state := "starting"
			if cur != nil {
				state = cur.State
			}
			return nil, fmt.Errorf("%w: group operation %s of group %q is %s; roll back once it has switched", store.ErrBusy, g.id, name, state)
		}
		select {
		case g.control <- ctlEndMonitor:
		default:
			return nil, fmt.Errorf("%w: group operation %s is already handling a request", store.ErrBusy, g.id)
		}
		select {
		case <-g.done:
		case <-time.After(endMonitorWait):
			return nil, fmt.Errorf("%w: the monitor of group operation %s did not end", store.ErrBusy, g.id)
		}
		last = e.ops.get(g.id)
	} else {
		err := e.store.WalkGroupHistory(name, 0, store.HistoryKeeps(0), func(h *api.Operation) bool {
			if (h.Kind == api.KindSwap || h.Kind == api.KindRollback) && h.Switched {
				last = h
			}
			return last == nil
		})
		if err != nil {
			return nil, err
		}
		if last == nil {
			return nil, fmt.Errorf("%w: group %q has no completed group swap to roll back", store.ErrBadRequest, name)
		}
	}
	return e.startRollbackOf(last, "api")
}

// startRollbackOf starts the rollback of a group operation: each member's part reverses that
// member's part of it. The parts of the operation just ended may not have told their sites'
// owners yet (microseconds): the start is tried again for a few seconds while they are busy.
func (e *Engine) startRollbackOf(last *api.Operation, trigger string) (*api.Operation, error) {
	op := &api.Operation{Kind: api.KindRollback, Trigger: trigger, Source: last.Source, Target: last.Target, RollbackOf: last.ID}
	// The members of the swap rolled back, whatever the group declares now: each reverses its
	// own part.
	of := map[string]string{}
	var sites []string
	for _, m := range last.Members {
		of[m.Site] = m.Operation
		sites = append(sites, m.Site)
	}
	var err error
	for attempt := 1; attempt <= 100; attempt++ {
		var started *api.Operation
		if started, err = e.startGroup(last.Group, sites, op, of); err == nil {
			return started, nil
		}
		if !errors.Is(err, store.ErrBusy) && !errors.Is(err, ErrStarting) {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, err
}

// startGroupNext starts the follow-up a group operation journaled (its monitor's rollback),
// trying again while the leadership lasts and the members are not ready.
func (e *Engine) startGroupNext(from *api.Operation, lead context.Context) {
	for attempt := 1; lead.Err() == nil; attempt++ {
		// Dropped once anything ran after it (a rollback by hand, a new swap): whoever
		// started an operation since took over, as for a site's follow-up.
		if last, err := e.store.GroupHistoryPage(from.Group, 1, 0); err == nil && (len(last) == 0 || last[0].ID != from.ID) {
			e.logger.Warn("group follow-up dropped: another group operation ran after it", "group", from.Group, "after", from.ID)
			return
		}
		if g := e.activeGroup(from.Group); g != nil {
			e.logger.Warn("group follow-up dropped: another group operation runs", "group", from.Group, "after", from.ID, "op", g.id)
			return
		}
		_, err := e.startRollbackOf(from, from.Next.Trigger)
		if err == nil || errors.Is(err, ErrNotLeader) || errors.Is(err, store.ErrBadRequest) || errors.Is(err, ErrNotFound) {
			if err != nil {
				e.logger.Error("group follow-up dropped", "group", from.Group, "after", from.ID, "error", err)
			}
			return
		}
		e.logger.Warn("group follow-up did not start; trying again", "group", from.Group, "after", from.ID, "error", err, "attempt", attempt)
		if query.Sleep(lead, backoffNext(attempt)) != nil {
			return
		}
	}
}

// startGroup starts a group operation of members: every member's part reserved with its
// site's owner, then the group's journal entry and every part's in one transaction, then run.
// rollbackOf maps a member site to the part a rollback reverses.
func (e *Engine) startGroup(name string, members []string, gop *api.Operation, rollbackOf map[string]string) (*api.Operation, error) {
	if !e.Leading() {
		return nil, ErrNotLeader
	}
	sites := make([]*site, len(members))
	for i, n := range members {
		s := e.site(n)
		if s == nil {
			return nil, fmt.Errorf("%w: member %s of group %q is not a declared site", ErrNotFound, n, name)
		}
		sc := s.config()
		if sc.Slot(gop.Source) == nil || sc.Slot(gop.Target) == nil {
			return nil, fmt.Errorf("%w: member %s of group %q has no slots %s and %s (its slots: %v)", store.ErrBadRequest, n, name, gop.Source, gop.Target, sc.SlotNames())
		}
		sites[i] = s
	}
	if g := e.activeGroup(name); g != nil {
		return nil, fmt.Errorf("%w: group %q runs group operation %s", store.ErrBusy, name, g.id)
	}
	if cur, err := e.store.RunningGroupOperation(name); err != nil {
		return nil, err
	} else if cur != nil {
		if !api.Terminal(cur.State) {
			return nil, fmt.Errorf("%w: group %q has group operation %s journaled (%s)", store.ErrBusy, name, cur.ID, cur.State)
		}
		if err := e.store.MoveToHistory(cur, e.groupHistoryLimit()); err != nil {
			return nil, err
		}
	}
	now := time.Now().UTC()
	gop.ID, gop.Group, gop.State, gop.CreatedAt, gop.UpdatedAt = newID(), name, api.StatePending, now, now
	gop.Phases, gop.Members = nil, nil
	for _, p := range swapPhases {
		gop.Phases = append(gop.Phases, api.Phase{Name: p, State: api.PhasePending})
	}
	reqs := make([]*startReq, 0, len(sites))
	release := func(err error) {
		for i, req := range reqs {
			sites[i].send(evCreated{req: req, err: err})
		}
	}
	for _, s := range sites {
		part := &api.Operation{Kind: gop.Kind, Trigger: "group", Source: gop.Source, Target: gop.Target, Preview: gop.Preview,
			Group: name, GroupOperation: gop.ID, RollbackOf: rollbackOf[s.name]}
		req := &startReq{op: part, phases: swapPhases, fn: e.memberOp(s.config())}
		if _, err := s.ask(func(reply chan<- answer) event { return evReserve{req: req, reply: reply} }); err != nil {
			release(fmt.Errorf("group operation not started: %w", err))
			return nil, fmt.Errorf("group %q: member %s: %w", name, s.name, err)
		}
		reqs = append(reqs, req)
		gop.Members = append(gop.Members, api.GroupMember{Site: s.name, Operation: part.ID, State: api.StatePending})
	}
	lead := reqs[0].lead
	for _, req := range reqs {
		if req.lead != lead {
			release(ErrStarting)
			return nil, fmt.Errorf("group %q: its members are %w under a new leadership; retry in a few seconds", name, ErrStarting)
		}
	}
	parts := make([]*api.Operation, len(reqs))
	for i, req := range reqs {
		parts[i] = req.op
	}
	err := e.journalGroup(lead, gop, parts)
	if err != nil {
		release(err)
		return nil, err
	}
	e.groupsMu.Lock()
	g := e.newGroupRun(gop, lead)
	e.groupsMu.Unlock()
	e.tell(gop, evStarted, nil) // before it runs: the first of its events
	release(nil)                // each site runs its part, which joins g
	e.logger.Info("group operation started", "group", name, "op", gop.ID, "kind", gop.Kind, "members", fmt.Sprint(members))
	started := e.ops.get(gop.ID)
	go e.runGroup(g)
	return started, nil
}

// journalGroup writes the journal entries of a group operation and its parts in one
// transaction. When Consul's answer is lost, the group's journal says whether it landed.
func (e *Engine) journalGroup(lead context.Context, gop *api.Operation, parts []*api.Operation) error {
	if lead.Err() != nil {
		return ErrNotLeader
	}
	err := e.store.CreateOperations(append([]*api.Operation{gop}, parts...)...)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrBusy):
		return e.whoIsBusy(gop, parts)
	case errors.Is(err, store.ErrStopping):
		return err
	}
	cur, rerr := e.store.RunningGroupOperation(gop.Group)
	if rerr == nil && cur != nil && cur.ID == gop.ID {
		gop.Index, gop.Seq = cur.Index, cur.Seq
		for _, p := range parts {
			if c, _ := e.store.RunningOperation(p.Site); c != nil && c.ID == p.ID {
				p.Index, p.Seq = c.Index, c.Seq
			}
		}
		return nil
	}
	// It may land still: each site's look for an orphan finds its part, which then joins the
	// group taken over from its journal, and is undone, since nothing began.
	return &lostCreate{fmt.Errorf("journal group operation %s: %w", gop.ID, err)}
}

// whoIsBusy names the journal that held an operation when a group operation was to start.
func (e *Engine) whoIsBusy(gop *api.Operation, parts []*api.Operation) error {
	if cur, err := e.store.RunningGroupOperation(gop.Group); err == nil && cur != nil {
		return fmt.Errorf("%w: group %q has group operation %s journaled (%s)", store.ErrBusy, gop.Group, cur.ID, cur.State)
	}
	for _, p := range parts {
		if cur, err := e.store.RunningOperation(p.Site); err == nil && cur != nil {
			return fmt.Errorf("%w: member %s has operation %s journaled (%s %s)", store.ErrBusy, p.Site, cur.ID, cur.Kind, cur.State)
		}
	}
	return fmt.Errorf("%w: a journal of group %q or of its members holds an operation", store.ErrBusy, gop.Group)
}

// leadGroups looks at every declared group's journal when a leadership begins: a group
// operation left running is taken over (its members' parts join it as their sites come up),
// one that ended but was not moved into history is moved, and a follow-up the newest asked
// for and no daemon started is started.
func (e *Engine) leadGroups(lead context.Context) {
	for _, name := range e.GroupNames() {
		for attempt := 1; lead.Err() == nil; attempt++ {
			err := e.leadGroup(lead, name)
			if err == nil {
				break
			}
			e.logger.Warn("cannot look at the group's journal yet", "group", name, "error", err, "attempt", attempt)
			if query.Sleep(lead, backoffNext(attempt)) != nil {
				return
			}
		}
	}
}

func (e *Engine) leadGroup(lead context.Context, name string) error {
	cur, err := e.store.RunningGroupOperation(name)
	if err != nil {
		return err
	}
	if cur != nil && !api.Terminal(cur.State) {
		e.adoptGroup(cur, lead)
		return nil
	}
	if cur != nil {
		if err := e.store.MoveToHistory(cur, e.groupHistoryLimit()); err != nil {
			return err
		}
	}
	last, err := e.store.GroupHistoryPage(name, 1, 0)
	if err != nil {
		return err
	}
	if len(last) == 1 && last[0].Next != nil {
		go e.startGroupNext(&last[0], lead)
	}
	return nil
}
