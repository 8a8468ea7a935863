package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/failpoint"
)

// A swap group is several sites swapped as one operation. The group operation is journaled in
// the group's folder, and each member site's part as an operation of the site's own, all in
// one transaction: a member is busy exactly while its group runs, and a daemon that takes over
// finds the parts and their group together. The parts are runs of their sites' owners that
// wait for the group; the group's goroutine carries out every part, phase after phase
// together: preflight, apply and warm side by side; one switch (make on every member, then
// break on every member, then one transaction that exchanges every member's bindings and
// swappable settings and journals the switch); one monitor window and one hold; settle.

// groupJoinWait is how long a group taken over waits for its members' parts to be resumed by
// their sites; a part that has not joined by then is left out (its site converges).
const groupJoinWait = 5 * time.Minute

// groupRun is one group operation in flight in this daemon: its own run (its journal is the
// group's) and its members.
type groupRun struct {
	*run
	// id and name never change: read them, not run.op, from other goroutines.
	id, name string
	// released is set once every part has its verdict (release).
	released bool

	mu      sync.Mutex
	members []*member // as the group operation lists them
	joined  chan struct{}
	closed  bool
	// recovered is set on a group operation taken over from the journal.
	recovered bool
}

// member is one site's part of a group operation.
type member struct {
	site string
	opID string
	cfg  *config.Site
	r    *run // the part's run, nil until it joined
	w    *swap
	// gone is set on a part that will not join: it ended already, or did not come in time.
	gone   bool
	result chan error // the group's verdict on the part
}

// groupRun is the group operation in flight with this ID, or nil.
func (e *Engine) groupRun(id string) *groupRun {
	e.groupsMu.Lock()
	defer e.groupsMu.Unlock()
	return e.groupRuns[id]
}

// activeGroup is the group operation in flight for a group, or nil.
func (e *Engine) activeGroup(name string) *groupRun {
	e.groupsMu.Lock()
	defer e.groupsMu.Unlock()
	for _, g := range e.groupRuns {
		if g.name == name {
			return g
		}
	}
	return nil
}

// newGroupRun registers a group operation's run; e.groupsMu is held.
func (e *Engine) newGroupRun(op *api.Operation, lead context.Context) *groupRun {
	g := &groupRun{run: e.newRun(nil, lead, op), id: op.ID, name: op.Group, joined: make(chan struct{})}
	g.historyLimit = e.groupHistoryLimit()
	for _, m := range op.Members {
		g.members = append(g.members, &member{site: m.Site, opID: m.Operation, result: make(chan error, 1)})
	}
	e.groupRuns[op.ID] = g
	return g
}

// runGroup carries a registered group operation out, and starts the follow-up it asks for.
func (e *Engine) runGroup(g *groupRun) {
	g.execute(g.carryOut)
	e.groupsMu.Lock()
	delete(e.groupRuns, g.id)
	e.groupsMu.Unlock()
	switch {
	case g.op.Next != nil && !g.left:
		go e.startGroupNext(g.op, g.lead)
	case g.left && g.lead.Err() == nil && !e.stopping():
		// Left journaled while this daemon still leads (a read that failed): its parts may
		// all have ended, so nothing adopts it but a look at the group's journal.
		go func() {
			if query.Sleep(g.lead, orphanCheck) == nil {
				if err := e.leadGroup(g.lead, g.name); err != nil {
					e.logger.Warn("cannot look at the group's journal", "group", g.name, "error", err)
				}
			}
		}()
	}
}

// memberOp is a member site's part of a group operation: it joins the group and ends as the
// group says.
func (e *Engine) memberOp(cfg *config.Site) opFunc {
	return func(ctx context.Context, r *run) error {
		m, err := e.joinGroup(r, cfg)
		if err != nil {
			return err
		}
		// The group gives every part that joined a verdict, whatever happens to it (release):
		// the part returns only then, so nothing writes its operation after.
		return <-m.result
	}
}

