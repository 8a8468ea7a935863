package e2e

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// Bounds of BenchmarkSideBySide: its load, and how long one measured operation may take.
const (
	sbsClients   = 8
	sbsMaxOp     = 5 * time.Minute
	sbsConverge  = 30 * time.Second // for every answer to come from the new version
	sbsTail      = time.Second      // the load goes on this long after the new version serves alone
	sbsDefaultN  = 100
	sbsNomadN    = 20
	sbsDefaultMD = "bench-side-by-side.md"
)

// BenchmarkSideBySide puts slotd next to Nomad's own blue/green on the same stack, with the same
// test app (2 instances a version) and the same load (8 clients through Fabio on the production
// host): a swap against a canary deployment with canary = count and a promote; an instant and
// a full rollback against `job revert` (canaries and a promote again); and the switch as the
// router sees it over SLOTD_BENCH_SWAPS (default 100) slotd swaps and SLOTD_BENCH_PROMOTES
// (default 20) Nomad promotes. It prints one table with the ratios and writes it to
// SLOTD_BENCH_OUT (default bin/bench-side-by-side.md).
func BenchmarkSideBySide(b *testing.B) {
	stack := Shared(b)
	swaps := sbsDefaultN
	if v, err := strconv.Atoi(os.Getenv("SLOTD_BENCH_SWAPS")); err == nil && v > 0 {
		swaps = v
	}
	// Nomad's promotes take seconds each: fewer of them show its distribution well enough.
	promotes := min(swaps, sbsNomadN)
	if v, err := strconv.Atoi(os.Getenv("SLOTD_BENCH_PROMOTES")); err == nil && v > 0 {
		promotes = v
	}
	out := cmp.Or(os.Getenv("SLOTD_BENCH_OUT"), filepath.Join(filepath.Dir(sourceDir()), "bin", sbsDefaultMD))

	// The site holds the former production lane for the whole run (rollback_window = the
	// window): a rollback inside it is a switch only. Swaps are measured until they switched;
	// their monitor goes on and ends when the next operation starts.
	site := newSite(func(s *siteSpec) { s.monitor = `window = "30m"` })
	d := startDaemon(b, stack, site)
	nj := startNativeJob(b, stack, 2, nil)
	host := site.host("production")
	lanes := d.laneJobs(site.name)
	waitServes(b, stack, host, lanes["production"])

	b.ResetTimer()
	// 1. A new version into production.
	slotdSwap := measure(b, stack, host, lanes["production"], lanes["staging"], laneOf, func() time.Time {
		return switchedAt(b, d, func(ctx context.Context) (*api.Operation, error) {
			return d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
		}, false)
	})
	b.Logf("slotd swap: %s", slotdSwap)
	nomadPromote := measure(b, stack, nj.host, "v1", "v2", versionOf, func() time.Time {
		return nj.rollout(func() uint64 { return nj.register("v2") }, nil)
	})
	b.Logf("nomad blue/green: %s", nomadPromote)

	// 2. Back to the previous version: inside the rollback window (the former production lane is
	// held warm), after it (a full swap: the swap is settled first), and Nomad's job revert.
	rollback := func(ctx context.Context) (*api.Operation, error) { return d.client.Rollback(ctx, site.name) }
	slotdInstant := measure(b, stack, host, lanes["staging"], lanes["production"], laneOf, func() time.Time {
		return switchedAt(b, d, rollback, true)
	})
	b.Logf("slotd instant rollback: %s", slotdInstant)
	settleNow(b, d, site.name) // the rollback's own hold: the next swap is a full one
	switchedAt(b, d, func(ctx context.Context) (*api.Operation, error) {
		return d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	}, false)
	settleNow(b, d, site.name)
	slotdFull := measure(b, stack, host, lanes["staging"], lanes["production"], laneOf, func() time.Time {
		return switchedAt(b, d, rollback, false)
	})
	b.Logf("slotd full rollback: %s", slotdFull)
	nomadRevert := measure(b, stack, nj.host, "v2", "v1", versionOf, func() time.Time {
		return nj.rollout(func() uint64 {
			_, _, err := stack.Nomad.Jobs().Revert(nj.id, nj.first, nil, nil, "", "")
			require.NoError(b, err, "nomad job revert %s to version %d", nj.id, nj.first)
			nj.app = 1
			return nj.liveVersion()
		}, nil)
	})
	b.Logf("nomad job revert: %s", nomadRevert)

	// 3. The switch as the router sees it: slotd from the start of its switch phase, Nomad from
	// its canaries' first answer, to the last answer from the old version. Each slotd swap goes
	// back to the lane the one before held (a switch only), so a hundred of them take minutes.
	var slotdSwitch, nomadSwitch []time.Duration
	for i := range swaps {
		cur := d.laneJobs(site.name)
		var op *api.Operation
		r := measure(b, stack, host, cur["production"], cur["staging"], laneOf, func() time.Time {
			op = switched(b, d, func(ctx context.Context) (*api.Operation, error) {
				return d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
			}, true)
			return time.Now()
		})
		sw := op.Phase(api.PhaseSwitch)
		require.True(b, sw != nil && sw.StartedAt != nil && sw.EndedAt != nil, "slotd swap %d: no switch phase", i)
		slotdSwitch = append(slotdSwitch, max(0, r.lastOld.Sub(*sw.StartedAt)))
		b.Logf("slotd swap %d: %s after the switch started; switch phase %s, router's last old answer %s after its end; %s",
			i+1, slotdSwitch[i], sw.Duration().Round(time.Millisecond), r.lastOld.Sub(*sw.EndedAt).Round(time.Millisecond), sw.Message)
	}
	for i := range promotes {
		old, next := "v"+strconv.Itoa(nj.app), "v"+strconv.Itoa(nj.app+1)
		var promoted time.Time
		r := measure(b, stack, nj.host, old, next, versionOf, func() time.Time {
			return nj.rollout(func() uint64 { return nj.register(next) }, &promoted)
		})
		// Nomad's canaries take traffic as soon as they are registered, next to the old
		// version, until the promote stops it: its switch as the router sees it is that mixed
		// window, from the first answer from the new version to the last from the old.
		nomadSwitch = append(nomadSwitch, r.cutover)
		b.Logf("nomad promote %d: mixed for %s; the first new answer %s before the promote call, the last old %s after it",
			i+1, r.cutover, promoted.Sub(r.firstNew).Round(time.Millisecond), r.lastOld.Sub(promoted).Round(time.Millisecond))
	}
	b.StopTimer()

	table := sideBySideTable([]comparison{
		{"new version (slotd swap / Nomad canary = count + promote)", slotdSwap, nomadPromote},
		{"back inside the rollback window (slotd instant rollback / Nomad job revert + promote)", slotdInstant, nomadRevert},
		{"back after the window (slotd full rollback / Nomad job revert + promote)", slotdFull, nomadRevert},
	}, slotdSwitch, nomadSwitch)
	require.NoError(b, os.MkdirAll(filepath.Dir(out), 0o755))
	require.NoError(b, os.WriteFile(out, []byte(table), 0o644))
	fmt.Fprintf(os.Stderr, "\n%s\nwritten to %s\n", table, out)
	b.ReportMetric(float64(percentile(slotdSwitch, 50).Milliseconds()), "slotd-switch-median-ms")
	b.ReportMetric(float64(percentile(slotdSwitch, 90).Milliseconds()), "slotd-switch-p90-ms")
	b.ReportMetric(float64(percentile(nomadSwitch, 50).Milliseconds()), "nomad-switch-median-ms")
	b.ReportMetric(float64(slotdInstant.toAllNew.Milliseconds()), "slotd-instant-rollback-ms")
	b.ReportMetric(float64(slotdInstant.failed), "slotd-rollback-non200")
	b.ReportMetric(float64(nomadRevert.failed), "nomad-revert-non200")
}

