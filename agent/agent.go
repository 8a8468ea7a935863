// Package agent runs the slotd daemon: it owns the lanes of every declared site, journals
// operations in Consul KV, swaps slots phase by phase and serves the HTTP API.
package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
)

// Version is the daemon's version, shown by /v1/health.
var Version = "0.1.0"

const (
	// idleWait is how long an idle blocking query waits: the most often an idle agent asks.
	idleWait = 5 * time.Minute
	// shutdownGrace is how long a stopping daemon lets running phases finish before cancelling them.
	shutdownGrace = 2 * time.Minute
	// leaderSessionTTL bounds how long a crashed leader keeps the lock.
	leaderSessionTTL = "15s"
)

// Agent is the long-running daemon.
type Agent struct {
	logger     hclog.Logger
	consul     *consulapi.Client
	nomad      *nomadapi.Client
	store      *store
	metrics    *metrics
	ops        *opRegistry
	httpClient *http.Client
	listener   net.Listener
	server     *http.Server

	mu    sync.Mutex
	cfg   *config.Config
	sites map[string]*siteRunner

	leader    atomic.Bool
	stopping  atomic.Bool
	stopCh    chan struct{}
	opsCtx    context.Context
	opsCancel context.CancelFunc
	leaderCtx context.Context
}

// New builds the clients and binds the HTTP listener, so a bad address fails at start.
func New(cfg *config.Config, logger hclog.Logger) (*Agent, error) {
	ccfg := consulapi.DefaultConfig()
	ccfg.Address = cfg.Consul.Address
	if cfg.Consul.Token != "" {
		ccfg.Token = cfg.Consul.Token
	}
	consul, err := consulapi.NewClient(ccfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	ncfg := nomadapi.DefaultConfig()
	ncfg.Address = cfg.Nomad.Address
	if cfg.Nomad.Token != "" {
		ncfg.SecretID = cfg.Nomad.Token
	}
	if cfg.Nomad.Region != "" {
		ncfg.Region = cfg.Nomad.Region
	}
	if cfg.Nomad.Namespace != "" {
		ncfg.Namespace = cfg.Nomad.Namespace
	}
	nomad, err := nomadapi.NewClient(ncfg)
	if err != nil {
		return nil, fmt.Errorf("nomad client: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.HTTP.Address, err)
	}
	opsCtx, opsCancel := context.WithCancel(context.Background())
	a := &Agent{
		logger:     logger.Named("agent"),
		consul:     consul,
		nomad:      nomad,
		store:      &store{kv: consul.KV(), prefix: cfg.KVPrefix},
		metrics:    newMetrics(),
		ops:        newOpRegistry(),
		httpClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}},
		listener:   ln,
		cfg:        cfg,
		sites:      map[string]*siteRunner{},
		stopCh:     make(chan struct{}),
		opsCtx:     opsCtx,
		opsCancel:  opsCancel,
	}
	for _, s := range cfg.Sites {
		a.sites[s.Name] = newSiteRunner(s)
	}
	a.server = a.newServer()
	return a, nil
}

func newSiteRunner(s *config.Site) *siteRunner {
	return &siteRunner{name: s.Name, cfg: s, applied: map[string]string{}, wake: make(chan struct{}, 1)}
}

// Addr is where the HTTP API listens.
func (a *Agent) Addr() string { return a.listener.Addr().String() }

// Run serves the API and, while this daemon holds the leader lock, runs the sites. It returns
// when ctx ends, after running phases finished (or shutdownGrace passed) and the API stopped.
func (a *Agent) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.serve() }()
	a.logger.Info("api listening", "address", a.Addr())

	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		a.leadLoop(ctx)
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("http api: %w", err)
	}
	a.stop()
	<-leaderDone
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.server.Shutdown(shutdownCtx)
	return err
}

// stop lets every running operation finish its current phase, journaled, then cancels the rest.
func (a *Agent) stop() {
	a.stopping.Store(true)
	close(a.stopCh)
	deadline := time.After(shutdownGrace)
	for _, s := range a.siteList() {
		s.mu.Lock()
		r := s.running
		s.mu.Unlock()
		if r == nil {
			continue
		}
		a.logger.Info("waiting for the running phase to finish", "site", s.name, "op", r.op.ID)
		select {
		case <-r.done:
		case <-deadline:
			a.logger.Warn("running phases did not finish in time; cancelling them", "grace", shutdownGrace)
			a.opsCancel()
			<-r.done
		}
	}
	a.opsCancel()
}