// joinGroup hands a member's part to its group, taking the group over from its journal when
// this daemon does not run it yet.
func (e *Engine) joinGroup(r *run, cfg *config.Site) (*member, error) {
	gid := r.op.GroupOperation
	g := e.groupRun(gid)
	if g == nil {
		gop, err := e.store.RunningGroupOperation(r.op.Group)
		if err != nil {
			return nil, fmt.Errorf("%w: read group operation %s: %v", errUndecided, gid, err)
		}
		if gop == nil || gop.ID != gid || api.Terminal(gop.State) {
			return nil, fmt.Errorf("group operation %s of group %q is no longer journaled; this part of it ends here, and the site converges to KV", gid, r.op.Group)
		}
		g = e.adoptGroup(gop, r.lead)
	}
	return g.join(r, cfg)
}

// adoptGroup takes over a group operation left journaled, once.
func (e *Engine) adoptGroup(gop *api.Operation, lead context.Context) *groupRun {
	e.groupsMu.Lock()
	defer e.groupsMu.Unlock()
	if g := e.groupRuns[gop.ID]; g != nil {
		return g
	}
	e.logger.Info("recovering group operation", "group", gop.Group, "op", gop.ID, "kind", gop.Kind, "state", gop.State)
	g := e.newGroupRun(gop, lead)
	g.recovered = true
	go e.runGroup(g)
	return g
}

// join adds a member's part to the group.
func (g *groupRun) join(r *run, cfg *config.Site) (*member, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	i := slices.IndexFunc(g.members, func(m *member) bool { return m.site == r.op.Site })
	switch {
	case i < 0:
		return nil, fmt.Errorf("group operation %s has no part for site %s", g.op.ID, r.op.Site)
	case g.lead != r.lead:
		return nil, fmt.Errorf("%w: group operation %s runs under another leadership", errUndecided, g.op.ID)
	case g.closed:
		return nil, fmt.Errorf("group operation %s went on without site %s; this part ends here, and the site converges to KV", g.op.ID, r.op.Site)
	}
	m := g.members[i]
	m.r, m.cfg, m.gone = r, cfg, false
	g.checkJoined()
	return m, nil
}

// checkJoined closes joined once every member joined or is gone; g.mu is held.
func (g *groupRun) checkJoined() {
	for _, m := range g.members {
		if m.r == nil && !m.gone {
			return
		}
	}
	if !g.closed {
		g.closed = true
		close(g.joined)
	}
}

// awaitMembers waits until every member's part runs. A group taken over waits only for the
// parts still journaled: the others ended before the daemon stopped.
func (g *groupRun) awaitMembers(ctx context.Context) error {
	if g.recovered {
		for _, m := range g.members {
			cur, err := g.eng.store.RunningOperation(m.site)
			if err != nil {
				return fmt.Errorf("%w: read the part of site %s: %v", errUndecided, m.site, err)
			}
			if cur == nil || cur.ID != m.opID || api.Terminal(cur.State) {
				g.mu.Lock()
				m.gone = m.r == nil
				g.mu.Unlock()
			}
		}
	}
	g.mu.Lock()
	g.checkJoined()
	g.mu.Unlock()
	t := time.NewTimer(groupJoinWait)
	defer t.Stop()
	select {
	case <-g.joined:
		return nil
	case <-ctx.Done():
		if g.lead.Err() == nil && !g.eng.stopping() {
			return fmt.Errorf("%w while its parts started", errCancelled)
		}
		return store.ErrStopping
	case <-t.C:
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, m := range g.members {
			if m.r == nil {
				g.eng.logger.Error("a member's part of a group operation did not join in time; the group goes on without it", "group", g.name, "op", g.op.ID, "site", m.site)
				m.gone = true
			}
		}
		g.checkJoined()
		return nil
	}
}

// present are the members whose parts run.
func (g *groupRun) present() []*member {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*member
	for _, m := range g.members {
		if m.r != nil {
			out = append(out, m)
		}
	}
	return out
}

// carryOut is the group operation: every member's part, phase after phase together. The parts
// end before the group does, each with the group's verdict.
func (g *groupRun) carryOut(ctx context.Context, _ *run) (err error) {
	defer func() {
		if !g.released {
			// A panic on the way (run.call recovers it): the parts end too.
			g.release(errors.New("the group operation ended unexpectedly; see the daemon's log"))
		}
	}()
	if err := g.awaitMembers(ctx); err != nil {
		g.release(err)
		return err
	}
	err = g.runPhases(ctx, g.present())
	g.release(err)
	return err
}

