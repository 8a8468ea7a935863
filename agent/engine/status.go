package engine

import (
	"context"
	"fmt"
	"slices"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// statusWait bounds how long a read waits for the owner's next look at the site before it
// reads KV, Consul and Nomad itself.
const statusWait = 5 * time.Second

// observed is a site's status as KV, Consul and Nomad showed it: what the owner publishes for
// reads, refreshed when a watch says something changed and when this daemon wrote.
type observed struct {
	site *api.Site // with every detail; its operation as journaled
	// writes is how many of the store's transactions had returned when the reads began.
	writes uint64
}

// Status is a site's status; detail adds each slot's instances and settings. While this
// daemon leads, it is the one the site's owner published, as long as no write of this daemon
// came after it (read your writes): no read of Consul or Nomad per request. A standby reads
// them itself.
func (e *Engine) Status(ctx context.Context, name string, detail bool) (*api.Site, error) {
	s := e.site(name)
	if s == nil {
		return nil, fmt.Errorf("%w: no site %q", ErrNotFound, name)
	}
	cfg := s.config()
	pub := s.snapshot()
	var ob *observed
	if pub.ready && e.Leading() {
		ob = s.observedSince(ctx, e.store.Writes(name))
	}
	if ob == nil {
		var err error
		if ob, err = e.observe(ctx, cfg); err != nil {
			return nil, err
		}
	}
	return e.present(cfg, ob, pub.ready && e.Leading(), detail), nil
}

// observedSince is the owner's view of the site once it reflects the first writes
// transactions of the store: at once when the published one does, else after the owner's
// next look (evObserve); nil when that does not come within statusWait.
func (s *site) observedSince(ctx context.Context, writes uint64) *observed {
	if ob := s.snapshot().status; ob != nil && ob.writes >= writes {
		return ob
	}
	reply := make(chan *observed, 1)
	if !s.send(evObserve{writes: writes, reply: reply}) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, statusWait)
	defer cancel()
	select {
	case ob := <-reply:
		return ob
	case <-ctx.Done():
		return nil
	}
}

// observe reads a site's status from KV (bindings, settings, operations), Consul (instances)
// and, for a slot whose scale is live, Nomad.
func (e *Engine) observe(ctx context.Context, cfg *config.Site) (*observed, error) {
	ob := &observed{writes: e.store.Writes(cfg.Name)}
	st, err := e.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return nil, err
	}
	entries, _, err := e.lanes.SiteEntries(ctx, cfg, 0, 0)
	if err != nil {
		return nil, err
	}
	view := &api.Site{Name: cfg.Name, Service: cfg.Service, Slots: []api.Slot{}}
	for _, slot := range cfg.Slots {
		view.Slots = append(view.Slots, e.slotStatus(ctx, cfg, slot, st.Slot(slot.Name), entries))
	}
	if view.Operation, err = e.store.RunningOperation(cfg.Name); err != nil {
		return nil, err
	}
	last, err := e.store.HistoryPage(cfg.Name, 1, 0)
	if err != nil {
		return nil, err
	}
	if len(last) > 0 {
		view.LastOperation = &last[0]
	}
	ob.site = view
	return ob, nil
}

// slotStatus is one slot's part of a site's status.
func (e *Engine) slotStatus(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState, entries []*consulapi.ServiceEntry) api.Slot {
	v := api.Slot{Name: slot.Name, Version: ss.BoundVersion(), Tags: slotTags(slot), AutoSwap: slot.AutoSwap}
	if ss.Lane.Value != "" {
		v.Lane = jobspec.JobID(cfg.Name, ss.Lane.Value)
	}
	for _, en := range entries {
		if ss.Lane.Value == "" || en.Service.Meta[lanes.MetaLane] != ss.Lane.Value {
			continue
		}
		v.Total++
		status := en.Checks.AggregatedStatus()
		if status == consulapi.HealthPassing {
			v.Healthy++
		}
		addr := en.Service.Address
		if addr == "" {
			addr = en.Node.Address
		}
		v.Instances = append(v.Instances, api.Instance{
			Alloc: lanes.AllocOf(en.Service.ID), Node: en.Node.Node, Address: addr, Port: en.Service.Port,
			Tags: en.Service.Tags, Healthy: status == consulapi.HealthPassing, Status: status,
		})
	}
	if set, err := e.slotSet(ctx, cfg, slot, ss); err == nil {
		v.Scale, v.ScaleSource = set.Scale, scaleSource(slot)
	}
	set := ss.Values()
	v.Settings = &api.Settings{Settings: set.Settings, Sticky: set.Sticky}
	return v
}

