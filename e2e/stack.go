// Package e2e runs the real stack (Consul, Nomad with raw_exec, Fabio, and Prometheus when a test
// asks) on loopback for tests and the demo, and holds the test app and the end-to-end scenarios.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
)

// Bounds of the waits in Start and Stop.
const (
	// startTimeout bounds Start when NewStack or Main call it.
	startTimeout = 3 * time.Minute
	// consulReadyTimeout, nomadReadyTimeout and fabioReadyTimeout bound each agent's wait
	// (the caller's context may end it earlier).
	consulReadyTimeout = time.Minute
	nomadReadyTimeout  = 2 * time.Minute
	fabioReadyTimeout  = 30 * time.Second
	// drainTimeout bounds Stop's wait for the allocations of purged jobs to stop.
	drainTimeout = 30 * time.Second
	// agentGrace is how long an agent may take to shut down after SIGTERM before SIGKILL.
	agentGrace = 15 * time.Second
	// leftoverTimeout bounds the wait for killed leftovers to disappear.
	leftoverTimeout = 5 * time.Second
)

// nodeName is the Consul and Nomad node name of every stack.
const nodeName = "slotd-e2e"

// Stack is a running Consul, Nomad and Fabio on 127.0.0.1.
type Stack struct {
	Dir         string // temp dir holding data/config/logs of all three agents
	ConsulAddr  string // "127.0.0.1:PORT" (HTTP API)
	NomadAddr   string // "http://127.0.0.1:PORT"
	FabioAddr   string // "127.0.0.1:PORT" proxy listener; empty WithoutFabio
	FabioUIAddr string // "127.0.0.1:PORT"; empty WithoutFabio
	// FabioMetricsAddr serves Fabio's Prometheus metrics on /metrics; empty WithoutFabio.
	FabioMetricsAddr string
	Consul           *consulapi.Client
	Nomad            *nomadapi.Client

	opts options
	// procsMu guards procs and stopping: Prometheus starts while tests run.
	procsMu  sync.Mutex
	procs    []*process // in start order
	stopping bool
	stopOnce sync.Once
	stopErr  error

	prom sharedPrometheus
}

// Option configures Start.
type Option func(*options)

type options struct {
	logOutput io.Writer
	fabio     bool
	ports     Ports
	dir       string
	keepDir   bool
}

// WithLogOutput copies every agent's output, each line prefixed with the agent's name, and
// the harness's progress to w (the log files in Dir get it all the same).
func WithLogOutput(w io.Writer) Option { return func(o *options) { o.logOutput = w } }

// WithoutFabio starts Consul and Nomad only.
func WithoutFabio() Option { return func(o *options) { o.fabio = false } }

// WithPorts puts the HTTP APIs and Fabio on fixed 127.0.0.1 ports (e.g. DemoPorts); Start
// fails naming the port when one is taken. Zero fields and the internal ports stay free ports.
func WithPorts(p Ports) Option { return func(o *options) { o.ports = p } }

// WithDir keeps the agents' data, config and logs in dir (created if needed), which Stop
// leaves in place.
func WithDir(dir string) Option { return func(o *options) { o.dir, o.keepDir = dir, true } }

// Start starts Consul, Nomad and Fabio on free loopback ports and waits until they are
// ready: Consul has a leader and its node, Nomad has an eligible node with raw_exec healthy,
// Fabio answers. On error it stops what it started and keeps Dir for the logs.
func Start(ctx context.Context, opts ...Option) (_ *Stack, err error) {
	o := options{fabio: true}
	for _, opt := range opts {
		opt(&o)
	}
	bins := map[string]string{}
	names := []string{"consul", "nomad"}
	if o.fabio {
		names = append(names, "fabio")
	}
	for _, name := range names {
		if bins[name], err = Binary(name); err != nil {
			return nil, err
		}
	}

	s := &Stack{opts: o}
	if o.dir != "" {
		s.Dir, err = filepath.Abs(o.dir)
		if err == nil {
			err = os.MkdirAll(s.Dir, 0o755)
		}
	} else {
		s.Dir, err = os.MkdirTemp("", "slotd-e2e-")
	}
	if err != nil {
		return nil, fmt.Errorf("create the stack folder: %w", err)
	}
	defer func() {
		if err != nil {
			// Keep the logs of agents that ran; a folder nothing ran in is of no use.
			started := len(s.procs) > 0
			s.opts.keepDir = s.opts.keepDir || started
			_ = s.Stop()
			if started {
				err = fmt.Errorf("%w\n(logs kept in %s)", err, s.Dir)
			}
		}
	}()

	began := time.Now()
	pp := &portPicker{}
	ports, err := s.pickPorts(pp)
	pp.release()
	if err != nil {
		return nil, err
	}
	if err := s.startConsul(ctx, bins["consul"], ports); err != nil {
		return nil, err
	}
	if err := s.startNomad(ctx, bins["nomad"], ports); err != nil {
		return nil, err
	}
	if o.fabio {
		if err := s.startFabio(ctx, bins["fabio"], ports); err != nil {
			return nil, err
		}
	}
	s.logf("stack ready in %s (folder %s)", time.Since(began).Round(time.Millisecond), s.Dir)
	return s, nil
}

