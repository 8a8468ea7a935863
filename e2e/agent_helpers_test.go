package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/testcert"
)

// siteSpec describes one site of a test's slots.hcl; the zero value plus a name is valid.
type siteSpec struct {
	name     string
	vars     map[string]string // job variables besides binary and service
	warmup   string            // the body of the warmup block
	monitor  string            // the body of the monitor block; empty: a 1s window
	autoSwap bool              // staging auto-swaps into production
	// previousTags routes the host previous("production") to production's held lane (previous_tags).
	previousTags bool
	token        string
	// tls, when set, makes the daemon serve its API over TLS with that certificate.
	tls testcert.Files
	// settings and sticky declare further swappable and sticky settings, by slot name, besides
	// each slot's FEATURE and DB.
	settings map[string]map[string]string
	sticky   map[string]map[string]string
	slots    string // raw HCL of further slot blocks inside the site block
	// gate, when set, is the body of the site's gate "before-switch" block.
	gate string
	// scale declares the scale of production or staging, by slot name, as written in HCL:
	// `{ app = 3 }` or `"live"`.
	scale map[string]string
	// historyLimit, when set, is the site's history_limit.
	historyLimit int
	// sensitiveVars is the site's sensitive_vars.
	sensitiveVars []string
	// consul and nomad, when set, are the addresses slotd uses instead of the stack's own
	// (a FaultProxy in front of them).
	consul, nomad string
}

// hosts of a site's slots, as Fabio routes them.
func (s siteSpec) host(slot string) string    { return s.name + "-" + slot + ".test" }
func (s siteSpec) preview(slot string) string { return s.name + "-" + slot + "-preview.test" }
func (s siteSpec) previous(slot string) string {
	return s.name + "-" + slot + "-previous.test"
}

func newSite(opts ...func(*siteSpec)) siteSpec {
	s := siteSpec{name: "s" + Suffix()}
	for _, o := range opts {
		o(&s)
	}
	return s
}

// hcl renders the declarations of a test: the stack's addresses and the site.
func (s siteSpec) hcl(t testing.TB, stack *Stack, httpAddr string) string {
	tokenFile := ""
	if s.token != "" {
		p := filepath.Join(t.TempDir(), "token")
		require.NoError(t, os.WriteFile(p, []byte(s.token+"\n"), 0o600))
		tokenFile = fmt.Sprintf("token_file = %q", p)
	}
	if s.tls.CertFile != "" {
		tokenFile += fmt.Sprintf("\n  tls_cert_file = %q\n  tls_key_file = %q", s.tls.CertFile, s.tls.KeyFile)
	}
	return fmt.Sprintf(`
log_level = "debug"
kv_prefix = %[1]q
data_dir  = %[2]q
http {
  address = %[3]q
  %[4]s
}
consul { address = %[5]q }
nomad  { address = %[6]q }
%[7]s`, s.kvPrefix(), t.TempDir(), httpAddr, tokenFile, cmp.Or(s.consul, stack.ConsulAddr), cmp.Or(s.nomad, stack.NomadAddr),
		s.siteHCL(t, TestAppJobspec()))
}

// apiURL is the base URL of a daemon of the site listening at addr.
func (s siteSpec) apiURL(addr string) string {
	if s.tls.CertFile != "" {
		return "https://" + addr
	}
	return "http://" + addr
}

// kvPrefix is the site's own KV folder: tests on the shared stack never see each other's state.
func (s siteSpec) kvPrefix() string { return "slotd-" + s.name }