// release ends every part with the group's verdict; unless the group is left for the next
// leader, it waits until they ended and notes their states in the group operation.
func (g *groupRun) release(err error) {
	g.released = true
	leaving := errors.Is(err, store.ErrStopping) || errors.Is(err, errUndecided) || g.lead.Err() != nil
	ms := g.present()
	for _, m := range ms {
		switch {
		case leaving:
			m.result <- store.ErrStopping
		case err != nil:
			m.result <- fmt.Errorf("group operation %s of group %q: %w", g.op.ID, g.name, err)
		default:
			m.result <- nil
		}
	}
	if leaving {
		return
	}
	for _, m := range ms {
		<-m.r.done
	}
	for i := range g.op.Members {
		p := &g.op.Members[i]
		for _, m := range ms {
			if m.site == p.Site {
				if cur := g.eng.ops.get(m.opID); cur != nil {
					p.State, p.Error = cur.State, cur.Error
				}
			}
		}
	}
}

// runPhases is DESIGN.md §3 for every member together. A group taken over goes forward from
// where its journal says it was when a site swap would (past every member's warm-up, or past
// the switch), and is undone otherwise.
func (g *groupRun) runPhases(ctx context.Context, ms []*member) error {
	if err := g.load(ctx, ms); err != nil {
		return err
	}
	if g.recovered && ended(g.op) {
		// Its outcome was decided, only not journaled as an end: it ends so again (a
		// follow-up it journaled starts after).
		return fmt.Errorf("%s", failure(g.op))
	}
	if !g.op.Switched {
		if len(ms) < len(g.members) || g.recovered && !forward(g.op) {
			return g.undoInterrupted(ctx, ms)
		}
		if g.preflightDue() {
			if err := g.phase(api.PhasePreflight, api.StatePending, func() error { return g.preflight(ctx, ms) }); err != nil {
				return err // nothing moved
			}
		}
		for _, m := range ms {
			if m.w.op.Instant {
				m.w.skipHeld(api.PhaseApply)
				m.w.skipHeld(api.PhaseWarm)
			}
		}
		if g.op.Instant {
			g.skip(api.PhaseApply, "every member's lane is held warm: switch only")
			g.skip(api.PhaseWarm, "every member's lane is held warm: switch only")
		}
		if !succeeded(g.op, api.PhaseApply) && !g.op.Instant {
			if err := g.phase(api.PhaseApply, api.StateApplying, func() error {
				return g.each(ms, api.PhaseApply, api.StateApplying, func(m *member) error { return m.w.apply(ctx) })
			}); err != nil {
				return g.undo(ms, err)
			}
		}
		if g.op.Preview && !succeeded(g.op, api.PhaseWarm) {
			if err := g.preview(ctx, ms); err != nil {
				return g.undo(ms, err)
			}
		}
		if !succeeded(g.op, api.PhaseWarm) && !g.op.Instant {
			if err := g.phase(api.PhaseWarm, api.StateWarming, func() error {
				return g.each(ms, api.PhaseWarm, api.StateWarming, func(m *member) error { return m.w.warm(ctx) })
			}); err != nil {
				return g.undo(ms, err)
			}
		}
		if sw := g.op.Phase(api.PhaseSwitch); sw == nil || sw.StartedAt == nil {
			// Asked once: a switch taken over after make or break goes on without asking.
			if err := g.beforeSwitch(ctx, ms); err != nil {
				return g.undo(ms, err)
			}
		}
		if err := g.phase(api.PhaseSwitch, api.StateSwitching, func() error {
			return g.alongside(ms, api.PhaseSwitch, api.StateSwitching, func() error { return g.switchAll(ctx, ms) })
		}); err != nil {
			return err
		}
	} else if !succeeded(g.op, api.PhaseSwitch) {
		if err := g.endTakenOverSwitch(); err != nil {
			return err
		}
		for _, m := range ms {
			if !m.w.done(api.PhaseSwitch) {
				if err := m.w.endTakenOverSwitch(); err != nil {
					return err
				}
			}
		}
	}
	return g.afterSwitch(ctx, ms)
}

