package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/jobspec"
)

// The proof of jobspec.Diff against the real Nomad and Consul (DESIGN.md §2): what Diff
// calls tags-only Nomad applies in place, and what it calls restart Nomad rolls out.

const (
	// jpDeployTimeout bounds one rollout of the test app: two allocations one after the
	// other, each healthy for min_healthy_time.
	jpDeployTimeout = 2 * time.Minute
	// jpTagsTimeout bounds the wait for new tags in Consul; the promise checked is 2 s.
	jpTagsTimeout = 30 * time.Second
	// jpTagsPromise is how soon after a tags-only register Consul shows the new tags.
	jpTagsPromise = 2 * time.Second
	jpCount       = 2
	jpGroup       = "app" // the test app's task group
	jpTask        = "app" // the test app's task
)

// TestLaneParseVariables: variable values reach the job exactly, whatever they contain.
func TestLaneParseVariables(t *testing.T) {
	s := Shared(t)
	svc := "jp-" + Suffix()
	version := "v\"2\" \\ ${var.binary} %{ if true }x%{ endif } $${y}\nline2\tü"
	job := jpParse(t, s, svc, map[string]string{"app_version": version, "count": "3"})

	require.NoError(t, jobspec.CheckLane(job, TestAppJobspec(), svc))
	require.Len(t, job.TaskGroups, 1)
	assert.Equal(t, 3, *job.TaskGroups[0].Count, "a number variable given as a string")
	assert.Equal(t, version, job.TaskGroups[0].Tasks[0].Env["APP_VERSION"])

	err := jobspec.CheckLane(job, TestAppJobspec(), "other")
	assert.ErrorContains(t, err, TestAppJobspec()+`: no group registers service "other" with provider consul`)

	_, err = jobspec.Parse(s.Nomad.Jobs(), "jobs/broken.nomad.hcl", "job \"x\" {\n  group \"g\" {\n    cuont = 1\n  }\n}\n", nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "jobs/broken.nomad.hcl:3,")
	t.Logf("a broken jobspec: %v", err)
}

// TestLaneTagsOnlyInPlace: a tags-only change keeps every allocation and task running, and
// Consul shows the new tags within 2 s.
func TestLaneTagsOnlyInPlace(t *testing.T) {
	s := Shared(t)
	svc := "jp-" + Suffix()
	base := jpParse(t, s, svc, nil)
	require.NoError(t, jobspec.CheckLane(base, TestAppJobspec(), svc))

	lane := jobspec.Lane{
		Site: svc, Lane: "a", Slot: "staging", Service: svc,
		SlotTags: []string{"staging", "urlprefix-x.test/"},
		Env:      map[string]string{"FEATURE_X": "on"},
	}
	staging := jobspec.Render(base, lane)
	id := *staging.ID
	jpPurgeAtEnd(t, s, id)
	v1 := jpRegister(t, s, staging)
	jpWaitDeployed(t, s, id, v1)
	jpWaitInstances(t, s, svc, "staging", []string{"staging", "urlprefix-x.test/"}, nil)
	before := jpRunning(t, s, id)

	lane.SlotTags = []string{"production"}
	production := jobspec.Render(base, lane)
	require.Equal(t, jobspec.TagsOnly, jobspec.Diff(staging, production))

	start := time.Now()
	v2 := jpRegister(t, s, production)
	jpWaitInstances(t, s, svc, "production", []string{"production"}, []string{"staging", "urlprefix-x.test/"})
	took := time.Since(start)
	t.Logf("tags-only change: every instance shows the new tags in Consul %s after the register call", took.Round(time.Millisecond))

	assert.Greater(t, v2, v1, "the tags-only change is a new job version")
	assert.LessOrEqual(t, took, jpTagsPromise, "Consul shows the new tags within %s", jpTagsPromise)
	after := jpRunning(t, s, id)
	assert.Equal(t, before, after, "same allocations, tasks started at the same time")

	// Nomad really updated those allocations to the new version, in place.
	WaitFor(t, jpDeployTimeout, fmt.Sprintf("the allocations of %s at version %d", id, v2), func() (bool, string) {
		stubs, _, err := s.Nomad.Jobs().Allocations(id, false, nil)
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		done := true
		for _, a := range stubs {
			if a.DesiredStatus == nomadapi.AllocDesiredStatusRun {
				seen = append(seen, fmt.Sprintf("%s@v%d", a.ID[:8], a.JobVersion))
				done = done && a.JobVersion == v2
			}
		}
		return done && len(seen) == jpCount, strings.Join(seen, " ")
	})

	// Nomad tracks even an in-place version with a deployment (health checked again for
	// min_healthy_time); it succeeds without replacing anything.
	d := jpWaitDeployed(t, s, id, v2)
	require.Contains(t, d.TaskGroups, jpGroup)
	assert.Equal(t, jpCount, d.TaskGroups[jpGroup].HealthyAllocs)
	assert.Equal(t, before, jpRunning(t, s, id), "same allocations, tasks started at the same time")
}

