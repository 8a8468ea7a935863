package e2e

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestSwapBasic: bootstrap binds production to lane a and staging to lane b; one swap moves
// staging's app into production with production's sticky settings, and back.
func TestSwapBasic(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	ctx := context.Background()

	s, err := d.client.Site(ctx, site.name)
	require.NoError(t, err)
	lanes := map[string]string{}
	for _, sl := range s.Slots {
		lanes[sl.Name] = sl.Lane
	}
	prodLane, stagingLane := site.name+"-"+lanes["production"], site.name+"-"+lanes["staging"]
	waitServes(t, stack, site.host("production"), prodLane)
	waitServes(t, stack, site.host("staging"), stagingLane)

	op := d.swap(site.name, "staging", "production")
	require.Equal(t, api.StateSucceeded, op.State, "swap: %s", op.Error)
	waitServes(t, stack, site.host("production"), stagingLane)
	waitServes(t, stack, site.host("staging"), prodLane)

	_, ans, err := get(ctx, stack, site.host("production"))
	require.NoError(t, err)
	assert.Equal(t, "prod-db", ans.Env["DB"], "production's sticky setting stays with production")
	assert.Equal(t, "staging-feature", ans.Env["FEATURE"], "the swappable setting travels with the app")
	_, ans, err = get(ctx, stack, site.host("staging"))
	require.NoError(t, err)
	assert.Equal(t, "staging-db", ans.Env["DB"])
	assert.Equal(t, "prod-feature", ans.Env["FEATURE"])
}
