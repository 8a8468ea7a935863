package lanes

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// ErrWouldRestart is what Ensure answers for a state marked InPlace whose registration
// would replace running instances: a lane under (or next to) a route changes its tags only.
var ErrWouldRestart = errors.New("registering it would replace its running instances")

// Running is the state lane's job runs in Nomad now, without routes: the slot it runs as, the
// settings in its environment and its counts. A swap's make and break give a lane other routes
// with exactly what it runs (what warm-up warmed), whatever KV says by then: the site converges
// to KV once the swap has ended. src is the lane's app, which tells the environment the
// jobspec sets itself from the settings slotd added.
func (l *Lanes) Running(ctx context.Context, cfg *config.Site, lane string, src Source) (State, error) {
	job, err := l.Job(ctx, cfg, lane)
	if err != nil {
		return State{}, err
	}
	if job == nil {
		return State{}, fmt.Errorf("lane %s has no job running in nomad", jobspec.JobID(cfg.Name, lane))
	}
	base, err := l.Render(cfg, lane, src, State{Slot: LaneEnv(job, cfg.Service)[jobspec.EnvSlot]})
	if err != nil {
		return State{}, err
	}
	return RunningState(job, base, cfg.Service), nil
}

// RunningState is the state job runs, base being the same app rendered with no settings.
// Render gives every task of the job the same settings, so a setting is a variable that every
// task has with one value, which some task's own environment (in base) does not have, or has
// with another value; the SLOTD_ variables Render adds are not settings.
func RunningState(job, base *nomadapi.Job, service string) State {
	env := LaneEnv(job, service)
	st := State{Slot: env[jobspec.EnvSlot], Env: map[string]string{}, Scale: GroupCounts(job), Live: job.Meta[MetaScale] == "live"}
	runs, own := taskEnvs(job), taskEnvs(base)
	for k, v := range env {
		if strings.HasPrefix(k, "SLOTD_") {
			continue
		}
		everywhere, added := true, false
		for task, te := range runs {
			if tv, ok := te[k]; !ok || tv != v {
				everywhere = false
				break
			}
			if ov, ok := own[task][k]; !ok || ov != v {
				added = true
			}
		}
		if everywhere && added {
			st.Env[k] = v
		}
	}
	return st
}

// taskEnvs is the environment of every task of job, by group (its place in the job: a lane's
// job and its base come from one jobspec) and task name.
func taskEnvs(job *nomadapi.Job) map[string]map[string]string {
	out := map[string]map[string]string{}
	for i, g := range job.TaskGroups {
		for _, t := range g.Tasks {
			out[fmt.Sprintf("%d/%s", i, t.Name)] = jobspec.TaskEnv(t)
		}
	}
	return out
}

// Retagged is the state st with other routes, in place: Ensure refuses it if Nomad's plan says
// it would replace instances.
func Retagged(st State, tags []string) State {
	st.Env, st.Scale = maps.Clone(st.Env), maps.Clone(st.Scale)
	st.Tags = append([]string(nil), tags...)
	st.InPlace = true
	return st
}
