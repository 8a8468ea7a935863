// Package agent wires the slotd daemon together: the clients, the store, the lanes, the
// engine that runs the sites, the leader election and the HTTP API (README, "Layout").
package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/agent/engine"
	"github.com/slotd/slotd/agent/httpapi"
	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/leader"
	"github.com/slotd/slotd/agent/metrics"
	"github.com/slotd/slotd/agent/notify"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Version is the daemon's version, shown by /v1/health.
var Version = "0.4.0"

// maxConns is the most connections slotd opens to Consul and to Nomad each; more requests at
// once wait for one to be free. Both count the connections of a client address against a
// limit (http_max_conns_per_client: 200 for Consul, 100 for Nomad, by default) that slotd
// shares with whatever else runs on its host (Nomad's own client, Fabio, consul-template), and
// answer 429 past it. slotd's watches hold three connections whatever the number of sites; the
// rest serves operations, whose blocking queries wait at most query.BlockingWait.
const maxConns = 64

// Agent is the long-running daemon.
type Agent struct {
	logger hclog.Logger
	// ctlConsul and ctlNomad reach the same agents as the engine's clients, through
	// connections that operations and watches do not use: the leader session and lock, the
	// role tag and the probes never wait behind a busy pool.
	ctlConsul *consulapi.Client
	ctlNomad  *nomadapi.Client
	store     *store.Store
	engine    *engine.Engine
	server    *httpapi.Server
	metrics   *metrics.Metrics
	follow    *query.Follower
	probes    *probes
	// notifier posts operation events to the notify webhooks and asks the sites' gates.
	notifier *notify.Notifier

	mu  sync.Mutex
	cfg *config.Config

	// leadership holds the leader lock; the store's fence checks the session it leads with.
	leadership *leader.Leader
	role       chan struct{} // this daemon began or stopped leading (role.go)
}

// New builds the clients and binds the HTTP listener, so a bad address fails at start.
func New(cfg *config.Config, logger hclog.Logger) (*Agent, error) {
	consul, nomad, err := newClients(cfg, maxConns)
	if err != nil {
		return nil, err
	}
	ctlConsul, ctlNomad, err := newClients(cfg, 0)
	if err != nil {
		return nil, err
	}
	m := metrics.New()
	a := &Agent{
		logger: logger.Named("agent"), ctlConsul: ctlConsul, ctlNomad: ctlNomad, metrics: m,
		follow: &query.Follower{Errors: m.QueryErrors}, probes: newProbes(), cfg: cfg,
		role: make(chan struct{}, 1),
	}
	a.store = &store.Store{KV: consul.KV(), Prefix: cfg.KVPrefix, Logger: logger.Named("store")}
	a.notifier = notify.New(cfg.Notify, logger.Named("notify"))
	a.engine = engine.New(cfg, engine.Deps{
		Consul: consul, Nomad: nomad, Store: a.store, Metrics: m, Follow: a.follow, Logger: logger.Named("engine"),
		Lanes:  lanes.New(nomad, consul, a.follow, logger.Named("lanes")),
		Notify: a.notifier, Gates: a.notifier,
	})
	if a.server, err = httpapi.New(cfg.HTTP.Address, backend{a.engine, a}, m.Registry, logger); err != nil {
		return nil, err
	}
	a.leadership = leader.New(leader.Config{
		Consul: ctlConsul, Key: a.store.LeaderKey(), Value: a.advertise(), SessionFile: a.sessionFile(),
		Logger: logger.Named("leader"), OnError: m.QueryErrors.WithLabelValues("consul").Inc,
	})
	// A refused write ends the leadership at once, not when the lock monitor hears of it: no
	// run of it may start another write, to Consul or to Nomad.
	a.store.OnDeposed = a.leadership.Deposed
	return a, nil
}