// forward reports whether a swap taken over goes on rather than being undone: it was
// previewing, past its warm-up or its switch, handed off between phases, or instant.
func forward(op *api.Operation) bool {
	return op.State == api.StatePreviewing || op.Switched || op.HandedOff || op.Instant || succeeded(op, api.PhaseWarm)
}

// preflightDue reports whether the pre-flight is still to run: before apply ever started.
func (g *groupRun) preflightDue() bool {
	p, apply := g.op.Phase(api.PhasePreflight), g.op.Phase(api.PhaseApply)
	return p != nil && p.State != api.PhaseSucceeded && (apply == nil || apply.StartedAt == nil)
}

// load has each member's part read its slots and lanes, as a site swap does.
func (g *groupRun) load(ctx context.Context, ms []*member) error {
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		source, target := m.cfg.Slot(g.op.Source), m.cfg.Slot(g.op.Target)
		if source == nil || target == nil {
			errs[i] = fmt.Errorf("slots %s and %s are no longer both declared", g.op.Source, g.op.Target)
			continue
		}
		m.w = &swap{run: m.r, cfg: m.cfg, source: source, target: target}
		wg.Go(func() { errs[i] = guard(func() error { return m.w.load(ctx) }) })
	}
	wg.Wait()
	return memberErrors(ms, errs)
}

// preflight plans every member's candidate, and checks that the exchange fits one Consul
// transaction. The group is instant when every member's lane is held warm.
func (g *groupRun) preflight(ctx context.Context, ms []*member) error {
	if err := g.each(ms, api.PhasePreflight, api.StatePending, func(m *member) error { return m.w.preflight(ctx) }); err != nil {
		return err
	}
	if err := g.fits(ms); err != nil {
		return err
	}
	g.op.Instant = !slices.ContainsFunc(ms, func(m *member) bool { return !m.w.op.Instant })
	g.note(api.PhasePreflight, fmt.Sprintf("%d members place", len(ms)))
	return nil
}

// maxTxnBytes is what slotd lets one exchange transaction weigh: Consul refuses requests over
// 512 KiB (txn_max_req_len), and the request carries more than the values.
const maxTxnBytes = 480 << 10

// fits checks that the group's exchange, as KV holds the members' slots now, fits one Consul
// transaction: in operations and in bytes. It is checked again at the switch, with what KV
// holds then.
func (g *groupRun) fits(ms []*member) error {
	var ops consulapi.KVTxnOps
	for _, m := range ms {
		x, err := m.w.exchangeOps(0, 0)
		if err != nil {
			return err
		}
		ops = append(ops, x.ops...)
		ops = append(ops, x.journal)
	}
	return txnFits(append(ops, &consulapi.KVTxnOp{Value: []byte(strings.Repeat(" ", 4<<10))}))
}

// txnFits checks one transaction's size against Consul's limits.
func txnFits(ops consulapi.KVTxnOps) error {
	n := 0
	for _, op := range ops {
		n += len(op.Key) + len(op.Value)
	}
	switch {
	case len(ops)+1 > store.MaxTxnOps:
		return fmt.Errorf("the group's exchange writes %d keys, more than one consul transaction holds (%d): swap fewer sites as one", len(ops), store.MaxTxnOps)
	case n > maxTxnBytes:
		return fmt.Errorf("the group's exchange writes %d KiB, more than one consul transaction takes (%d KiB): make the members' swappable settings smaller, or swap fewer sites as one", n>>10, maxTxnBytes>>10)
	}
	return nil
}

// each runs fn for every member side by side, each as the named phase of its own part.
func (g *groupRun) each(ms []*member, name, state string, fn func(*member) error) error {
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		if p := m.w.op.Phase(name); p == nil || p.State == api.PhaseSucceeded || p.State == api.PhaseSkipped {
			continue
		}
		wg.Go(func() { errs[i] = guard(func() error { return m.w.phase(name, state, func() error { return fn(m) }) }) })
	}
	wg.Wait()
	return memberErrors(ms, errs)
}

