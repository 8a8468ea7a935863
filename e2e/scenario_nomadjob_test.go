package e2e

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestSlotdOnNomad runs slotd the way its users run everything else: deploy/slotd.nomad.hcl as
// shipped (the binary from a release archive, raw_exec), two instances of it, declarations and
// the site's jobspec from the Nomad variable nomad/jobs/slotd. Exactly one instance leads and
// the Consul tags say which; the site comes up and `slotd status` answers through the leader; a
// changed variable changes the site's routes without restarting an allocation. Then
// deploy/release.nomad.hcl as shipped, dispatched: a new version ends in production; a version
// whose warm-up fails ends with the dispatched job failed, slotd's reason in its log and
// production untouched.
func TestSlotdOnNomad(t *testing.T) {
	t.Parallel()
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.warmup = `paths = ["/", "/warm"]
    statuses = [200]
    timeout = "5s"
    attempts = 2
    interval = "200ms"`
	})
	stack.PurgeSiteAtEnd(t, site.name)
	archive := serveArchive(t, SlotdBinary(t))
	token := "tok-" + Suffix()

	jobspec, err := os.ReadFile(TestAppJobspec())
	require.NoError(t, err)
	slots := fmt.Sprintf("log_level = \"debug\"\nkv_prefix = %q\n", site.kvPrefix()) + site.siteHCL(t, "jobs/app.nomad.hcl")
	putVariable(t, stack, "nomad/jobs/slotd", map[string]string{"slots_hcl": slots, "app": string(jobspec), "api_token": token})
	putVariable(t, stack, "nomad/jobs/release", map[string]string{"api_token": token})
	t.Cleanup(func() {
		for _, job := range []string{"slotd", "release"} {
			_, _, _ = stack.Nomad.Jobs().Deregister(job, true, nil)
		}
	})
	nomadJob(t, stack, "run", "-detach", "-var", "driver=raw_exec", "-var", "artifact_url="+archive,
		"-var", "consul_address="+stack.ConsulAddr, "-var", "nomad_address="+stack.NomadAddr,
		"-var", `jobspecs=["app"]`, deployFile("slotd.nomad.hcl"))

	leader, standby := waitRoles(t, stack)
	t.Logf("leader %s, standby %s", leader, standby)
	client, err := api.NewClient(api.Config{Address: "http://" + leader, Token: token})
	require.NoError(t, err)
	d := &daemon{t: t, client: client, addr: leader}
	d.waitReady(site.name)
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, site.host("production"), lanes["production"])

	out, err := exec.Command(SlotdBinary(t), "status", "-address", "http://"+leader, "-token", token, site.name).CombinedOutput()
	require.NoError(t, err, "slotd status through the leader: %s", out)
	assert.Contains(t, string(out), lanes["production"], "status names production's lane job")
	req, err := http.NewRequest(http.MethodPost, "http://"+standby+"/v1/sites/"+site.name+"/rollback", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	h, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = h.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, h.StatusCode, "the standby sends writes to the leader")

	// A changed variable is a reload: staging gets a second route, nothing restarts.
	before := runningAllocs(t, stack, "slotd")
	extra := site.name + "-staging-2.test"
	route := fmt.Sprintf(`tags     = ["urlprefix-%s-staging.test/"]`, site.name)
	require.Contains(t, slots, route)
	slots = strings.Replace(slots, route, fmt.Sprintf(`tags     = ["urlprefix-%s-staging.test/", "urlprefix-%s/"]`, site.name, extra), 1)
	putVariable(t, stack, "nomad/jobs/slotd", map[string]string{"slots_hcl": slots, "app": string(jobspec), "api_token": token})
	waitAnswers(t, stack, extra, 2*time.Minute, "staging's lane on its new route", func(a appAnswer) bool {
		return a.Lane == lanes["staging"]
	})
	assert.Equal(t, before, runningAllocs(t, stack, "slotd"), "the reload restarted no allocation and no task")

	// Declarations with a mistake: every instance keeps the ones it has and says why.
	putVariable(t, stack, "nomad/jobs/slotd", map[string]string{"slots_hcl": slots + "\nsite {\n", "app": string(jobspec), "api_token": token})
	for _, alloc := range before {
		id, _, _ := strings.Cut(alloc, " ")
		WaitFor(t, time.Minute, "alloc "+id+" to refuse the broken declarations", func() (bool, string) {
			logs := allocLogs(t, stack, id, "slotd", "-stderr")
			return strings.Contains(logs, "reload: keeping the old config"), lastLine(logs)
		})
	}
	putVariable(t, stack, "nomad/jobs/slotd", map[string]string{"slots_hcl": slots, "app": string(jobspec), "api_token": token})
	waitAnswers(t, stack, extra, 10*time.Second, "staging's lane on its route still", func(a appAnswer) bool {
		return a.Lane == lanes["staging"]
	})
	assert.Equal(t, before, runningAllocs(t, stack, "slotd"), "no allocation restarted")

	// The leader's allocation stops: the standby leads and tags itself, Nomad starts another.
	first, _, _ := strings.Cut(allocAt(t, stack, "slotd", leader), " ")
	_, err = stack.Nomad.Allocations().Stop(&nomadapi.Allocation{ID: first}, nil)
	require.NoError(t, err)
	stopped := time.Now()
	WaitFor(t, 2*time.Minute, "the standby to lead", func() (bool, string) {
		h, err := standbyClient(t, standby, token).Health(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return h.Leader, fmt.Sprintf("%+v", h)
	})
	t.Logf("the standby leads %s after the leader's allocation was stopped", time.Since(stopped).Round(time.Millisecond))
	leader, standby = waitRoles(t, stack)
	t.Logf("leader %s, standby %s (%s after the stop)", leader, standby, time.Since(stopped).Round(time.Millisecond))

	// The release pipeline.
	nomadJob(t, stack, "run", "-detach", "-var", "driver=raw_exec", "-var", "artifact_url="+archive, deployFile("release.nomad.hcl"))
	status, logs := dispatchRelease(t, stack, map[string]string{"site": site.name, "version": "v2", "var": "app_version"})
	require.Equal(t, "complete", status, "release v2; its log:\n%s\nslotd in consul: %s", logs, slotdInstances(stack))
	waitAnswers(t, stack, site.host("production"), time.Minute, "v2 in production after the release", func(a appAnswer) bool {
		return a.Version == "v2" && a.Lane == lanes["staging"]
	})

	status, logs = dispatchRelease(t, stack, map[string]string{"site": site.name, "version": "v3", "var": "app_version", "vars": "fail_path=/warm"})
	require.Equal(t, "failed", status, "a release whose warm-up fails; its log:\n%s", logs)
	assert.Contains(t, logs, "/warm", "the job's log carries slotd's reason")
	t.Logf("failed release's log:\n%s", logs)
	waitAnswers(t, stack, site.host("production"), 10*time.Second, "v2 still in production", func(a appAnswer) bool {
		return a.Version == "v2" && a.Lane == lanes["staging"]
	})
}

