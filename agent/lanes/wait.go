package lanes

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// Waiting for what Nomad and Consul show of a lane after a register.

// InstanceCount is how many instances of the site's service the job runs.
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
func (l *Lanes) waitInstances(ctx context.Context, cfg *config.Site, lane string, job *nomadapi.Job, g Gate) error {
	want := jobspec.ServiceTags(job, cfg.Service)
	count := InstanceCount(job, cfg.Service)
	seen := "no answer from consul yet"
	ready := false
	err := l.follow.Follow(ctx, query.Opts{Backend: "consul", Wait: query.BlockingWait, OnError: func(err error) { seen = err.Error() }},
		func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
			entries, idx, err := l.Entries(ctx, cfg, lane, index, wait)
			if err == nil {
				ready, seen = InstancesReady(entries, want, count, g == GateHealthy)
			}
			return idx, err
		},
		func(uint64) bool { return ready })
	if err != nil {
		return fmt.Errorf("wait for %d passing instances of %s with tags [%s]: %w (last seen: %s)",
			count, jobspec.JobID(cfg.Name, lane), strings.Join(want, ","), err, seen)
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

// Entries reads the Consul instances of a lane, blocking on index when it is not zero.
func (l *Lanes) Entries(ctx context.Context, cfg *config.Site, lane string, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	all, idx, err := l.SiteEntries(ctx, cfg, index, wait)
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

// SiteEntries reads every Consul instance of the site's service that slotd manages.
func (l *Lanes) SiteEntries(ctx context.Context, cfg *config.Site, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	if index == 0 {
		var cancel context.CancelFunc
		ctx, cancel = callCtx(ctx)
		defer cancel()
	}
	q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	entries, meta, err := l.consul.Health().Service(cfg.Service, "", false, q)
	if err != nil {
		return nil, 0, fmt.Errorf("read consul health of service %s: %w", cfg.Service, err)
	}
	var out []*consulapi.ServiceEntry
	for _, e := range entries {
		if e.Service.Meta[MetaSite] == cfg.Name {
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
