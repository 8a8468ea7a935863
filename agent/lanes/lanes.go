// Package lanes moves a site's lanes in Nomad and reads them in Consul: it renders a lane's job
// (slotd's meta, scale and drain rules folded into the jobspec), registers it check-and-set and
// waits for Nomad's deployment and Consul's checks.
package lanes

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/failpoint"
	"github.com/slotd/slotd/jobspec"
)

// Lanes moves lanes through Nomad and reads their instances from Consul.
type Lanes struct {
	nomad  *nomadapi.Client
	consul *consulapi.Client
	// parser parses jobspecs through Nomad, remembering the answers (Render).
	parser jobspec.Parser
	follow *query.Follower
	logger hclog.Logger
}

// New returns the lanes of the sites whose jobs run in nomad and whose instances consul shows.
func New(nomad *nomadapi.Client, consul *consulapi.Client, follow *query.Follower, logger hclog.Logger) *Lanes {
	return &Lanes{
		nomad: nomad, consul: consul, follow: follow, logger: logger,
		parser: &jobspec.CachingParser{P: nomad.Jobs(), Max: parseCacheSize},
	}
}

// laneJob reads a lane's job as Nomad has it, or nil when there is none (or it is stopped).
func (l *Lanes) Job(ctx context.Context, cfg *config.Site, lane string) (*nomadapi.Job, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	job, _, err := l.nomad.Jobs().Info(jobspec.JobID(cfg.Name, lane), (&nomadapi.QueryOptions{}).WithContext(ctx))
	switch {
	case isNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read job %s: %w", jobspec.JobID(cfg.Name, lane), err)
	case job.Stop != nil && *job.Stop:
		return nil, nil
	}
	return job, nil
}

// jobVersion reads one version of a job.
func (l *Lanes) JobVersion(ctx context.Context, id string, version uint64) (*nomadapi.Job, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	versions, _, _, err := l.nomad.Jobs().Versions(id, false, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read versions of job %s: %w", id, err)
	}
	for _, v := range versions {
		if v.Version != nil && *v.Version == version {
			return v, nil
		}
	}
	return nil, fmt.Errorf("job %s has no version %d any more", id, version)
}

// LaneEnv is the environment a lane gives the tasks of the group that registers the site's
// service (every task of it gets the same settings).
func LaneEnv(job *nomadapi.Job, service string) map[string]string {
	for _, g := range job.TaskGroups {
		for _, svc := range serviceBlocks(g) {
			if svc.Name == service && len(g.Tasks) > 0 {
				return maps.Clone(g.Tasks[0].Env)
			}
		}
	}
	return map[string]string{}
}

// differs reports whether lane runs something else than src in state want, by Nomad's own plan
// of the job slotd would register.
func (l *Lanes) Differs(ctx context.Context, cfg *config.Site, lane string, src Source, want State) (bool, error) {
	job, err := l.Render(cfg, lane, src, want)
	if err != nil {
		return false, err
	}
	cctx, cancel := callCtx(ctx)
	plan, _, err := l.nomad.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return false, fmt.Errorf("plan lane %s: %w", jobspec.JobID(cfg.Name, lane), err)
	}
	return Classify(plan) != jobspec.NoChange, nil
}

// check parses src and checks that it can run as a lane of the site, touching nothing.
func (l *Lanes) Check(cfg *config.Site, src Source) error {
	base, err := jobspec.Parse(l.parser, cfg.Job, src.Jobspec, src.Vars)
	if err != nil {
		return err
	}
	return jobspec.CheckLane(base, cfg.Job, cfg.Service)
}

// MetaScale is the lane job's meta that shows the counts of the slot it serves ("app=3"), or
// "live": it changes only together with the counts, so it never restarts a lane on its own.
const MetaScale = "slotd_scale"

// laneCounts is the count of every task group of a lane's job in Nomad (nil when it has none)
// and the slot the job runs as.
func (l *Lanes) Counts(ctx context.Context, site *config.Site, lane string) (map[string]int, string, error) {
	job, err := l.Job(ctx, site, lane)
	if err != nil || job == nil {
		return nil, "", err
	}
	return GroupCounts(job), LaneEnv(job, site.Service)[jobspec.EnvSlot], nil
}

// GroupCounts is the count of every task group of job (1 where the job leaves it out).
func GroupCounts(job *nomadapi.Job) map[string]int {
	out := make(map[string]int, len(job.TaskGroups))
	for _, g := range job.TaskGroups {
		if g.Name == nil {
			continue
		}
		n := 1
		if g.Count != nil {
			n = *g.Count
		}
		out[*g.Name] = n
	}
	return out
}

