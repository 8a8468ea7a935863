package jobspec

import (
	"strings"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/config"
)

func TestRender(t *testing.T) {
	base := testJob(t)
	job := Render(base, stagingLane())

	assert.Equal(t, "web-a", *job.ID)
	assert.Equal(t, "web-a", *job.Name)
	assert.Equal(t, []string{"v1", "staging", "urlprefix-staging.example.com/"}, service(job).Tags)
	assert.Equal(t, base.TaskGroups[0].Services[0].Checks, service(job).Checks, "checks are not the lane's business")
	assert.Equal(t, map[string]string{
		"MODE":         "jobspec",
		"FEATURE_X":    "on",
		"DATABASE_URL": "postgres://staging-db/app",
		"SLOTD_SITE":   "web",
		"SLOTD_SLOT":   "staging", // overrides the jobspec's value
		"SLOTD_LANE":   "a",
	}, task(job).Env)
	assert.Equal(t, map[string]string{"owner": "team-a", "slotd_site": "web", "slotd_lane": "a"}, job.Meta)
	assert.Equal(t, []string{"v1", "staging", "urlprefix-staging.example.com/"}, ServiceTags(job, "web"))
}

func TestRenderTags(t *testing.T) {
	cases := []struct {
		name     string
		jobTags  []string
		slotTags []string
		want     []string
	}{
		{"no slot tags keeps the jobspec tags", []string{"v1"}, nil, []string{"v1"}},
		{"slot tags follow the jobspec tags", []string{"v1"}, []string{"production", "urlprefix-x/"}, []string{"v1", "production", "urlprefix-x/"}},
		{"repeated slot tags once, order kept", nil, []string{"b", "a", "b", "a"}, []string{"b", "a"}},
		{"a slot tag the jobspec has is not repeated", []string{"v1", "production"}, []string{"production", "x"}, []string{"v1", "production", "x"}},
		{"empty tags dropped", []string{"v1"}, []string{"", "x"}, []string{"v1", "x"}},
		{"nothing at all", nil, nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := testJob(t, func(j *nomadapi.Job) { service(j).Tags = tc.jobTags })
			l := stagingLane()
			l.SlotTags = tc.slotTags
			assert.Equal(t, tc.want, service(Render(base, l)).Tags)
		})
	}
}

func TestRenderOnlyTheLaneService(t *testing.T) {
	base := testJob(t, func(j *nomadapi.Job) {
		g := group(j)
		g.Services = append(g.Services, &nomadapi.Service{Name: "web-metrics", Tags: []string{"metrics"}})
		task(j).Services = []*nomadapi.Service{{Name: "web", Tags: []string{"task-level"}}}
		j.TaskGroups = append(j.TaskGroups, &nomadapi.TaskGroup{
			Name:     new("sidecar"),
			Services: []*nomadapi.Service{{Name: "web", Tags: []string{"second-group"}}},
			Tasks:    []*nomadapi.Task{{Name: "proxy", Driver: "raw_exec"}},
		})
	})
	job := Render(base, stagingLane())

	assert.Equal(t, []string{"v1", "staging", "urlprefix-staging.example.com/"}, group(job).Services[0].Tags)
	assert.Equal(t, []string{"metrics"}, group(job).Services[1].Tags, "another service keeps its tags")
	assert.Equal(t, []string{"task-level", "staging", "urlprefix-staging.example.com/"}, task(job).Services[0].Tags)
	assert.Equal(t, []string{"second-group", "staging", "urlprefix-staging.example.com/"}, job.TaskGroups[1].Services[0].Tags)
	assert.Equal(t, "staging", job.TaskGroups[1].Tasks[0].Env["SLOTD_SLOT"], "a task without env gets one")
}

func TestRenderDoesNotModifyBase(t *testing.T) {
	base := testJob(t)
	pristine := testJob(t)
	l := stagingLane()
	job := Render(base, l)
	require.Equal(t, pristine, base)

	// The result shares no memory with base or the lane.
	service(job).Tags[0] = "changed"
	task(job).Env["MODE"] = "changed"
	job.Meta["owner"] = "changed"
	task(job).Config["args"].([]any)[0] = "changed"
	assert.Equal(t, pristine, base)
	assert.Equal(t, stagingLane(), l)
}

