package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/api"
)

const (
	// probeEvery is how often the daemon checks that it reaches Consul and Nomad, for
	// /v1/health; probeTimeout bounds one check: a server that does not answer within it
	// counts as unreachable.
	probeEvery   = 5 * time.Second
	probeTimeout = 2 * time.Second
)

// errNoClusterLeader is a probe answered by a server whose cluster has no leader: it answers,
// but cannot serve a write.
var errNoClusterLeader = errors.New("the cluster has no leader")

// probes holds the outcome of the last probe of each backend.
type probes struct {
	mu     sync.Mutex
	consul api.Reach
	nomad  api.Reach
}

func newProbes() *probes {
	return &probes{consul: api.Reach{Status: api.ReachUnknown}, nomad: api.Reach{Status: api.ReachUnknown}}
}

// last returns the outcomes of the last probes of Consul and Nomad.
func (p *probes) last() (consul, nomad api.Reach) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.consul, p.nomad
}

// probeLoop probes Consul and Nomad at once and then every probeEvery until ctx ends.
func (a *Agent) probeLoop(ctx context.Context) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		a.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probe asks Consul and Nomad, side by side, who leads their cluster: the cheapest call that
// needs a working server.
func (a *Agent) probe(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		a.record("consul", &a.probes.consul, probeCall(ctx, func(ctx context.Context) (string, error) {
			return a.ctlConsul.Status().LeaderWithQueryOptions((&consulapi.QueryOptions{}).WithContext(ctx))
		}))
	})
	wg.Go(func() {
		a.record("nomad", &a.probes.nomad, probeCall(ctx, func(ctx context.Context) (string, error) {
			// Status().Leader() takes no context; this is the same request with one.
			var leader string
			_, err := a.ctlNomad.Raw().Query("/v1/status/leader", &leader, (&nomadapi.QueryOptions{}).WithContext(ctx))
			return leader, err
		}))
	})
	wg.Wait()
}

// probeCall runs one probe within probeTimeout.
func probeCall(ctx context.Context, leader func(context.Context) (string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	l, err := leader(ctx)
	if err == nil && l == "" {
		err = errNoClusterLeader
	}
	return err
}

// record keeps the outcome of a probe of backend in r, and logs when reachability changes.
func (a *Agent) record(backend string, r *api.Reach, err error) {
	if errors.Is(err, context.Canceled) {
		return // the daemon stops
	}
	if err != nil {
		a.metrics.QueryErrors.WithLabelValues(backend).Inc()
	}
	now := time.Now().UTC()
	next := api.Reach{Status: api.Reachable, CheckedAt: &now}
	if err != nil {
		next.Status, next.Error = api.Unreachable, err.Error()
	}
	a.probes.mu.Lock()
	prev := r.Status
	*r = next
	a.probes.mu.Unlock()
	switch {
	case next.Status == prev:
	case err != nil:
		a.logger.Warn("cannot reach "+backend+"; /v1/health answers 503", "error", err)
	case prev == api.Unreachable:
		a.logger.Info("reaching " + backend + " again")
	}
}