// siteHCL renders the site block, with the jobspec at job.
func (s siteSpec) siteHCL(t testing.TB, job string) string {
	vars := map[string]string{"binary": TestAppBinary(t), "service": s.name, "count": "2", "show_env": "FEATURE,DB"}
	for k, v := range s.vars {
		vars[k] = v
	}
	var vb strings.Builder
	for k, v := range vars {
		fmt.Fprintf(&vb, "    %s = %q\n", k, v)
	}
	warmup := s.warmup
	if warmup == "" {
		warmup = `paths = ["/", "/healthz"]
    statuses = [200]
    timeout = "5s"
    attempts = 3
    interval = "200ms"`
	}
	monitor := s.monitor
	if monitor == "" {
		monitor = `window = "1s"`
	}
	monitor = "monitor {\n    " + monitor + "\n  }"
	autoSwap := ""
	if s.autoSwap {
		autoSwap = `auto_swap = "production"`
	}
	declared := func(kind map[string]map[string]string, slot, key, value string) string {
		m := map[string]string{key: value}
		maps.Copy(m, kind[slot])
		return hclObject(m)
	}
	scale := func(slot string) string {
		if v := s.scale[slot]; v != "" {
			return "scale = " + v
		}
		return ""
	}
	previous := ""
	if s.previousTags {
		previous = fmt.Sprintf("previous_tags = [\"urlprefix-%s/\"]", s.previous("production"))
	}
	gate := ""
	if s.gate != "" {
		gate = "gate \"before-switch\" {\n    " + s.gate + "\n  }"
	}
	historyLimit := ""
	if s.historyLimit != 0 {
		historyLimit = fmt.Sprintf("history_limit = %d", s.historyLimit)
	}
	return fmt.Sprintf(`
site %[1]q {
  job     = %[2]q
  service = %[1]q
  deploy_timeout = "3m"
  %[12]s
  sensitive_vars = %[13]s
  vars = {
%[3]s  }
  warmup {
    %[4]s
  }
  %[5]s
  %[17]s
  slot "production" {
    tags         = ["urlprefix-%[1]s-production.test/"]
    preview_tags = ["urlprefix-%[1]s-production-preview.test/"]
    %[16]s
    settings     = %[7]s
    sticky       = %[8]s
    %[14]s
  }
  slot "staging" {
    tags     = ["urlprefix-%[1]s-staging.test/"]
    settings = %[9]s
    sticky   = %[10]s
    %[6]s
    %[15]s
  }
  %[11]s
}
`, s.name, job, vb.String(), warmup, monitor, autoSwap,
		declared(s.settings, "production", "FEATURE", "prod-feature"), declared(s.sticky, "production", "DB", "prod-db"),
		declared(s.settings, "staging", "FEATURE", "staging-feature"), declared(s.sticky, "staging", "DB", "staging-db"),
		s.slots, historyLimit, hclList(s.sensitiveVars), scale("production"), scale("staging"), previous, gate)
}

// hclList renders strings as an HCL list.
func hclList(items []string) string {
	quoted := make([]string, len(items))
	for i, it := range items {
		quoted[i] = fmt.Sprintf("%q", it)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// hclObject renders a map of strings as an HCL object, keys in order: on one line when short,
// one item a line when long.
func hclObject(m map[string]string) string {
	items := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		items = append(items, fmt.Sprintf("%s = %q", k, m[k]))
	}
	if len(items) <= 4 {
		return "{ " + strings.Join(items, ", ") + " }"
	}
	return "{\n      " + strings.Join(items, "\n      ") + "\n    }"
}

// daemon is an in-process slotd agent of a test.
type daemon struct {
	t      testing.TB
	cfg    *config.Config
	agent  *agent.Agent
	client *api.Client
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// freeAddr asks the kernel for a free loopback port.
func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// startDaemon writes the site's slots.hcl, starts an agent on it and waits until the site is ready.
func startDaemon(t testing.TB, stack *Stack, site siteSpec) *daemon {
	t.Helper()
	stack.PurgeSiteAtEnd(t, site.name)
	addr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "slots.hcl")
	require.NoError(t, os.WriteFile(path, []byte(site.hcl(t, stack, addr)), 0o644))
	cfg, err := config.Load(path)
	require.NoError(t, err, "load the test's slots.hcl")
	d := &daemon{t: t, cfg: cfg, addr: addr}
	d.start()
	t.Cleanup(d.stop)
	// The scenarios check sticky values, so the harness's client reveals them; TestSecrets
	// reads without.
	client, err := api.NewClient(api.Config{Address: site.apiURL(addr), Token: site.token, CACert: site.tls.CertFile, Reveal: true})
	require.NoError(t, err)
	d.client = client
	d.waitReady(site.name)
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	logger := hclog.New(&hclog.LoggerOptions{Name: "slotd", Level: hclog.Debug, Output: testLogWriter{d.t}})
	a, err := agent.New(d.cfg, logger)
	require.NoError(d.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	d.agent, d.cancel, d.done = a, cancel, make(chan error, 1)
	go func() { d.done <- a.Run(ctx) }()
}

// stop stops the agent the way SIGTERM does and waits for it.
func (d *daemon) stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	select {
	case <-d.done:
	case <-time.After(3 * time.Minute):
		d.t.Errorf("agent did not stop within 3m")
	}
	d.cancel = nil
}

func (d *daemon) restart(site string) {
	d.t.Helper()
	d.stop()
	d.start()
	d.waitReady(site)
}

// waitReady waits until the daemon leads and every slot of the site is bound and healthy.
func (d *daemon) waitReady(site string) {
	d.t.Helper()
	WaitFor(d.t, 4*time.Minute, "site "+site+" ready", func() (bool, string) {
		s, err := d.client.Site(context.Background(), site)
		if err != nil {
			return false, err.Error()
		}
		if !s.Ready {
			return false, "site not ready"
		}
		for _, sl := range s.Slots {
			if sl.Lane == "" || sl.Version == 0 && sl.Total == 0 || sl.Healthy < 1 || sl.Healthy != sl.Total {
				b, _ := json.Marshal(s.Slots)
				return false, string(b)
			}
		}
		h, err := d.client.Health(context.Background())
		if err != nil || !h.Leader {
			return false, fmt.Sprintf("health %+v %v", h, err)
		}
		return s.Operation == nil, "operation running"
	})
}

// run starts an operation through fn and waits until it ends.
func (d *daemon) run(fn func(context.Context) (*api.Operation, error)) *api.Operation {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	op, err := fn(ctx)
	require.NoError(d.t, err)
	final, err := d.client.Wait(ctx, op.ID, nil)
	require.NoError(d.t, err, "wait for %s", op.ID)
	return final
}

func (d *daemon) swap(site, source, target string) *api.Operation {
	d.t.Helper()
	return d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Swap(ctx, site, api.SwapRequest{Source: source, Target: target})
	})
}