// FormatScale writes counts as "app=3,worker=1", in group order.
func FormatScale(counts map[string]int) string {
	groups := make([]string, 0, len(counts))
	for g := range counts {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	parts := make([]string, len(groups))
	for i, g := range groups {
		parts[i] = g + "=" + strconv.Itoa(counts[g])
	}
	return strings.Join(parts, ",")
}

// ApplyScale gives job the counts of want and the meta that shows them. A group that want
// names but the job does not have is an error that says which: the scale or the jobspec is
// wrong, and rendering the lane without it would change its size silently.
func ApplyScale(job *nomadapi.Job, jobFile string, want State) error {
	if want.Scale == nil {
		// No counts known yet (a slot's first lane): the jobspec's own, which the slot keeps
		// from now on; the meta says so from the first version, so keeping them restarts nothing.
		scaleMeta(job, want)
		return nil
	}
	byName := map[string]*nomadapi.TaskGroup{}
	var names []string
	for _, g := range job.TaskGroups {
		if g.Name != nil {
			byName[*g.Name] = g
			names = append(names, *g.Name)
		}
	}
	var missing []string
	for group, n := range want.Scale {
		g := byName[group]
		if g == nil {
			missing = append(missing, group)
			continue
		}
		g.Count = &n
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("the scale of slot %s names task group %s, which the job in %s does not have (its groups: %s): change the slot's scale",
			want.Slot, strings.Join(missing, ", "), jobFile, strings.Join(names, ", "))
	}
	scaleMeta(job, want)
	return nil
}

// scaleMeta shows the counts of the slot a lane serves in the job's meta.
func scaleMeta(job *nomadapi.Job, want State) {
	if job.Meta == nil {
		job.Meta = map[string]string{}
	}
	if want.Live {
		job.Meta[MetaScale] = "live"
	} else {
		job.Meta[MetaScale] = FormatScale(GroupCounts(job))
	}
}

// planLane asks Nomad's scheduler whether lane in state want would place, touching nothing:
// the pre-flight of a swap and a deploy. An error says which groups would not place and why;
// the change says what registering it would do to the running allocations.
func (l *Lanes) Plan(ctx context.Context, site *config.Site, lane string, src Source, want State) (jobspec.Change, error) {
	job, err := l.Render(site, lane, src, want)
	if err != nil {
		return jobspec.Restart, err
	}
	cctx, cancel := callCtx(ctx)
	plan, _, err := l.nomad.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return jobspec.Restart, fmt.Errorf("plan job %s: %w", jobspec.JobID(site.Name, lane), err)
	}
	return Classify(plan), PlacementError(jobspec.JobID(site.Name, lane), want, plan)
}

// PlacementError reads the allocations a plan could not place, nil when it places all.
func PlacementError(id string, want State, plan *nomadapi.JobPlanResponse) error {
	if plan == nil || len(plan.FailedTGAllocs) == 0 {
		return nil
	}
	groups := make([]string, 0, len(plan.FailedTGAllocs))
	for g := range plan.FailedTGAllocs {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var parts []string
	for _, g := range groups {
		parts = append(parts, failedGroup(g, want.Scale[g], plan.FailedTGAllocs[g]))
	}
	at := ""
	if want.Scale != nil {
		at = " at scale " + FormatScale(want.Scale)
	}
	return fmt.Errorf("nomad cannot place %s as %s%s: %s", id, want.Slot, at, strings.Join(parts, "; "))
}

// failedGroup says why one task group would not place, from Nomad's allocation metric, the
// way `nomad job plan` does: how many (of wanted, when known), and which nodes were filtered or
// exhausted by what.
func failedGroup(group string, wanted int, m *nomadapi.AllocationMetric) string {
	if m == nil {
		return fmt.Sprintf("task group %q: allocations would not place", group)
	}
	failed := m.CoalescedFailures + 1
	var b strings.Builder
	fmt.Fprintf(&b, "task group %q: %d allocation", group, failed)
	if failed != 1 {
		b.WriteString("s")
	}
	if wanted >= failed {
		fmt.Fprintf(&b, " of %d", wanted)
	}
	fmt.Fprintf(&b, " would not place: %d node", m.NodesEvaluated)
	if m.NodesEvaluated != 1 {
		b.WriteString("s")
	}
	fmt.Fprintf(&b, " evaluated, %d filtered, %d exhausted", m.NodesFiltered, m.NodesExhausted)
	if len(m.DimensionExhausted) > 0 {
		fmt.Fprintf(&b, " (exhausted %s)", countsText(m.DimensionExhausted))
	}
	if len(m.ConstraintFiltered) > 0 {
		fmt.Fprintf(&b, " (filtered by %s)", countsText(m.ConstraintFiltered))
	}
	if len(m.ClassFiltered) > 0 {
		fmt.Fprintf(&b, " (filtered class %s)", countsText(m.ClassFiltered))
	}
	if len(m.QuotaExhausted) > 0 {
		fmt.Fprintf(&b, " (quota exhausted: %s)", strings.Join(m.QuotaExhausted, ", "))
	}
	if m.NodesEvaluated == 0 && m.NodesInPool == 0 {
		b.WriteString(" (no node in the node pool)")
	}
	return b.String()
}

// countsText writes a metric's reasons as `"memory" on 1 node, "cpu" on 2 nodes`.
func countsText(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		unit := "nodes"
		if m[k] == 1 {
			unit = "node"
		}
		parts[i] = fmt.Sprintf("%q on %d %s", k, m[k], unit)
	}
	return strings.Join(parts, ", ")
}

