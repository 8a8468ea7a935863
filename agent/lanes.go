package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/failpoint"
	"github.com/slotd/slotd/jobspec"
)

// Service meta that slotd puts on the site's service, so the Consul UI (and slotd) can tell
// which lane an instance belongs to. It never changes for a lane, so it never causes a restart.
const (
	metaSite = "slotd_site"
	metaLane = "slotd_lane"
)

func jobID(site, lane string) string { return site + "-" + lane }

// laneOps is what operations need of Nomad and Consul to move lanes: the seam where unit
// tests of the swap, its resume and its restore paths put a fake.
type laneOps interface {
	ensureLane(ctx context.Context, site *config.Site, lane string, src source, want laneState, g gate) (rollout, error)
	submission(ctx context.Context, site *config.Site, lane string, version uint64, bound bool) (source, error)
	laneEntries(ctx context.Context, site *config.Site, lane string, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error)
	// laneCounts is the count of each task group the lane's job runs in Nomad (nil: no job)
	// and the slot it runs as.
	laneCounts(ctx context.Context, site *config.Site, lane string) (map[string]int, string, error)
	// planLane says whether lane in state want would place, touching nothing (pre-flight), and
	// what registering it would do to the lane's running allocations.
	planLane(ctx context.Context, site *config.Site, lane string, src source, want laneState) (jobspec.Change, error)
}

var _ laneOps = (*Agent)(nil)

// source is what a lane's app is made of: the jobspec text and its variables. Nomad keeps it
// with every job version as the job's submission, so a lane can be re-rendered with other tags
// or settings without picking up a jobspec file that changed on disk since it was deployed.
type source struct {
	Source string
	Vars   map[string]string
}

// submission returns the source of a lane's bound job version. Only when Nomad has none (a
// lane never registered, or a job purged by hand) is it the site's jobspec file with the
// declared variables; any other error is an error, never a reason to render something else.
func (a *Agent) submission(ctx context.Context, site *config.Site, lane string, version uint64, bound bool) (source, error) {
	if bound {
		id := jobID(site.Name, lane)
		cctx, cancel := callCtx(ctx)
		sub, _, err := a.nomad.Jobs().Submission(id, int(version), (&nomadapi.QueryOptions{}).WithContext(cctx))
		cancel()
		switch {
		case err == nil && sub != nil && sub.Source != "":
			return source{Source: sub.Source, Vars: sub.VariableFlags}, nil
		case err != nil && !isNotFound(err):
			return source{}, fmt.Errorf("read submission of %s version %d: %w", id, version, err)
		}
		a.logger.Warn("nomad has no source of the bound job version; using the jobspec file", "job", id, "version", version)
	}
	return fileSource(site, nil)
}

// fileSource reads the site's jobspec from disk with the declared variables overlaid by vars.
func fileSource(site *config.Site, vars map[string]string) (source, error) {
	b, err := os.ReadFile(site.Job)
	if err != nil {
		return source{}, fmt.Errorf("read jobspec of site %s: %w", site.Name, err)
	}
	all := map[string]string{}
	for k, v := range site.Vars {
		all[k] = v
	}
	for k, v := range vars {
		all[k] = v
	}
	return source{Source: string(b), Vars: all}, nil
}

// isNotFound reports whether Nomad answered 404 (no such job, version or submission).
func isNotFound(err error) bool {
	var e nomadapi.UnexpectedResponseError
	return errors.As(err, &e) && e.StatusCode() == http.StatusNotFound
}

// parseCacheSize bounds the jobspec parses kept: a few per lane and version in use.
const parseCacheSize = 256

// render parses src through Nomad and renders it as lane with state want.
func (a *Agent) render(site *config.Site, lane string, src source, want laneState) (*nomadapi.Job, error) {
	base, err := jobspec.Parse(a.parser, site.Job, src.Source, src.Vars)
	if err != nil {
		return nil, err
	}
	if err := jobspec.CheckLane(base, site.Job, site.Service); err != nil {
		return nil, err
	}
	job := jobspec.Render(base, jobspec.Lane{
		Site: site.Name, Lane: lane, Slot: want.Slot, Service: site.Service,
		SlotTags: want.Tags, Env: want.Env,
	})
	if err := applyScale(job, site.Job, want); err != nil {
		return nil, err
	}
	for _, g := range job.TaskGroups {
		for _, svc := range serviceBlocks(g) {
			if svc.Name != site.Service {
				continue
			}
			if svc.Meta == nil {
				svc.Meta = map[string]string{}
			}
			svc.Meta[metaSite] = site.Name
			svc.Meta[metaLane] = lane
		}
		drainOnStop(g, site.Service)
	}
	return job, nil
}

