package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestSwapAppliesInOneBatch: the jobspec says max_parallel = 1 and each lane runs 4 instances.
// The candidate lane carries no public route during apply (production's preview tags only), so
// Nomad places its 4 new instances together: every allocation of apply's deployment was created
// before the first of them became healthy (one at a time, each would wait for the one before).
// Once it carries production's routes, the lane is back under the jobspec's max_parallel.
func TestSwapAppliesInOneBatch(t *testing.T) {
	t.Parallel()
	const instances = 4
	stack := Shared(t)
	site := newSite(func(s *siteSpec) { s.vars = map[string]string{"count": fmt.Sprint(instances)} })
	d := startDaemon(t, stack, site)
	lanes := d.laneJobs(site.name)
	waitSlot(t, d, site.name, "production", lanes["production"], instances)
	waitSlot(t, d, site.name, "staging", lanes["staging"], instances)

	candidate := lanes["staging"]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// A preview stops after apply, so apply's deployment is read as apply left it (the switch
	// updates the same allocations in place, into a deployment of its own).
	op := startPreview(ctx, t, d, site.name)

	applied, _, err := stack.Nomad.Jobs().Info(candidate, nil)
	require.NoError(t, err)
	preview := "urlprefix-" + site.preview("production") + "/"
	require.Equal(t, []string{"app", preview}, appTags(applied), "the candidate's tags in apply (version %d)", *applied.Version)
	assert.Equal(t, instances, *appGroup(applied).Update.MaxParallel, "apply's max_parallel (version %d)", *applied.Version)
	assert.Equal(t, "checks", *appGroup(applied).Update.HealthCheck, "Nomad's checks still gate apply")

	dep, _, err := stack.Nomad.Jobs().LatestDeployment(candidate, nil)
	require.NoError(t, err)
	require.NotNil(t, dep, "no deployment of %s", candidate)
	require.Equal(t, *applied.Version, dep.JobVersion, "the latest deployment of %s is apply's", candidate)
	assert.Equal(t, "successful", dep.Status, dep.StatusDescription)
	allocs, _, err := stack.Nomad.Deployments().Allocations(dep.ID, nil)
	require.NoError(t, err)
	require.Len(t, allocs, instances, "allocations of apply's deployment")
	var lastCreated, firstHealthy time.Time
	for _, a := range allocs {
		lastCreated = maxTime(lastCreated, time.Unix(0, a.CreateTime))
		require.NotNil(t, a.DeploymentStatus, "allocation %s has no deployment status", a.ID)
		require.NotNil(t, a.DeploymentStatus.Healthy, "allocation %s was never healthy", a.ID)
		if firstHealthy.IsZero() || a.DeploymentStatus.Timestamp.Before(firstHealthy) {
			firstHealthy = a.DeploymentStatus.Timestamp
		}
	}
	assert.True(t, lastCreated.Before(firstHealthy),
		"apply placed its instances in batches: the last was created at %s, after the first became healthy at %s",
		lastCreated.Format("15:04:05.000"), firstHealthy.Format("15:04:05.000"))

	op, err = d.client.Complete(ctx, op.ID)
	require.NoError(t, err, "complete the preview")
	op, err = d.client.Follow(ctx, op, func(o *api.Operation) bool { return api.Terminal(o.State) }, nil)
	require.NoError(t, err, "follow the completed swap")
	require.Equal(t, api.StateSucceeded, op.State, op.Error)
	t.Logf("completed: %s", phaseTimes(op))
	made, _, err := stack.Nomad.Jobs().Info(candidate, nil)
	require.NoError(t, err)
	require.Contains(t, appTags(made), "production", "the candidate's tags after the switch (version %d)", *made.Version)
	assert.Equal(t, 1, *appGroup(made).Update.MaxParallel, "the jobspec's max_parallel once the lane carries routes (version %d)", *made.Version)
	waitServes(t, stack, site.host("production"), candidate)
}

// appGroup is the job's task group "app" (the test app's only group).
func appGroup(job *nomadapi.Job) *nomadapi.TaskGroup {
	for _, g := range job.TaskGroups {
		if g.Name != nil && *g.Name == "app" {
			return g
		}
	}
	return &nomadapi.TaskGroup{}
}

// appTags are the tags of the service that group "app" registers.
func appTags(job *nomadapi.Job) []string {
	g := appGroup(job)
	if len(g.Services) == 0 {
		return nil
	}
	return g.Services[0].Tags
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