// testLogWriter sends the agent's log lines to the test log.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	if os.Getenv("SLOTD_E2E_AGENT_LOGS") == "1" {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// appAnswer is what GET / of the test app says.
type appAnswer struct {
	Lane    string            `json:"lane"`
	Alloc   string            `json:"alloc"`
	Version string            `json:"version"`
	Slot    string            `json:"slot"`
	Env     map[string]string `json:"env"`
}

// get asks the app behind host through Fabio.
func get(ctx context.Context, stack *Stack, host string) (int, appAnswer, error) {
	status, body, err := stack.FabioGet(ctx, host, "/")
	var ans appAnswer
	if err == nil && status == 200 {
		err = json.Unmarshal(body, &ans)
	}
	return status, ans, err
}

// waitServes waits until every answer on host comes from lane.
func waitServes(t testing.TB, stack *Stack, host, lane string) {
	t.Helper()
	WaitFor(t, 30*time.Second, host+" served by "+lane, func() (bool, string) {
		for range 6 {
			status, ans, err := get(context.Background(), stack, host)
			if err != nil || status != 200 || ans.Lane != lane {
				return false, fmt.Sprintf("status %d lane %q err %v", status, ans.Lane, err)
			}
		}
		return true, ""
	})
}

// startDaemonSites starts one agent for several sites: the first site's slots.hcl with the
// site blocks of the others appended (each keeps its own lanes; the kv_prefix is the first's).
func startDaemonSites(t testing.TB, stack *Stack, first siteSpec, others ...siteSpec) *daemon {
	t.Helper()
	return startDaemonOn(t, stack, "", append([]siteSpec{first}, others...))
}

// startDaemonGroup starts one agent for the sites, as startDaemonSites does, with the sites
// declared as the swap group named group.
func startDaemonGroup(t testing.TB, stack *Stack, group string, sites ...siteSpec) *daemon {
	t.Helper()
	return startDaemonOn(t, stack, groupHCL(group, sites), sites)
}

// startDaemonOn starts one agent for the sites with the declarations extra after their site
// blocks, and waits until every site is ready.
func startDaemonOn(t testing.TB, stack *Stack, extra string, sites []siteSpec) *daemon {
	t.Helper()
	for _, s := range sites {
		stack.PurgeSiteAtEnd(t, s.name)
	}
	addr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "slots.hcl")
	require.NoError(t, os.WriteFile(path, []byte(sitesHCL(t, stack, addr, sites)+extra), 0o644))
	cfg, err := config.Load(path)
	require.NoError(t, err, "load the test's slots.hcl")
	d := &daemon{t: t, cfg: cfg, addr: addr}
	d.start()
	t.Cleanup(d.stop)
	d.client, err = api.NewClient(api.Config{Address: "http://" + addr, Token: sites[0].token, Reveal: true})
	require.NoError(t, err)
	for _, s := range sites {
		d.waitReady(s.name)
	}
	return d
}

// sitesHCL renders the slots.hcl of one agent for several sites: the first site's, with the
// site blocks of the others appended.
func sitesHCL(t testing.TB, stack *Stack, addr string, sites []siteSpec) string {
	t.Helper()
	src := sites[0].hcl(t, stack, addr)
	for _, o := range sites[1:] {
		block := o.hcl(t, stack, addr)
		i := strings.Index(block, "\nsite ")
		require.GreaterOrEqual(t, i, 0, "no site block in the rendered slots.hcl")
		src += block[i:]
	}
	return src
}

// groupHCL renders the declaration of a swap group of the sites.
func groupHCL(name string, sites []siteSpec) string {
	names := make([]string, len(sites))
	for i, s := range sites {
		names[i] = s.name
	}
	return fmt.Sprintf("\ngroup %q {\n  sites = %s\n}\n", name, hclList(names))
}