// Bounds of BenchmarkSideBySideAtScale: its size, and what each instance asks of the node
// (a tenth of the usual CPU, so that both sides' 40 instances at the peak fit the one node).
const (
	sbsScaleN       = 10
	sbsScaleCPU     = "20"
	sbsScaleDefault = "bench-side-by-side-scale.md"
)

// BenchmarkSideBySideAtScale puts a full slotd swap of a 10-instance site, whose jobspec says
// max_parallel = 1, next to Nomad's canary = 10 and a promote, on the same stack with the same
// test app and load as BenchmarkSideBySide: from the call until slotd switched (its hold lasts
// the run, so its settle does not run beside Nomad's rollout) and until Nomad's deployment
// succeeded. It prints one table with the ratios and writes it to SLOTD_BENCH_OUT (default
// bin/bench-side-by-side-scale.md).
func BenchmarkSideBySideAtScale(b *testing.B) {
	stack := Shared(b)
	out := cmp.Or(os.Getenv("SLOTD_BENCH_OUT"), filepath.Join(filepath.Dir(sourceDir()), "bin", sbsScaleDefault))
	vars := map[string]string{"count": strconv.Itoa(sbsScaleN), "cpu": sbsScaleCPU}
	site := newSite(func(s *siteSpec) {
		s.monitor = `window = "30m"`
		s.vars = vars
	})
	d := startDaemon(b, stack, site)
	nj := startNativeJob(b, stack, sbsScaleN, map[string]string{"cpu": sbsScaleCPU})
	lanes := d.laneJobs(site.name)
	waitSlot(b, d, site.name, "production", lanes["production"], sbsScaleN)
	waitSlot(b, d, site.name, "staging", lanes["staging"], sbsScaleN)

	b.ResetTimer()
	var op *api.Operation
	slotdSwap := measure(b, stack, site.host("production"), lanes["production"], lanes["staging"], laneOf, func() time.Time {
		op = switched(b, d, func(ctx context.Context) (*api.Operation, error) {
			return d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
		}, false)
		return time.Now()
	})
	b.Logf("slotd swap of %d instances: %s; %s", sbsScaleN, slotdSwap, phaseTimes(op))
	for _, p := range op.Phases {
		if p.Message != "" {
			b.Logf("  %s: %s", p.Name, p.Message)
		}
	}
	nomadPromote := measure(b, stack, nj.host, "v1", "v2", versionOf, func() time.Time {
		return nj.rollout(func() uint64 { return nj.register("v2") }, nil)
	})
	b.Logf("nomad canary = %d + promote: %s", sbsScaleN, nomadPromote)
	b.StopTimer()

	table := sideBySideTable([]comparison{{
		fmt.Sprintf("new version at %d instances (slotd swap, max_parallel = 1 / Nomad canary = %d + promote)", sbsScaleN, sbsScaleN),
		slotdSwap, nomadPromote,
	}}, nil, nil)
	require.NoError(b, os.MkdirAll(filepath.Dir(out), 0o755))
	require.NoError(b, os.WriteFile(out, []byte(table), 0o644))
	fmt.Fprintf(os.Stderr, "\n%s\nwritten to %s\n", table, out)
	b.ReportMetric(float64(slotdSwap.operation.Milliseconds()), "slotd-swap-ms")
	b.ReportMetric(float64(nomadPromote.operation.Milliseconds()), "nomad-promote-ms")
	b.ReportMetric(float64(slotdSwap.failed), "slotd-non200")
	b.ReportMetric(float64(nomadPromote.failed), "nomad-non200")
}