// newClients builds the Consul and Nomad clients of cfg, each opening at most conns
// connections at once (0: no limit).
func newClients(cfg *config.Config, conns int) (*consulapi.Client, *nomadapi.Client, error) {
	ccfg := consulapi.DefaultConfig()
	ccfg.Address = cfg.Consul.Address
	// The declarations own TLS: config resolved the CONSUL_* variables that DefaultConfig reads
	// (a written attribute wins over them), CONSUL_HTTP_SSL into the address's scheme.
	ccfg.Scheme = "http"
	c := cfg.Consul
	ccfg.TLSConfig = consulapi.TLSConfig{
		Address: c.TLSServerName, CAFile: c.CAFile, CAPath: c.CAPath, CertFile: c.CertFile, KeyFile: c.KeyFile,
	}
	// NewClient sets up TLS on this very transport (its TLSClientConfig is nil), so the limits
	// stay.
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
	nt.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	ncfg.HttpClient = &http.Client{Transport: nt, Timeout: query.IdleWait + 2*query.Grace}
	// NewClient applies TLSConfig only to a client it makes itself, so it is applied to this
	// one here; as for Consul, the NOMAD_* variables were resolved by config.
	n := cfg.Nomad
	ncfg.TLSConfig = &nomadapi.TLSConfig{
		CACert: n.CAFile, CAPath: n.CAPath, ClientCert: n.CertFile, ClientKey: n.KeyFile, TLSServerName: n.TLSServerName,
	}
	if err := nomadapi.ConfigureTLS(ncfg.HttpClient, ncfg.TLSConfig); err != nil {
		return nil, nil, fmt.Errorf("nomad client TLS: %w", err)
	}
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

// Addr is where the HTTP API listens.
func (a *Agent) Addr() string { return a.server.Addr() }

const (
	// apiShutdown bounds the API's graceful shutdown, the last step of a stop.
	apiShutdown = 5 * time.Second
	// releaseTime is what ending the leadership takes on a stop: cancelled phases return and
	// the lock is released (one Consul call each), so the next leader takes it at once.
	releaseTime = 5 * time.Second
	// StopTime is the longest a daemon takes to stop after SIGTERM: the grace of running
	// phases, the release of the leadership, the API's shutdown. A supervisor's kill timeout
	// (Nomad's kill_timeout) must be at least this long, or the daemon is killed mid-phase and
	// the next leader waits for the lock's session to expire.
	StopTime = engine.ShutdownGrace + releaseTime + apiShutdown
)

// Run serves the API and, while this daemon holds the leader lock, runs the sites. It returns
// when ctx ends, after running phases finished (or their grace passed) and the API stopped.
func (a *Agent) Run(ctx context.Context) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.server.Serve() }()
	a.logger.Info("api listening", "address", a.Addr())

	// The daemon's scope ends on ctx or when the API fails; the probes outlive it, so
	// /v1/health stays true while running phases finish on a stop.
	daemon, stop := context.WithCancel(ctx)
	defer stop()
	probes, stopProbes := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.engine.Run(daemon) })
	wg.Go(func() {
		a.leadership.Run(daemon, func(lead context.Context, session string) { a.lead(daemon, lead, session) })
	})
	wg.Go(func() {
		if service := a.config().Consul.Service; service != "" {
			a.roleLoop(daemon, service)
		}
	})
	probesDone := make(chan struct{})
	go func() {
		defer close(probesDone)
		a.probeLoop(probes)
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("http api: %w", err)
	}
	stop()
	wg.Wait()
	stopProbes()
	<-probesDone
	// The API's shutdown and the notifier's last deliveries share the last step's time.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), apiShutdown)
	defer cancel()
	var last sync.WaitGroup
	last.Go(func() { _ = a.server.Shutdown(shutdownCtx) })
	last.Go(func() {
		if nerr := a.notifier.Close(shutdownCtx); nerr != nil {
			a.logger.Warn("notifications not delivered before the stop", "error", nerr)
		}
	})
	last.Wait()
	return err
}

// Reload swaps in new declarations (see engine.Reload). The HTTP address and the KV prefix
// change only with a restart.
func (a *Agent) Reload(cfg *config.Config) error {
	a.mu.Lock()
	if cfg.HTTP.Address != a.cfg.HTTP.Address || cfg.KVPrefix != a.cfg.KVPrefix {
		a.logger.Warn("http.address and kv_prefix change only with a restart")
	}
	a.cfg = cfg
	a.mu.Unlock()
	a.engine.Reload(cfg)
	a.notifier.Reload(cfg.Notify)
	a.logger.Info("reloaded", "sites", len(cfg.Sites))
	return nil
}

func (a *Agent) config() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// backend is what the HTTP API serves: the engine, with the daemon's health and config.
type backend struct {
	*engine.Engine
	a *Agent
}

var _ httpapi.Backend = backend{}

func (b backend) Config() *config.Config { return b.a.config() }
func (b backend) LeaderAddress() string  { return b.a.leaderAddress() }

// Health says whether the daemon leads, the state of each site on it, and whether it reached
// Consul and Nomad at its last probe; false when it did not reach one of them.
func (b backend) Health() (api.Health, bool) {
	consul, nomad := b.a.probes.last()
	h := api.Health{
		Status: api.HealthOK, Leader: b.Leading(), Version: Version,
		Consul: consul, Nomad: nomad, Sites: b.SiteStates(),
	}
	ok := consul.Status != api.Unreachable && nomad.Status != api.Unreachable
	if !ok {
		h.Status = api.HealthFailing
	}
	if !h.Leader && consul.Status != api.Unreachable {
		// Asked of Consul, which would hold the answer for its whole deadline when it is down.
		h.LeaderAddress = b.a.leaderAddress()
	}
	return h, ok
}
