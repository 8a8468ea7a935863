// Package engine runs the declared sites: one owner goroutine per site that makes every
// decision, and the operations it starts (deploy, swap, scale, converge, recover).
package engine

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/agent/analysis"
	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/metrics"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/config"
)

// ShutdownGrace is how long a stopping daemon lets running phases finish before their
// leadership ends, which cancels them and leaves them to the next leader (their journal says
// where they were). It fits Nomad's default max_kill_timeout (30 s) with agent.StopTime.
const ShutdownGrace = 20 * time.Second

// Deps are what the engine works with: Consul and Nomad for the shared watches, the store and
// the lanes for everything else.
type Deps struct {
	Consul  *consulapi.Client
	Nomad   *nomadapi.Client
	Store   *store.Store
	Lanes   *lanes.Lanes
	Metrics *metrics.Metrics
	Follow  *query.Follower
	Logger  hclog.Logger
	// Notify takes every operation's events (nil: none are sent); Gates answers the sites'
	// gates (nil: a declared gate refuses).
	Notify Notifier
	Gates  Gatekeeper
}

// Engine owns the declared sites. Its scopes are contexts: the daemon's (Run's ctx: once it
// ends no new phase starts), a leadership's (Lead: once it ends the operations under it write
// nothing more), a site's (its owner) and an operation's (its run).
type Engine struct {
	logger  hclog.Logger
	consul  *consulapi.Client
	nomad   *nomadapi.Client
	store   *store.Store
	lanes   laneOps
	metrics *metrics.Metrics
	follow  *query.Follower
	// analysis evaluates the sites' analyses against Prometheus.
	analysis *analysis.Runner
	notify   Notifier
	gates    Gatekeeper
	ops      *opRegistry
	index    *opIndex
	// httpClient sends the warm-up requests (newWarmupClient).
	httpClient *http.Client

	// daemon is Run's context: done once the daemon stops.
	daemon context.Context
	leader atomic.Bool

	mu     sync.Mutex
	groups []*config.Group
	// historyLimit is how many finished group operations each group keeps (the top-level
	// history_limit).
	historyLimit int
	sites        map[string]*site
	siteStops    map[string]context.CancelFunc
	ownersCtx    context.Context // the sites' owners run until it ends (nil before Run)
	lead         context.Context // the leadership under way, nil while this daemon does not lead

	runsMu sync.Mutex
	runs   map[string]*run // the run in flight per site name, whichever owner started it

	groupsMu  sync.Mutex
	groupRuns map[string]*groupRun // the group operations in flight, by ID
}

// New builds the engine of cfg's sites; Run runs them.
func New(cfg *config.Config, d Deps) *Engine {
	e := &Engine{
		logger: d.Logger, consul: d.Consul, nomad: d.Nomad, store: d.Store, lanes: d.Lanes,
		metrics: d.Metrics, follow: d.Follow, notify: d.Notify, gates: d.Gates, ops: newOpRegistry(), index: newOpIndex(),
		httpClient: newWarmupClient(), analysis: analysis.NewRunner(nil, d.Metrics),
		daemon: context.Background(),
		sites:  map[string]*site{}, siteStops: map[string]context.CancelFunc{},
		runs: map[string]*run{}, groups: cfg.Groups, groupRuns: map[string]*groupRun{},
		historyLimit: cfg.HistoryLimit,
	}
	for _, sc := range cfg.Sites {
		e.sites[sc.Name] = newSite(e, sc)
	}
	return e
}

// Run runs the sites' owners until ctx ends and the operations still running have ended
// (they finish their phase, or their leadership ends: Drain).
func (e *Engine) Run(ctx context.Context) {
	owners, stopOwners := context.WithCancel(context.Background())
	e.mu.Lock()
	e.daemon, e.ownersCtx = ctx, owners
	for name, s := range e.sites {
		e.runSite(name, s)
	}
	e.mu.Unlock()
	<-ctx.Done()
	e.waitRuns(nil)
	stopOwners()
	for _, s := range e.siteList() {
		<-s.stopped
	}
}