// settleNow ends the hold of the site's running swap and returns once its lane settled.
func settleNow(b *testing.B, d *daemon, site string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sbsMaxOp)
	defer cancel()
	op, err := d.client.Settle(ctx, site)
	require.NoError(b, err, "settle %s", site)
	op, err = d.client.Follow(ctx, op, func(o *api.Operation) bool {
		p := o.Phase(api.PhaseSettle)
		ended := p == nil || p.State == api.PhaseSucceeded || p.State == api.PhaseFailed
		return api.Terminal(o.State) || ended && o.State != api.StateSettling // back to its monitor
	}, nil)
	require.NoError(b, err, "follow %s", op.ID)
	p := op.Phase(api.PhaseSettle)
	require.True(b, p != nil && p.State == api.PhaseSucceeded, "%s %s did not settle: %s %s", op.Kind, op.ID, op.State, op.Error)
}

// switchedAt starts a swap or rollback through start and returns when it has switched (its
// monitor and hold go on); instant says whether it must have gone straight to the switch.
func switchedAt(b *testing.B, d *daemon, start func(context.Context) (*api.Operation, error), instant bool) time.Time {
	b.Helper()
	switched(b, d, start, instant)
	return time.Now()
}

// switched is switchedAt's operation, as it was once it had switched.
func switched(b *testing.B, d *daemon, start func(context.Context) (*api.Operation, error), instant bool) *api.Operation {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sbsMaxOp)
	defer cancel()
	op, err := start(ctx)
	require.NoError(b, err)
	op, err = d.client.Follow(ctx, op, func(o *api.Operation) bool {
		return o.Switched && o.State != api.StateSwitching || api.Terminal(o.State)
	}, nil)
	require.NoError(b, err, "follow %s", op.ID)
	require.True(b, op.Switched, "%s %s did not switch: %s %s", op.Kind, op.ID, op.State, op.Error)
	require.Equal(b, instant, op.Instant, "%s %s: instant (switch only)", op.Kind, op.ID)
	return op
}

