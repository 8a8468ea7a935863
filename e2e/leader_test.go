package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/testcert"
)

// TestReloadAppliesNewRoutes: SIGHUP's reload with a new route for staging rolls it out to
// staging's lane (tags only), and Fabio serves the new host name.
func TestReloadAppliesNewRoutes(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	d := startDaemon(t, stack, site)
	stagingLane := d.laneJobs(site.name)["staging"]

	next := *d.cfg
	sites := []*config.Site{}
	for _, sc := range next.Sites {
		c := *sc
		c.Slots = nil
		for _, sl := range sc.Slots {
			sl2 := *sl
			if sl.Name == "staging" {
				sl2.Tags = append(append([]string(nil), sl.Tags...), "urlprefix-"+site.name+"-beta.test/")
			}
			c.Slots = append(c.Slots, &sl2)
		}
		sites = append(sites, &c)
	}
	next.Sites = sites
	require.NoError(t, d.agent.Reload(&next))
	waitServes(t, stack, site.name+"-beta.test", stagingLane)
	waitServes(t, stack, site.host("staging"), stagingLane)
}

// TestLeaderElection: two daemons on one KV prefix elect one leader; the other answers writes
// with 503 and the leader's address (which the client follows), and takes over when the leader
// stops.
func TestLeaderElection(t *testing.T) {
	stack := Shared(t)
	site := newSite()
	first := startDaemon(t, stack, site)

	second := &daemon{t: t, cfg: withHTTPAddress(first.cfg, freeAddr(t))}
	second.addr = second.cfg.HTTP.Address
	second.start()
	t.Cleanup(second.stop)
	client, err := api.NewClient(api.Config{Address: "http://" + second.addr})
	require.NoError(t, err)
	second.client = client
	ctx := context.Background()

	WaitFor(t, 30*time.Second, "the second daemon answering", func() (bool, string) {
		h, err := client.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		return !h.Leader && h.LeaderAddress != "", fmt.Sprintf("%+v", h)
	})
	// The standby refuses a write with the leader's address; the client sends it there.
	resp, err := http.Post("http://"+second.addr+"/v1/sites/"+site.name+"/swap", "application/json",
		strings.NewReader(`{"source": "staging", "target": "production"}`))
	require.NoError(t, err)
	var refusal api.ErrorResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&refusal))
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.True(t, strings.Contains(refusal.LeaderAddress, first.addr), "leader address %q names %s", refusal.LeaderAddress, first.addr)
	op, err := client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "a write sent to the standby reaches the leader")
	op, err = first.client.Wait(ctx, op.ID, nil)
	require.NoError(t, err)
	assert.Equal(t, api.StateSucceeded, op.State, op.Error)

	first.stop()
	second.waitReady(site.name)
	op = second.swap(site.name, "staging", "production")
	assert.Equal(t, api.StateSucceeded, op.State, op.Error)
}

// TestForwardOverTLS: two daemons serve their API over TLS (a self-signed certificate made by
// the test) and require a token. The standby's 503 names the leader by https, and a write with
// the token sent to the standby reaches the leader through a client that trusts the CA.
func TestForwardOverTLS(t *testing.T) {
	t.Parallel()
	stack := Shared(t)
	site := newSite(func(s *siteSpec) {
		s.tls = testcert.Write(t)
		s.token = "tok-" + Suffix()
	})
	first := startDaemon(t, stack, site)

	second := &daemon{t: t, cfg: withHTTPAddress(first.cfg, freeAddr(t))}
	second.addr = second.cfg.HTTP.Address
	second.start()
	t.Cleanup(second.stop)
	client, err := api.NewClient(api.Config{Address: site.apiURL(second.addr), Token: site.token, CACert: site.tls.CertFile})
	require.NoError(t, err)
	ctx := context.Background()
	WaitFor(t, 30*time.Second, "the second daemon answering as a standby", func() (bool, string) {
		h, err := client.Health(ctx)
		if err != nil {
			return false, err.Error()
		}
		return !h.Leader && h.LeaderAddress != "", fmt.Sprintf("%+v", h)
	})
	h, err := client.Health(ctx)
	require.NoError(t, err)
	assert.Equal(t, "https://"+first.addr, h.LeaderAddress, "the leader is named in the scheme it serves")

	op, err := client.Swap(ctx, site.name, api.SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err, "a write sent to the standby reaches the TLS leader")
	op, err = first.client.Wait(ctx, op.ID, nil)
	require.NoError(t, err)
	assert.Equal(t, api.StateSucceeded, op.State, op.Error)
}

func withHTTPAddress(cfg *config.Config, addr string) *config.Config {
	c := *cfg
	c.HTTP.Address = addr
	return &c
}