// alongside runs fn, the group's own work of a phase (the switch, the monitor), with the
// named phase of every member's part running meanwhile and ending as fn did.
func (g *groupRun) alongside(ms []*member, name, state string, fn func() error) error {
	now := time.Now().UTC()
	for _, m := range ms {
		if p := m.w.op.Phase(name); p != nil && p.State != api.PhaseSucceeded {
			p.State, p.StartedAt, p.EndedAt = api.PhaseRunning, &now, nil
			m.w.op.State, m.w.op.UpdatedAt = state, now
			_ = m.w.journal()
		}
	}
	err := fn()
	end := time.Now().UTC()
	for _, m := range ms {
		p := m.w.op.Phase(name)
		if p == nil || p.State != api.PhaseRunning {
			continue
		}
		switch {
		case errors.Is(err, store.ErrStopping) || errors.Is(err, errUndecided):
			p.State = api.PhasePending
		case err == nil:
			p.State, p.EndedAt = api.PhaseSucceeded, &end
		case errors.Is(err, errCancelled):
			p.State, p.EndedAt, p.Message = api.PhaseCancelled, &end, err.Error()
		default:
			p.State, p.EndedAt, p.Message = api.PhaseFailed, &end, err.Error()
		}
		m.w.op.UpdatedAt = end
		_ = m.w.journal()
	}
	return err
}

// side runs fn for every member side by side, outside any phase of theirs.
func side(ms []*member, fn func(i int, m *member) error) error {
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { errs[i] = guard(func() error { return fn(i, m) }) })
	}
	wg.Wait()
	return memberErrors(ms, errs)
}

// guard runs fn, a member's part of a step on a goroutine of its own: a panic in it is that
// member's error, not the end of the daemon.
func guard(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("slotd failed inside the operation (panic: %v); see the daemon's log", p)
		}
	}()
	return fn()
}

// failure is what the failed or cancelled phase of op said.
func failure(op *api.Operation) string {
	for _, p := range op.Phases {
		if p.State == api.PhaseFailed || p.State == api.PhaseCancelled {
			return fmt.Sprintf("%s: %s", p.Name, p.Message)
		}
	}
	return "ended"
}

// memberErrs is what went wrong with some members, each named by its site.
type memberErrs struct {
	sites []string
	errs  []error
}

