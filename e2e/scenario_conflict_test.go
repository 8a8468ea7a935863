package e2e

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestConflict: while a swap runs on a site, another swap (or a deploy) on that site is refused
// with 409; a swap on another site of the same daemon proceeds at the same time.
func TestConflict(t *testing.T) {
	stack := Shared(t)
	siteA, siteB := newSite(), newSite()
	d := startDaemonSites(t, stack, siteA, siteB)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	lanesA, lanesB := d.laneJobs(siteA.name), d.laneJobs(siteB.name)

	opA, err := d.client.Swap(ctx, siteA.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "start a swap on %s", siteA.name)

	_, err = d.client.Swap(ctx, siteA.name, api.SwapRequest{Source: "staging", Target: "production"})
	var se *api.StatusError
	if assert.True(t, errors.As(err, &se), "a second swap on %s: want a 409, got %v", siteA.name, err) {
		assert.Equal(t, http.StatusConflict, se.Code, "a second swap on %s: %s", siteA.name, se.Message)
	}
	_, err = d.client.Deploy(ctx, siteA.name, "staging", map[string]string{"app_version": "v2"})
	if assert.True(t, errors.As(err, &se), "a deploy on %s during its swap: want a 409, got %v", siteA.name, err) {
		assert.Equal(t, http.StatusConflict, se.Code, "a deploy on %s during its swap: %s", siteA.name, se.Message)
	}

	opB, err := d.client.Swap(ctx, siteB.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "a swap on %s while %s swaps", siteB.name, siteA.name)
	cur, err := d.client.Operation(ctx, opA.ID, 0)
	require.NoError(t, err)
	assert.False(t, api.Terminal(cur.State), "the swap on %s still ran when the swap on %s started (%s)", siteA.name, siteB.name, cur.State)

	opA, err = d.client.Wait(ctx, opA.ID, nil)
	require.NoError(t, err, "wait for the swap on %s", siteA.name)
	opB, err = d.client.Wait(ctx, opB.ID, nil)
	require.NoError(t, err, "wait for the swap on %s", siteB.name)
	require.Equal(t, api.StateSucceeded, opA.State, "swap on %s: %s", siteA.name, opA.Error)
	require.Equal(t, api.StateSucceeded, opB.State, "swap on %s: %s", siteB.name, opB.Error)
	t.Logf("%s: %s", siteA.name, phaseTimes(opA))
	t.Logf("%s: %s", siteB.name, phaseTimes(opB))
	// The two swaps overlapped: B's started before A's ended.
	require.NotNil(t, opA.FinishedAt)
	assert.True(t, opB.CreatedAt.Before(*opA.FinishedAt), "the swaps of two sites ran in parallel")

	waitServes(t, stack, siteA.host("production"), lanesA["staging"])
	waitServes(t, stack, siteB.host("production"), lanesB["staging"])
	hist, err := d.client.History(ctx, siteA.name, api.HistoryPage{})
	require.NoError(t, err)
	swaps := 0
	for _, op := range hist {
		if op.Kind == api.KindSwap || op.Kind == api.KindDeploy {
			swaps++
		}
	}
	assert.Equal(t, 1, swaps, "the refused operations left no trace in %s's history", siteA.name)
}