// laneOf and versionOf tell which version answered: a slotd lane is its Nomad job, a Nomad-native
// version is the app's APP_VERSION.
func laneOf(a appAnswer) string    { return a.Lane }
func versionOf(a appAnswer) string { return a.Version }

// result is what one measured operation did to the requests of the load.
type result struct {
	requests, failed int
	toAllNew         time.Duration // from the call to the last answer from the old version
	cutover          time.Duration // from the first answer from the new version to the last from the old
	mixed            int           // answers, from either version, inside the cutover
	operation        time.Duration // from the call to the operation's end
	firstNew         time.Time
	lastOld          time.Time
}

func (r result) String() string {
	return fmt.Sprintf("%d requests, %d not 200, call → last old answer %s, cutover %s (%d answers mixed), operation %s",
		r.requests, r.failed, r.toAllNew.Round(time.Millisecond), r.cutover.Round(time.Millisecond), r.mixed,
		r.operation.Round(time.Millisecond))
}

// measure runs op (which returns when the operation ended) under the load on host, waits until
// every answer comes from newV, and sums up the answers: which(answer) names the version.
func measure(b *testing.B, stack *Stack, host, oldV, newV string, which func(appAnswer) string, op func() time.Time) result {
	b.Helper()
	smp := startSampler(b, stack, host, sbsClients, sbsMaxOp+sbsConverge+sbsTail)
	time.Sleep(sbsTail) // the load runs on the old version first
	called := time.Now()
	ended := op()
	waitAnswers(b, stack, host, sbsConverge, "version "+newV, func(a appAnswer) bool { return which(a) == newV })
	time.Sleep(sbsTail)
	samples := smp.stop()
	require.False(b, smp.capped.Load(), "the load ran out of its bounds before %s → %s ended", oldV, newV)

	r := result{requests: len(samples), operation: ended.Sub(called)}
	var firstNew time.Time
	for _, s := range samples {
		switch {
		case s.err != nil || s.status != 200:
			r.failed++
		case which(s.ans) == newV && firstNew.IsZero():
			firstNew = s.at
		case which(s.ans) == oldV:
			r.lastOld = s.at
		}
	}
	require.False(b, firstNew.IsZero(), "no answer from %s on %s", newV, host)
	r.firstNew = firstNew
	require.False(b, r.lastOld.IsZero(), "no answer from %s on %s", oldV, host)
	r.toAllNew = r.lastOld.Sub(called)
	r.cutover = max(0, r.lastOld.Sub(firstNew))
	for _, s := range samples {
		if s.err == nil && s.status == 200 && !s.at.Before(firstNew) && !s.at.After(r.lastOld) {
			r.mixed++
		}
	}
	return r
}