// stackPorts are all the ports of one stack.
type stackPorts struct {
	consulHTTP, consulServer, consulSerfLAN, consulSerfWAN, consulGRPC int
	nomadHTTP, nomadRPC, nomadSerf                                     int
	fabioProxy, fabioUI, fabioMetrics                                  int
	// nomadDynamicMin is the start of the window Nomad picks task ports from (see startNomad).
	nomadDynamicMin int
}

func (s *Stack) pickPorts(pp *portPicker) (p stackPorts, err error) {
	want := s.opts.ports
	type pick struct {
		dst  *int
		want int    // fixed port, or 0 for a free one
		what string // for the error when a fixed port is taken
		udp  bool   // Serf needs UDP as well
	}
	picks := []pick{
		{dst: &p.consulHTTP, want: want.ConsulHTTP, what: "the Consul HTTP API"},
		{dst: &p.nomadHTTP, want: want.NomadHTTP, what: "the Nomad HTTP API"},
		{dst: &p.consulServer},
		{dst: &p.consulGRPC},
		{dst: &p.consulSerfLAN, udp: true},
		{dst: &p.consulSerfWAN, udp: true},
		{dst: &p.nomadRPC},
		{dst: &p.nomadSerf, udp: true},
	}
	if s.opts.fabio {
		picks = append(picks,
			pick{dst: &p.fabioProxy, want: want.FabioProxy, what: "the Fabio proxy"},
			pick{dst: &p.fabioUI, want: want.FabioUI, what: "the Fabio UI"},
			pick{dst: &p.fabioMetrics})
	}
	for _, pk := range picks {
		if pk.want != 0 {
			*pk.dst, err = pp.fixed(pk.want, pk.what)
		} else {
			*pk.dst, err = pp.free(pk.udp)
		}
		if err != nil {
			return p, err
		}
	}
	p.nomadDynamicMin = dynamicPortWindow()
	return p, nil
}

func (s *Stack) logf(format string, args ...any) {
	if s.opts.logOutput != nil {
		fmt.Fprintf(s.opts.logOutput, "e2e: "+format+"\n", args...)
	}
}

func (s *Stack) start(name, bin string, args ...string) (*process, error) {
	s.procsMu.Lock()
	defer s.procsMu.Unlock()
	if s.stopping {
		return nil, fmt.Errorf("start %s: the stack is stopping", name)
	}
	p, err := startProcess(name, bin, args, s.Dir, s.opts.logOutput)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return p, nil
}

// started is a copy of procs, in start order, taken under the lock.
func (s *Stack) started() []*process {
	s.procsMu.Lock()
	defer s.procsMu.Unlock()
	return append([]*process(nil), s.procs...)
}

