// Package lanes moves a site's lanes in Nomad and reads them in Consul: it renders a lane's job
// (slotd's meta, scale and drain rules folded into the jobspec), registers it check-and-set and
// waits for Nomad's deployment and Consul's checks.
package lanes

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
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

// Job reads a lane's job as Nomad has it, or nil when there is none (or it is stopped).
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

// JobVersion reads one version of a job.
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
				return jobspec.TaskEnv(g.Tasks[0])
			}
		}
	}
	return map[string]string{}
}

// Differs reports whether lane runs something else than src in state want, by Nomad's own plan
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

// Check parses src and checks that it can run as a lane of the site, touching nothing.
func (l *Lanes) Check(cfg *config.Site, src Source) error {
	base, err := jobspec.Parse(l.parser, cfg.Job, src.Jobspec, src.Vars)
	if err != nil {
		return err
	}
	return errors.Join(jobspec.CheckLane(base, cfg.Job, cfg.Service), jobspec.CheckRouteTags(base, cfg.Job, cfg))
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
	// InPlace asks for a change of tags only: Ensure answers ErrWouldRestart rather than
	// register a version that replaces instances (see Retagged).
	InPlace bool
}

// Service meta that slotd puts on the site's service, so the Consul UI (and slotd) can tell
// which lane an instance belongs to. It never changes for a lane, so it never causes a restart.
const (
	MetaSite = "slotd_site"
	MetaLane = "slotd_lane"
)

// Source is what a lane's app is made of: the jobspec text and its variables. Nomad keeps it
// with every job version as the job's submission, so a lane can be re-rendered with other tags
// or settings without picking up a jobspec file that changed on disk since it was deployed.
type Source struct {
	Jobspec string
	Vars    map[string]string
}

// Submission returns the source of a lane's bound job version. Only when Nomad has none (a
// lane never registered, or a job purged by hand) is it the site's jobspec file with the
// declared variables; any other error is an error, never a reason to render something else.
func (l *Lanes) Submission(ctx context.Context, cfg *config.Site, lane string, version uint64, bound bool) (Source, error) {
	if bound {
		id := jobspec.JobID(cfg.Name, lane)
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
	return FileSource(cfg, nil)
}

// FileSource reads the site's jobspec from disk with the declared variables overlaid by vars.
func FileSource(cfg *config.Site, vars map[string]string) (Source, error) {
	b, err := os.ReadFile(cfg.Job)
	if err != nil {
		return Source{}, fmt.Errorf("read jobspec of site %s: %w", cfg.Name, err)
	}
	all := map[string]string{}
	for k, v := range cfg.Vars {
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

// Render parses src through Nomad and renders it as lane with state want. A lane whose want
// carries no public route (apply's candidate, a drained or held lane) rolls out in one batch
// (OneBatch); one that carries routes keeps the jobspec's update rules.
func (l *Lanes) Render(cfg *config.Site, lane string, src Source, want State) (*nomadapi.Job, error) {
	base, err := jobspec.Parse(l.parser, cfg.Job, src.Jobspec, src.Vars)
	if err != nil {
		return nil, err
	}
	if err := jobspec.CheckLane(base, cfg.Job, cfg.Service); err != nil {
		return nil, err
	}
	job := jobspec.Render(base, jobspec.Lane{
		Site: cfg.Name, Lane: lane, Slot: want.Slot, Service: cfg.Service,
		SlotTags: want.Tags, Env: want.Env,
	})
	if err := ApplyScale(job, cfg.Job, want); err != nil {
		return nil, err
	}
	routed := Routed(cfg, want.Tags)
	for _, g := range job.TaskGroups {
		for _, svc := range serviceBlocks(g) {
			if svc.Name != cfg.Service {
				continue
			}
			if svc.Meta == nil {
				svc.Meta = map[string]string{}
			}
			svc.Meta[MetaSite] = cfg.Name
			svc.Meta[MetaLane] = lane
		}
		DrainOnStop(g, cfg.Service)
		if !routed {
			OneBatch(g, cfg.Service)
		}
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

// Rollout is the outcome of Ensure.
type Rollout struct {
	Version uint64
	Change  jobspec.Change
	// Registered is how long Ensure took until Nomad took the new version (render, plan,
	// register): the rest of its time was the wait for Nomad's deployment and Consul.
	Registered time.Duration
}

// Gate is what Ensure waits for after it registered a lane.
type Gate int

// Ensure makes lane run src in state want. It registers a new job version only when Nomad's
// plan shows a difference, check-and-set on the job's modify index (a job that is not there
// must still not be there), then waits as g says.
func (l *Lanes) Ensure(ctx context.Context, cfg *config.Site, lane string, src Source, want State, g Gate) (Rollout, error) {
	id := jobspec.JobID(cfg.Name, lane)
	start := time.Now()
	job, err := l.Render(cfg, lane, src, want)
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
			return Rollout{Version: *cur.Version, Change: change}, l.waitInstances(ctx, cfg, lane, job, g)
		}
	}
	if change == jobspec.Restart && want.InPlace {
		return Rollout{}, fmt.Errorf("give lane %s the tags [%s]: %w; nothing was registered", id, strings.Join(want.Tags, " "), ErrWouldRestart)
	}
	if err := failpoint.Inject(ctx, "lane.before-register"); err != nil {
		return Rollout{}, err
	}
	l.logger.Debug("register lane", "site", cfg.Name, "lane", lane, "slot", want.Slot, "change", change.String(), "tags", strings.Join(want.Tags, ","))
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
	return ro, l.waitInstances(ctx, cfg, lane, job, g)
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
	return context.WithTimeout(ctx, query.CallTimeout)
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

// AllocOf takes the allocation ID out of a Nomad service ID: _nomad-task-<alloc>-<...>.
func AllocOf(serviceID string) string {
	rest, ok := strings.CutPrefix(serviceID, "_nomad-task-")
	if !ok || len(rest) < 36 {
		return serviceID
	}
	return rest[:36]
}
