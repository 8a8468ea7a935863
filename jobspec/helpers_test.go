package jobspec

import (
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"
)

// testJob builds a small lane-ready job: one group "app" of count 2 registering the consul
// service "web" (tag "v1", an http check) and one raw_exec task "app". Options edit it.
func testJob(t testing.TB, opts ...func(*nomadapi.Job)) *nomadapi.Job {
	t.Helper()
	job := &nomadapi.Job{
		ID:          new("web"),
		Name:        new("web"),
		Type:        new(nomadapi.JobTypeService),
		Datacenters: []string{"dc1"},
		Meta:        map[string]string{"owner": "team-a"},
		TaskGroups: []*nomadapi.TaskGroup{{
			Name:  new("app"),
			Count: new(2),
			Networks: []*nomadapi.NetworkResource{{
				DynamicPorts: []nomadapi.Port{{Label: "http"}},
			}},
			Services: []*nomadapi.Service{{
				Name:      "web",
				PortLabel: "http",
				Provider:  nomadapi.ServiceProviderConsul,
				Tags:      []string{"v1"},
				Checks: []nomadapi.ServiceCheck{{
					Name: "alive", Type: "http", Path: "/healthz",
					Interval: 1e9, Timeout: 1e9,
				}},
			}},
			Tasks: []*nomadapi.Task{{
				Name:   "app",
				Driver: "raw_exec",
				Config: map[string]any{"command": "/bin/app", "args": []any{"-listen", "${NOMAD_PORT_http}"}},
				Env:    map[string]string{"MODE": "jobspec", "SLOTD_SLOT": "from-jobspec"},
			}},
		}},
	}
	for _, o := range opts {
		o(job)
	}
	return job
}

func group(job *nomadapi.Job) *nomadapi.TaskGroup { return job.TaskGroups[0] }
func service(job *nomadapi.Job) *nomadapi.Service { return job.TaskGroups[0].Services[0] }
func task(job *nomadapi.Job) *nomadapi.Task       { return job.TaskGroups[0].Tasks[0] }

// stagingLane is lane a of site "web" serving the slot staging.
func stagingLane() Lane {
	return Lane{
		Site: "web", Lane: "a", Slot: "staging", Service: "web",
		SlotTags: []string{"staging", "urlprefix-staging.example.com/"},
		Env:      map[string]string{"FEATURE_X": "on", "DATABASE_URL": "postgres://staging-db/app"},
	}
}