func (e *memberErrs) Error() string {
	msgs := make([]string, len(e.errs))
	for i, err := range e.errs {
		msgs[i] = e.sites[i] + ": " + err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e *memberErrs) Unwrap() []error { return e.errs }

// memberErrors names the members' errors, nil when none failed. A member that stopped for the
// next leader stops the group likewise.
func memberErrors(ms []*member, errs []error) error {
	out := &memberErrs{}
	for i, err := range errs {
		if err == nil {
			continue
		}
		if errors.Is(err, store.ErrStopping) || errors.Is(err, errUndecided) {
			return err
		}
		out.sites, out.errs = append(out.sites, ms[i].site), append(out.errs, err)
	}
	if len(out.errs) == 0 {
		return nil
	}
	return out
}

// beforeSwitch asks every member site's before-switch gate, side by side (a group swap; a
// group rollback does not wait for them): any refusal leaves the group waiting previewing.
func (g *groupRun) beforeSwitch(ctx context.Context, ms []*member) error {
	g.op.Waiting = ""
	if g.op.Kind != api.KindSwap {
		return nil
	}
	if err := side(ms, func(_ int, m *member) error { return m.w.checkAnalyses(ctx, g.name, m.r, g.run) }); err != nil {
		if !inconclusive(err) {
			return err
		}
		if err := g.waitUnless(ctx, err); err != nil {
			return err
		}
	}
	return g.waitUnless(ctx, side(ms, func(_ int, m *member) error { return g.eng.gate(ctx, m.cfg, config.GateBeforeSwitch, g.op) }))
}

// preview holds every member after apply until the group operation is completed or cancelled.
func (g *groupRun) preview(ctx context.Context, ms []*member) error {
	now := time.Now().UTC()
	g.op.State, g.op.UpdatedAt = api.StatePreviewing, now
	if err := g.journal(); err != nil {
		return err
	}
	for _, m := range ms {
		m.w.op.State, m.w.op.UpdatedAt = api.StatePreviewing, now
		_ = m.w.journal()
	}
	g.eng.logger.Info("group swap previewing", "group", g.name, "op", g.op.ID)
	return g.awaitComplete(ctx)
}

// undo puts every member's source lane back after apply, a preview or warm failed (a run that
// lost its leadership puts nothing back: the next leader does).
func (g *groupRun) undo(ms []*member, cause error) error {
	if errors.Is(cause, store.ErrStopping) || g.lead.Err() != nil {
		return cause
	}
	return g.putBack(ms, cause, func(m *member) error { return m.w.restoreSource(cause) })
}

// undoInterrupted undoes the parts of a group operation taken over before every member's
// warm-up succeeded (or with a member's part gone), as a site swap is undone.
func (g *groupRun) undoInterrupted(ctx context.Context, ms []*member) error {
	cause := fmt.Errorf("interrupted in state %s by a daemon restart", g.op.State)
	if len(ms) < len(g.members) {
		cause = fmt.Errorf("interrupted in state %s by a daemon restart, with some members' parts ended", g.op.State)
	}
	return g.putBack(ms, cause, func(m *member) error { return g.eng.undoInterrupted(ctx, m.cfg, m.w.op, cause) })
}

// putBack puts every member back with fn, side by side, and says how each went: fn returns
// cause with what it did (putSlotBack).
func (g *groupRun) putBack(ms []*member, cause error, fn func(*member) error) error {
	notes := make([]string, len(ms))
	_ = side(ms, func(i int, m *member) error {
		notes[i] = m.site
		if err := fn(m); err != nil {
			notes[i] += strings.TrimPrefix(err.Error(), cause.Error())
		}
		return nil
	})
	return fmt.Errorf("%w; members put back: %s", cause, strings.Join(notes, "; "))
}

// switchAll is the group's one switch: make on every member, and only once Consul shows every
// member's new lane passing, break on every member; then one exchange for all.
func (g *groupRun) switchAll(ctx context.Context, ms []*member) error {
	timeout := time.Duration(0)
	for _, m := range ms {
		timeout = max(timeout, m.cfg.DeployTimeout)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	made := make([]lanes.Rollout, len(ms))
	err := side(ms, func(i int, m *member) (err error) {
		made[i], err = m.w.retag(ctx, m.w.srcLane, m.w.srcApp, slotTags(m.w.target), lanes.GateHealthy)
		return err
	})
	if err == nil {
		err = failpoint.Inject(ctx, "group.switch.after-make")
	}
	if errors.Is(err, store.ErrStopping) {
		return err
	}
	if err != nil {
		return g.restoreAll(ms, fmt.Errorf("give the members' lanes the routes of %s: %w", g.op.Target, err))
	}
	t1 := time.Now()
	broken := make([]lanes.Rollout, len(ms))
	err = side(ms, func(i int, m *member) (err error) {
		m.w.tgtSick = g.eng.laneSick(ctx, m.cfg, m.w.tgtLane)
		broken[i], err = m.w.retag(ctx, m.w.tgtLane, m.w.tgtApp, drainedTags(m.w.target, m.w.holdFor() > 0), lanes.GateTags)
		return err
	})
	if err == nil {
		err = failpoint.Inject(ctx, "group.switch.after-break")
	}
	if errors.Is(err, store.ErrStopping) {
		return err
	}
	if err != nil {
		return g.restoreAll(ms, fmt.Errorf("take the routes of %s off the members' lanes: %w", g.op.Target, err))
	}
	t2 := time.Now()
	if err := g.exchange(ctx, ms, made, broken); err != nil {
		if g.op.Switched || errors.Is(err, store.ErrStopping) || errors.Is(err, errUndecided) {
			return err // after the exchange each site converges what is left; deposed: nothing
		}
		return g.restoreAll(ms, err)
	}
	g.note(api.PhaseSwitch, fmt.Sprintf("%d members: make %s, break %s, exchange %s (one transaction)", len(ms), roundMs(t1.Sub(t0)), roundMs(t2.Sub(t1)), roundMs(time.Since(t2))))
	return nil
}

// restoreAll undoes a switch that failed before the exchange, on every member, make before
// break (swap.restoreBoth).
func (g *groupRun) restoreAll(ms []*member, cause error) error {
	return g.putBack(ms, cause, func(m *member) error { return m.w.restoreBoth(cause) })
}

// exchange binds every member's target to its source lane and its source to its target lane,
// and swaps their swappable settings, in one transaction with every part's journal and the
// group's, which say switched: the members switch together or not at all.
func (g *groupRun) exchange(ctx context.Context, ms []*member, made, broken []lanes.Rollout) error {
	kv := g.eng.store
	if err := failpoint.Inject(ctx, "group.switch.before-exchange"); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		xs := make([]*exchangeWrite, len(ms))
		var ops consulapi.KVTxnOps
		for i, m := range ms {
			x, err := m.w.exchangeOps(made[i].Version, broken[i].Version)
			if err != nil {
				return err
			}
			xs[i] = x
			ops = append(append(ops, x.ops...), x.journal)
		}
		next := *g.op
		next.Phases = slices.Clone(g.op.Phases)
		next.Switched = true
		journal, err := kv.JournalOp(&next)
		if err != nil {
			return err
		}
		ops = append(ops, journal)
		if err := txnFits(ops); err != nil {
			return err
		}
		if g.lead.Err() != nil {
			return store.ErrStopping
		}
		resp, err := kv.Txn(ops)
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			// A setting was edited meanwhile, or a journal moved: read them again.
			if err := g.rereadJournals(ms); err != nil {
				return err
			}
			continue
		}
		if err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrStopping) {
			// No answer: the group's journal says whether it committed (run.exchanged).
			var committed uint64
			if committed, err = g.exchanged(ctx, err); err == nil {
				next.Index = committed
				resp = &consulapi.KVTxnResponse{}
				for i, m := range ms {
					for try := 1; try <= 5; try++ {
						cur, rerr := kv.RunningOperation(m.site)
						if rerr == nil && cur != nil && cur.ID == m.opID {
							xs[i].next.Index = cur.Index
							break
						}
						if query.Sleep(ctx, query.Backoff(try)) != nil {
							break
						}
					}
				}
			}
		}
		if err != nil {
			return fmt.Errorf("exchange the members' bindings: %w", err)
		}
		for i, m := range ms {
			m.w.exchangedTo(xs[i], resp)
		}
		if next.Index == g.op.Index {
			next.Index = store.ResultIndex(resp, kv.JournalKey(g.op), g.op.Index)
		}
		*g.op = next
		g.eng.ops.publish(g.op)
		g.eng.tell(g.op, evSwitched, nil)
		return failpoint.Inject(ctx, "group.switch.after-exchange")
	}
}