// serveArchive serves a release archive (.tar.gz with binary at its root as slotd) on loopback
// and returns its URL.
func serveArchive(t *testing.T, binary string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "slotd_linux_amd64.tar.gz")
	f, err := os.Create(path)
	require.NoError(t, err)
	in, err := os.Open(binary)
	require.NoError(t, err)
	defer in.Close()
	fi, err := in.Stat()
	require.NoError(t, err)
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "slotd", Mode: 0o755, Size: fi.Size(), Typeflag: tar.TypeReg, ModTime: fi.ModTime()}))
	_, err = io.Copy(tw, in)
	require.NoError(t, err)
	require.NoError(t, tw.Close())
	require.NoError(t, zw.Close())
	require.NoError(t, f.Close())
	srv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(path))))
	t.Cleanup(srv.Close)
	return srv.URL + "/" + filepath.Base(path)
}

func deployFile(name string) string {
	return filepath.Join(filepath.Dir(sourceDir()), "deploy", name)
}

// nomadJob runs the nomad CLI against the stack, as an operator would.
func nomadJob(t *testing.T, stack *Stack, args ...string) string {
	t.Helper()
	bin, err := Binary("nomad")
	require.NoError(t, err)
	cmd := exec.Command(bin, append([]string{"job"}, args...)...)
	cmd.Env = append(os.Environ(), "NOMAD_ADDR="+stack.NomadAddr)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "nomad job %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

func putVariable(t *testing.T, stack *Stack, path string, items map[string]string) {
	t.Helper()
	_, _, err := stack.Nomad.Variables().Create(&nomadapi.Variable{Path: path, Items: items}, nil)
	require.NoError(t, err, "put nomad variable %s", path)
	t.Cleanup(func() { _, _ = stack.Nomad.Variables().Delete(path, nil) })
}

// waitRoles waits until the slotd service has two passing instances, one tagged leader and one
// standby, and returns their addresses.
func waitRoles(t *testing.T, stack *Stack) (leader, standby string) {
	t.Helper()
	WaitFor(t, 3*time.Minute, "two passing slotd instances, one tagged leader", func() (bool, string) {
		entries, _, err := stack.Consul.Health().Service("slotd", "", true, nil)
		if err != nil {
			return false, err.Error()
		}
		leader, standby = "", ""
		var seen []string
		for _, e := range entries {
			addr := fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port)
			seen = append(seen, addr+" "+strings.Join(e.Service.Tags, ","))
			switch {
			case slices.Contains(e.Service.Tags, "leader") && leader == "":
				leader = addr
			case slices.Contains(e.Service.Tags, "standby") && !slices.Contains(e.Service.Tags, "leader"):
				standby = addr
			default:
				return false, "more than one leader or an untagged instance: " + strings.Join(seen, "; ")
			}
		}
		return len(entries) == 2 && leader != "" && standby != "", strings.Join(seen, "; ")
	})
	return leader, standby
}