// TestLaneEnvChangeRestarts: a settings change replaces every allocation under the job's
// update block, and the new tasks see the new value.
func TestLaneEnvChangeRestarts(t *testing.T) {
	s := Shared(t)
	svc := "jp-" + Suffix()
	base := jpParse(t, s, svc, map[string]string{"show_env": "FEATURE_X,SLOTD_SLOT"})
	require.NoError(t, jobspec.CheckLane(base, TestAppJobspec(), svc))

	lane := jobspec.Lane{
		Site: svc, Lane: "a", Slot: "staging", Service: svc,
		SlotTags: []string{"staging"},
		Env:      map[string]string{"FEATURE_X": "on"},
	}
	on := jobspec.Render(base, lane)
	id := *on.ID
	jpPurgeAtEnd(t, s, id)
	v1 := jpRegister(t, s, on)
	jpWaitDeployed(t, s, id, v1)
	jpWaitInstances(t, s, svc, "staging", []string{"staging"}, nil)
	before := jpRunning(t, s, id)
	jpCheckEnv(t, s, svc, "FEATURE_X", "on")

	lane.Env = map[string]string{"FEATURE_X": "off"}
	off := jobspec.Render(base, lane)
	require.Equal(t, jobspec.Restart, jobspec.Diff(on, off))
	v2 := jpRegister(t, s, off)
	d := jpWaitDeployed(t, s, id, v2)
	require.Contains(t, d.TaskGroups, jpGroup)
	assert.Equal(t, jpCount, d.TaskGroups[jpGroup].DesiredTotal, "the deployment replaced every allocation")
	assert.Equal(t, jpCount, d.TaskGroups[jpGroup].HealthyAllocs)

	after := jpRunning(t, s, id)
	assert.Len(t, after, jpCount)
	for allocID := range after {
		assert.NotContains(t, before, allocID, "a new allocation")
	}
	WaitFor(t, jpDeployTimeout, "the old allocations of "+id+" to stop", func() (bool, string) {
		var seen []string
		done := true
		for allocID := range before {
			a, _, err := s.Nomad.Allocations().Info(allocID, nil)
			if err != nil {
				return false, err.Error()
			}
			seen = append(seen, fmt.Sprintf("%s desired=%s client=%s", allocID[:8], a.DesiredStatus, a.ClientStatus))
			done = done && a.DesiredStatus == nomadapi.AllocDesiredStatusStop && a.ClientStatus != nomadapi.AllocClientStatusRunning
		}
		return done, strings.Join(seen, "; ")
	})
	jpWaitInstances(t, s, svc, "staging", []string{"staging"}, nil)
	jpCheckEnv(t, s, svc, "FEATURE_X", "off")
}

// jpParse parses the test app's jobspec through Nomad with jobspec.Parse, for service svc.
func jpParse(t *testing.T, s *Stack, svc string, vars map[string]string) *nomadapi.Job {
	t.Helper()
	src, err := os.ReadFile(TestAppJobspec())
	require.NoError(t, err)
	all := map[string]string{"binary": TestAppBinary(t), "service": svc}
	maps.Copy(all, vars)
	job, err := jobspec.Parse(s.Nomad.Jobs(), TestAppJobspec(), string(src), all)
	require.NoError(t, err)
	return job
}

// jpPurgeAtEnd deregisters job id with purge when the test ends.
func jpPurgeAtEnd(t *testing.T, s *Stack, id string) {
	t.Cleanup(func() {
		if _, _, err := s.Nomad.Jobs().Deregister(id, true, nil); err != nil {
			t.Logf("deregister %s: %v", id, err)
		}
	})
}

// jpRegister registers job and returns the version it got.
func jpRegister(t *testing.T, s *Stack, job *nomadapi.Job) uint64 {
	t.Helper()
	id := *job.ID
	resp, _, err := s.Nomad.Jobs().Register(job, nil)
	require.NoError(t, err, "register %s", id)
	live, _, err := s.Nomad.Jobs().Info(id, nil)
	require.NoError(t, err, "read back %s", id)
	require.Equal(t, resp.JobModifyIndex, *live.JobModifyIndex, "%s changed under the test", id)
	return *live.Version
}

