package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

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
	purged := false
	t.Cleanup(func() {
		if !purged {
			_, _, err := s.Nomad.Jobs().Deregister(id, true, nil)
			assert.NoError(t, err, "purge job %s", id)
		}
	})

	// Both instances pass their checks in Consul, and Nomad shows both allocations running.
	var allocIDs map[string]bool
	WaitFor(t, 90*time.Second, "2 passing instances of svc-"+suffix+" in Consul and 2 running allocations", func() (bool, string) {
		entries, _, err := s.Consul.Health().Service("svc-"+suffix, "", true, nil)
		if err != nil {
			return false, err.Error()
		}
		allocs, _, err := s.Nomad.Jobs().Allocations(id, false, nil)
		if err != nil {
			return false, err.Error()
		}
		allocIDs = map[string]bool{}
		var seen []string
		for _, a := range allocs {
			seen = append(seen, fmt.Sprintf("alloc %s %s", a.ID[:8], a.ClientStatus))
			if a.ClientStatus == nomadapi.AllocClientStatusRunning {
				allocIDs[a.ID] = true
			}
		}
		return len(entries) == 2 && len(allocIDs) == 2, fmt.Sprintf("%d passing; %s", len(entries), strings.Join(seen, ", "))
	})

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
		var got AppInfo
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

	// Purged, the job leaves Consul and Fabio's routes.
	_, _, err = s.Nomad.Jobs().Deregister(id, true, nil)
	require.NoError(t, err)
	purged = true
	WaitFor(t, 30*time.Second, "fabio to drop the route of "+host, func() (bool, string) {
		status, body, err := s.FabioGet(context.Background(), host, "/")
		if err != nil {
			return false, err.Error()
		}
		return status == 404, fmt.Sprintf("%d %s", status, body)
	})
	entries, _, err := s.Consul.Health().Service("svc-"+suffix, "", false, nil)
	require.NoError(t, err)
	assert.Empty(t, entries, "instances of svc-%s left in Consul", suffix)
}

func TestBinaryMissingNamesMakeStack(t *testing.T) {
	t.Setenv("STACK_DIR", t.TempDir())
	for _, name := range []string{"consul", "nomad", "fabio", "prometheus"} {
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

// fakeStack puts scripts named consul, nomad and fabio where Binary looks, each running body.
func fakeStack(t *testing.T, body string) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("STACK_DIR", dir)
	for name, version := range versions {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, name+"-"+version), 0o755))
		script := "#!/bin/sh\n" + body + "\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, name+"-"+version, name), []byte(script), 0o755))
	}
}

func TestStartFailsNamingATakenPort(t *testing.T) {
	fakeStack(t, "exit 1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	_, err = Start(context.Background(), WithPorts(Ports{FabioUI: port}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("port %d for the Fabio UI on 127.0.0.1 is taken", port))
}

func TestStartFailureQuotesTheLog(t *testing.T) {
	fakeStack(t, `for i in $(seq 1 30); do echo "line $i of a broken agent"; done; exit 3`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Start(ctx)
	require.Error(t, err)
	msg := err.Error()
	assert.Contains(t, msg, "consul exited early")
	assert.Contains(t, msg, "exit status 3")
	assert.Contains(t, msg, "line 30 of a broken agent")
	assert.Contains(t, msg, "line 11 of a broken agent")
	assert.NotContains(t, msg, "line 10 of a broken agent", "only the last lines")

	// The folder is kept for the logs, and the error says where.
	i := strings.Index(msg, "(logs kept in ")
	require.GreaterOrEqual(t, i, 0, msg)
	dir := strings.TrimSuffix(msg[i+len("(logs kept in "):], ")")
	assert.FileExists(t, filepath.Join(dir, "consul.log"))
	require.NoError(t, os.RemoveAll(dir))
}

func TestDescendantsAndKill(t *testing.T) {
	// sh starts a sleep in the background and waits: the sleep is a descendant of sh.
	cmd := exec.Command("/bin/sh", "-c", "sleep 300 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done })

	var found []procID
	WaitFor(t, 5*time.Second, "the sleep below sh", func() (bool, string) {
		found = descendants(cmd.Process.Pid)
		return len(found) == 1, fmt.Sprint(found)
	})
	require.True(t, found[0].alive())
	killAll(found)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	assert.Empty(t, waitGone(ctx, found), "the sleep is killed")
}