// State is what a lane should run: which slot it believes it serves (SLOTD_SLOT), the
// routes it carries (slot tags) and the settings in its environment. Every phase of an operation
// is a move of one lane from one state to another.
type State struct {
	Slot string
	Tags []string
	Env  map[string]string
	// Scale is the count of each task group it names (nil: the jobspec's); Live says the
	// counts are a "live" slot's, which the lane's meta then shows as live.
	Scale map[string]int
	Live  bool
}

// Service meta that slotd puts on the site's service, so the Consul UI (and slotd) can tell
// which lane an instance belongs to. It never changes for a lane, so it never causes a restart.
const (
	MetaSite = "slotd_site"
	MetaLane = "slotd_lane"
)

// source is what a lane's app is made of: the jobspec text and its variables. Nomad keeps it
// with every job version as the job's submission, so a lane can be re-rendered with other tags
// or settings without picking up a jobspec file that changed on disk since it was deployed.
type Source struct {
	Jobspec string
	Vars    map[string]string
}

// submission returns the source of a lane's bound job version. Only when Nomad has none (a
// lane never registered, or a job purged by hand) is it the site's jobspec file with the
// declared variables; any other error is an error, never a reason to render something else.
func (l *Lanes) Submission(ctx context.Context, site *config.Site, lane string, version uint64, bound bool) (Source, error) {
	if bound {
		id := jobspec.JobID(site.Name, lane)
		cctx, cancel := callCtx(ctx)
		sub, _, err := l.nomad.Jobs().Submission(id, int(version), (&nomadapi.QueryOptions{}).WithContext(cctx))
		cancel()
		switch {
		case err == nil && sub != nil && sub.Source != "":
			return Source{Jobspec: sub.Source, Vars: sub.VariableFlags}, nil
		case err != nil && !isNotFound(err):
			return Source{}, fmt.Errorf("read submission of %s version %d: %w", id, version, err)
		}
		l.logger.Warn("nomad has no source of the bound job version; using the jobspec file", "job", id, "version", version)
	}
	return FileSource(site, nil)
}

// FileSource reads the site's jobspec from disk with the declared variables overlaid by vars.
func FileSource(site *config.Site, vars map[string]string) (Source, error) {
	b, err := os.ReadFile(site.Job)
	if err != nil {
		return Source{}, fmt.Errorf("read jobspec of site %s: %w", site.Name, err)
	}
	all := map[string]string{}
	for k, v := range site.Vars {
		all[k] = v
	}
	for k, v := range vars {
		all[k] = v
	}
	return Source{Jobspec: string(b), Vars: all}, nil
}

// isNotFound reports whether Nomad answered 404 (no such job, version or submission).
func isNotFound(err error) bool {
	var e nomadapi.UnexpectedResponseError
	return errors.As(err, &e) && e.StatusCode() == http.StatusNotFound
}

// parseCacheSize bounds the jobspec parses kept: a few per lane and version in use.
const parseCacheSize = 256

// render parses src through Nomad and renders it as lane with state want.
func (l *Lanes) Render(site *config.Site, lane string, src Source, want State) (*nomadapi.Job, error) {
	base, err := jobspec.Parse(l.parser, site.Job, src.Jobspec, src.Vars)
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
	if err := ApplyScale(job, site.Job, want); err != nil {
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
			svc.Meta[MetaSite] = site.Name
			svc.Meta[MetaLane] = lane
		}
		DrainOnStop(g, site.Service)
	}
	return job, nil
}