// drainOnStop gives every instance of the site's service at least routerDrain between leaving
// Consul and being told to stop, so a rolling restart under the job's update block (a deploy,
// a settings rollout, convergence) never stops an instance that routers still send requests
// to. A longer shutdown_delay in the jobspec is kept.
func drainOnStop(g *nomadapi.TaskGroup, service string) {
	for _, svc := range g.Services {
		if svc.Name == service && (g.ShutdownDelay == nil || *g.ShutdownDelay < routerDrain) {
			d := routerDrain
			g.ShutdownDelay = &d
		}
	}
	for _, t := range g.Tasks {
		for _, svc := range t.Services {
			if svc.Name == service && t.ShutdownDelay < routerDrain {
				t.ShutdownDelay = routerDrain
			}
		}
	}
}

func serviceBlocks(g *nomadapi.TaskGroup) []*nomadapi.Service {
	svcs := append([]*nomadapi.Service(nil), g.Services...)
	for _, t := range g.Tasks {
		svcs = append(svcs, t.Services...)
	}
	return svcs
}

// instanceCount is how many instances of the site's service the job runs.
func instanceCount(job *nomadapi.Job, service string) int {
	n := 0
	for _, g := range job.TaskGroups {
		for _, svc := range serviceBlocks(g) {
			if svc.Name == service {
				c := 1
				if g.Count != nil {
					c = *g.Count
				}
				n += c
				break
			}
		}
	}
	return n
}

// rollout is the outcome of ensureLane.
type rollout struct {
	Version uint64
	Change  jobspec.Change
	// Registered is how long ensureLane took until Nomad took the new version (render, plan,
	// register): the rest of its time was the wait for Nomad's deployment and Consul.
	Registered time.Duration
}

// gate is what ensureLane waits for after it registered a lane.
type gate int

const (
	// gateHealthy: Nomad's deployment succeeded (for a restart) and Consul shows every instance
	// with the wanted tags and passing checks. For a lane that takes on routes or traffic.
	gateHealthy gate = iota
	// gateTags: Consul shows every instance with the wanted tags, whatever their health. For a
	// lane that leaves its routes, or gets them back, which may be the sick lane a rollback moves.
	gateTags
	// gateNone: nothing after Nomad took the new version. For a lane without routes that
	// fails its checks anyway, whose rollout Nomad cannot finish (a rollback moves it away).
	gateNone
)

