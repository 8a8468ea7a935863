package jobspec

import (
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
)

func TestDiff(t *testing.T) {
	cases := []struct {
		name  string
		base  func(*nomadapi.Job) // edits the base b is rendered from
		lane  func(*Lane)         // edits the lane b is rendered for
		after func(*nomadapi.Job) // edits b after rendering
		want  Change
	}{
		{name: "same inputs", want: NoChange},
		{
			name: "server-managed fields",
			after: func(j *nomadapi.Job) {
				j.Version, j.SubmitTime = new(uint64(7)), new(int64(1700000000))
				j.Status, j.StatusDescription, j.Stable = new("running"), new(""), new(true)
				j.CreateIndex, j.ModifyIndex, j.JobModifyIndex = new(uint64(10)), new(uint64(20)), new(uint64(20))
				j.NomadTokenID = new("token-accessor")
				j.VersionTag = &nomadapi.JobVersionTag{Name: "golden"}
			},
			want: NoChange,
		},
		{
			name: "nil and empty lists and maps",
			base: func(j *nomadapi.Job) { j.Constraints = []*nomadapi.Constraint{}; group(j).Meta = map[string]string{} },
			want: NoChange,
		},
		{name: "other slot tags", lane: func(l *Lane) { l.SlotTags = []string{"production"} }, want: TagsOnly},
		{name: "no slot tags", lane: func(l *Lane) { l.SlotTags = nil }, want: TagsOnly},
		{
			// Nomad stores the new order and Consul shows it, so it is a change, an in-place one.
			name: "slot tags reordered",
			lane: func(l *Lane) { l.SlotTags = []string{"urlprefix-staging.example.com/", "staging"} },
			want: TagsOnly,
		},
		{name: "jobspec tags", base: func(j *nomadapi.Job) { service(j).Tags = []string{"v2"} }, want: TagsOnly},
		{name: "canary tags", base: func(j *nomadapi.Job) { service(j).CanaryTags = []string{"canary"} }, want: TagsOnly},
		{name: "setting changed", lane: func(l *Lane) { l.Env["FEATURE_X"] = "off" }, want: Restart},
		{name: "setting added", lane: func(l *Lane) { l.Env["NEW"] = "1" }, want: Restart},
		{name: "slot identity", lane: func(l *Lane) { l.Slot = "production" }, want: Restart},
		{
			name: "slot identity and tags together",
			lane: func(l *Lane) { l.Slot, l.SlotTags = "production", []string{"production"} },
			want: Restart,
		},
		{name: "command", base: func(j *nomadapi.Job) { task(j).Config["command"] = "/bin/app2" }, want: Restart},
		{name: "jobspec env", base: func(j *nomadapi.Job) { task(j).Env["MODE"] = "other" }, want: Restart},
		{name: "count (applied without restart by Nomad, but a deployment)", base: func(j *nomadapi.Job) { group(j).Count = new(3) }, want: Restart},
		{name: "check", base: func(j *nomadapi.Job) { service(j).Checks[0].Path = "/ready" }, want: Restart},
		{name: "meta", base: func(j *nomadapi.Job) { j.Meta["owner"] = "team-b" }, want: Restart},
		{name: "lane", lane: func(l *Lane) { l.Lane = "b" }, want: Restart},
		{name: "stopped", after: func(j *nomadapi.Job) { j.Stop = new(true) }, want: Restart},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := Render(testJob(t), stagingLane())
			l := stagingLane()
			orNoop(tc.lane)(&l)
			b := Render(testJob(t, orNoop(tc.base)), l)
			orNoop(tc.after)(b)

			assert.Equal(t, tc.want, Diff(a, b), "a to b")
			assert.Equal(t, tc.want, Diff(b, a), "b to a")
		})
	}
}

func TestDiffTaskServiceTags(t *testing.T) {
	withAdmin := func(tags ...string) func(*nomadapi.Job) {
		return func(j *nomadapi.Job) { task(j).Services = []*nomadapi.Service{{Name: "admin", Tags: tags}} }
	}
	a := Render(testJob(t, withAdmin("x")), stagingLane())
	b := Render(testJob(t, withAdmin("y")), stagingLane())
	assert.Equal(t, TagsOnly, Diff(a, b))
}

func TestDiffNil(t *testing.T) {
	job := Render(testJob(t), stagingLane())
	assert.Equal(t, Restart, Diff(nil, job), "no job yet")
	assert.Equal(t, Restart, Diff(job, nil))
	assert.Equal(t, NoChange, Diff(nil, nil))
}

func TestDiffDoesNotModify(t *testing.T) {
	production := Lane{Site: "web", Lane: "a", Slot: "production", Service: "web", SlotTags: []string{"production"}}
	a, b := Render(testJob(t), stagingLane()), Render(testJob(t), production)
	Diff(a, b)
	assert.Equal(t, Render(testJob(t), stagingLane()), a)
	assert.Equal(t, Render(testJob(t), production), b)
}

func TestChangeString(t *testing.T) {
	assert.Equal(t, "none", NoChange.String())
	assert.Equal(t, "tags-only", TagsOnly.String())
	assert.Equal(t, "restart", Restart.String())
	assert.Equal(t, "Change(7)", Change(7).String())
}

// orNoop returns f, or a function that does nothing when f is nil.
func orNoop[T any](f func(T)) func(T) {
	if f == nil {
		return func(T) {}
	}
	return f
}
