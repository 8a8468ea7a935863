package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// outage is how long Consul or Nomad stays away in TestOutages.
const outage = 15 * time.Second

// TestOutages: Consul or Nomad cut off from slotd for 15 s in the middle of a swap (slotd
// reaches them through a FaultProxy; Nomad, Consul and Fabio keep talking to each other).
// Production answers every request, the swap ends (succeeded or failed, never stuck), and
// once the site is idle every slot is served by its bound lane with its own settings.
// /v1/health answers 503 and names the backend while it is cut, 200 once it is back.
func TestOutages(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	tests := []struct {
		name  string
		state string // the swap state in which the cut starts
		cut   string // "consul" or "nomad"
	}{
		{"consul cut during warm", api.StateWarming, "consul"},
		{"consul cut during switch", api.StateSwitching, "consul"},
		{"nomad cut during apply", api.StateApplying, "nomad"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			consul := NewFaultProxy(t, stack.ConsulAddr)
			nomad := NewFaultProxy(t, strings.TrimPrefix(stack.NomadAddr, "http://"))
			site := newSite(func(s *siteSpec) {
				s.consul, s.nomad = consul.Addr(), "http://"+nomad.Addr()
				s.vars = map[string]string{"startup_delay": "3s", "slow_first": "3", "slow_delay": "2s"}
				s.warmup = `paths = ["/", "/warm1", "/warm2"]
    statuses = [200]
    timeout = "10s"
    attempts = 3
    interval = "200ms"`
			})
			proxy := map[string]*FaultProxy{"consul": consul, "nomad": nomad}[tc.cut]
			d := startDaemon(t, stack, site)
			prod, staging := site.host("production"), site.host("staging")
			lanes := d.laneJobs(site.name)
			waitServes(t, stack, prod, lanes["production"])

			smp := startSampler(t, stack, prod, 4, 10*time.Minute)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			op, err := d.client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
			require.NoError(t, err)
			waitOpState(t, d, op.ID, tc.state, 3*time.Minute)
			proxy.Cut()
			cutAt := time.Now()
			t.Logf("%s cut in state %s", tc.cut, tc.state)
			// A health check on /v1/health goes critical while slotd cannot reach it.
			waitReach(t, d.client, tc.cut, api.Unreachable, outage)
			time.Sleep(time.Until(cutAt.Add(outage)))
			proxy.Heal()
			t.Logf("%s back", tc.cut)
			waitReach(t, d.client, tc.cut, api.Reachable, 30*time.Second)

			final := waitTerminal(ctx, t, d, op)
			t.Logf("swap %s: %s %s (%s)", final.ID, final.State, final.Error, phaseTimes(final))
			waitIdle(t, d, site.name)
			want := d.laneJobs(site.name)
			if final.State == api.StateSucceeded {
				assert.Equal(t, lanes["staging"], want["production"], "a swap that succeeded moved production")
			} else {
				assert.Equal(t, lanes["production"], want["production"], "a swap that failed left production where it was")
			}
			feature := map[bool]string{true: "staging-feature", false: "prod-feature"}[final.State == api.StateSucceeded]
			waitAnswers(t, stack, prod, 2*time.Minute, "production from its bound lane with its settings", func(a appAnswer) bool {
				return a.Lane == want["production"] && a.Env["DB"] == "prod-db" && a.Env["FEATURE"] == feature
			})
			waitAnswers(t, stack, staging, 2*time.Minute, "staging from its bound lane with its settings", func(a appAnswer) bool {
				return a.Lane == want["staging"] && a.Env["DB"] == "staging-db"
			})
			assertAllServed(t, smp, prod)
		})
	}
}

// waitReach waits until slotd's /v1/health says backend (consul or nomad) is in state (a
// Reach status), answering 503 while it is unreachable and 200 once both are reachable.
func waitReach(t testing.TB, c *api.Client, backend, state string, timeout time.Duration) {
	t.Helper()
	WaitFor(t, timeout, "/v1/health saying "+backend+" is "+state, func() (bool, string) {
		h, err := c.Health(context.Background())
		if err != nil {
			return false, err.Error()
		}
		reach := map[string]api.Reach{"consul": h.Consul, "nomad": h.Nomad}[backend]
		want := map[string]string{api.Unreachable: api.HealthFailing, api.Reachable: api.HealthOK}[state]
		return reach.Status == state && h.Status == want, fmt.Sprintf("status %s, %s %+v", h.Status, backend, reach)
	})
}