// runSite starts the owner of a site; e.mu is held.
func (e *Engine) runSite(name string, s *site) {
	ctx, cancel := context.WithCancel(e.ownersCtx)
	e.siteStops[name] = cancel
	go s.run(ctx)
	if e.lead != nil {
		go s.send(evLead{e.lead})
	}
}

// Lead runs the sites under a leadership until lead ends: they are brought up, then kept
// converged, and the shared watches run. It returns at once.
func (e *Engine) Lead(lead context.Context) {
	e.mu.Lock()
	e.lead = lead
	e.leader.Store(true)
	e.metrics.Leader.Set(1)
	e.mu.Unlock()
	// After the leadership is recorded: one that has ended already is forgotten at once.
	context.AfterFunc(lead, func() {
		e.mu.Lock()
		if e.lead == lead {
			e.lead = nil
			e.leader.Store(false)
			e.metrics.Leader.Set(0)
		}
		e.mu.Unlock()
	})
	e.watchShared(lead)
	for _, s := range e.siteList() {
		s.send(evLead{lead})
	}
	go e.leadGroups(lead)
}

// Drain waits, once the daemon stops, until every running operation has ended its phase or
// ShutdownGrace passed; the caller then ends the leadership, which cancels what still runs.
func (e *Engine) Drain() {
	deadline := time.After(ShutdownGrace)
	e.waitRuns(deadline)
}

// waitRuns waits for the running operations, or until deadline (nil: no deadline).
func (e *Engine) waitRuns(deadline <-chan time.Time) {
	for _, s := range e.siteList() {
		r := s.snapshot().running
		if r == nil {
			continue
		}
		e.logger.Info("waiting for the running phase to finish", "site", s.name, "op", r.op.ID)
		select {
		case <-r.done:
		case <-deadline:
			e.logger.Warn("running phases did not finish in time; cancelling them", "grace", ShutdownGrace)
			return
		}
	}
}

// Leading reports whether operations may start here: this daemon leads and is not stopping.
func (e *Engine) Leading() bool { return e.leader.Load() && e.daemon.Err() == nil }

// stopping reports whether the daemon stops: no new phase starts.
func (e *Engine) stopping() bool { return e.daemon.Err() != nil }

// Reload swaps in new declarations. Kept sites get theirs (added slots are bound and seeded,
// changed routes converge); new sites start; a site no longer declared stops being managed:
// its owner stops, and its lanes keep running.
func (e *Engine) Reload(cfg *config.Config) {
	e.mu.Lock()
	e.groups, e.historyLimit = cfg.Groups, cfg.HistoryLimit
	// The owners hear of it after e.mu is released: an owner busy must not hold up readers.
	var tell []func()
	for _, sc := range cfg.Sites {
		if s, ok := e.sites[sc.Name]; ok {
			tell = append(tell, func() { s.send(evConfig{sc}) })
			continue
		}
		s := newSite(e, sc)
		e.sites[sc.Name] = s
		if e.ownersCtx != nil {
			e.runSite(sc.Name, s)
		}
	}
	for name := range e.sites {
		if cfg.Site(name) != nil {
			continue
		}
		e.logger.Warn("site no longer declared; its lanes keep running unmanaged", "site", name)
		if stop := e.siteStops[name]; stop != nil {
			stop()
		}
		delete(e.sites, name)
		delete(e.siteStops, name)
	}
	e.mu.Unlock()
	for _, fn := range tell {
		fn()
	}
}

func (e *Engine) site(name string) *site {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sites[name]
}

func (e *Engine) siteList() []*site {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*site, 0, len(e.sites))
	for _, s := range e.sites {
		out = append(out, s)
	}
	return out
}

// track and untrack keep the run in flight per site, across owners: a site removed by a reload
// and declared again must not start a second executor of an operation still running.
func (e *Engine) track(site string, r *run) {
	e.runsMu.Lock()
	defer e.runsMu.Unlock()
	e.runs[site] = r
}

func (e *Engine) untrack(site string, r *run) {
	e.runsMu.Lock()
	defer e.runsMu.Unlock()
	if e.runs[site] == r {
		delete(e.runs, site)
	}
}

// inflight is the run in flight for a site, or nil.
func (e *Engine) inflight(site string) *run {
	e.runsMu.Lock()
	defer e.runsMu.Unlock()
	return e.runs[site]
}
