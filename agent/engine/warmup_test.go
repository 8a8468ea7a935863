package engine

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/config"
)

// entryFor is a Consul service entry for the instance an httptest server stands for.
func entryFor(t testing.TB, srv *httptest.Server) *consulapi.ServiceEntry {
	t.Helper()
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	host, port, err := net.SplitHostPort(u.Host)
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	return &consulapi.ServiceEntry{
		Node:    &consulapi.Node{Address: host},
		Service: &consulapi.AgentService{ID: "web-b-1", Address: host, Port: p},
	}
}

// A redirect is a status like any other: the warm-up never follows it, checks it against the
// accepted statuses, and names it and its Location when it is not accepted.
func TestWarmInstancesRedirects(t *testing.T) {
	var followed atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		followed.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(target.Close)
	candidate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/healthz", http.StatusFound)
	}))
	t.Cleanup(candidate.Close)

	cases := []struct {
		name     string
		statuses []int
		client   *http.Client
		wantErr  []string // substrings of the error; none: warm
	}{
		{name: "302 not accepted: refused, named with its Location", statuses: []int{200},
			client: newWarmupClient(), wantErr: []string{"status 302", target.URL + "/healthz", "not followed"}},
		{name: "302 not accepted, whatever client the engine was given", statuses: []int{200},
			client: http.DefaultClient, wantErr: []string{"status 302", target.URL + "/healthz"}},
		{name: "the default statuses (200–399) accept a 302 as it is", statuses: config.DefaultWarmupStatuses(),
			client: newWarmupClient()},
		{name: "302 listed: accepted", statuses: []int{200, 302}, client: newWarmupClient()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			followed.Store(0)
			wu := &config.Warmup{Paths: []string{"/"}, Statuses: tc.statuses, Timeout: 5 * time.Second, Attempts: 2, Interval: time.Millisecond}
			err := warmInstances(context.Background(), tc.client, wu, []*consulapi.ServiceEntry{entryFor(t, candidate)})
			if len(tc.wantErr) == 0 {
				assert.NoError(t, err)
			} else {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					assert.Contains(t, err.Error(), s)
				}
			}
			assert.Zero(t, followed.Load(), "the redirect was followed")
		})
	}
}