// ready waits (at most timeout, and as long as ctx) until cond is done, failing early when
// the agent exits; errors quote the agent's last log lines.
func (s *Stack) ready(ctx context.Context, p *process, timeout time.Duration, what string, cond func() (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	began := time.Now()
	err := waitUntil(ctx, what, func() (bool, string, error) {
		if err := p.exitError(); err != nil {
			return false, "", err
		}
		done, seen := cond()
		return done, seen, nil
	})
	if err != nil {
		if ok, _ := p.exited(); ok {
			return err // exitError quoted the log already
		}
		return fmt.Errorf("%w%s", err, p.tail())
	}
	s.logf("%s ready in %s", p.name, time.Since(began).Round(time.Millisecond))
	return nil
}

func (s *Stack) startConsul(ctx context.Context, bin string, ports stackPorts) error {
	dir := filepath.Join(s.Dir, "consul")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return err
	}
	cfg := map[string]any{
		"node_name":                   nodeName,
		"datacenter":                  "dc1",
		"data_dir":                    filepath.Join(dir, "data"),
		"bind_addr":                   "127.0.0.1",
		"client_addr":                 "127.0.0.1",
		"advertise_addr":              "127.0.0.1",
		"advertise_addr_wan":          "127.0.0.1",
		"disable_update_check":        true,
		"disable_anonymous_signature": true,
		"log_level":                   "INFO",
		"ui_config":                   map[string]any{"enabled": true},
		"ports": map[string]int{
			"http":     ports.consulHTTP,
			"https":    -1,
			"dns":      -1,
			"server":   ports.consulServer,
			"serf_lan": ports.consulSerfLAN,
			"serf_wan": ports.consulSerfWAN,
			"grpc":     ports.consulGRPC,
			"grpc_tls": -1,
		},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	file := filepath.Join(dir, "consul.json")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return fmt.Errorf("write consul config: %w", err)
	}

	s.ConsulAddr = addr(ports.consulHTTP)
	s.Consul, err = consulapi.NewClient(&consulapi.Config{Address: s.ConsulAddr, Scheme: "http"})
	if err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	p, err := s.start("consul", bin, "agent", "-dev", "-config-file", file)
	if err != nil {
		return err
	}
	return s.ready(ctx, p, consulReadyTimeout, "consul to elect itself leader and list node "+nodeName+" with serfHealth passing",
		func() (bool, string) {
			leader, err := s.Consul.Status().Leader()
			if err != nil {
				return false, err.Error()
			}
			if leader == "" {
				return false, "no leader"
			}
			checks, _, err := s.Consul.Health().Node(nodeName, nil)
			if err != nil {
				return false, err.Error()
			}
			for _, c := range checks {
				if c.CheckID == "serfHealth" {
					return c.Status == consulapi.HealthPassing, "leader " + leader + ", serfHealth " + c.Status
				}
			}
			return false, "leader " + leader + ", node not in the catalog yet"
		})
}

// dynamicPortWindow picks a random 1000-port window inside Nomad's default dynamic range
// (20000-32000), so that stacks running side by side rarely give tasks the same port.
func dynamicPortWindow() int {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return 20000 + (int(b[0])<<8|int(b[1]))%11*1000
}

func (s *Stack) startNomad(ctx context.Context, bin string, ports stackPorts) error {
	dir := filepath.Join(s.Dir, "nomad")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`# Written by the slotd e2e harness.
name                 = %q
data_dir             = %q
bind_addr            = "127.0.0.1"
disable_update_check = true
log_level            = "INFO"

ports {
  http = %d
  rpc  = %d
  serf = %d
}

advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}

server {
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled           = true
  network_interface = "lo"
  min_dynamic_port  = %d
  max_dynamic_port  = %d
  # Past gc_max_allocs (50 by default), each new allocation first garbage-collects terminal
  # ones, one after the other, and every allocation update of the client waits behind that,
  # in-place updates of service tags included: a swap's switch waited up to 20 s for it
  # while the tests ran side by side. A client that runs lanes wants room (see README).
  gc_max_allocs     = 1000

  options = {
    # The cloud fingerprinters probe 169.254.169.254 and cloud metadata host names.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
    # Tests run raw_exec only; these would probe the docker socket or run java and qemu.
    "driver.denylist" = "docker,qemu,java"
  }
}

plugin "raw_exec" {
  config {
    enabled = true
  }
}

consul {
  address          = %q
  # Nomad's own services and auto-join are of no use to a one-node stack.
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}

vault {
  enabled = false
}
`, nodeName, filepath.Join(dir, "data"), ports.nomadHTTP, ports.nomadRPC, ports.nomadSerf,
		ports.nomadDynamicMin, ports.nomadDynamicMin+999, s.ConsulAddr)
	file := filepath.Join(dir, "nomad.hcl")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write nomad config: %w", err)
	}

	s.NomadAddr = "http://" + addr(ports.nomadHTTP)
	var err error
	s.Nomad, err = nomadapi.NewClient(&nomadapi.Config{Address: s.NomadAddr})
	if err != nil {
		return fmt.Errorf("nomad client: %w", err)
	}
	p, err := s.start("nomad", bin, "agent", "-dev", "-config", file)
	if err != nil {
		return err
	}
	return s.ready(ctx, p, nomadReadyTimeout, "a ready, eligible nomad node with the raw_exec driver healthy",
		func() (bool, string) {
			nodes, _, err := s.Nomad.Nodes().List(nil)
			if err != nil {
				return false, err.Error()
			}
			if len(nodes) == 0 {
				return false, "no node registered"
			}
			var seen []string
			for _, n := range nodes {
				raw := "not detected"
				if d := n.Drivers["raw_exec"]; d != nil && d.Detected {
					raw = "detected, healthy=" + fmt.Sprint(d.Healthy)
					if d.HealthDescription != "" {
						raw += " (" + d.HealthDescription + ")"
					}
					if n.Status == nomadapi.NodeStatusReady && n.SchedulingEligibility == nomadapi.NodeSchedulingEligible && d.Healthy {
						return true, ""
					}
				}
				seen = append(seen, fmt.Sprintf("node %s: status %s, %s, raw_exec %s", n.Name, n.Status, n.SchedulingEligibility, raw))
			}
			return false, strings.Join(seen, "; ")
		})
}