// ensureLane makes lane run src in state want. It registers a new job version only when Nomad's
// plan shows a difference, check-and-set on the job's modify index (a job that is not there
// must still not be there), then waits as g says.
func (a *Agent) ensureLane(ctx context.Context, site *config.Site, lane string, src source, want laneState, g gate) (rollout, error) {
	id := jobID(site.Name, lane)
	start := time.Now()
	job, err := a.render(site, lane, src, want)
	if err != nil {
		return rollout{}, err
	}
	cctx, cancel := callCtx(ctx)
	cur, _, err := a.nomad.Jobs().Info(id, (&nomadapi.QueryOptions{}).WithContext(cctx))
	cancel()
	if err != nil && !isNotFound(err) {
		return rollout{}, fmt.Errorf("read job %s: %w", id, err)
	}
	opts := &nomadapi.RegisterOptions{
		Submission:   &nomadapi.JobSubmission{Source: src.Source, Format: "hcl2", VariableFlags: src.Vars},
		EnforceIndex: true,
	}
	if cur != nil {
		opts.ModifyIndex = *cur.JobModifyIndex
	}
	change := jobspec.Restart
	if cur != nil && (cur.Stop == nil || !*cur.Stop) {
		cctx, cancel := callCtx(ctx)
		plan, _, err := a.nomad.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(cctx))
		cancel()
		if err != nil {
			return rollout{}, fmt.Errorf("plan job %s: %w", id, err)
		}
		change = classify(plan)
		if change == jobspec.NoChange {
			return rollout{Version: *cur.Version, Change: change}, a.waitInstances(ctx, site, lane, job, g)
		}
	}
	if err := failpoint.Inject(ctx, "lane.before-register"); err != nil {
		return rollout{}, err
	}
	a.logger.Debug("register lane", "site", site.Name, "lane", lane, "slot", want.Slot, "change", change.String(), "tags", strings.Join(want.Tags, ","))
	cctx, cancel = callCtx(ctx)
	resp, _, err := a.nomad.Jobs().RegisterOpts(job, opts, (&nomadapi.WriteOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return rollout{}, fmt.Errorf("register job %s: %w", id, err)
	}
	if err := failpoint.Inject(ctx, "lane.after-register"); err != nil {
		return rollout{}, err
	}
	version, err := a.registeredVersion(ctx, id, resp.JobModifyIndex)
	if err != nil {
		return rollout{}, err
	}
	ro := rollout{Version: version, Change: change, Registered: time.Since(start)}
	if g == gateNone {
		return ro, nil
	}
	if change == jobspec.Restart && g == gateHealthy {
		if err := a.waitDeployment(ctx, id, version); err != nil {
			return ro, err
		}
	}
	return ro, a.waitInstances(ctx, site, lane, job, g)
}

// registeredVersion is the version a register created: the job's version as of its modify
// index, read back from the job's versions.
func (a *Agent) registeredVersion(ctx context.Context, id string, modifyIndex uint64) (uint64, error) {
	cctx, cancel := callCtx(ctx)
	defer cancel()
	versions, _, _, err := a.nomad.Jobs().Versions(id, false, (&nomadapi.QueryOptions{}).WithContext(cctx))
	if err != nil {
		return 0, fmt.Errorf("read job %s after register: %w", id, err)
	}
	for _, v := range versions {
		if v.JobModifyIndex != nil && *v.JobModifyIndex == modifyIndex && v.Version != nil {
			return *v.Version, nil
		}
	}
	if len(versions) > 0 && versions[0].Version != nil {
		return *versions[0].Version, nil
	}
	return 0, fmt.Errorf("job %s has no version after register", id)
}

// callCtx bounds one call that does not block on purpose.
func callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, store.CallTimeout)
}

// classify reads Nomad's plan: nothing to do, an in-place update, or allocations replaced.
func classify(plan *nomadapi.JobPlanResponse) jobspec.Change {
	if plan.Diff != nil && plan.Diff.Type == "None" {
		return jobspec.NoChange
	}
	if plan.Annotations != nil {
		restart := false
		for _, u := range plan.Annotations.DesiredTGUpdates {
			if u.DestructiveUpdate > 0 || u.Place > 0 || u.Canary > 0 {
				restart = true
			}
		}
		if !restart {
			return jobspec.TagsOnly
		}
	}
	return jobspec.Restart
}

// waitDeployment waits until Nomad's deployment of the job version succeeds, with blocking queries.
func (a *Agent) waitDeployment(ctx context.Context, id string, version uint64) error {
	seen := "no deployment yet"
	var failed error
	err := a.follow.Follow(ctx, query.Opts{Backend: "nomad", Wait: query.BlockingWait, OnError: func(err error) { seen = err.Error() }},
		func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
			deps, meta, err := a.nomad.Jobs().Deployments(id, false, (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx))
			if err != nil {
				return 0, err
			}
			for _, d := range deps {
				if d.JobVersion != version {
					continue
				}
				seen = fmt.Sprintf("deployment %s %s: %s", short(d.ID), d.Status, d.StatusDescription)
				switch d.Status {
				case "successful":
					failed = query.ErrDone
				case "failed", "cancelled":
					failed = fmt.Errorf("nomad deployment of %s version %d %s: %s%s", id, version, d.Status, d.StatusDescription, a.allocFailures(id, version))
				}
			}
			return meta.LastIndex, nil
		},
		func(uint64) bool { return failed != nil })
	switch {
	case err != nil:
		return fmt.Errorf("deployment of %s version %d: %w (last seen: %s)", id, version, err, seen)
	case errors.Is(failed, query.ErrDone):
		return nil
	default:
		return failed
	}
}

