package lanes

import (
	"maps"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
)

func laneJob(env map[string]string, count int, meta map[string]string) *nomadapi.Job {
	name, svc := "app", "web"
	return &nomadapi.Job{
		Meta: meta,
		TaskGroups: []*nomadapi.TaskGroup{{
			Name: &name, Count: &count,
			Services: []*nomadapi.Service{{Name: svc}},
			Tasks:    []*nomadapi.Task{{Name: "app", Env: env}},
		}},
	}
}

// TestRunningState: what a lane runs, read back from its job: the settings slotd put in its
// environment (not what the jobspec sets itself, unless a setting changed it), its counts and
// whether they are a live slot's.
func TestRunningState(t *testing.T) {
	base := laneJob(map[string]string{"APP_VERSION": "v2", "LOG": "info", "SLOTD_SLOT": "production", "SLOTD_LANE": "b", "SLOTD_SITE": "web"}, 2, nil)
	tests := []struct {
		name string
		job  *nomadapi.Job
		want State
	}{
		{
			name: "settings and counts",
			job: laneJob(map[string]string{"APP_VERSION": "v2", "LOG": "info", "DB": "prod-db", "FEATURE": "on",
				"SLOTD_SLOT": "production", "SLOTD_LANE": "b", "SLOTD_SITE": "web"}, 3, map[string]string{MetaScale: "app=3"}),
			want: State{Slot: "production", Env: map[string]string{"DB": "prod-db", "FEATURE": "on"}, Scale: map[string]int{"app": 3}},
		},
		{
			name: "a setting that overrides the jobspec's own variable",
			job: laneJob(map[string]string{"APP_VERSION": "v2", "LOG": "debug",
				"SLOTD_SLOT": "staging", "SLOTD_LANE": "b", "SLOTD_SITE": "web"}, 1, map[string]string{MetaScale: "live"}),
			want: State{Slot: "staging", Env: map[string]string{"LOG": "debug"}, Scale: map[string]int{"app": 1}, Live: true},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, RunningState(tc.job, base, "web"))
		})
	}
}

// TestRunningStateTwoTasks: a setting is in every task with one value; a variable each task's
// jobspec sets itself (to different values) is not a setting, even where a setting could have
// given the first task the same value.
func TestRunningStateTwoTasks(t *testing.T) {
	job := func(app, sidecar map[string]string) *nomadapi.Job {
		j := laneJob(app, 1, nil)
		j.TaskGroups[0].Tasks = append(j.TaskGroups[0].Tasks, &nomadapi.Task{Name: "sidecar", Env: sidecar})
		return j
	}
	slotd := map[string]string{"SLOTD_SLOT": "production", "SLOTD_LANE": "b", "SLOTD_SITE": "web"}
	with := func(env map[string]string) map[string]string {
		out := maps.Clone(env)
		maps.Copy(out, slotd)
		return out
	}
	base := job(with(map[string]string{"PORT": "8080"}), with(map[string]string{"PORT": "9090"}))
	tests := []struct {
		name string
		job  *nomadapi.Job
		want map[string]string
	}{
		{"each task's own PORT, no setting", job(with(map[string]string{"PORT": "8080"}), with(map[string]string{"PORT": "9090"})), map[string]string{}},
		{"a setting PORT equal to the first task's own", job(with(map[string]string{"PORT": "8080"}), with(map[string]string{"PORT": "8080"})), map[string]string{"PORT": "8080"}},
		{"a setting in both tasks", job(with(map[string]string{"PORT": "8080", "DB": "x"}), with(map[string]string{"PORT": "9090", "DB": "x"})), map[string]string{"DB": "x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, RunningState(tc.job, base, "web").Env)
		})
	}
}

func TestRetagged(t *testing.T) {
	st := State{Slot: "production", Env: map[string]string{"DB": "x"}, Scale: map[string]int{"app": 2}}
	r := Retagged(st, []string{"production", "urlprefix-www/"})
	assert.True(t, r.InPlace)
	assert.Equal(t, []string{"production", "urlprefix-www/"}, r.Tags)
	r.Env["DB"] = "changed"
	assert.Equal(t, "x", st.Env["DB"], "a copy")
}