func (s *Stack) startFabio(ctx context.Context, bin string, ports stackPorts) error {
	s.FabioAddr = addr(ports.fabioProxy)
	s.FabioUIAddr = addr(ports.fabioUI)
	s.FabioMetricsAddr = addr(ports.fabioMetrics)
	p, err := s.start("fabio", bin, fabioArgs(s.ConsulAddr, s.FabioAddr, s.FabioUIAddr, s.FabioMetricsAddr)...)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: time.Second}
	return s.ready(ctx, p, fabioReadyTimeout, "fabio's UI to answer /health and its proxy to accept connections",
		func() (bool, string) {
			resp, err := client.Get("http://" + s.FabioUIAddr + "/health")
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false, "GET /health: " + resp.Status
			}
			conn, err := net.DialTimeout("tcp", s.FabioAddr, time.Second)
			if err != nil {
				return false, "proxy: " + err.Error()
			}
			conn.Close()
			return true, ""
		})
}

// fabioArgs are Fabio's flags: loopback only, no self-registration, Prometheus metrics on a
// listener of their own, and routes from Consul's health by blocking query (no poll
// interval), so tag changes show up at once.
func fabioArgs(consul, proxy, ui, metrics string) []string {
	return []string{
		"-registry.backend", "consul",
		"-registry.consul.addr", consul,
		"-registry.consul.register.enabled=false",
		// An instance gets traffic only when all its checks pass, as Consul's "passing" says.
		"-registry.consul.checksRequired", "all",
		// 0 = watch Consul with blocking queries; any interval would poll and lag behind.
		"-registry.consul.pollinterval", "0",
		"-registry.retry", "100ms",
		// The second listener serves /metrics (proto=prometheus), never proxied traffic.
		"-proxy.addr", proxy + ";proto=http," + metrics + ";proto=prometheus",
		"-proxy.localip", "127.0.0.1",
		// Round robin, so that a few requests reach every instance of a slot.
		"-proxy.strategy", "rr",
		"-ui.addr", ui,
		// Metric names start fabio_ (the default prefix is the host name and the binary's).
		"-metrics.target", "prometheus",
		"-metrics.prefix", "fabio",
		"-log.routes.format", "delta",
	}
}