// jpWaitDeployed waits until the deployment of version of job id succeeds and returns it.
func jpWaitDeployed(t *testing.T, s *Stack, id string, version uint64) *nomadapi.Deployment {
	t.Helper()
	var last *nomadapi.Deployment
	WaitFor(t, jpDeployTimeout, fmt.Sprintf("the deployment of %s version %d to succeed", id, version), func() (bool, string) {
		d, _, err := s.Nomad.Jobs().LatestDeployment(id, nil)
		switch {
		case err != nil:
			return false, err.Error()
		case d == nil:
			return false, "no deployment"
		}
		seen := fmt.Sprintf("deployment %s of v%d: %s (%s)", d.ID[:8], d.JobVersion, d.Status, d.StatusDescription)
		if d.JobVersion == version && (d.Status == nomadapi.DeploymentStatusFailed || d.Status == nomadapi.DeploymentStatusCancelled) {
			t.Fatalf("%s", seen)
		}
		last = d
		return d.JobVersion == version && d.Status == nomadapi.DeploymentStatusSuccessful, seen
	})
	return last
}

// jpWaitInstances waits until Consul shows jpCount passing instances of svc under tag, each
// with every tag of want and none of gone. It watches with blocking queries, so it sees a
// change as soon as Consul has it.
func jpWaitInstances(t *testing.T, s *Stack, svc, tag string, want, gone []string) {
	t.Helper()
	var index uint64
	WaitFor(t, jpTagsTimeout, fmt.Sprintf("%d passing instances of %s tagged %v and not %v", jpCount, svc, want, gone), func() (bool, string) {
		entries, meta, err := s.Consul.Health().Service(svc, tag, true, &consulapi.QueryOptions{WaitIndex: index, WaitTime: time.Second})
		if err != nil {
			index = 0
			return false, err.Error()
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
		var seen []string
		ok := 0
		for _, e := range entries {
			seen = append(seen, fmt.Sprintf("%s %v", e.Service.ID, e.Service.Tags))
			if jpContainsAll(e.Service.Tags, want) && !jpContainsAny(e.Service.Tags, gone) {
				ok++
			}
		}
		return ok == jpCount && len(entries) == jpCount, fmt.Sprintf("%d passing: %s", len(entries), strings.Join(seen, "; "))
	})
}

// jpRunning returns the running allocations of job id with the start time of their task.
func jpRunning(t *testing.T, s *Stack, id string) map[string]time.Time {
	t.Helper()
	stubs, _, err := s.Nomad.Jobs().Allocations(id, false, nil)
	require.NoError(t, err, "allocations of %s", id)
	out := map[string]time.Time{}
	for _, stub := range stubs {
		if stub.DesiredStatus != nomadapi.AllocDesiredStatusRun || stub.ClientStatus != nomadapi.AllocClientStatusRunning {
			continue
		}
		a, _, err := s.Nomad.Allocations().Info(stub.ID, nil)
		require.NoError(t, err, "allocation %s", stub.ID)
		ts := a.TaskStates[jpTask]
		require.NotNil(t, ts, "task %s of allocation %s", jpTask, stub.ID)
		require.Equal(t, "running", ts.State, "task %s of allocation %s", jpTask, stub.ID)
		out[stub.ID] = ts.StartedAt
	}
	return out
}

// jpCheckEnv asks every passing instance of svc (GET /, which reports the env vars named by
// the show_env variable) for key, and checks it is want.
func jpCheckEnv(t *testing.T, s *Stack, svc, key, want string) {
	t.Helper()
	entries, _, err := s.Consul.Health().Service(svc, "", true, nil)
	require.NoError(t, err)
	require.Len(t, entries, jpCount)
	client := &http.Client{Timeout: 5 * time.Second}
	var got []string
	for _, e := range entries {
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		resp, err := client.Get("http://" + net.JoinHostPort(addr, strconv.Itoa(e.Service.Port)) + "/")
		require.NoError(t, err, "GET / of %s", e.Service.ID)
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "GET / of %s: %s", e.Service.ID, body)
		var info struct {
			Env map[string]string `json:"env"`
		}
		require.NoError(t, json.Unmarshal(body, &info), "GET / of %s: %s", e.Service.ID, body)
		got = append(got, info.Env[key])
	}
	sort.Strings(got)
	assert.Equal(t, slices.Repeat([]string{want}, jpCount), got, "%s of every instance of %s", key, svc)
}

func jpContainsAll(have, want []string) bool {
	return !slices.ContainsFunc(want, func(w string) bool { return !slices.Contains(have, w) })
}

func jpContainsAny(have, want []string) bool {
	return slices.ContainsFunc(want, func(w string) bool { return slices.Contains(have, w) })
}
