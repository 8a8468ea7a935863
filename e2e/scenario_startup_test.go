package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/internal/failpoint"
)

// TestWritesWaitForStart: right after `slotd agent` starts, the site is still starting (its
// boot held 3 s by a failpoint, then its lanes are started): a raw API write answers 503 with
// Retry-After and says the site is starting, /v1/health says "starting", and `slotd swap`
// issued 0.5 s after the start waits, with one line saying so, and succeeds.
func TestWritesWaitForStart(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	site := newSite()
	p := launchProcDaemon(t, stack, site, failpoint.Env+"=site.boot=sleep(3s)")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	type cliResult struct {
		err            error
		stdout, stderr string
	}
	bin := SlotdBinary(t)
	swapped := make(chan cliResult, 1)
	go func() {
		time.Sleep(time.Until(p.started.Add(500 * time.Millisecond)))
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, "swap", site.name, "staging", "production", "-address", "http://"+p.addr)
		cmd.Env = agentEnv(os.Environ())
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		swapped <- cliResult{err, stdout.String(), stderr.String()}
	}()

	// Every write until the site is up is refused with 503 and Retry-After: first maybe as "no
	// leader known yet", then as "starting".
	url := "http://" + p.addr + "/v1/sites/" + site.name + "/swap"
	var refusals []string
	WaitFor(t, time.Minute, "a raw swap refused because the site is starting", func() (bool, string) {
		p.exitCheck("a refused swap")
		resp, err := http.Post(url, "application/json", strings.NewReader(`{"source":"staging","target":"production"}`))
		if err != nil {
			return false, err.Error() // not listening yet
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e api.ErrorResponse
		require.NoError(t, json.Unmarshal(b, &e), "a JSON error: %s", b)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "a write while the daemon starts: %s", b)
		require.Equal(t, "2", resp.Header.Get("Retry-After"), "Retry-After of %q", e.Error)
		if len(refusals) == 0 || refusals[len(refusals)-1] != e.Error {
			refusals = append(refusals, e.Error)
		}
		return strings.HasPrefix(e.Error, "site "+site.name+" is starting;"), e.Error
	})
	t.Logf("refusals seen while starting: %q", refusals)
	h, err := p.client.Health(ctx)
	require.NoError(t, err)
	assert.True(t, h.Leader, "it refused as starting, so it leads")
	assert.Equal(t, api.SiteStarting, h.Sites[site.name], "the site in /v1/health while starting")

	var res cliResult
	select {
	case res = <-swapped:
	case <-ctx.Done():
		t.Fatalf("slotd swap did not end%s", p.tail())
	}
	t.Logf("slotd swap → %v\nstdout:\n%s\nstderr:\n%s", res.err, res.stdout, res.stderr)
	require.NoError(t, res.err, "slotd swap issued 0.5 s after the start%s", p.tail())
	waits := 0
	for line := range strings.Lines(res.stderr) {
		if strings.HasSuffix(line, "; waiting up to 2m0s\n") {
			waits++
		}
	}
	assert.Equal(t, 1, waits, "one line saying that it waits, in:\n%s", res.stderr)
	assert.Contains(t, res.stdout, "succeeded")

	s, err := p.client.Site(ctx, site.name)
	require.NoError(t, err)
	require.NotNil(t, s.LastOperation)
	assert.Equal(t, api.KindSwap, s.LastOperation.Kind)
	assert.Equal(t, api.StateSucceeded, s.LastOperation.State)
	h, err = p.client.Health(ctx)
	require.NoError(t, err)
	assert.Equal(t, api.HealthOK, h.Status)
	assert.Equal(t, map[string]string{site.name: api.SiteReady}, h.Sites)
	assert.Equal(t, api.Reachable, h.Consul.Status)
	assert.Equal(t, api.Reachable, h.Nomad.Status)
}
