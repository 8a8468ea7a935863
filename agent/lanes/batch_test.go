package lanes

import (
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/config"
)

// jobParser stands for the Nomad server's parse endpoint: it answers job, canonicalized as
// the server answers it.
type jobParser struct{ job *nomadapi.Job }

func (p jobParser) ParseHCLOpts(*nomadapi.JobsParseRequest) (*nomadapi.Job, error) {
	p.job.Canonicalize()
	return p.job, nil
}

// batchJob is a lane-ready job: group "app" (count 2) registers service "web", group "worker"
// (count 3) registers nothing; edit changes it before it is canonicalized.
func batchJob(edit func(*nomadapi.Job)) *nomadapi.Job {
	job := &nomadapi.Job{
		ID: new("web"), Name: new("web"), Type: new(nomadapi.JobTypeService),
		Update: &nomadapi.UpdateStrategy{
			MaxParallel: new(1), HealthCheck: new("checks"), MinHealthyTime: new(3 * time.Second),
			HealthyDeadline: new(2 * time.Minute), AutoRevert: new(true),
		},
		TaskGroups: []*nomadapi.TaskGroup{
			{
				Name: new("app"), Count: new(2),
				Services: []*nomadapi.Service{{Name: "web", PortLabel: "http", Provider: nomadapi.ServiceProviderConsul,
					Checks: []nomadapi.ServiceCheck{{Name: "alive", Type: "http", Path: "/healthz", Interval: time.Second, Timeout: time.Second}}}},
				Tasks: []*nomadapi.Task{{Name: "app", Driver: "raw_exec"}},
			},
			{Name: new("worker"), Count: new(3), Tasks: []*nomadapi.Task{{Name: "worker", Driver: "raw_exec"}}},
		},
	}
	if edit != nil {
		edit(job)
	}
	return job
}

// TestRenderBatch: a lane whose want carries no public route (the slots' names and tags) rolls
// its service's group out in one batch, with the jobspec's health gates and canaries as they
// are; a lane that carries routes, and every other group, keeps the jobspec's update rules.
func TestRenderBatch(t *testing.T) {
	cfg := &config.Site{Name: "web", Job: "web.nomad.hcl", Service: "web", Slots: []*config.Slot{
		{Name: "production", Tags: []string{"urlprefix-www/"}, PreviewTags: []string{"urlprefix-preview/"}, PreviousTags: []string{"urlprefix-previous/"}},
		{Name: "staging", Tags: []string{"urlprefix-staging/"}},
	}}
	ten := map[string]int{"app": 10}
	tests := []struct {
		name    string
		edit    func(*nomadapi.Job)
		want    State
		app     int // max_parallel of the service's group
		canary  int
		worker  int // max_parallel of the group without the service
		appNone bool
	}{
		{name: "apply: the target's preview tags only, at the target's scale", want: State{Slot: "production", Tags: []string{"urlprefix-preview/"}, Scale: ten}, app: 10, worker: 1},
		{name: "drained: no tag at all", want: State{Slot: "production", Scale: ten}, app: 10, worker: 1},
		{name: "held: the target's previous tags only", want: State{Slot: "production", Tags: []string{"urlprefix-previous/"}, Scale: ten}, app: 10, worker: 1},
		{name: "no scale yet: the jobspec's count", want: State{Slot: "production", Tags: []string{"urlprefix-preview/"}}, app: 2, worker: 1},
		{name: "steady: the slot's name and tags", want: State{Slot: "production", Tags: []string{"production", "urlprefix-www/"}, Scale: ten}, app: 1, worker: 1},
		{name: "switched: a slot's tag alone is a route", want: State{Slot: "production", Tags: []string{"urlprefix-preview/", "urlprefix-www/"}, Scale: ten}, app: 1, worker: 1},
		{name: "a slot's name alone is a route (its Consul DNS name)", want: State{Slot: "staging", Tags: []string{"staging"}, Scale: ten}, app: 1, worker: 1},
		{
			name: "the group's own max_parallel is raised too", want: State{Slot: "production", Scale: ten}, app: 10, worker: 1,
			edit: func(j *nomadapi.Job) { j.TaskGroups[0].Update = &nomadapi.UpdateStrategy{MaxParallel: new(3)} },
		},
		{
			name: "a max_parallel above the count is kept", want: State{Slot: "production", Scale: map[string]int{"app": 4}}, app: 6, worker: 6,
			edit: func(j *nomadapi.Job) { j.Update.MaxParallel = new(6) },
		},
		{
			name: "max_parallel = 0 (Nomad does not stagger) is kept", want: State{Slot: "production", Scale: ten}, app: 0, worker: 0,
			edit: func(j *nomadapi.Job) { j.Update.MaxParallel = new(0) },
		},
		{
			name: "canaries stay as the jobspec has them", want: State{Slot: "production", Scale: ten}, app: 10, worker: 1, canary: 2,
			edit: func(j *nomadapi.Job) { j.Update.Canary = new(2) },
		},
		{
			name: "no update block: Nomad's default (one at a time) becomes one batch", want: State{Slot: "production", Scale: ten}, app: 10, worker: 1,
			edit: func(j *nomadapi.Job) { j.Update = nil },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := batchJob(tc.edit)
			base.Canonicalize()
			jobspecUpdate := *base.TaskGroups[0].Update
			l := &Lanes{parser: jobParser{batchJob(tc.edit)}}
			job, err := l.Render(cfg, "b", Source{Jobspec: "job"}, tc.want)
			require.NoError(t, err)

			app, worker := job.TaskGroups[0].Update, job.TaskGroups[1].Update
			require.NotNil(t, app)
			require.NotNil(t, worker)
			assert.Equal(t, tc.app, *app.MaxParallel, "max_parallel of the service's group")
			assert.Equal(t, tc.worker, *worker.MaxParallel, "max_parallel of the group without the service")
			assert.Equal(t, tc.canary, *app.Canary, "canary")
			// Nomad's health checks still gate the rollout as the jobspec says.
			assert.Equal(t, *jobspecUpdate.HealthCheck, *app.HealthCheck)
			assert.Equal(t, *jobspecUpdate.MinHealthyTime, *app.MinHealthyTime)
			assert.Equal(t, *jobspecUpdate.HealthyDeadline, *app.HealthyDeadline)
			assert.Equal(t, *jobspecUpdate.AutoRevert, *app.AutoRevert)
			assert.Equal(t, *jobspecUpdate.AutoPromote, *app.AutoPromote)
		})
	}
}
