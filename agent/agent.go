// Package agent runs the slotd daemon: it owns the lanes of every declared site, journals
// operations in Consul KV, swaps slots phase by phase and serves the HTTP API.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slotd/slotd/agent/lanes"

	"github.com/slotd/slotd/agent/metrics"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
)

// Version is the daemon's version, shown by /v1/health.
var Version = "0.4.0"

const (
	// shutdownGrace is how long a stopping daemon lets running phases finish before cancelling them.
	shutdownGrace = 2 * time.Minute
	// leaderSessionTTL bounds how long a killed leader keeps the lock: Consul's least TTL
	// (it may take twice that to invalidate the session).
	leaderSessionTTL = "10s"
	// relockPause is how long a daemon that lost the lock waits before it contends again:
	// longer than the 5 s a standby's lock library waits after a lock-delay, so it wins.
	relockPause = 7 * time.Second
	// leaderLockDelay is the session's lock-delay: the least Consul takes (0 means its default).
	leaderLockDelay = time.Millisecond
)

// Agent is the long-running daemon.
type Agent struct {
	logger hclog.Logger
	consul *consulapi.Client
	nomad  *nomadapi.Client
	// ctlConsul and ctlNomad are the same agents through connections that operations and
	// watches do not use (New).
	ctlConsul  *consulapi.Client
	ctlNomad   *nomadapi.Client
	store      *store.Store
	lanes      laneOps
	metrics    *metrics.Metrics
	follow     *query.Follower
	probes     *probes
	ops        *opRegistry
	httpClient *http.Client
	listener   net.Listener
	server     *http.Server

	mu        sync.Mutex
	cfg       *config.Config
	sites     map[string]*site
	siteStops map[string]context.CancelFunc
	sitesCtx  context.Context // the sites' owners run until it ends
	leaderCtx context.Context // nil while this daemon does not lead

	leader   atomic.Bool
	stopping atomic.Bool
	deposed  chan struct{} // a write was refused: the lock is gone, whatever the monitor says
	role     chan struct{} // this daemon began or stopped leading (role.go)
	// leadCancel ends the current leadership's context (context.CancelFunc).
	leadCancel atomic.Value

	runsMu    sync.Mutex
	runs      map[string]*run // the run in flight per site name, whichever owner started it
	stopCh    chan struct{}
	opsCtx    context.Context
	opsCancel context.CancelFunc
}

// newClients builds the Consul and Nomad clients of cfg, each opening at most conns
// connections at once (0: no limit).
func newClients(cfg *config.Config, conns int) (*consulapi.Client, *nomadapi.Client, error) {
	ccfg := consulapi.DefaultConfig()
	ccfg.Address = cfg.Consul.Address
	ccfg.Transport.MaxConnsPerHost, ccfg.Transport.MaxIdleConnsPerHost = conns, max(conns, 2)
	if cfg.Consul.Token != "" {
		ccfg.Token = cfg.Consul.Token
	}
	consul, err := consulapi.NewClient(ccfg)
	if err != nil {
		return nil, nil, fmt.Errorf("consul client: %w", err)
	}
	ncfg := nomadapi.DefaultConfig()
	ncfg.Address = cfg.Nomad.Address
	// A Nomad that hangs must not hold a call forever, even one that takes no context (the
	// jobspec parse): no call waits longer than the longest blocking query and its grace.
	nt := http.DefaultTransport.(*http.Transport).Clone()
	nt.MaxConnsPerHost, nt.MaxIdleConnsPerHost = conns, max(conns, 2)
	ncfg.HttpClient = &http.Client{Transport: nt, Timeout: query.IdleWait + 2*query.Grace}
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
		return nil, nil, fmt.Errorf("nomad client: %w", err)
	}
	return consul, nomad, nil
}

// maxConns is the most connections slotd opens to Consul and to Nomad each; more requests at
// once wait for one to be free. Both count the connections of a client address against a
// limit (http_max_conns_per_client: 200 for Consul, 100 for Nomad, by default) that slotd
// shares with whatever else runs on its host (Nomad's own client, Fabio, consul-template), and
// answer 429 past it. slotd's watches hold three connections whatever the number of sites; the
// rest serves operations, whose blocking queries wait at most query.BlockingWait.
const maxConns = 64

