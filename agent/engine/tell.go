package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// What the engine tells the world about its operations: events for the notify webhooks, and
// the confirmations a gate asks for. Both are the daemon's to deliver (agent/notify); the
// engine only says what happened, and never waits for a webhook to take it.

// Notifier takes the events of operations; Send must not block.
type Notifier interface {
	Send(api.Event)
}

// Gatekeeper asks a gate's webhook whether an operation may go on: nil when it may, or why not.
type Gatekeeper interface {
	Ask(ctx context.Context, gate *config.Gate, op *api.Operation) error
}

// Events of an operation, as "<kind>.<what>" (api.Event).
const (
	evStarted        = "started"
	evPhaseEnded     = "phase_ended"
	evSwitched       = "switched"
	evAnalysisFailed = "analysis_failed"
	evRolledBack     = "rolled_back"
)

// tell sends the event what of op (a copy) to the notifier; a member's part of a group
// operation tells nothing of its own: the group operation tells.
func (e *Engine) tell(op *api.Operation, what string, phase *api.Phase) {
	if e.notify == nil || op.GroupOperation != "" {
		return
	}
	c := *op
	c.Phases = append([]api.Phase(nil), op.Phases...)
	c.Members = append([]api.GroupMember(nil), op.Members...)
	c.Measurements = append([]api.Measurement(nil), op.Measurements...)
	ev := api.Event{Event: op.Kind + "." + what, At: time.Now().UTC(), Site: op.Site, Group: op.Group, Operation: &c}
	if phase != nil {
		p := *phase
		ev.Phase = &p
	}
	e.notify.Send(ev)
}

// gate asks the site's gate of that name, if it has one: nil when there is none or it said
// yes, else why not.
func (e *Engine) gate(ctx context.Context, cfg *config.Site, name string, op *api.Operation) error {
	g := cfg.Gate(name)
	switch {
	case g == nil:
		return nil
	case e.gates == nil:
		return fmt.Errorf("gate %s of site %s: no gatekeeper in this daemon", name, cfg.Name)
	}
	return e.gates.Ask(ctx, g, op)
}