// laneJobs maps each slot of the site to the job ID of the lane that serves it now.
func (d *daemon) laneJobs(site string) map[string]string {
	d.t.Helper()
	s, err := d.client.Site(context.Background(), site)
	require.NoError(d.t, err, "read site %s", site)
	out := map[string]string{}
	for _, sl := range s.Slots {
		out[sl.Name] = sl.Lane
	}
	return out
}

// waitAnswers waits until 6 answers in a row on host are 200 and satisfy ok (nil: any 200).
func waitAnswers(t testing.TB, stack *Stack, host string, timeout time.Duration, what string, ok func(appAnswer) bool) {
	t.Helper()
	WaitFor(t, timeout, host+" answering "+what, func() (bool, string) {
		for range 6 {
			status, ans, err := get(context.Background(), stack, host)
			if err != nil || status != 200 || ok != nil && !ok(ans) {
				return false, fmt.Sprintf("status %d answer %+v err %v", status, ans, err)
			}
		}
		return true, ""
	})
}

// Bounds of a sampler: the pause between two requests of one client, and the most requests
// all its clients send together.
const (
	samplerPause       = 50 * time.Millisecond
	samplerMaxRequests = 100_000
)

// sample is one request of a sampler.
type sample struct {
	client int       // which of the sampler's clients sent it
	at     time.Time // when the request was sent
	took   time.Duration
	status int
	ans    appAnswer
	body   string // of a non-200 answer
	err    error
}

func (s sample) String() string {
	what := fmt.Sprintf("status %d lane %q version %q env %v", s.status, s.ans.Lane, s.ans.Version, s.ans.Env)
	if s.err != nil {
		what = "error " + s.err.Error()
	} else if s.status != 200 {
		what = fmt.Sprintf("status %d %q", s.status, strings.TrimSpace(s.body))
	}
	return fmt.Sprintf("%s (+%s) %s", s.at.Format("15:04:05.000"), s.took.Round(time.Millisecond), what)
}

// sampler sends requests for a host through Fabio from concurrent clients and records every
// answer, until stopped, its time is up or it has sent samplerMaxRequests.
type sampler struct {
	clients int
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []sample
	capped  atomic.Bool // stopped by its own bounds rather than by stop
}

func startSampler(t testing.TB, stack *Stack, host string, clients int, maxFor time.Duration) *sampler {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &sampler{clients: clients, cancel: cancel}
	deadline := time.Now().Add(maxFor)
	var sent atomic.Int64
	for client := range clients {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for ctx.Err() == nil {
				if time.Now().After(deadline) || sent.Add(1) > samplerMaxRequests {
					s.capped.Store(true)
					return
				}
				smp := sample{client: client, at: time.Now()}
				var body []byte
				smp.status, body, smp.err = stack.FabioGet(ctx, host, "/")
				smp.took = time.Since(smp.at)
				if ctx.Err() != nil {
					return // stopped while the request was in flight: no answer to judge
				}
				if smp.err == nil && smp.status == 200 {
					smp.err = json.Unmarshal(body, &smp.ans)
				} else if smp.err == nil {
					smp.body = string(body)
				}
				s.mu.Lock()
				s.samples = append(s.samples, smp)
				s.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(samplerPause):
				}
			}
		}()
	}
	t.Cleanup(func() { s.stop() })
	return s
}

// stop stops the clients, waits for them and returns every sample, oldest first.
func (s *sampler) stop() []sample {
	s.cancel()
	s.wg.Wait()
	return s.snapshot()
}

// snapshot returns the samples so far, oldest first.
func (s *sampler) snapshot() []sample {
	s.mu.Lock()
	out := slices.Clone(s.samples)
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b sample) int { return a.at.Compare(b.at) })
	return out
}

// waitSent waits until every client has recorded a request sent after at: from then on the
// snapshot holds every request sent before at, whatever the requests in flight at that time.
func (s *sampler) waitSent(t testing.TB, at time.Time) {
	t.Helper()
	WaitFor(t, 30*time.Second, "every client of the sampler to send a request after "+at.Format("15:04:05.000"), func() (bool, string) {
		after := map[int]bool{}
		for _, smp := range s.snapshot() {
			if smp.at.After(at) {
				after[smp.client] = true
			}
		}
		return len(after) == s.clients, fmt.Sprintf("%d of %d clients", len(after), s.clients)
	})
}

// firstSamples formats at most n samples for a failure message, with how many there were.
func firstSamples(ss []sample, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d in all", len(ss))
	for i, s := range ss {
		if i == n {
			b.WriteString("\n  …")
			break
		}
		b.WriteString("\n  " + s.String())
	}
	return b.String()
}
