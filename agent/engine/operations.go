package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/internal/failpoint"
)

// controls sent to a running operation.
const (
	ctlComplete   = "complete"
	ctlCancel     = "cancel"
	ctlEndMonitor = "end-monitor" // another operation starts: end the monitor, leave the hold to it
	ctlSettle     = "settle"      // end the hold now; the monitor goes on
	ctlFinish     = "finish"      // a cancel: end the monitor and settle now
)

// run is one operation in flight in this daemon.
type run struct {
	eng     *Engine
	site    *site
	op      *api.Operation // owned by the run's goroutine; others see published copies
	control chan string
	done    chan struct{}
	// ctx ends when the operation is cancelled through the API, the daemon gives up waiting,
	// or the leadership it runs under ends.
	ctx       context.Context
	cancel    context.CancelFunc
	cancelled atomic.Bool
	// lead is the leadership the operation runs under: once it ends, the run writes nothing
	// more and leaves the operation journaled for the next leader.
	lead context.Context
	// left is set when the run stopped without ending the operation (leadership or daemon
	// stop): it is still journaled, for the next leader.
	left bool
	// unmoved is set when the operation ended but Consul refused its move into history.
	unmoved bool
	// historyLimit is how many finished operations the site keeps (see store.finishOperation).
	historyLimit int
	// watch orders the journal writes of the watches that run beside it (await).
	watch watcher
}

// leadKey carries a run's leadership in its context, for work that outlives the run's own
// deadline but must not outlive the leadership (putting lanes back).
type leadKey struct{}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "op-" + hex.EncodeToString(b)
}

// opFunc carries an operation out; it returns nil when the operation succeeded.
type opFunc func(ctx context.Context, r *run) error

func (e *Engine) newRun(s *site, lead context.Context, op *api.Operation) *run {
	r := &run{eng: e, site: s, op: op, lead: lead, control: make(chan string, 1), done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(context.WithValue(lead, leadKey{}, lead))
	e.ops.publish(op)
	return r
}

// execute runs fn and then records the outcome in history.
func (r *run) execute(fn opFunc) {
	e := r.eng
	defer close(r.done)
	defer r.cancel()
	err := r.call(fn)
	if err != nil && r.cancelled.Load() {
		err = fmt.Errorf("%w: %v", errCancelled, err)
	}
	if errors.Is(err, store.ErrStopping) || errors.Is(err, errUndecided) || r.lead.Err() != nil {
		if e.stopping() && r.lead.Err() == nil {
			// A graceful stop between phases: the next leader goes on from here.
			r.op.HandedOff = true
			if jerr := r.journal(); jerr != nil {
				e.logger.Warn("cannot journal the hand-off", "site", r.op.Site, "op", r.op.ID, "error", jerr)
			}
		}
		e.logger.Info("operation left journaled for the next leader", "site", r.op.Site, "op", r.op.ID, "state", r.op.State, "error", err)
		r.left = true
		return
	}
	r.finish(err)
}

// call runs fn; a panic in it fails the operation with the panic's message instead of taking
// the daemon and every other site down.
func (r *run) call(fn opFunc) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.eng.logger.Error("operation panicked", "site", r.op.Site, "op", r.op.ID, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("slotd failed inside the operation (panic: %v); see the daemon's log", p)
		}
	}()
	return fn(r.ctx, r)
}

// finish ends the operation: succeeded, failed or cancelled, and moves it into history (or
// drops it, when it succeeded having changed nothing).
func (r *run) finish(err error) {
	e := r.eng
	op := r.op
	now := time.Now().UTC()
	switch {
	case err == nil:
		op.State = api.StateSucceeded
	case errors.Is(err, errCancelled):
		op.State = api.StateCancelled
		op.Error = err.Error()
	default:
		op.State = api.StateFailed
		op.Error = err.Error()
	}
	for i := range op.Phases {
		p := &op.Phases[i]
		switch {
		case p.State == api.PhasePending:
			p.State = api.PhaseSkipped
		case p.State == api.PhaseRunning && op.State == api.StateSucceeded:
			p.State = api.PhaseSucceeded // interrupted, then finished by the next leader
		case p.State == api.PhaseRunning:
			p.State = api.PhaseFailed
			if p.Message == "" {
				p.Message = "interrupted"
			}
		}
	}
	op.FinishedAt, op.UpdatedAt = &now, now
	// The outcome goes into the journal first: should the move into history fail, whoever
	// reads the journal next moves it, and never runs it again.
	if jerr := r.write(); jerr != nil {
		e.logger.Warn("cannot journal the outcome", "site", op.Site, "op", op.ID, "error", jerr)
	}
	for attempt := 1; ; attempt++ {
		jerr := e.store.MoveToHistory(op, r.historyLimit)
		if jerr == nil {
			if !op.Unchanged || op.State != api.StateSucceeded {
				e.index.kept(op.ID, e.store.HistoryKeyOf(op))
			}
			break
		}
		if attempt == historyAttempts || r.lead.Err() != nil {
			e.logger.Error("cannot move the finished operation into history yet; trying again later", "site", op.Site, "op", op.ID, "error", jerr)
			r.unmoved = true
			break
		}
		time.Sleep(query.Backoff(attempt))
	}
	e.ops.publish(op)
	e.metrics.Finished(op)
	e.tell(op, op.State, nil) // succeeded, failed or cancelled
	level := e.logger.Info
	if op.State != api.StateSucceeded {
		level = e.logger.Warn
	}
	level("operation finished", "site", op.Site, "op", op.ID, "kind", op.Kind, "state", op.State, "error", op.Error, "unchanged", op.Unchanged)
}