// rereadJournals takes the indexes the journals hold the group and its parts at now.
func (g *groupRun) rereadJournals(ms []*member) error {
	for _, m := range ms {
		if err := m.w.rereadJournal(); err != nil {
			return err
		}
	}
	cur, err := g.eng.store.Journaled(g.op)
	if err != nil || cur == nil || cur.ID != g.op.ID {
		return fmt.Errorf("exchange the members' bindings: the journal of group %s no longer holds operation %s", g.name, g.op.ID)
	}
	g.op.Index = cur.Index
	return nil
}

// holdFor is how long the group holds its members' former target lanes: the longest rollback
// window of a member whose lane is held.
func (g *groupRun) holdFor(ms []*member) time.Duration {
	var d time.Duration
	for _, m := range ms {
		d = max(d, m.w.holdFor())
	}
	return d
}

// afterSwitch is the group's one monitor window (the longest of its members') and one hold;
// the held lanes settle together when the hold ends (swap.afterSwitch).
func (g *groupRun) afterSwitch(ctx context.Context, ms []*member) error {
	switchEnd := time.Now()
	if p := g.op.Phase(api.PhaseSwitch); p != nil && p.EndedAt != nil {
		switchEnd = *p.EndedAt
	}
	hold := g.holdFor(ms)
	holdEnd := switchEnd.Add(hold)
	h := &groupHolder{g: g, ctx: ctx, ms: ms}
	for _, m := range ms {
		// One release: when any member's site rolls back by itself, a degraded member rolls
		// the whole group back.
		h.auto = h.auto || m.cfg.Monitor != nil && m.cfg.Monitor.AutoRollback
	}
	if !succeeded(g.op, api.PhaseSettle) && !time.Now().Before(holdEnd) {
		if err := g.phase(api.PhaseSettle, api.StateSettling, func() error { return h.settle(ctx) }); err != nil {
			return err
		}
	}
	var window time.Duration
	for _, m := range ms {
		if m.cfg.Monitor != nil {
			window = max(window, m.cfg.Monitor.Window)
		}
	}
	if window <= 0 && succeeded(g.op, api.PhaseSettle) {
		g.skip(api.PhaseMonitor, "no monitor window")
		for _, m := range ms {
			m.w.skip(api.PhaseMonitor, "no monitor window")
		}
		return nil
	}
	monStart := switchEnd
	if p := g.op.Phase(api.PhaseSettle); hold == 0 && p != nil && p.EndedAt != nil {
		monStart = *p.EndedAt
	}
	for _, m := range ms {
		h.want = append(h.want, m.w.instanceCount(ctx))
	}
	started := time.Now()
	return g.phase(api.PhaseMonitor, api.StateMonitoring, func() error {
		return g.alongside(ms, api.PhaseMonitor, api.StateMonitoring, func() error {
			err := g.monitorAndHold(ctx, h, monStart.Add(window), holdEnd, started)
			if p := g.op.Phase(api.PhaseSettle); p != nil && p.State == api.PhaseSkipped {
				// Held for the group's next operation: every part says so, and its site waits
				// for the group (site.ended).
				for _, m := range ms {
					m.w.skip(api.PhaseSettle, p.Message)
				}
			}
			return err
		})
	})
}