// nativeJob is the test app as a plain Nomad job, not managed by slotd, with Nomad's own
// blue/green: canary = count = max_parallel, no auto-promote, routed by Fabio on host.
type nativeJob struct {
	b     *testing.B
	stack *Stack
	id    string
	host  string
	count int
	vars  map[string]string // further job variables (resources)
	first uint64            // the job version that runs v1
	app   int               // the app version of the job's latest registration
}

// startNativeJob registers v1 with count instances and the job variables vars, and waits until
// Fabio sends every request to it. The job is purged when the benchmark ends, however it ends.
func startNativeJob(b *testing.B, stack *Stack, count int, vars map[string]string) *nativeJob {
	b.Helper()
	suffix := Suffix()
	nj := &nativeJob{b: b, stack: stack, id: "native-" + suffix, host: "native-" + suffix + ".test", count: count, vars: vars}
	b.Cleanup(func() {
		if _, _, err := stack.Nomad.Jobs().Deregister(nj.id, true, nil); err != nil {
			b.Logf("purge job %s: %v", nj.id, err)
		}
	})
	nj.first = nj.register("v1")
	nj.waitDeployment(nj.first, func(d *nomadapi.Deployment) bool { return d.Status == nomadapi.DeploymentStatusSuccessful })
	waitAnswers(b, stack, nj.host, sbsConverge, "v1", func(a appAnswer) bool { return a.Version == "v1" })
	return nj
}

// register registers the job with the app at version appVersion ("v<n>") and returns the job
// version Nomad gave it.
func (nj *nativeJob) register(appVersion string) uint64 {
	nj.b.Helper()
	n, err := strconv.Atoi(strings.TrimPrefix(appVersion, "v"))
	require.NoError(nj.b, err, "app version %q", appVersion)
	vars := map[string]string{"service": nj.id, "count": strconv.Itoa(nj.count), "app_version": appVersion}
	maps.Copy(vars, nj.vars)
	job := nj.stack.TestAppJob(nj.b, nj.id, vars)
	tg := job.TaskGroups[0]
	tg.Services[0].Tags = append(tg.Services[0].Tags, "urlprefix-"+nj.host+"/")
	tg.Update.Canary = new(nj.count)
	tg.Update.MaxParallel = new(nj.count)
	tg.Update.AutoPromote = new(false)
	_, _, err = nj.stack.Nomad.Jobs().Register(job, nil)
	require.NoError(nj.b, err, "register %s %s", nj.id, appVersion)
	nj.app = n
	return nj.liveVersion()
}

func (nj *nativeJob) liveVersion() uint64 {
	nj.b.Helper()
	live, _, err := nj.stack.Nomad.Jobs().Info(nj.id, nil)
	require.NoError(nj.b, err, "read %s", nj.id)
	return *live.Version
}

// rollout runs start (a register or a revert that returns the job version it made), waits for
// the canaries to be healthy, promotes them, and returns when the deployment succeeded. When
// promoted is set, it gets the time of the promote call.
func (nj *nativeJob) rollout(start func() uint64, promoted *time.Time) time.Time {
	nj.b.Helper()
	version := start()
	dep := nj.waitDeployment(version, func(d *nomadapi.Deployment) bool {
		tg := d.TaskGroups["app"]
		return tg != nil && tg.DesiredCanaries > 0 && tg.HealthyAllocs >= tg.DesiredCanaries
	})
	if promoted != nil {
		*promoted = time.Now()
	}
	_, _, err := nj.stack.Nomad.Deployments().PromoteAll(dep.ID, nil)
	require.NoError(nj.b, err, "promote deployment %s of %s", dep.ID, nj.id)
	nj.waitDeployment(version, func(d *nomadapi.Deployment) bool { return d.Status == nomadapi.DeploymentStatusSuccessful })
	return time.Now()
}