// allocFailures says why the allocations of a job version are unhealthy, from their task events.
func (a *Agent) allocFailures(id string, version uint64) string {
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	stubs, _, err := a.nomad.Jobs().Allocations(id, true, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return ""
	}
	var reasons []string
	for _, s := range stubs {
		if s.JobVersion != version {
			continue
		}
		healthy := s.DeploymentStatus != nil && s.DeploymentStatus.Healthy != nil && *s.DeploymentStatus.Healthy
		if healthy {
			continue
		}
		for task, ts := range s.TaskStates {
			if len(ts.Events) == 0 {
				continue
			}
			ev := ts.Events[len(ts.Events)-1]
			msg := ev.DisplayMessage
			if msg == "" {
				msg = ev.Type
			}
			reasons = append(reasons, fmt.Sprintf("alloc %s task %s: %s", short(s.ID), task, msg))
		}
	}
	if len(reasons) == 0 {
		return ""
	}
	sort.Strings(reasons)
	if len(reasons) > 4 {
		reasons = reasons[:4]
	}
	return " (" + strings.Join(reasons, "; ") + ")"
}

// waitInstances waits until Consul shows exactly the lane's instances of job, each with the
// job's tags for the service, and with gateHealthy every check passing.
func (a *Agent) waitInstances(ctx context.Context, site *config.Site, lane string, job *nomadapi.Job, g gate) error {
	want := jobspec.ServiceTags(job, site.Service)
	count := instanceCount(job, site.Service)
	seen := "no answer from consul yet"
	ready := false
	err := a.follow.Follow(ctx, query.Opts{Backend: "consul", Wait: query.BlockingWait, OnError: func(err error) { seen = err.Error() }},
		func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
			entries, idx, err := a.laneEntries(ctx, site, lane, index, wait)
			if err == nil {
				ready, seen = instancesReady(entries, want, count, g == gateHealthy)
			}
			return idx, err
		},
		func(uint64) bool { return ready })
	if err != nil {
		return fmt.Errorf("wait for %d passing instances of %s with tags [%s]: %w (last seen: %s)",
			count, jobID(site.Name, lane), strings.Join(want, ","), err, seen)
	}
	return nil
}

// instancesReady is the pure check behind waitInstances.
func instancesReady(entries []*consulapi.ServiceEntry, wantTags []string, count int, healthy bool) (bool, string) {
	passing, tagged := 0, 0
	for _, e := range entries {
		if sameSet(e.Service.Tags, wantTags) {
			tagged++
		}
		if e.Checks.AggregatedStatus() == consulapi.HealthPassing {
			passing++
		}
	}
	desc := fmt.Sprintf("%d instances in consul, %d passing, %d with the wanted tags, want %d", len(entries), passing, tagged, count)
	return len(entries) == count && (passing == count || !healthy) && tagged == count, desc
}

// laneEntries reads the Consul instances of a lane, blocking on index when it is not zero.
func (a *Agent) laneEntries(ctx context.Context, site *config.Site, lane string, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	all, idx, err := a.siteEntries(ctx, site, index, wait)
	if err != nil {
		return nil, 0, err
	}
	var out []*consulapi.ServiceEntry
	for _, e := range all {
		if e.Service.Meta[metaLane] == lane {
			out = append(out, e)
		}
	}
	return out, idx, nil
}

// siteEntries reads every Consul instance of the site's service that slotd manages.
func (a *Agent) siteEntries(ctx context.Context, site *config.Site, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	if index == 0 {
		var cancel context.CancelFunc
		ctx, cancel = callCtx(ctx)
		defer cancel()
	}
	q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	entries, meta, err := a.consul.Health().Service(site.Service, "", false, q)
	if err != nil {
		return nil, 0, fmt.Errorf("read consul health of service %s: %w", site.Service, err)
	}
	var out []*consulapi.ServiceEntry
	for _, e := range entries {
		if e.Service.Meta[metaSite] == site.Name {
			out = append(out, e)
		}
	}
	return out, meta.LastIndex, nil
}

func sameSet(a, b []string) bool {
	x := slices.Clone(a)
	y := slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
