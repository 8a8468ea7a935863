package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/cli"
)

// slotdCLI runs the slotd command line in-process against the daemon d.
func slotdCLI(t testing.TB, d *daemon, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{args[0], "-address", "http://" + d.addr}, args[1:]...)
	code = cli.Run(full, &out, &errb)
	t.Logf("slotd %s → exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

// waitIdle waits until no operation runs on the site.
func waitIdle(t testing.TB, d *daemon, site string) {
	t.Helper()
	WaitFor(t, 5*time.Minute, site+" idle", func() (bool, string) {
		s, err := d.client.Site(context.Background(), site)
		if err != nil {
			return false, err.Error()
		}
		if s.Operation != nil {
			return false, s.Operation.Kind + " " + s.Operation.State
		}
		return true, ""
	})
}

// TestCLI runs every command of DESIGN.md §7 against the real stack.
func TestCLI(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	name := site.name

	code, out, _ := slotdCLI(t, d, "status")
	require.Equal(t, 0, code)
	assert.Contains(t, out, name)
	assert.Contains(t, out, "production")

	code, out, _ = slotdCLI(t, d, "status", name, "-json")
	require.Equal(t, 0, code)
	var s api.Site
	require.NoError(t, json.Unmarshal([]byte(out), &s))
	assert.Equal(t, name, s.Name)
	assert.Len(t, s.Slots, 2)

	code, out, _ = slotdCLI(t, d, "settings", name, "staging")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "FEATURE")

	code, _, _ = slotdCLI(t, d, "settings", name, "staging", "set", "EXTRA=one")
	require.Equal(t, 0, code)
	code, out, _ = slotdCLI(t, d, "settings", name, "staging", "-json")
	require.Equal(t, 0, code)
	var set api.Settings
	require.NoError(t, json.Unmarshal([]byte(out), &set))
	assert.Equal(t, "one", set.Settings["EXTRA"])
	waitIdle(t, d, name)
	code, _, _ = slotdCLI(t, d, "settings", name, "staging", "unset", "EXTRA")
	require.Equal(t, 0, code)
	waitIdle(t, d, name)

	code, out, _ = slotdCLI(t, d, "deploy", name, "staging", "-var", "app_version=v2", "-json")
	require.Equal(t, 0, code)
	var op api.Operation
	require.NoError(t, json.Unmarshal([]byte(out), &op))
	assert.Equal(t, api.StateSucceeded, op.State)
	assert.Equal(t, api.KindDeploy, op.Kind)

	code, out, _ = slotdCLI(t, d, "swap", name, "staging", "production", "-json")
	require.Equal(t, 0, code)
	require.NoError(t, json.Unmarshal([]byte(out), &op))
	assert.Equal(t, api.StateSucceeded, op.State)
	_, ans, err := get(context.Background(), stack, site.host("production"))
	require.NoError(t, err)
	assert.Equal(t, "v2", ans.Version)

	code, out, _ = slotdCLI(t, d, "rollback", name)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "succeeded")

	code, out, _ = slotdCLI(t, d, "swap", name, "staging", "-preview")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "-complete")
	code, _, _ = slotdCLI(t, d, "swap", "-complete", name)
	require.Equal(t, 0, code)

	code, _, _ = slotdCLI(t, d, "swap", name, "staging", "-preview")
	require.Equal(t, 0, code)
	code, out, _ = slotdCLI(t, d, "swap", "-cancel", name)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "cancelled")

	var vout, verr bytes.Buffer
	require.Equal(t, 0, cli.Run([]string{"validate", d.cfg.Files[0]}, &vout, &verr), verr.String())
	assert.Contains(t, vout.String(), "1 site, 2 slots")

	code, out, _ = slotdCLI(t, d, "swap", name, "staging", "-detach", "-json")
	require.Equal(t, 0, code)
	require.NoError(t, json.Unmarshal([]byte(out), &op))
	code, out, _ = slotdCLI(t, d, "follow", op.ID)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "succeeded")

	code, out, _ = slotdCLI(t, d, "history", name, "-json")
	require.Equal(t, 0, code)
	var hist []api.Operation
	require.NoError(t, json.Unmarshal([]byte(out), &hist))
	kinds := map[string]int{}
	for _, h := range hist {
		kinds[h.Kind]++
	}
	assert.GreaterOrEqual(t, kinds[api.KindSwap], 3, "history: %v", kinds)
	assert.Equal(t, 1, kinds[api.KindRollback])
	assert.Equal(t, 1, kinds[api.KindDeploy])

	// A failed swap exits 1 with its reason.
	code, _, _ = slotdCLI(t, d, "deploy", name, "staging", "-var", "fail_path=/")
	require.Equal(t, 0, code)
	code, _, errOut := slotdCLI(t, d, "swap", name, "staging")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut+out, "warm")

	code, _, _ = slotdCLI(t, d, "swap", name)
	assert.Equal(t, 2, code, "a swap without a source is a usage error")
}

// TestTokenRequired: with a token configured, writes without it get 401 and change nothing.
func TestTokenRequired(t *testing.T) {
	stack := Shared(t)
	site := newSite(func(s *siteSpec) { s.token = "t0ken-" + Suffix() })
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	open, err := api.NewClient(api.Config{Address: "http://" + d.addr})
	require.NoError(t, err)
	wrong, err := api.NewClient(api.Config{Address: "http://" + d.addr, Token: "wrong"})
	require.NoError(t, err)

	before, err := d.client.Settings(ctx, site.name, "staging")
	require.NoError(t, err)
	for _, c := range []*api.Client{open, wrong} {
		err = c.SetSetting(ctx, site.name, "staging", "FEATURE", "hacked", false)
		var se *api.StatusError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 401, se.Code)
		_, err = c.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 401, se.Code)
		_, err = c.Deploy(ctx, site.name, "staging", nil)
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 401, se.Code)
	}
	after, err := d.client.Settings(ctx, site.name, "staging")
	require.NoError(t, err)
	assert.Equal(t, before, after, "a refused write changed nothing")
	hist, err := d.client.History(ctx, site.name, api.HistoryPage{})
	require.NoError(t, err)
	assert.Empty(t, hist, "a refused write started nothing")

	code, _, errOut := slotdCLI(t, d, "settings", site.name, "staging", "set", "FEATURE=x")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "401")
	code, _, _ = slotdCLI(t, d, "settings", site.name, "staging", "set", "FEATURE=x", "-token", site.token)
	assert.Equal(t, 0, code)
	got, err := d.client.Settings(ctx, site.name, "staging")
	require.NoError(t, err)
	assert.Equal(t, "x", got.Settings["FEATURE"])
}
