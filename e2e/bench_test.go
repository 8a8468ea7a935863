package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// BenchmarkSwitch measures the switch of DESIGN.md §3 as a user sees it: from the end of warm-up
// to the moment the router sends every request to the new lane, over 20 swaps (SLOTD_BENCH_SWAPS).
func BenchmarkSwitch(b *testing.B) {
	stack := Shared(b)
	site := newSite()
	d := startDaemon(b, stack, site)
	swaps := 20
	if v, err := strconv.Atoi(os.Getenv("SLOTD_BENCH_SWAPS")); err == nil && v > 0 {
		swaps = v
	}
	host := site.host("production")

	// A sampler records which lane answers the production host, about every 20 ms.
	type sample struct {
		at   time.Time
		lane string
	}
	var mu sync.Mutex
	var samples []sample
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for deadline := time.Now().Add(time.Hour); time.Now().Before(deadline); {
			select {
			case <-stop:
				return
			default:
			}
			_, ans, err := get(context.Background(), stack, host)
			if err == nil {
				mu.Lock()
				samples = append(samples, sample{time.Now(), ans.Lane})
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	var switches, phases []time.Duration
	b.ResetTimer()
	for i := range swaps {
		op := d.swap(site.name, "staging", "production")
		require.Equal(b, api.StateSucceeded, op.State, "swap %d: %s", i, op.Error)
		warm, sw := op.Phase(api.PhaseWarm), op.Phase(api.PhaseSwitch)
		require.NotNil(b, warm.EndedAt)
		s, err := d.client.Site(context.Background(), site.name)
		require.NoError(b, err)
		newLane := s.Slots[0].Lane
		// Settle restarts the other lane; by its end the router has long converged.
		mu.Lock()
		converged := time.Time{}
		for j := len(samples) - 1; j >= 0 && samples[j].at.After(*warm.EndedAt); j-- {
			if samples[j].lane != newLane {
				break
			}
			converged = samples[j].at
		}
		mu.Unlock()
		require.False(b, converged.IsZero(), "swap %d: no sample from %s after warm-up", i, newLane)
		switches = append(switches, converged.Sub(*warm.EndedAt))
		phases = append(phases, sw.Duration())
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	med, p90 := percentile(switches, 50), percentile(switches, 90)
	b.ReportMetric(float64(med.Milliseconds()), "switch-median-ms")
	b.ReportMetric(float64(p90.Milliseconds()), "switch-p90-ms")
	b.ReportMetric(float64(percentile(phases, 50).Milliseconds()), "switch-phase-median-ms")
	b.Logf("%d swaps: warm-up end → every request on the new lane: median %s, p90 %s; switch phase median %s",
		swaps, med, p90, percentile(phases, 50))
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[(len(s)-1)*p/100]
}

// countingProxy forwards to target and counts the requests, excluding nothing, the most that
// were in flight at once (each holds a connection to the agent), and the answers 429 (the
// agent's limit of connections per client).
type countingProxy struct {
	n, inflight, peak, refused atomic.Int64
	srv                        *http.Server
	url                        string
}

func newCountingProxy(b testing.TB, target string) *countingProxy {
	u, err := url.Parse(target)
	require.NoError(b, err)
	p := &countingProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	// Keep the upstream connections as slotd keeps its own: with http.DefaultTransport's 2 idle
	// ones, the proxy would open and close connections all the time, and the agent would count
	// closing ones against its per-client limit.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 256
	rp.Transport = t
	addr := freeAddr(b)
	p.srv = &http.Server{Addr: addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.n.Add(1)
		now := p.inflight.Add(1)
		defer p.inflight.Add(-1)
		for {
			peak := p.peak.Load()
			if now <= peak || p.peak.CompareAndSwap(peak, now) {
				break
			}
		}
		rp.ServeHTTP(w, r)
	})}
	rp.ModifyResponse = func(r *http.Response) error {
		if r.StatusCode == http.StatusTooManyRequests {
			p.refused.Add(1)
		}
		return nil
	}
	go func() { _ = p.srv.ListenAndServe() }()
	b.Cleanup(func() { _ = p.srv.Close() })
	p.url = "http://" + addr
	return p
}

// BenchmarkIdleAgent runs bin-built slotd with 100 sites (SLOTD_BENCH_SITES; 2 lanes of one
// instance each) and measures, over a minute of idleness: its RSS, its CPU time, and its
// requests to Consul and Nomad. Then it starts 20 swaps on 20 different sites at once: all
// must succeed, and it reports the slowest. Each instance asks 10 MHz of CPU: at the test app's
// default of 50, one node of this machine (2 cores, 5192 MHz) places 103 of the 200.
func BenchmarkIdleAgent(b *testing.B) {
	stack := Shared(b)
	sites := 100
	if v, err := strconv.Atoi(os.Getenv("SLOTD_BENCH_SITES")); err == nil && v > 0 {
		sites = v
	}
	window := time.Minute
	if v, err := time.ParseDuration(os.Getenv("SLOTD_BENCH_IDLE")); err == nil && v > 0 {
		window = v
	}
	bin := filepath.Join(b.TempDir(), "slotd")
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", bin, "./cmd/slotd")
	build.Dir = filepath.Join(filepath.Dir(file), "..")
	out, err := build.CombinedOutput()
	require.NoError(b, err, "build slotd: %s", out)

	consul := newCountingProxy(b, "http://"+stack.ConsulAddr)
	nomad := newCountingProxy(b, stack.NomadAddr)
	addr := freeAddr(b)
	prefix := "bench" + Suffix()
	var hcl strings.Builder
	fmt.Fprintf(&hcl, "kv_prefix = %q\nhttp { address = %q }\nconsul { address = %q }\nnomad { address = %q }\n",
		prefix, addr, strings.TrimPrefix(consul.url, "http://"), nomad.url)
	for i := range sites {
		name := fmt.Sprintf("%s-%02d", prefix, i)
		fmt.Fprintf(&hcl, `
site %[1]q {
  job = %[2]q
  service = %[1]q
  vars = { binary = %[3]q, service = %[1]q, count = "1", cpu = "10" }
  monitor {
    window          = "1s"
    rollback_window = "0s"
  }
  slot "production" { tags = ["urlprefix-%[1]s.test/"] }
  slot "staging" { tags = ["urlprefix-%[1]s-staging.test/"] }
}
`, name, TestAppJobspec(), TestAppBinary(b))
	}
	cfgPath := filepath.Join(b.TempDir(), "slots.hcl")
	require.NoError(b, os.WriteFile(cfgPath, []byte(hcl.String()), 0o644))
	cmd := exec.Command(bin, "agent", "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(b, cmd.Start())
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
		}
	})
	client, err := api.NewClient(api.Config{Address: "http://" + addr})
	require.NoError(b, err)
	WaitFor(b, 20*time.Minute, fmt.Sprintf("%d sites ready", sites), func() (bool, string) {
		all, err := client.Sites(context.Background())
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, s := range all {
			if s.Ready {
				ready++
			}
		}
		return ready == sites, fmt.Sprintf("%d/%d ready", ready, sites)
	})
	time.Sleep(5 * time.Second) // let the last rollouts' queries end

	cpu0, _ := procCPU(cmd.Process.Pid)
	c0, n0 := consul.n.Load(), nomad.n.Load()
	b.ResetTimer()
	time.Sleep(window)
	b.StopTimer()
	cpu1, _ := procCPU(cmd.Process.Pid)
	rss, _ := procRSS(cmd.Process.Pid)
	perMin := func(n int64) float64 { return float64(n) / window.Minutes() }
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric((cpu1-cpu0).Seconds()/window.Seconds()*100, "cpu-%")
	b.ReportMetric(perMin(consul.n.Load()-c0), "consul-req/min")
	b.ReportMetric(perMin(nomad.n.Load()-n0), "nomad-req/min")
	b.Logf("idle agent, %d sites, %s: RSS %.1f MiB, CPU %s (%.2f%%), %.0f consul and %.0f nomad requests/min",
		sites, window, float64(rss)/(1<<20), cpu1-cpu0, (cpu1-cpu0).Seconds()/window.Seconds()*100,
		perMin(consul.n.Load()-c0), perMin(nomad.n.Load()-n0))

	// Swaps on different sites run side by side.
	together := min(20, sites)
	durations := make([]time.Duration, together)
	errs := make([]error, together)
	var wg sync.WaitGroup
	for i := range together {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			start := time.Now()
			op, err := client.Swap(ctx, fmt.Sprintf("%s-%02d", prefix, i), api.SwapRequest{Source: "staging", Target: "production"})
			if err == nil {
				op, err = client.Wait(ctx, op.ID, nil)
			}
			if err == nil && op.State != api.StateSucceeded {
				err = fmt.Errorf("swap %s %s: %s", op.ID, op.State, op.Error)
			}
			durations[i], errs[i] = time.Since(start), err
		}()
	}
	wg.Wait()
	require.NoError(b, errors.Join(errs...), "%d swaps on %d sites at once", together, together)
	b.ReportMetric(float64(consul.peak.Load()), "consul-peak-conns")
	b.ReportMetric(float64(nomad.peak.Load()), "nomad-peak-conns")
	b.Logf("requests in flight at once, at the most, from start to end: %d to Consul, %d to Nomad; answered 429: %d and %d",
		consul.peak.Load(), nomad.peak.Load(), consul.refused.Load(), nomad.refused.Load())
	// slotd's bound: 64 connections to each for watches and operations (agent.maxConns), and
	// a few of its own for the leader session and lock, the role tag and the probes. A 429 is
	// counted, not failed: the agents count every process of this address (Nomad's client
	// registering 200 services at once, Fabio), and slotd retries.
	const bound = 64 + 8
	assert.LessOrEqual(b, consul.peak.Load(), int64(bound), "requests in flight to Consul at once")
	assert.LessOrEqual(b, nomad.peak.Load(), int64(bound), "requests in flight to Nomad at once")
	b.ReportMetric(percentile(durations, 100).Seconds(), "slowest-of-20-swaps-s")
	b.Logf("%d swaps on %d sites started together: all succeeded; fastest %s, median %s, slowest %s",
		together, together, percentile(durations, 0).Round(time.Millisecond), percentile(durations, 50).Round(time.Millisecond),
		percentile(durations, 100).Round(time.Millisecond))
}

// procCPU is the user+system CPU time of a process, from /proc.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// procRSS is the resident set size of a process in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