// leadLoop holds the leader lock in Consul and runs the sites while it does.
func (a *Agent) leadLoop(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		lock, err := a.consul.LockOpts(&consulapi.LockOptions{
			Key:            a.store.prefix + "/leader",
			Value:          []byte(a.advertise()),
			SessionName:    "slotd leader",
			SessionTTL:     leaderSessionTTL,
			LockDelay:      time.Second,
			MonitorRetries: 5,
		})
		if err != nil {
			a.logger.Error("leader lock", "error", err)
			return
		}
		lost, err := lock.Lock(a.stopCh)
		if err != nil {
			failures++
			a.metrics.queryErrors.WithLabelValues("consul").Inc()
			a.logger.Warn("cannot take the leader lock", "error", err)
			_ = sleepCtx(ctx, backoff(failures))
			continue
		}
		if lost == nil {
			return // stopping
		}
		failures = 0
		a.logger.Info("leading")
		a.leader.Store(true)
		a.metrics.leader.Set(1)
		leadCtx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		a.mu.Lock()
		a.leaderCtx = leadCtx
		for _, s := range a.sites {
			wg.Add(1)
			go func() { defer wg.Done(); a.runSite(leadCtx, s) }()
		}
		a.mu.Unlock()
		select {
		case <-lost:
			a.logger.Warn("lost the leader lock")
		case <-ctx.Done():
		}
		a.leader.Store(false)
		a.metrics.leader.Set(0)
		cancel()
		wg.Wait()
		if ctx.Err() != nil {
			// Wait for running phases before giving the lock to another daemon.
			for _, s := range a.siteList() {
				s.mu.Lock()
				r := s.running
				s.mu.Unlock()
				if r != nil {
					<-r.done
				}
			}
		}
		_ = lock.Unlock()
	}
}

func (a *Agent) advertise() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("http://%s (%s)", a.Addr(), host)
}

// runSite brings a site up and then keeps it reconciled while this daemon leads.
func (a *Agent) runSite(ctx context.Context, s *siteRunner) {
	log := a.logger.With("site", s.name)
	for attempt := 1; ctx.Err() == nil; attempt++ {
		err := a.bootstrap(ctx, s)
		if err == nil {
			break
		}
		log.Error("site not ready", "error", err, "attempt", attempt)
		if sleepCtx(ctx, backoff(attempt+2)) != nil {
			return
		}
	}
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	log.Info("site ready")
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); a.watchSettings(ctx, s) }()
	go func() { defer wg.Done(); a.watchLanes(ctx, s) }()
	go func() { defer wg.Done(); a.afterOperations(ctx, s) }()
	go func() { defer wg.Done(); a.watchInstances(ctx, s) }()
	s.poke()
	wg.Wait()
	s.mu.Lock()
	s.ready = false
	s.mu.Unlock()
}

// watchInstances keeps the per-slot instance gauges current with a blocking query.
func (a *Agent) watchInstances(ctx context.Context, s *siteRunner) {
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		cfg := s.config()
		entries, idx, err := a.siteEntries(ctx, cfg, index, idleWait)
		if err != nil {
			failures++
			_ = sleepCtx(ctx, backoff(failures))
			continue
		}
		failures = 0
		if idx == index {
			continue
		}
		index = nextIndex(index, idx)
		st, err := a.store.loadSlots(cfg.Name, nil)
		if err != nil {
			continue
		}
		for _, slot := range cfg.Slots {
			lane := st.slot(slot.Name).Lane.Value
			pass, fail := 0, 0
			for _, e := range entries {
				if e.Service.Meta[metaLane] != lane {
					continue
				}
				if e.Checks.AggregatedStatus() == consulapi.HealthPassing {
					pass++
				} else {
					fail++
				}
			}
			a.metrics.instances.WithLabelValues(cfg.Name, slot.Name, "passing").Set(float64(pass))
			a.metrics.instances.WithLabelValues(cfg.Name, slot.Name, "failing").Set(float64(fail))
		}
	}
}

// Reload swaps in new declarations. Sites keep running; new sites start; a site that is gone
// is no longer managed (its lanes keep running). The HTTP address needs a restart.
func (a *Agent) Reload(cfg *config.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cfg.HTTP.Address != a.cfg.HTTP.Address || cfg.KVPrefix != a.cfg.KVPrefix {
		a.logger.Warn("http.address and kv_prefix change only with a restart")
	}
	var added []*siteRunner
	for _, sc := range cfg.Sites {
		if s, ok := a.sites[sc.Name]; ok {
			s.mu.Lock()
			s.cfg = sc
			s.mu.Unlock()
			s.poke()
			continue
		}
		s := newSiteRunner(sc)
		a.sites[sc.Name] = s
		added = append(added, s)
	}
	for name := range a.sites {
		if cfg.Site(name) == nil {
			a.logger.Warn("site no longer declared; its lanes keep running unmanaged", "site", name)
			delete(a.sites, name)
		}
	}
	a.cfg = cfg
	if a.leader.Load() && a.leaderCtx != nil {
		for _, s := range added {
			go a.runSite(a.leaderCtx, s)
		}
	}
	a.logger.Info("reloaded", "sites", len(cfg.Sites))
	return nil
}

func (a *Agent) siteRunner(name string) *siteRunner {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sites[name]
}

func (a *Agent) siteList() []*siteRunner {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*siteRunner, 0, len(a.sites))
	for _, s := range a.sites {
		out = append(out, s)
	}
	return out
}

func (a *Agent) isLeader() bool { return a.leader.Load() && !a.stopping.Load() }

// leaderAddress reads who holds the leader lock, for 503 answers.
func (a *Agent) leaderAddress() string {
	p, _, err := a.consul.KV().Get(a.store.prefix+"/leader", nil)
	if err != nil || p == nil || p.Session == "" {
		return ""
	}
	return strings.SplitN(string(p.Value), " ", 2)[0]
}