// historyAttempts is how often the move of a finished operation into history is tried.
const historyAttempts = 5

// phase runs one named phase: journaled as running before it starts, and with its outcome after.
func (r *run) phase(name, state string, fn func() error) error {
	e := r.eng
	if e.stopping() || r.lead.Err() != nil {
		// Stopping, or the leader lock was lost: the next leader goes on from here.
		return store.ErrStopping
	}
	p := r.op.Phase(name)
	if p == nil {
		r.op.Phases = append(r.op.Phases, api.Phase{Name: name})
		p = &r.op.Phases[len(r.op.Phases)-1]
	}
	now := time.Now().UTC()
	p.State, p.StartedAt, p.EndedAt, p.Message = api.PhaseRunning, &now, nil, ""
	r.op.State, r.op.UpdatedAt = state, now
	if err := r.journal(); err != nil {
		return err
	}
	err := failpoint.Inject(r.ctx, name+".start")
	if err == nil {
		err = fn()
	}
	p = r.op.Phase(name)
	if errors.Is(err, store.ErrStopping) || errors.Is(err, errUndecided) {
		// Not run to its end: the next leader runs it again (a monitor only what is left of
		// its window, counted from StartedAt).
		p.State = api.PhasePending
		_ = r.journal()
		return err
	}
	end := time.Now().UTC()
	p.EndedAt, r.op.UpdatedAt = &end, end
	switch {
	case err == nil:
		p.State = api.PhaseSucceeded
	case errors.Is(err, errCancelled):
		p.State, p.Message = api.PhaseCancelled, err.Error()
	default:
		p.State, p.Message = api.PhaseFailed, err.Error()
	}
	e.metrics.PhaseSeconds.WithLabelValues(r.op.Site, r.op.Kind, name, p.State).Observe(end.Sub(*p.StartedAt).Seconds())
	e.tell(r.op, evPhaseEnded, p)
	if jerr := r.journal(); jerr != nil && (err == nil || errors.Is(jerr, store.ErrStopping)) {
		return jerr // deposed: that, not the phase's own outcome, decides what happens next
	}
	if ferr := failpoint.Inject(r.ctx, name+".end"); ferr != nil && err == nil {
		return ferr
	}
	return err
}

// skip marks a phase as skipped with a reason.
func (r *run) skip(name, why string) {
	if p := r.op.Phase(name); p != nil {
		p.State, p.Message = api.PhaseSkipped, why
	}
}

// note sets the message of a phase while it runs and journals it.
func (r *run) note(name, msg string) {
	if p := r.op.Phase(name); p != nil {
		p.Message = msg
		_ = r.journal()
	}
}

func (r *run) journal() error {
	if err := r.write(); err != nil {
		return err
	}
	r.eng.ops.publish(r.op)
	return nil
}

// write journals the operation without telling its followers: an outcome is told only once
// it is in history, where a rollback that follows looks for it.
func (r *run) write() error {
	if r.lead.Err() != nil {
		// Deposed: even should this daemon lead again, its new session must not carry the
		// writes of a run that belongs to the old leadership.
		return store.ErrStopping
	}
	return r.eng.store.UpdateOperation(r.op)
}

// opRegistry keeps the operations this daemon has seen, for reads that block until a change.
type opRegistry struct {
	mu  sync.Mutex
	ops map[string]*opEntry
}

type opEntry struct {
	op      api.Operation
	changed chan struct{}
}

// maxRemembered bounds the finished operations kept in memory; older ones are read from KV.
const maxRemembered = 1000

func newOpRegistry() *opRegistry { return &opRegistry{ops: map[string]*opEntry{}} }

func (g *opRegistry) publish(op *api.Operation) {
	c := *op
	c.Phases = append([]api.Phase(nil), op.Phases...)
	c.Members = append([]api.GroupMember(nil), op.Members...)
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.ops[op.ID]
	if !ok {
		if len(g.ops) >= maxRemembered {
			g.forgetFinished()
		}
		e = &opEntry{changed: make(chan struct{})}
		g.ops[op.ID] = e
	}
	e.op = c
	close(e.changed)
	e.changed = make(chan struct{})
}

func (g *opRegistry) forgetFinished() {
	for id, e := range g.ops {
		if api.Terminal(e.op.State) {
			delete(g.ops, id)
		}
	}
}

// get returns a copy of the operation, or nil.
func (g *opRegistry) get(id string) *api.Operation {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.ops[id]
	if !ok {
		return nil
	}
	c := e.op
	return &c
}

// wait returns the operation once its index differs from index, or when ctx ends.
func (g *opRegistry) wait(ctx context.Context, id string, index uint64) *api.Operation {
	for {
		g.mu.Lock()
		e, ok := g.ops[id]
		if !ok {
			g.mu.Unlock()
			return nil
		}
		c, ch := e.op, e.changed
		g.mu.Unlock()
		if c.Index != index || api.Terminal(c.State) && index == 0 {
			return &c
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return &c
		}
	}
}