// New builds the clients and binds the HTTP listener, so a bad address fails at start.
func New(cfg *config.Config, logger hclog.Logger) (*Agent, error) {
	consul, nomad, err := newClients(cfg, maxConns)
	if err != nil {
		return nil, err
	}
	// The leader session and lock, the role tag and the probes have connections of their own:
	// a pool busy with operations never delays a session renewal or reads as an outage.
	ctlConsul, ctlNomad, err := newClients(cfg, 0)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.HTTP.Address, err)
	}
	opsCtx, opsCancel := context.WithCancel(context.Background())
	m := metrics.New()
	a := &Agent{
		logger:     logger.Named("agent"),
		consul:     consul,
		nomad:      nomad,
		ctlConsul:  ctlConsul,
		ctlNomad:   ctlNomad,
		store:      &store.Store{KV: consul.KV(), Prefix: cfg.KVPrefix, Logger: logger.Named("store")},
		metrics:    m,
		follow:     &query.Follower{Errors: m.QueryErrors},
		probes:     newProbes(),
		ops:        newOpRegistry(),
		httpClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}},
		listener:   ln,
		cfg:        cfg,
		sites:      map[string]*site{},
		siteStops:  map[string]context.CancelFunc{},
		stopCh:     make(chan struct{}),
		opsCtx:     opsCtx,
		opsCancel:  opsCancel,
	}
	for _, sc := range cfg.Sites {
		a.sites[sc.Name] = newSite(a, sc)
	}
	a.lanes = lanes.New(nomad, consul, a.follow, logger.Named("lanes"))
	a.runs = map[string]*run{}
	a.deposed = make(chan struct{}, 1)
	a.role = make(chan struct{}, 1)
	a.store.OnDeposed = func(session string) {
		if a.store.FencedBy() == session {
			// At once, not when the lead loop gets to it: no run of this leadership may
			// start another write, to Consul or to Nomad.
			if cancel, ok := a.leadCancel.Load().(context.CancelFunc); ok {
				cancel()
			}
			select {
			case a.deposed <- struct{}{}:
			default:
			}
		}
	}
	a.server = a.newServer()
	return a, nil
}

// Addr is where the HTTP API listens.
func (a *Agent) Addr() string { return a.listener.Addr().String() }

// Run serves the API and, while this daemon holds the leader lock, runs the sites. It returns
// when ctx ends, after running phases finished (or shutdownGrace passed) and the API stopped.
func (a *Agent) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.serve() }()
	a.logger.Info("api listening", "address", a.Addr())

	sitesCtx, stopSites := context.WithCancel(context.Background())
	a.mu.Lock()
	a.sitesCtx = sitesCtx
	var tell []func()
	for name, s := range a.sites {
		tell = append(tell, a.runSite(name, s))
	}
	a.mu.Unlock()
	for _, fn := range tell {
		fn()
	}

	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		a.leadLoop(ctx)
	}()
	roleDone := make(chan struct{})
	go func() {
		defer close(roleDone)
		if service := a.config().Consul.Service; service != "" {
			a.roleLoop(ctx, service)
		}
	}()
	// Not a child of ctx: /v1/health stays true while running phases finish on a stop.
	probeCtx, stopProbes := context.WithCancel(context.Background())
	probesDone := make(chan struct{})
	go func() {
		defer close(probesDone)
		a.probeLoop(probeCtx)
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("http api: %w", err)
	}
	a.stop()
	<-leaderDone
	<-roleDone
	stopProbes()
	<-probesDone
	stopSites()
	for _, s := range a.siteList() {
		<-s.stopped
	}
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
		r := s.snapshot().running
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