func slotdInstances(stack *Stack) string {
	entries, _, err := stack.Consul.Health().Service("slotd", "", false, nil)
	if err != nil {
		return err.Error()
	}
	var seen []string
	for _, e := range entries {
		seen = append(seen, fmt.Sprintf("%s:%d %v %s", e.Service.Address, e.Service.Port, e.Service.Tags, e.Checks.AggregatedStatus()))
	}
	return strings.Join(seen, "; ")
}

// runningAllocs lists a job's running allocations with their tasks' restart counts.
func runningAllocs(t *testing.T, stack *Stack, job string) []string {
	t.Helper()
	allocs, _, err := stack.Nomad.Jobs().Allocations(job, false, nil)
	require.NoError(t, err)
	var out []string
	for _, a := range allocs {
		if a.ClientStatus != nomadapi.AllocClientStatusRunning {
			continue
		}
		restarts := uint64(0)
		for _, ts := range a.TaskStates {
			restarts += ts.Restarts
		}
		out = append(out, fmt.Sprintf("%s restarts=%d", a.ID, restarts))
	}
	slices.Sort(out)
	return out
}

// allocAt is the running allocation of job whose service listens at addr.
func allocAt(t *testing.T, stack *Stack, job, addr string) string {
	t.Helper()
	entries, _, err := stack.Consul.Health().Service(job, "", false, nil)
	require.NoError(t, err)
	for _, e := range entries {
		if fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port) == addr {
			rest, _ := strings.CutPrefix(e.Service.ID, "_nomad-task-")
			return rest[:36]
		}
	}
	t.Fatalf("no instance of %s at %s", job, addr)
	return ""
}

func standbyClient(t *testing.T, addr, token string) *api.Client {
	c, err := api.NewClient(api.Config{Address: "http://" + addr, Token: token})
	require.NoError(t, err)
	return c
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// allocLogs reads a task's output (stream -stdout or -stderr) with the nomad CLI.
func allocLogs(t *testing.T, stack *Stack, alloc, task, stream string) string {
	t.Helper()
	bin, err := Binary("nomad")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "alloc", "logs", stream, alloc, task)
	cmd.Env = append(os.Environ(), "NOMAD_ADDR="+stack.NomadAddr)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "nomad alloc logs: %s", out)
	return string(out)
}

// dispatchRelease dispatches the release job and waits for its allocation to end; it returns
// the allocation's status and its task's output.
func dispatchRelease(t *testing.T, stack *Stack, meta map[string]string) (status, logs string) {
	t.Helper()
	resp, _, err := stack.Nomad.Jobs().Dispatch("release", meta, nil, "", nil)
	require.NoError(t, err)
	var alloc string
	WaitFor(t, 5*time.Minute, "dispatched release "+resp.DispatchedJobID+" to end", func() (bool, string) {
		allocs, _, err := stack.Nomad.Jobs().Allocations(resp.DispatchedJobID, false, nil)
		if err != nil || len(allocs) == 0 {
			return false, fmt.Sprintf("no allocation yet (%v)", err)
		}
		alloc, status = allocs[0].ID, allocs[0].ClientStatus
		return status == nomadapi.AllocClientStatusComplete || status == nomadapi.AllocClientStatusFailed, status
	})
	for _, stream := range []string{"-stdout", "-stderr"} {
		logs += allocLogs(t, stack, alloc, "release", stream)
	}
	return status, logs
}
