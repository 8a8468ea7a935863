package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// statusLeader serves GET /v1/status/leader, as Consul and Nomad do, with the given answer.
func statusLeader(t testing.TB, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status/leader" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// hanging accepts requests and never answers them until the test ends.
func hanging(t testing.TB) string {
	t.Helper()
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(func() { close(stop); srv.Close() })
	return srv.URL
}

func health(t testing.TB, a *Agent) (int, api.Health) {
	t.Helper()
	rec := httptest.NewRecorder()
	a.server.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/health", nil))
	var h api.Health
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &h), "a JSON health body, whatever the status: %s", rec.Body.String())
	return rec.Code, h
}

func TestHealthProbes(t *testing.T) {
	up := statusLeader(t, `"127.0.0.1:8300"`)
	tests := []struct {
		name          string
		consul, nomad string
		code          int
		want          map[string]string // backend → reach status
		errs          map[string]string // backend → part of the error
	}{
		{name: "both reachable", consul: up, nomad: up, code: 200,
			want: map[string]string{"consul": api.Reachable, "nomad": api.Reachable}},
		{name: "consul refuses connections", consul: "http://127.0.0.1:1", nomad: up, code: 503,
			want: map[string]string{"consul": api.Unreachable, "nomad": api.Reachable},
			errs: map[string]string{"consul": "connection refused"}},
		{name: "nomad without a cluster leader", consul: up, nomad: statusLeader(t, `""`), code: 503,
			want: map[string]string{"consul": api.Reachable, "nomad": api.Unreachable},
			errs: map[string]string{"nomad": "no leader"}},
		{name: "consul hangs past the probe's deadline", consul: hanging(t), nomad: up, code: 503,
			want: map[string]string{"consul": api.Unreachable, "nomad": api.Reachable},
			errs: map[string]string{"consul": "deadline exceeded"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := backendAgent(t, "", strings.TrimPrefix(tc.consul, "http://"), tc.nomad)
			code, h := health(t, a)
			assert.Equal(t, 200, code, "before the first probe")
			assert.Equal(t, api.ReachUnknown, h.Consul.Status)
			assert.Equal(t, api.ReachUnknown, h.Nomad.Status)

			a.probe(context.Background())
			code, h = health(t, a)
			assert.Equal(t, tc.code, code)
			got := map[string]api.Reach{"consul": h.Consul, "nomad": h.Nomad}
			for backend, status := range tc.want {
				assert.Equal(t, status, got[backend].Status, backend)
				assert.NotNil(t, got[backend].CheckedAt, backend)
				assert.Contains(t, got[backend].Error, tc.errs[backend], backend)
			}
			if tc.code == 200 {
				assert.Equal(t, api.HealthOK, h.Status)
			} else {
				assert.Equal(t, api.HealthFailing, h.Status)
			}
		})
	}
}

// runEngine runs the engine of a (not the leader election) until the test ends.
func runEngine(t testing.TB, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.engine.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func TestHealthSites(t *testing.T) {
	a := offlineAgent(t, "")
	runEngine(t, a)
	_, h := health(t, a)
	assert.Equal(t, map[string]string{"web": api.SiteStandby}, h.Sites, "a daemon that does not lead")

	// A leadership whose sites cannot be brought up: Consul is not there.
	lead, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a.engine.Lead(lead)
	_, h = health(t, a)
	assert.Equal(t, map[string]string{"web": api.SiteStarting}, h.Sites, "leading, the site not brought up")
}

// offlineAgent is an agent that leads nothing and reaches no Consul: every request that gets
// past input checks answers 503.
func offlineAgent(t testing.TB, token string) *Agent {
	t.Helper()
	return backendAgent(t, token, "127.0.0.1:1", "http://127.0.0.1:1")
}

// backendAgent is an agent on the given Consul and Nomad addresses with one site, web, that it
// does not run: nothing started, its HTTP handler called directly.
func backendAgent(t testing.TB, token, consul, nomad string) *Agent {
	t.Helper()
	cfg := config.Default()
	cfg.HTTP.Address = "127.0.0.1:0"
	cfg.HTTP.Token = token
	cfg.Consul.Address = consul
	cfg.Nomad.Address = nomad
	cfg.Sites = []*config.Site{{
		Name: "web", Service: "web", Job: "/nonexistent.nomad.hcl",
		Slots: []*config.Slot{{Name: "production"}, {Name: "staging"}},
	}}
	a, err := New(cfg, hclog.NewNullLogger())
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.server.Close() })
	return a
}