// groupHolder is the holder of a group operation: every member's target watched against its
// own site's monitor; a degradation of any rolls the group back when that site's monitor says
// auto_rollback.
type groupHolder struct {
	g    *groupRun
	ctx  context.Context
	ms   []*member
	want []int

	auto bool // any member's site rolls back by itself
	p    pausedSet
}

func (h *groupHolder) watch(ctx context.Context) error {
	var fns []func(context.Context) error
	for i, m := range h.ms {
		mon := m.cfg.Monitor
		if mon == nil || mon.Window <= 0 {
			continue
		}
		// Each member's health and analyses against its own site's monitor; the analyses'
		// measurements are kept in the member's part and in the group operation.
		fns = append(fns, func(ctx context.Context) error {
			err := allOf(ctx,
				func(ctx context.Context) error { return m.w.watchHealth(ctx, mon, h.want[i]) },
				func(ctx context.Context) error {
					return m.w.watchAnalyses(ctx, h.g.name, h.p.tell(m.site), m.r, h.g.run)
				})
			if err != nil {
				return fmt.Errorf("%s: %w", m.site, err)
			}
			return nil
		})
	}
	return allOf(ctx, fns...)
}

func (h *groupHolder) paused() string { return h.p.any() }

func (h *groupHolder) pauseStep() time.Duration {
	cfgs := make([]*config.Site, len(h.ms))
	for i, m := range h.ms {
		cfgs[i] = m.cfg
	}
	return pauseStep(cfgs...)
}

func (h *groupHolder) settleHeld(ctx context.Context) error {
	state := h.g.op.State
	return h.g.phase(api.PhaseSettle, api.StateSettling, func() error {
		err := h.settle(ctx)
		h.g.op.State = state
		return err
	})
}

// settle settles every member's held lane, each as its part's settle phase.
func (h *groupHolder) settle(ctx context.Context) error {
	return h.g.each(h.ms, api.PhaseSettle, api.StateSettling, func(m *member) error { return m.w.settle(ctx) })
}

func (h *groupHolder) autoRollback() bool { return h.auto }

func (h *groupHolder) heldLanes() string {
	lanes := make([]string, len(h.ms))
	for i, m := range h.ms {
		lanes[i] = m.w.tgtLane
	}
	return "lanes " + strings.Join(lanes, ", ")
}

// stateIs journals the group's new state in every part too; a part whose settle is left to the
// next operation says so in its own journal as the group's does.
func (h *groupHolder) stateIs(state string) {
	for _, m := range h.ms {
		m.w.op.State, m.w.op.UpdatedAt = state, time.Now().UTC()
		_ = m.w.journal()
	}
}
