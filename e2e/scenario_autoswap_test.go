package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestAutoSwap: staging declares auto_swap = "production"; a successful deploy into staging swaps
// it into production by itself.
func TestAutoSwap(t *testing.T) {
	stack := Shared(t)
	site := newSite(func(s *siteSpec) { s.autoSwap = true })
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	lanes := d.laneJobs(site.name)
	waitAnswers(t, stack, site.host("production"), 30*time.Second, "v1 from "+lanes["production"], func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Version == "v1"
	})

	deploy := d.run(func(ctx context.Context) (*api.Operation, error) {
		return d.client.Deploy(ctx, site.name, "staging", map[string]string{"app_version": "v2"})
	})
	require.Equal(t, api.StateSucceeded, deploy.State, "deploy into staging: %s", deploy.Error)

	var auto *api.Operation
	WaitFor(t, 5*time.Minute, "a finished swap with trigger auto_swap in the history", func() (bool, string) {
		hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
		if err != nil {
			return false, err.Error()
		}
		seen := ""
		for i := range hist {
			op := hist[i]
			seen += fmt.Sprintf("%s %s/%s/%s; ", op.ID, op.Kind, op.Trigger, op.State)
			if op.Kind == api.KindSwap && op.Trigger == "auto_swap" {
				auto = &op
				return true, ""
			}
		}
		if s, err := d.client.Site(ctx, site.name); err == nil && s.Operation != nil {
			seen += fmt.Sprintf("running: %s %s/%s/%s", s.Operation.ID, s.Operation.Kind, s.Operation.Trigger, s.Operation.State)
		}
		return false, seen
	})
	require.Equal(t, api.StateSucceeded, auto.State, "auto-swap %s: %s", auto.ID, auto.Error)
	assert.Equal(t, "staging", auto.Source)
	assert.Equal(t, "production", auto.Target)
	assert.True(t, auto.CreatedAt.After(*deploy.FinishedAt) || auto.CreatedAt.Equal(*deploy.FinishedAt), "the auto-swap started after the deploy ended")
	t.Logf("auto-swap: %s", phaseTimes(auto))

	next := d.laneJobs(site.name)
	assert.Equal(t, lanes["staging"], next["production"], "production is the lane deployed into staging")
	waitAnswers(t, stack, site.host("production"), 30*time.Second, "v2 from "+lanes["staging"]+" with production's sticky DB", func(a appAnswer) bool {
		return a.Lane == lanes["staging"] && a.Version == "v2" && a.Env["DB"] == "prod-db"
	})
	waitAnswers(t, stack, site.host("staging"), 30*time.Second, "v1 from "+lanes["production"], func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Version == "v1" && a.Env["DB"] == "staging-db"
	})
}