// present is an observed status as the API answers it: a copy, with the running operation
// as this daemon knows it now and the slot its former target lane holds for, and without the
// instances and settings unless detail.
func (e *Engine) present(cfg *config.Site, ob *observed, ready, detail bool) *api.Site {
	view := *ob.site
	view.Ready = ready
	view.Slots = slices.Clone(view.Slots)
	if !detail {
		for i := range view.Slots {
			view.Slots[i].Instances, view.Slots[i].Settings = nil, nil
		}
	}
	if running := view.Operation; running != nil {
		if mem := e.ops.get(running.ID); mem != nil {
			running = mem
		}
		view.Operation = running
		if slot, until, ok := holding(cfg, running); ok {
			for i := range view.Slots {
				if view.Slots[i].Name == slot {
					view.Slots[i].HeldFor, view.Slots[i].HeldUntil = running.Target, &until
				}
			}
		}
		if running.GroupOperation != "" {
			// A member's part of a group operation: the site shows the group operation.
			if g := e.ops.get(running.GroupOperation); g != nil {
				view.Operation = g
			}
		}
	}
	return &view
}

// holding reports whether op is a swap that holds its former target lane now: the slot that
// lane is bound to (the swap's source), and when the hold ends at the latest.
func holding(cfg *config.Site, op *api.Operation) (string, time.Time, bool) {
	sw, settle := op.Phase(api.PhaseSwitch), op.Phase(api.PhaseSettle)
	if (op.Kind != api.KindSwap && op.Kind != api.KindRollback) || !op.Switched || api.Terminal(op.State) ||
		sw == nil || sw.EndedAt == nil || settle == nil || settle.State != api.PhasePending || cfg.Monitor == nil {
		return "", time.Time{}, false
	}
	return op.Source, sw.EndedAt.Add(cfg.Monitor.RollbackWindow), true
}

// look has the owner look at the site beside itself (evObserved), unless it does already.
func (s *site) look() {
	if s.observing || s.lead == nil || !s.ready {
		return
	}
	s.observing = true
	lead, cfg := s.lead, s.cfg
	go func() {
		ctx, cancel := context.WithTimeout(lead, checkTimeout)
		defer cancel()
		ob, err := s.eng.observe(ctx, cfg)
		s.send(evObserved{lead: lead, ob: ob, err: err})
	}()
}

// observedSite takes what a look at the site saw: it is published, and the reads that waited
// for it are answered; reads that asked for later writes wait for the next look.
func (s *site) observedSite(ev evObserved) {
	if ev.lead != s.lead {
		return
	}
	s.observing = false
	if ev.err != nil {
		s.log.Debug("cannot look at the site", "error", ev.err)
	} else {
		s.status = ev.ob
	}
	var later []observer
	for _, o := range s.observers {
		switch {
		case ev.err != nil:
			o.reply <- nil
		case ev.ob.writes >= o.writes:
			o.reply <- ev.ob
		default:
			later = append(later, o)
		}
	}
	s.observers = later
	if len(later) > 0 || s.stale {
		s.stale = false
		s.look()
	}
}

// observer is a read that waits for a look at the site that reflects writes transactions.
type observer struct {
	writes uint64
	reply  chan<- *observed
}
