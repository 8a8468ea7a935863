package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestAllocStopMidApply: slotd runs as deploy/slotd.nomad.hcl (two instances); the leader's
// allocation is stopped, as `nomad alloc stop` does, while a swap applies a lane whose instances
// take 20 s each to start, so the phase runs past any grace. The daemon stops by itself within
// the job's kill_timeout (Nomad never kills it) and releases the lock; the standby (or the
// allocation Nomad starts in place of the stopped one, whichever takes the lock) finishes or
// undoes the swap, and production answers every request through Fabio meanwhile.
//
// Not parallel: the job and its Nomad variable have fixed names (slotd, nomad/jobs/slotd), which
// TestSlotdOnNomad uses too; Go runs the parallel tests only after this one.
func TestAllocStopMidApply(t *testing.T) {
	stack := Shared(t)
	site := newSite(func(s *siteSpec) { s.vars = map[string]string{"startup_delay": "20s"} })
	stack.PurgeSiteAtEnd(t, site.name)
	prod := site.host("production")
	archive := serveArchive(t, SlotdBinary(t))
	token := "tok-" + Suffix()
	jobspec, err := os.ReadFile(TestAppJobspec())
	require.NoError(t, err)
	slots := fmt.Sprintf("log_level = \"debug\"\nkv_prefix = %q\n", site.kvPrefix()) + site.siteHCL(t, "jobs/app.nomad.hcl")
	putVariable(t, stack, "nomad/jobs/slotd", map[string]string{"slots_hcl": slots, "app": string(jobspec), "api_token": token})
	t.Cleanup(func() { _, _, _ = stack.Nomad.Jobs().Deregister("slotd", true, nil) })
	nomadJob(t, stack, "run", "-detach", "-var", "driver=raw_exec", "-var", "artifact_url="+archive,
		"-var", "consul_address="+stack.ConsulAddr, "-var", "nomad_address="+stack.NomadAddr,
		"-var", `jobspecs=["app"]`, deployFile("slotd.nomad.hcl"))

	leader, standby := waitRoles(t, stack)
	t.Logf("leader %s, standby %s", leader, standby)
	d := &daemon{t: t, client: standbyClient(t, leader, token), addr: leader}
	d.waitReady(site.name)
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	smp := startSampler(t, stack, prod, 4, 10*time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	op, err := d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err)
	waitOpState(t, d, op.ID, api.StateApplying, 2*time.Minute)
	alloc, _, _ := strings.Cut(allocAt(t, stack, "slotd", leader), " ")
	_, err = stack.Nomad.Allocations().Stop(&nomadapi.Allocation{ID: alloc}, nil)
	require.NoError(t, err, "stop the leader's allocation")
	stopped := time.Now()

	// The standby, or the allocation Nomad starts in place of the stopped one, takes the lock.
	var successor string
	WaitFor(t, 2*time.Minute, "another instance to lead", func() (bool, string) {
		h, err := standbyClient(t, standby, token).Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		successor = strings.TrimPrefix(h.LeaderAddress, "http://")
		if h.Leader {
			successor = standby
		}
		return successor != "" && successor != leader, fmt.Sprintf("%+v", h)
	})
	t.Logf("%s leads %s after the stop (the standby was %s)", successor, time.Since(stopped).Round(time.Millisecond), standby)
	next := standbyClient(t, successor, token)

	// The stopped daemon ended by itself: its task exited on its own, before kill_timeout.
	WaitFor(t, time.Minute, "the stopped allocation's task to end", func() (bool, string) {
		a, _, err := stack.Nomad.Allocations().Info(alloc, nil)
		if err != nil {
			return false, err.Error()
		}
		ts := a.TaskStates["slotd"]
		return ts != nil && ts.State == "dead", fmt.Sprintf("%s %+v", a.ClientStatus, ts)
	})
	a, _, err := stack.Nomad.Allocations().Info(alloc, nil)
	require.NoError(t, err)
	var events []string
	for _, e := range a.TaskStates["slotd"].Events {
		events = append(events, fmt.Sprintf("%s exit=%d signal=%d %s", e.Type, e.ExitCode, e.Signal, e.DisplayMessage))
		if e.Type == nomadapi.TaskTerminated {
			assert.Equal(t, 0, e.ExitCode, "the daemon exited cleanly")
			assert.Zero(t, e.Signal, "the daemon was not killed by a signal")
		}
	}
	t.Logf("the stopped task's events: %s", strings.Join(events, "; "))
	logs := allocLogs(t, stack, alloc, "slotd", "-stderr")
	assert.Contains(t, logs, "agent stopped", "the daemon ran its stop to the end")

	final, err := next.Wait(ctx, op.ID, nil)
	require.NoError(t, err, "follow the swap on the new leader")
	t.Logf("swap %s ended: %s %q (%s)", op.ID, final.State, final.Error, phaseTimes(final))
	nd := &daemon{t: t, client: next, addr: successor}
	waitIdle(t, nd, site.name)
	now := nd.laneJobs(site.name)
	switch final.State {
	case api.StateSucceeded:
		assert.Equal(t, map[string]string{"production": lanes["staging"], "staging": lanes["production"]}, now, "the swap finished")
	default:
		assert.Equal(t, api.StateFailed, final.State)
		assert.Equal(t, lanes, now, "the swap was undone")
	}
	assertOnceInHistory(t, next, site.name, op.ID)
	assertAllServed(t, smp, prod)
}