// waitDeployment waits until the latest deployment of the job is of version and satisfies ok;
// a failed or cancelled one fails the benchmark.
func (nj *nativeJob) waitDeployment(version uint64, ok func(*nomadapi.Deployment) bool) *nomadapi.Deployment {
	nj.b.Helper()
	var last *nomadapi.Deployment
	WaitFor(nj.b, sbsMaxOp, fmt.Sprintf("the deployment of %s version %d", nj.id, version), func() (bool, string) {
		d, _, err := nj.stack.Nomad.Jobs().LatestDeployment(nj.id, nil)
		switch {
		case err != nil:
			return false, err.Error()
		case d == nil || d.JobVersion != version:
			return false, "no deployment of that version yet"
		case d.Status == nomadapi.DeploymentStatusFailed || d.Status == nomadapi.DeploymentStatusCancelled:
			nj.b.Fatalf("the deployment of %s version %d: %s (%s)", nj.id, version, d.Status, d.StatusDescription)
		}
		last = d
		return ok(d), fmt.Sprintf("%s (%s) %+v", d.Status, d.StatusDescription, d.TaskGroups["app"])
	})
	return last
}

// comparison is one slotd operation next to Nomad's nearest equivalent.
type comparison struct {
	title        string
	slotd, nomad result
}

// sideBySideTable renders the figures as one Markdown table.
func sideBySideTable(cs []comparison, slotdSwitch, nomadSwitch []time.Duration) string {
	var t strings.Builder
	fmt.Fprintf(&t, "| measure | slotd | Nomad | slotd / Nomad |\n|---|---|---|---|\n")
	row := func(what string, s, n float64, format func(float64) string) {
		ratio := "—"
		if n != 0 {
			ratio = fmt.Sprintf("%.3g", s/n)
		}
		fmt.Fprintf(&t, "| %s | %s | %s | %s |\n", what, format(s), format(n), ratio)
	}
	count := func(v float64) string { return strconv.Itoa(int(v)) }
	dur := func(v float64) string { return fmtDuration(time.Duration(v)) }
	for _, c := range cs {
		s, n := c.slotd, c.nomad
		row(c.title+": requests", float64(s.requests), float64(n.requests), count)
		row(c.title+": non-200", float64(s.failed), float64(n.failed), count)
		row(c.title+": call → last answer from the old version", float64(s.toAllNew), float64(n.toAllNew), dur)
		row(c.title+": cutover (first answer from the new version → last from the old)", float64(s.cutover), float64(n.cutover), dur)
		row(c.title+": mixed window (answers inside the cutover)", float64(s.mixed), float64(n.mixed), count)
		row(c.title+": call → switched (slotd; its monitor goes on) / deployment done (Nomad)", float64(s.operation), float64(n.operation), dur)
	}
	for _, p := range []int{50, 90, 99} {
		if len(slotdSwitch) == 0 && len(nomadSwitch) == 0 {
			break
		}
		row(fmt.Sprintf("switch as the router sees it (slotd: %d swaps, from the switch phase's start; Nomad: %d promotes, from its canaries' first answer; to the last answer from the old version): p%d", len(slotdSwitch), len(nomadSwitch), p),
			float64(percentile(slotdSwitch, p)), float64(percentile(nomadSwitch, p)), dur)
	}
	return t.String()
}

// fmtDuration shows a duration in ms below 10 s, in seconds with one decimal above.
func fmtDuration(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}