// FabioGet sends GET path to the Fabio proxy with the given Host header.
func (s *Stack) FabioGet(ctx context.Context, host, path string) (status int, body []byte, err error) {
	if s.FabioAddr == "" {
		return 0, nil, errors.New("this stack runs without Fabio")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.FabioAddr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Host = host
	resp, err := fabioClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// fabioClient keeps no idle connection, so none outlives the stack it talked to.
var fabioClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// LogFile is the path of an agent's log ("consul", "nomad" or "fabio").
func (s *Stack) LogFile(agent string) string {
	return filepath.Join(s.Dir, agent+".log")
}

// Stop purges every Nomad job, waits (bounded) for their allocations to stop, stops Fabio,
// Nomad and Consul, kills whatever they leave behind, and removes Dir unless WithDir gave it.
// It is safe to call more than once; later calls return the first call's result.
func (s *Stack) Stop() error {
	s.stopOnce.Do(func() { s.stopErr = s.stop() })
	return s.stopErr
}

func (s *Stack) stop() error {
	began := time.Now()
	defer func() { s.logf("stack stopped in %s", time.Since(began).Round(time.Millisecond)) }()
	var errs []error
	s.prom.mu.Lock() // a Prometheus starting now finishes first; then none can start
	s.procsMu.Lock()
	s.stopping = true
	s.procsMu.Unlock()
	s.prom.mu.Unlock()
	if nomad := s.proc("nomad"); nomad != nil {
		if ok, _ := nomad.exited(); !ok {
			if err := s.purgeJobs(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Collected before any agent is signalled: once an agent exits, its executors and tasks
	// are re-parented and no longer found below it.
	var leftovers []procID
	procs := s.started()
	for _, p := range procs {
		if ok, _ := p.exited(); !ok {
			leftovers = append(leftovers, descendants(p.pid())...)
		}
	}
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if err := p.stop(agentGrace); err != nil {
			errs = append(errs, err)
		}
		s.logf("%s stopped", p.name)
	}
	killAll(leftovers)
	ctx, cancel := context.WithTimeout(context.Background(), leftoverTimeout)
	defer cancel()
	if left := waitGone(ctx, leftovers); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes still running after SIGKILL: %v", left))
	}
	if err := unmountUnder(s.Dir); err != nil {
		errs = append(errs, err)
	}
	if !s.opts.keepDir && s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", s.Dir, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Stack) proc(name string) *process {
	for _, p := range s.started() {
		if p.name == name {
			return p
		}
	}
	return nil
}

// purgeJobs deregisters and purges every job and waits until no allocation runs.
// PurgeSiteAtEnd purges the lane jobs of a site (job IDs "<site>-…") when the test ends, after
// the test's daemons stopped (register it before them), so finished scenarios leave the
// shared node's CPU to the ones still running.
func (s *Stack) PurgeSiteAtEnd(t testing.TB, site string) {
	t.Cleanup(func() {
		jobs, _, err := s.Nomad.Jobs().List(&nomadapi.QueryOptions{Prefix: site + "-"})
		if err != nil {
			t.Logf("purge the jobs of site %s: %v", site, err)
			return
		}
		for _, j := range jobs {
			if _, _, err := s.Nomad.Jobs().Deregister(j.ID, true, nil); err != nil {
				t.Logf("purge job %s: %v", j.ID, err)
			}
		}
	})
}

func (s *Stack) purgeJobs() error {
	if s.Nomad == nil {
		return nil
	}
	jobs, _, err := s.Nomad.Jobs().List(nil)
	if err != nil {
		return fmt.Errorf("list nomad jobs: %w", err)
	}
	var errs []error
	for _, j := range jobs {
		if _, _, err := s.Nomad.Jobs().Deregister(j.ID, true, nil); err != nil {
			errs = append(errs, fmt.Errorf("purge job %s: %w", j.ID, err))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	err = waitUntil(ctx, "the allocations of the purged jobs to stop", func() (bool, string, error) {
		allocs, _, err := s.Nomad.Allocations().List(nil)
		if err != nil {
			return false, err.Error(), nil
		}
		var running []string
		for _, a := range allocs {
			if a.ClientStatus == nomadapi.AllocClientStatusPending || a.ClientStatus == nomadapi.AllocClientStatusRunning {
				running = append(running, a.JobID+"/"+a.Name+" "+a.ClientStatus)
			}
		}
		sort.Strings(running)
		return len(running) == 0, strings.Join(running, ", "), nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unmountUnder lazily unmounts what Nomad left mounted below dir (task secrets are tmpfs
// mounts when it runs as root), so that dir can be removed.
func unmountUnder(dir string) error {
	if dir == "" {
		return nil
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var mounts []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	// Deepest first.
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	var errs []error
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// NewStack starts a stack of its own for the test and stops it when the test ends (keeping
// Dir for the logs when the test failed).
func NewStack(t testing.TB, opts ...Option) *Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := Start(ctx, opts...)
	if err != nil {
		t.Fatalf("e2e: start the stack: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.opts.keepDir = true
			t.Logf("e2e: agent logs kept in %s", s.Dir)
		}
		if err := s.Stop(); err != nil {
			t.Errorf("e2e: stop the stack: %v", err)
		}
	})
	return s
}
