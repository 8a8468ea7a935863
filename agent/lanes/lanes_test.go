package lanes

import (
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPlacementError: the pre-flight says what Nomad's scheduler said, per task group.
func TestPlacementError(t *testing.T) {
	want := State{Slot: "production", Scale: map[string]int{"app": 3}}
	tests := []struct {
		name string
		plan *nomadapi.JobPlanResponse
		want string
	}{
		{name: "places", plan: &nomadapi.JobPlanResponse{}},
		{
			name: "memory exhausted",
			plan: &nomadapi.JobPlanResponse{FailedTGAllocs: map[string]*nomadapi.AllocationMetric{
				"app": {NodesEvaluated: 1, NodesInPool: 1, NodesExhausted: 1, DimensionExhausted: map[string]int{"memory": 1}, CoalescedFailures: 1},
			}},
			want: `nomad cannot place web-b as production at scale app=3: task group "app": 2 allocations of 3 would not place: 1 node evaluated, 0 filtered, 1 exhausted (exhausted "memory" on 1 node)`,
		},
		{
			name: "filtered by a constraint, two groups",
			plan: &nomadapi.JobPlanResponse{FailedTGAllocs: map[string]*nomadapi.AllocationMetric{
				"worker": {NodesEvaluated: 2, NodesFiltered: 2, NodesInPool: 2, ConstraintFiltered: map[string]int{"${attr.kernel.name} = windows": 2}},
				"app":    {NodesEvaluated: 2, NodesExhausted: 2, DimensionExhausted: map[string]int{"cpu": 1, "memory": 1}},
			}},
			want: `task group "app": 1 allocation of 3 would not place: 2 nodes evaluated, 0 filtered, 2 exhausted (exhausted "cpu" on 1 node, "memory" on 1 node); ` +
				`task group "worker": 1 allocation would not place: 2 nodes evaluated, 2 filtered, 0 exhausted (filtered by "${attr.kernel.name} = windows" on 2 nodes)`,
		},
		{
			name: "no node at all",
			plan: &nomadapi.JobPlanResponse{FailedTGAllocs: map[string]*nomadapi.AllocationMetric{"app": {}}},
			want: `task group "app": 1 allocation of 3 would not place: 0 nodes evaluated, 0 filtered, 0 exhausted (no node in the node pool)`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := PlacementError("web-b", want, tc.plan)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestApplyScale: a lane job takes its slot's counts and shows them in its meta; a group the
// job lacks is an error that names it.
func TestApplyScale(t *testing.T) {
	job := func() *nomadapi.Job {
		two := 2
		return &nomadapi.Job{TaskGroups: []*nomadapi.TaskGroup{
			{Name: new("app"), Count: &two}, {Name: new("worker")},
		}}
	}
	tests := []struct {
		name       string
		want       State
		wantCounts map[string]int
		wantMeta   string
		wantErr    string
	}{
		{name: "no scale yet: the jobspec's counts, shown in the meta from the first version", want: State{Slot: "production"}, wantCounts: map[string]int{"app": 2, "worker": 1}, wantMeta: "app=2,worker=1"},
		{name: "counts", want: State{Slot: "production", Scale: map[string]int{"app": 5}}, wantCounts: map[string]int{"app": 5, "worker": 1}, wantMeta: "app=5,worker=1"},
		{name: "live", want: State{Slot: "production", Scale: map[string]int{"app": 4, "worker": 0}, Live: true}, wantCounts: map[string]int{"app": 4, "worker": 0}, wantMeta: "live"},
		{name: "unknown group", want: State{Slot: "production", Scale: map[string]int{"web": 5}}, wantErr: "the scale of slot production names task group web, which the job in jobs/web.nomad.hcl does not have (its groups: app, worker)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := job()
			err := ApplyScale(j, "jobs/web.nomad.hcl", tc.want)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantCounts, GroupCounts(j))
			assert.Equal(t, tc.wantMeta, j.Meta[MetaScale])
		})
	}
}

func TestInstancesReady(t *testing.T) {
	entry := func(status string, tags ...string) *consulapi.ServiceEntry {
		return &consulapi.ServiceEntry{
			Service: &consulapi.AgentService{Tags: tags},
			Checks:  consulapi.HealthChecks{{Status: status}},
		}
	}
	want := []string{"app", "production"}
	tests := []struct {
		name    string
		entries []*consulapi.ServiceEntry
		healthy bool
		ready   bool
	}{
		{"all tagged and passing", []*consulapi.ServiceEntry{entry("passing", "production", "app"), entry("passing", "app", "production")}, true, true},
		{"one still has the old tags", []*consulapi.ServiceEntry{entry("passing", "app", "production"), entry("passing", "app", "staging")}, true, false},
		{"one failing", []*consulapi.ServiceEntry{entry("passing", "app", "production"), entry("critical", "app", "production")}, true, false},
		{"failing is fine when only tags count", []*consulapi.ServiceEntry{entry("critical", "app", "production"), entry("critical", "app", "production")}, false, true},
		{"an old instance not yet gone", []*consulapi.ServiceEntry{entry("passing", "app", "production"), entry("passing", "app", "production"), entry("passing", "app", "production")}, true, false},
		{"too few", []*consulapi.ServiceEntry{entry("passing", "app", "production")}, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok, desc := InstancesReady(tc.entries, want, 2, tc.healthy)
			assert.Equal(t, tc.ready, ok, desc)
		})
	}
}

func TestDrainOnStop(t *testing.T) {
	long := 5 * time.Second
	tests := []struct {
		name      string
		group     *nomadapi.TaskGroup
		wantGroup *time.Duration
		wantTask  time.Duration
	}{
		{"group service without delay", &nomadapi.TaskGroup{Services: []*nomadapi.Service{{Name: "web"}}, Tasks: []*nomadapi.Task{{Name: "app"}}}, new(RouterDrain), 0},
		{"a longer delay is kept", &nomadapi.TaskGroup{ShutdownDelay: &long, Services: []*nomadapi.Service{{Name: "web"}}, Tasks: []*nomadapi.Task{{Name: "app"}}}, &long, 0},
		{"task service", &nomadapi.TaskGroup{Tasks: []*nomadapi.Task{{Name: "app", Services: []*nomadapi.Service{{Name: "web"}}}}}, nil, RouterDrain},
		{"another service is left alone", &nomadapi.TaskGroup{Services: []*nomadapi.Service{{Name: "metrics"}}, Tasks: []*nomadapi.Task{{Name: "app"}}}, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			DrainOnStop(tc.group, "web")
			assert.Equal(t, tc.wantGroup, tc.group.ShutdownDelay)
			assert.Equal(t, tc.wantTask, tc.group.Tasks[0].ShutdownDelay)
		})
	}
}