// leadLoop holds the leader lock in Consul and runs the sites while it does. The lock is held
// with a session of the daemon's own, kept in its data_dir: a restarted daemon destroys the
// session it held before instead of waiting for its TTL, and leads again within seconds.
// While it leads, every KV transaction checks that session (store.fence).
func (a *Agent) leadLoop(ctx context.Context) {
	a.dropPreviousSession()
	failures := 0
	for ctx.Err() == nil {
		session, err := a.newSession()
		if err != nil {
			failures++
			a.metrics.QueryErrors.WithLabelValues("consul").Inc()
			a.logger.Warn("cannot create the leader session", "error", err)
			_ = query.Sleep(ctx, query.Backoff(failures))
			continue
		}
		renewDone := make(chan struct{})
		go func() { _ = a.ctlConsul.Session().RenewPeriodic(leaderSessionTTL, session, nil, renewDone) }()
		lock, err := a.ctlConsul.LockOpts(&consulapi.LockOptions{
			Key:            a.store.LeaderKey(),
			Value:          []byte(a.advertise()),
			Session:        session,
			MonitorRetries: 5,
		})
		if err != nil {
			close(renewDone)
			a.logger.Error("leader lock", "error", err)
			return
		}
		lost, err := lock.Lock(a.stopCh)
		if err != nil || lost == nil {
			close(renewDone) // destroys the session
			if lost == nil && err == nil {
				return // stopping
			}
			failures++
			a.metrics.QueryErrors.WithLabelValues("consul").Inc()
			a.logger.Warn("cannot take the leader lock", "error", err)
			_ = query.Sleep(ctx, query.Backoff(failures))
			continue
		}
		failures = 0
		select {
		case <-a.deposed: // from an earlier leadership
		default:
		}
		a.logger.Info("leading", "session", session)
		a.store.Fence(session)
		a.leader.Store(true)
		a.metrics.Leader.Set(1)
		a.roleChanged()
		// Not a child of ctx: on a graceful stop, running phases finish under the leadership
		// before it ends.
		leadCtx, cancel := context.WithCancel(context.Background())
		a.leadCancel.Store(cancel)
		a.mu.Lock()
		a.leaderCtx = leadCtx
		a.mu.Unlock()
		a.watchShared(leadCtx)
		for _, s := range a.siteList() {
			s.setLead(leadCtx)
		}
		select {
		case <-lost:
			a.logger.Warn("lost the leader lock: writing nothing more")
		case <-a.deposed:
			a.logger.Warn("lost the leader lock (a write was refused): writing nothing more")
		case <-ctx.Done():
		}
		a.leader.Store(false)
		a.metrics.Leader.Set(0)
		a.roleChanged()
		a.mu.Lock()
		a.leaderCtx = nil
		a.mu.Unlock()
		if ctx.Err() != nil {
			// Stopping: running phases finish (still fenced by the session), then the lock goes.
			for _, s := range a.siteList() {
				if r := s.snapshot().running; r != nil {
					<-r.done
				}
			}
		}
		cancel()
		a.store.Fence(lostSession)
		_ = lock.Unlock()
		close(renewDone)
		if ctx.Err() == nil {
			// Deposed: let another daemon take over before contending again, and the runs
			// of this leadership wind down meanwhile.
			_ = query.Sleep(ctx, relockPause)
		}
	}
}

// lostSession fences a daemon that does not lead: no session holds the lock under that name,
// so every transaction fails its check.
const lostSession = "00000000-0000-0000-0000-000000000000"

// newSession creates the session the leader lock is held with and remembers it in data_dir.
func (a *Agent) newSession() (string, error) {
	id, _, err := a.ctlConsul.Session().Create(&consulapi.SessionEntry{
		Name: "slotd leader",
		TTL:  leaderSessionTTL,
		// Every write of a leader checks its session, so Consul's lock-delay (which the
		// client library waits out in steps of 5 s) adds nothing but a slower failover.
		LockDelay: leaderLockDelay,
		Behavior:  consulapi.SessionBehaviorRelease,
	}, nil)
	if err != nil {
		return "", err
	}
	if path := a.sessionFile(); path != "" {
		err := os.MkdirAll(filepath.Dir(path), 0o700)
		if err == nil {
			err = os.WriteFile(path, []byte(id+"\n"), 0o600)
		}
		if err != nil {
			a.logger.Warn("cannot keep the leader session in data_dir; a restart waits for its TTL", "error", err)
		}
	}
	return id, nil
}

// dropPreviousSession destroys the session this daemon held before it restarted, which still
// holds the lock until its TTL runs out when the daemon was killed.
func (a *Agent) dropPreviousSession() {
	path := a.sessionFile()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return
	}
	if _, err := a.ctlConsul.Session().Destroy(id, nil); err != nil {
		a.logger.Warn("cannot destroy the previous leader session", "session", id, "error", err)
		return
	}
	a.logger.Info("destroyed the leader session this daemon held before it restarted", "session", id)
}

