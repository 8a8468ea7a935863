package engine

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// recorder is a notifier and gatekeeper that keeps what it was told; refuse answers the gate.
type recorder struct {
	mu     sync.Mutex
	events []string
	asked  int
	refuse error
}

func (r *recorder) Send(ev api.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := ev.Event
	if ev.Phase != nil {
		name += ":" + ev.Phase.Name
	}
	r.events = append(r.events, name)
}

func (r *recorder) Ask(context.Context, *config.Gate, *api.Operation) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked++
	return r.refuse
}

func (r *recorder) told() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// TestSwapTellsAndAsksTheGate: a swap's events reach the notifier in order, and a gate that
// refuses leaves the swap previewing with the reason until it is completed.
func TestSwapTellsAndAsksTheGate(t *testing.T) {
	kv := storetest.New()
	kvSlots(kv, false)
	cfg := testSite()
	cfg.Gates = []*config.Gate{{Name: "before-switch", Webhook: "http://gate.invalid/"}}
	e, _, s := ownedSite(t, kv, cfg)
	rec := &recorder{refuse: errors.New("gate before-switch refused: 403 Forbidden: change freeze")}
	e.notify, e.gates = rec, rec

	op, err := e.Swap("web", "staging", "production", false)
	require.NoError(t, err)
	waitState(t, e, op.ID, api.StatePreviewing)
	cur := e.ops.get(op.ID)
	assert.Contains(t, cur.Waiting, "change freeze")
	assert.Equal(t, "web-a", kv.Value("slotd/sites/web/slots/production/lane"), "no route moved")
	_, err = e.Complete(context.Background(), op.ID)
	require.NoError(t, err)
	final := endOf(t, e, s, op.ID)
	require.Equal(t, api.StateSucceeded, final.State, final.Error)
	assert.Empty(t, final.Waiting)
	assert.Equal(t, "web-b", kv.Value("slotd/sites/web/slots/production/lane"))
	assert.Equal(t, 1, rec.asked)
	assert.Equal(t, []string{"swap.started", "swap.phase_ended:preflight", "swap.phase_ended:apply", "swap.phase_ended:warm",
		"swap.switched", "swap.phase_ended:switch", "swap.phase_ended:settle", "swap.succeeded"}, rec.told())
}