func TestRenderIsDeterministic(t *testing.T) {
	base := testJob(t)
	first := Render(base, stagingLane())
	for range 20 {
		assert.Equal(t, first, Render(base, stagingLane()))
	}
	assert.Equal(t, NoChange, Diff(first, Render(testJob(t), stagingLane())))
}

func TestCheckLane(t *testing.T) {
	cases := []struct {
		name string
		edit func(*nomadapi.Job)
		want []string // substrings of the error; none means valid
	}{
		{name: "valid", edit: func(*nomadapi.Job) {}},
		{name: "empty provider means consul", edit: func(j *nomadapi.Job) { service(j).Provider = "" }},
		{name: "nil type means service", edit: func(j *nomadapi.Job) { j.Type = nil }},
		{name: "task-level service", edit: func(j *nomadapi.Job) {
			task(j).Services = group(j).Services
			group(j).Services = nil
		}},
		{name: "another service is not the lane's", edit: func(j *nomadapi.Job) {
			group(j).Services = append(group(j).Services, &nomadapi.Service{Name: "other", Provider: "nomad"})
		}},
		{
			name: "no service",
			edit: func(j *nomadapi.Job) { service(j).Name = "api" },
			want: []string{`jobs/web.nomad.hcl: no group registers service "web" with provider consul`},
		},
		{
			name: "nomad provider",
			edit: func(j *nomadapi.Job) { service(j).Provider = "nomad" },
			want: []string{
				`jobs/web.nomad.hcl: group "app" registers service "web" with provider nomad`,
				`jobs/web.nomad.hcl: no group registers service "web" with provider consul`,
			},
		},
		{
			name: "two groups",
			edit: func(j *nomadapi.Job) {
				j.TaskGroups = append(j.TaskGroups, testJob(t, func(j *nomadapi.Job) { group(j).Name = new("api") }).TaskGroups[0])
			},
			want: []string{`jobs/web.nomad.hcl: groups "app", "api" all register service "web"`},
		},
		{
			name: "no check",
			edit: func(j *nomadapi.Job) { service(j).Checks = nil },
			want: []string{`jobs/web.nomad.hcl: service "web" in group "app" has no check`},
		},
		{
			name: "batch job",
			edit: func(j *nomadapi.Job) { j.Type = new(nomadapi.JobTypeBatch) },
			want: []string{`jobs/web.nomad.hcl: job type is "batch"; a lane must be a "service" job`},
		},
		{
			name: "no task",
			edit: func(j *nomadapi.Job) { group(j).Tasks = nil },
			want: []string{`jobs/web.nomad.hcl: group "app" has no task`},
		},
		{
			name: "every problem at once",
			edit: func(j *nomadapi.Job) {
				j.Type = new(nomadapi.JobTypeSystem)
				service(j).Checks = nil
			},
			want: []string{`job type is "system"`, `has no check`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckLane(testJob(t, tc.edit), "jobs/web.nomad.hcl", "web")
			if len(tc.want) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
	assert.EqualError(t, CheckLane(nil, "jobs/web.nomad.hcl", "web"), "jobs/web.nomad.hcl: no job")
}

func TestServiceTags(t *testing.T) {
	job := testJob(t)
	assert.Equal(t, []string{"v1"}, ServiceTags(job, "web"))
	assert.Nil(t, ServiceTags(job, "nope"))
	assert.Nil(t, ServiceTags(nil, "web"))

	tags := ServiceTags(job, "web")
	tags[0] = "changed"
	assert.Equal(t, []string{"v1"}, service(job).Tags, "the result is a copy")
}

// TestRenderSettingsNomadWouldInterpolate: a setting whose value holds ${name} reaches the task
// through the SettingsFile template, not Env (where Nomad would replace it); every other
// setting stays in Env; TaskEnv gives back every value exactly.
func TestRenderSettingsNomadWouldInterpolate(t *testing.T) {
	cases := []struct {
		name    string
		value   string
		literal bool // delivered through the template
	}{
		{name: "plain", value: "postgres://db/app"},
		{name: "empty", value: ""},
		{name: "a dollar without braces", value: "$NOMAD_ALLOC_ID and $$"},
		{name: "braces that Nomad does not match", value: "${} ${a b} ${", literal: false},
		{name: "a consul-template action in env", value: `{{ env "HOME" }}`},
		{name: "an alloc variable", value: "${NOMAD_ALLOC_ID}", literal: true},
		{name: "a node attribute", value: "x-${attr.kernel.name}-y", literal: true},
		{name: "an HCL escape", value: "$${NOMAD_TASK_NAME}", literal: true},
		{name: "another setting", value: "${FEATURE_X}", literal: true},
		{name: "an unknown variable", value: "${NO_SUCH}", literal: true},
		{name: "quotes, backslashes, a hash", value: `${A} "q" 'single' \n\\ # not a comment`, literal: true},
		{name: "control characters", value: "${A}\none\ttwo\r\x01", literal: true},
		{name: "template actions", value: "${A} {{ env \"HOME\" }} {{- x -}} }} {", literal: true},
		{name: "unicode", value: "${A} é 日本 \u2028 😀 <&>", literal: true},
		{name: "spaces at the ends", value: "  ${A}  ", literal: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := stagingLane()
			l.Env["VALUE"] = tc.value
			job := Render(testJob(t, func(j *nomadapi.Job) { task(j).Env["VALUE"] = "from-jobspec" }), l)
			tk := task(job)
			assert.Equal(t, "on", tk.Env["FEATURE_X"], "other settings stay in env")
			if !tc.literal {
				assert.Equal(t, tc.value, tk.Env["VALUE"])
				assert.Empty(t, tk.Templates)
			} else {
				assert.NotContains(t, tk.Env, "VALUE", "nothing for Nomad to interpolate, and the jobspec's value is overridden")
				require.Len(t, tk.Templates, 1)
				tmpl := tk.Templates[0]
				assert.Equal(t, SettingsFile, *tmpl.DestPath)
				assert.True(t, *tmpl.Envvars)
				data := *tmpl.EmbeddedTmpl
				assert.NotContains(t, data, "{", "no template action for consul-template")
				assert.Len(t, strings.Split(strings.TrimSuffix(data, "\n"), "\n"), 1, "one line a setting")
				for _, c := range data[:len(data)-1] {
					assert.GreaterOrEqual(t, c, ' ', "no control character in the env file, which Nomad's parser refuses")
				}
			}
			assert.Equal(t, tc.value, TaskEnv(tk)["VALUE"], "TaskEnv gives back the value as set")
			assert.Equal(t, "staging", TaskEnv(tk)[EnvSlot])
		})
	}
}

// TestCheckRouteTags: a tag the job gives the site's service, as Nomad parsed it, that is a
// slot's name or route tag is refused, naming it: every lane would carry it.
func TestCheckRouteTags(t *testing.T) {
	site := &config.Site{Name: "web", Service: "web", Slots: []*config.Slot{
		{Name: "production", Tags: []string{"urlprefix-www/"}, PreviewTags: []string{"urlprefix-preview/"}},
		{Name: "staging", PreviousTags: []string{"urlprefix-old/"}},
	}}
	cases := []struct {
		name string
		tags []string
		want string // part of the error; "" for none
	}{
		{name: "tags of its own", tags: []string{"v1", "metrics"}},
		{name: "a slot's route tag", tags: []string{"v1", "urlprefix-www/"}, want: `jobs/web.nomad.hcl: service "web" has tag "urlprefix-www/", in tags of slot "production"`},
		{name: "a preview tag", tags: []string{"urlprefix-preview/"}, want: `in preview_tags of slot "production"`},
		{name: "a previous tag", tags: []string{"urlprefix-old/"}, want: `in previous_tags of slot "staging"`},
		{name: "a slot's name", tags: []string{"staging"}, want: `has tag "staging", the name of slot "staging": every lane carries`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			job := testJob(t, func(j *nomadapi.Job) { service(j).Tags = tc.tags })
			err := CheckRouteTags(job, "jobs/web.nomad.hcl", site)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
