package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// appInfo is what the test app's GET / answers.
type appInfo struct {
	Lane    string            `json:"lane"`
	Alloc   string            `json:"alloc"`
	Version string            `json:"version"`
	Slot    string            `json:"slot"`
	Env     map[string]string `json:"env"`
}

// TestTestAppThroughFabio runs the test app as a raw_exec job with a Consul service and HTTP
// check, sees it passing in Consul and reaches it through Fabio by its urlprefix- tag.
func TestTestAppThroughFabio(t *testing.T) {
	s := Shared(t)
	suffix := Suffix()
	id, host := "app-"+suffix, suffix+".test"

	job := s.TestAppJob(t, id, map[string]string{
		"service":     "svc-" + suffix,
		"app_version": "v7",
		"show_env":    "APP_VERSION",
	})
	job.TaskGroups[0].Services[0].Tags = append(job.TaskGroups[0].Services[0].Tags, "urlprefix-"+host+"/")
	_, _, err := s.Nomad.Jobs().Register(job, nil)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _, err := s.Nomad.Jobs().Deregister(id, true, nil)
		assert.NoError(t, err, "purge job %s", id)
	})

	// Both instances pass their checks in Consul, registered by the job's allocations.
	allocIDs := map[string]bool{}
	WaitFor(t, 90*time.Second, "2 passing instances of svc-"+suffix+" in Consul", func() (bool, string) {
		entries, _, err := s.Consul.Health().Service("svc-"+suffix, "", true, nil)
		if err != nil {
			return false, err.Error()
		}
		allocs, _, err := s.Nomad.Jobs().Allocations(id, false, nil)
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, a := range allocs {
			seen = append(seen, fmt.Sprintf("alloc %s %s", a.ID[:8], a.ClientStatus))
		}
		return len(entries) == 2, fmt.Sprintf("%d passing; %s", len(entries), strings.Join(seen, ", "))
	})
	allocs, _, err := s.Nomad.Jobs().Allocations(id, false, nil)
	require.NoError(t, err)
	for _, a := range allocs {
		if a.ClientStatus == nomadapi.AllocClientStatusRunning {
			allocIDs[a.ID] = true
		}
	}
	require.Len(t, allocIDs, 2, "running allocations of %s", id)

	// Fabio routes the host to the job: every answer names the lane and one of its allocs,
	// and round robin reaches both.
	reached := map[string]bool{}
	WaitFor(t, 30*time.Second, "fabio to route "+host+" to both allocations of "+id, func() (bool, string) {
		status, body, err := s.FabioGet(context.Background(), host, "/")
		if err != nil {
			return false, err.Error()
		}
		if status != 200 {
			return false, fmt.Sprintf("%d %s", status, body)
		}
		var got appInfo
		if err := json.Unmarshal(body, &got); err != nil {
			return false, fmt.Sprintf("not JSON (%v): %s", err, body)
		}
		assert.Equal(t, id, got.Lane)
		assert.Equal(t, "v7", got.Version)
		assert.Equal(t, map[string]string{"APP_VERSION": "v7"}, got.Env)
		assert.True(t, allocIDs[got.Alloc], "alloc %s is one of the job's running allocations", got.Alloc)
		reached[got.Alloc] = true
		return len(reached) == 2, fmt.Sprintf("reached %d allocation(s), last %s", len(reached), body)
	})

	// Another host is not routed to it.
	status, _, err := s.FabioGet(context.Background(), "other-"+host, "/")
	require.NoError(t, err)
	assert.Equal(t, 404, status, "a host without a route")
}

func TestBinaryMissingNamesMakeStack(t *testing.T) {
	t.Setenv("STACK_DIR", t.TempDir())
	for _, name := range []string{"consul", "nomad", "fabio"} {
		t.Run(name, func(t *testing.T) {
			_, err := Binary(name)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrMissingBinary)
			assert.Contains(t, err.Error(), "make stack")
			assert.Contains(t, err.Error(), name+"-"+versions[name])
		})
	}

	_, err := Start(context.Background())
	require.Error(t, err, "Start without binaries")
	assert.Contains(t, err.Error(), "make stack")
}

func TestBinaryFound(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("STACK_DIR", dir)
	require.NoError(t, os.MkdirAll(dir+"/nomad-"+NomadVersion, 0o755))
	require.NoError(t, os.WriteFile(dir+"/nomad-"+NomadVersion+"/nomad", []byte("#!/bin/sh\n"), 0o755))
	got, err := Binary("nomad")
	require.NoError(t, err)
	assert.Equal(t, dir+"/nomad-"+NomadVersion+"/nomad", got)

	_, err = Binary("vault")
	assert.Error(t, err)
}

func TestSuffix(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s := Suffix()
		assert.Regexp(t, `^[a-z][a-z0-9]{5}$`, s)
		seen[s] = true
	}
	assert.Greater(t, len(seen), 95, "suffixes are random")
}

func TestHCLVars(t *testing.T) {
	got := HCLVars(map[string]string{"b": `say "hi" ${x} %{y}`, "a": "/bin/app"})
	assert.Equal(t, "a = \"/bin/app\"\nb = \"say \\\"hi\\\" $${x} %%{y}\"\n", got)
}