// DrainOnStop gives every instance of the site's service at least RouterDrain between leaving
// Consul and being told to stop, so a rolling restart under the job's update block (a deploy,
// a settings rollout, convergence) never stops an instance that routers still send requests
// to. A longer shutdown_delay in the jobspec is kept.
func DrainOnStop(g *nomadapi.TaskGroup, service string) {
	for _, svc := range g.Services {
		if svc.Name == service && (g.ShutdownDelay == nil || *g.ShutdownDelay < RouterDrain) {
			d := RouterDrain
			g.ShutdownDelay = &d
		}
	}
	for _, t := range g.Tasks {
		for _, svc := range t.Services {
			if svc.Name == service && t.ShutdownDelay < RouterDrain {
				t.ShutdownDelay = RouterDrain
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
func InstanceCount(job *nomadapi.Job, service string) int {
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

// Rollout is the outcome of Ensure.
type Rollout struct {
	Version uint64
	Change  jobspec.Change
	// Registered is how long ensureLane took until Nomad took the new version (render, plan,
	// register): the rest of its time was the wait for Nomad's deployment and Consul.
	Registered time.Duration
}

// Gate is what Ensure waits for after it registered a lane.
type Gate int

// ensureLane makes lane run src in state want. It registers a new job version only when Nomad's
// plan shows a difference, check-and-set on the job's modify index (a job that is not there
// must still not be there), then waits as g says.
func (l *Lanes) Ensure(ctx context.Context, site *config.Site, lane string, src Source, want State, g Gate) (Rollout, error) {
	id := jobspec.JobID(site.Name, lane)
	start := time.Now()
	job, err := l.Render(site, lane, src, want)
	if err != nil {
		return Rollout{}, err
	}
	cctx, cancel := callCtx(ctx)
	cur, _, err := l.nomad.Jobs().Info(id, (&nomadapi.QueryOptions{}).WithContext(cctx))
	cancel()
	if err != nil && !isNotFound(err) {
		return Rollout{}, fmt.Errorf("read job %s: %w", id, err)
	}
	opts := &nomadapi.RegisterOptions{
		Submission:   &nomadapi.JobSubmission{Source: src.Jobspec, Format: "hcl2", VariableFlags: src.Vars},
		EnforceIndex: true,
	}
	if cur != nil {
		opts.ModifyIndex = *cur.JobModifyIndex
	}
	change := jobspec.Restart
	if cur != nil && (cur.Stop == nil || !*cur.Stop) {
		cctx, cancel := callCtx(ctx)
		plan, _, err := l.nomad.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(cctx))
		cancel()
		if err != nil {
			return Rollout{}, fmt.Errorf("plan job %s: %w", id, err)
		}
		change = Classify(plan)
		if change == jobspec.NoChange {
			return Rollout{Version: *cur.Version, Change: change}, l.waitInstances(ctx, site, lane, job, g)
		}
	}
	if err := failpoint.Inject(ctx, "lane.before-register"); err != nil {
		return Rollout{}, err
	}
	l.logger.Debug("register lane", "site", site.Name, "lane", lane, "slot", want.Slot, "change", change.String(), "tags", strings.Join(want.Tags, ","))
	cctx, cancel = callCtx(ctx)
	resp, _, err := l.nomad.Jobs().RegisterOpts(job, opts, (&nomadapi.WriteOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return Rollout{}, fmt.Errorf("register job %s: %w", id, err)
	}
	if err := failpoint.Inject(ctx, "lane.after-register"); err != nil {
		return Rollout{}, err
	}
	version, err := l.registeredVersion(ctx, id, resp.JobModifyIndex)
	if err != nil {
		return Rollout{}, err
	}
	ro := Rollout{Version: version, Change: change, Registered: time.Since(start)}
	if g == GateNone {
		return ro, nil
	}
	if change == jobspec.Restart && g == GateHealthy {
		if err := l.waitDeployment(ctx, id, version); err != nil {
			return ro, err
		}
	}
	return ro, l.waitInstances(ctx, site, lane, job, g)
}

// registeredVersion is the version a register created: the job's version as of its modify
// index, read back from the job's versions.
func (l *Lanes) registeredVersion(ctx context.Context, id string, modifyIndex uint64) (uint64, error) {
	cctx, cancel := callCtx(ctx)
	defer cancel()
	versions, _, _, err := l.nomad.Jobs().Versions(id, false, (&nomadapi.QueryOptions{}).WithContext(cctx))
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
	return context.WithTimeout(ctx, callTimeout)
}

// Classify reads Nomad's plan: nothing to do, an in-place update, or allocations replaced.
func Classify(plan *nomadapi.JobPlanResponse) jobspec.Change {
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
func (l *Lanes) waitDeployment(ctx context.Context, id string, version uint64) error {
	seen := "no deployment yet"
	var failed error
	err := l.follow.Follow(ctx, query.Opts{Backend: "nomad", Wait: query.BlockingWait, OnError: func(err error) { seen = err.Error() }},
		func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
			deps, meta, err := l.nomad.Jobs().Deployments(id, false, (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx))
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
					failed = fmt.Errorf("nomad deployment of %s version %d %s: %s%s", id, version, d.Status, d.StatusDescription, l.allocFailures(id, version))
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
func (l *Lanes) allocFailures(id string, version uint64) string {
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	stubs, _, err := l.nomad.Jobs().Allocations(id, true, (&nomadapi.QueryOptions{}).WithContext(ctx))
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
// job's tags for the service, and with GateHealthy every check passing.
func (l *Lanes) waitInstances(ctx context.Context, site *config.Site, lane string, job *nomadapi.Job, g Gate) error {
	want := jobspec.ServiceTags(job, site.Service)
	count := InstanceCount(job, site.Service)
	seen := "no answer from consul yet"
	ready := false
	err := l.follow.Follow(ctx, query.Opts{Backend: "consul", Wait: query.BlockingWait, OnError: func(err error) { seen = err.Error() }},
		func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
			entries, idx, err := l.Entries(ctx, site, lane, index, wait)
			if err == nil {
				ready, seen = InstancesReady(entries, want, count, g == GateHealthy)
			}
			return idx, err
		},
		func(uint64) bool { return ready })
	if err != nil {
		return fmt.Errorf("wait for %d passing instances of %s with tags [%s]: %w (last seen: %s)",
			count, jobspec.JobID(site.Name, lane), strings.Join(want, ","), err, seen)
	}
	return nil
}

// InstancesReady is the pure check behind waitInstances.
func InstancesReady(entries []*consulapi.ServiceEntry, wantTags []string, count int, healthy bool) (bool, string) {
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
func (l *Lanes) Entries(ctx context.Context, site *config.Site, lane string, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	all, idx, err := l.SiteEntries(ctx, site, index, wait)
	if err != nil {
		return nil, 0, err
	}
	var out []*consulapi.ServiceEntry
	for _, e := range all {
		if e.Service.Meta[MetaLane] == lane {
			out = append(out, e)
		}
	}
	return out, idx, nil
}

// siteEntries reads every Consul instance of the site's service that slotd manages.
func (l *Lanes) SiteEntries(ctx context.Context, site *config.Site, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	if index == 0 {
		var cancel context.CancelFunc
		ctx, cancel = callCtx(ctx)
		defer cancel()
	}
	q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	entries, meta, err := l.consul.Health().Service(site.Service, "", false, q)
	if err != nil {
		return nil, 0, fmt.Errorf("read consul health of service %s: %w", site.Service, err)
	}
	var out []*consulapi.ServiceEntry
	for _, e := range entries {
		if e.Service.Meta[MetaSite] == site.Name {
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

const (
	// GateHealthy: Nomad's deployment succeeded (for a restart) and Consul shows every instance
	// with the wanted tags and passing checks. For a lane that takes on routes or traffic.
	GateHealthy Gate = iota
	// GateTags: Consul shows every instance with the wanted tags, whatever their health. For a
	// lane that leaves its routes, or gets them back, which may be the sick lane a rollback moves.
	GateTags
	// GateNone: nothing after Nomad took the new version. For a lane without routes that
	// fails its checks anyway, whose rollout Nomad cannot finish (a rollback moves it away).
	GateNone
)

// RouterDrain is how long a lane's instance stays up after it left Consul (DrainOnStop), and
// how long settle waits before it restarts the former target lane: routers that watch Consul
// (Fabio, Traefik) need a moment to drop it, so no request in flight meets an instance that stops.
const RouterDrain = 2 * time.Second

// callTimeout bounds one Nomad or Consul call that does not block on purpose: a server that
// hangs must not hold an operation past its deadline.
const callTimeout = 30 * time.Second

// AllocOf takes the allocation ID out of a Nomad service ID: _nomad-task-<alloc>-<...>.
func AllocOf(serviceID string) string {
	rest, ok := strings.CutPrefix(serviceID, "_nomad-task-")
	if !ok || len(rest) < 36 {
		return serviceID
	}
	return rest[:36]
}
