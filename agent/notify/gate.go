package notify

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// GateEvent is the event name of a gate request of an operation of the given kind:
// "<kind>.gate", such as swap.gate.
func GateEvent(kind string) string { return kind + ".gate" }

// Ask asks the gate's webhook whether op may go on: it posts an api.Event (event
// "<kind>.gate", the gate's name in X-Slotd-Gate, signed like an event) and waits up to the
// gate's Timeout for the answer. A 2xx lets op go on (nil); any other answer, no answer in
// time, or a request that fails is an error that says which. It is asked once: the operator
// completes or cancels the operation after a refusal.
func (n *Notifier) Ask(ctx context.Context, gate *config.Gate, op *api.Operation) error {
	ev := api.Event{
		Event:     GateEvent(op.Kind),
		Delivery:  rand.Text(),
		At:        time.Now().UTC(),
		Site:      op.Site,
		Group:     op.Group,
		Operation: op,
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("gate %s: encode the request: %w", gate.Name, err)
	}
	log := n.logger.With("gate", gate.Name, "site", op.Site, "op", op.ID, "delivery", ev.Delivery)

	ctx, cancel := context.WithTimeout(ctx, gate.Timeout)
	defer cancel()
	req, err := newRequest(ctx, gate.Webhook, gate.Secret, ev.Event, ev.Delivery, body)
	if err != nil {
		return fmt.Errorf("gate %s: %w", gate.Name, err)
	}
	req.Header.Set(HeaderGate, gate.Name)
	log.Info("asking gate", "timeout", gate.Timeout)
	resp, err := n.client.Do(req)
	switch {
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		log.Warn("gate did not answer in time", "timeout", gate.Timeout)
		return fmt.Errorf("gate %s: no answer within %s: %w", gate.Name, gate.Timeout, context.DeadlineExceeded)
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("gate %s: %w", gate.Name, ctx.Err())
	case err != nil:
		log.Warn("gate not reached", "error", err)
		return fmt.Errorf("gate %s: cannot reach the webhook: %w", gate.Name, err)
	}
	defer resp.Body.Close()
	answer := readAnswer(resp.Body)
	if resp.StatusCode/100 == 2 {
		log.Info("gate passed", "status", resp.StatusCode)
		return nil
	}
	log.Warn("gate refused", "status", resp.StatusCode, "answer", answer)
	msg := fmt.Sprintf("gate %s refused: %s", gate.Name, resp.Status)
	if answer != "" {
		msg += ": " + answer
	}
	return errors.New(msg)
}