// sessionFile is where the daemon keeps its leader session: one file per KV prefix and API
// address, so several daemons on one machine keep theirs apart.
func (a *Agent) sessionFile() string {
	dir := a.config().DataDir
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(cache, "slotd")
	}
	sum := sha256.Sum256([]byte(a.store.Prefix + "\x00" + a.Addr()))
	return filepath.Join(dir, "leader-session-"+hex.EncodeToString(sum[:6]))
}

func (a *Agent) advertise() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("http://%s (%s)", a.Addr(), host)
}

// runSite starts the owner of a site and returns what tells it of a leadership under way,
// for the caller to run once a.mu (held now) is released.
func (a *Agent) runSite(name string, s *site) func() {
	ctx, cancel := context.WithCancel(a.sitesCtx)
	a.siteStops[name] = cancel
	go s.run(ctx)
	lead := a.leaderCtx
	return func() {
		if lead != nil {
			s.setLead(lead)
		}
	}
}

// Reload swaps in new declarations. Kept sites get theirs (added slots are bound and seeded,
// changed routes converge); new sites start; a site no longer declared stops being managed:
// its owner and watches stop, and its lanes keep running. The HTTP address needs a restart.
func (a *Agent) Reload(cfg *config.Config) error {
	a.mu.Lock()
	if cfg.HTTP.Address != a.cfg.HTTP.Address || cfg.KVPrefix != a.cfg.KVPrefix {
		a.logger.Warn("http.address and kv_prefix change only with a restart")
	}
	// The owners hear of it after a.mu is released: an owner busy with Consul or Nomad must
	// not hold up every request, which all read the declarations.
	var tell []func()
	for _, sc := range cfg.Sites {
		if s, ok := a.sites[sc.Name]; ok {
			tell = append(tell, func() { s.setConfig(sc) })
			continue
		}
		s := newSite(a, sc)
		a.sites[sc.Name] = s
		if a.sitesCtx != nil {
			tell = append(tell, a.runSite(sc.Name, s))
		}
	}
	for name := range a.sites {
		if cfg.Site(name) != nil {
			continue
		}
		a.logger.Warn("site no longer declared; its lanes keep running unmanaged", "site", name)
		if stop := a.siteStops[name]; stop != nil {
			stop()
		}
		delete(a.sites, name)
		delete(a.siteStops, name)
	}
	a.cfg = cfg
	a.mu.Unlock()
	for _, fn := range tell {
		fn()
	}
	a.logger.Info("reloaded", "sites", len(cfg.Sites))
	return nil
}

func (a *Agent) site(name string) *site {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sites[name]
}

// track and untrack keep the run in flight per site, across owners: a site removed by a reload
// and declared again must not start a second executor of an operation still running.
func (a *Agent) track(site string, r *run) {
	a.runsMu.Lock()
	defer a.runsMu.Unlock()
	a.runs[site] = r
}

func (a *Agent) untrack(site string, r *run) {
	a.runsMu.Lock()
	defer a.runsMu.Unlock()
	if a.runs[site] == r {
		delete(a.runs, site)
	}
}

// inflight is the run in flight for a site, or nil.
func (a *Agent) inflight(site string) *run {
	a.runsMu.Lock()
	defer a.runsMu.Unlock()
	return a.runs[site]
}

func (a *Agent) siteList() []*site {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*site, 0, len(a.sites))
	for _, s := range a.sites {
		out = append(out, s)
	}
	return out
}

func (a *Agent) isLeader() bool { return a.leader.Load() && !a.stopping.Load() }

// leaderAddress reads who holds the leader lock, for 503 answers and /v1/health: "" when no
// one does or Consul does not tell within probeTimeout (an answer must not wait on a Consul
// that hangs).
func (a *Agent) leaderAddress() string {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	p, _, err := a.ctlConsul.KV().Get(a.store.LeaderKey(), (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil || p == nil || p.Session == "" {
		return ""
	}
	return strings.SplitN(string(p.Value), " ", 2)[0]
}
