package e2e

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// promErrorRate is the ERROR_RATE production gets, and promRateWindow the window of the
// query's rate(): ten scrapes.
const (
	promErrorRate  = 0.05
	promRateWindow = "10s"
)

// TestPrometheusErrorRateByLane: the stack's Prometheus finds a site's lanes through Consul and
// labels their series by lane, site, service and slot; with ERROR_RATE=0.05 set on production
// (a slot setting) and both hosts under load through Fabio, the error rate by lane is about
// 0.05 for production's lane and 0 for staging's. Fabio's own metrics are scraped as well.
func TestPrometheusErrorRateByLane(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	promURL := stack.Prometheus(t)
	site := newSite(func(s *siteSpec) { s.vars = map[string]string{"show_env": "FEATURE,DB,ERROR_RATE"} })
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	prod, staging := site.host("production"), site.host("staging")
	lanes := d.laneJobs(site.name)
	waitServes(t, stack, prod, lanes["production"])
	waitServes(t, stack, staging, lanes["staging"])
	// The lane label is the lane's name, as its service meta slotd_lane has it: the job ID
	// <site>-<lane> without the site.
	label := func(slot string) string { return strings.TrimPrefix(lanes[slot], site.name+"-") }

	rate := fmt.Sprint(promErrorRate)
	require.NoError(t, d.client.SetSetting(ctx, site.name, "production", "ERROR_RATE", rate, false))
	waitAnswers(t, stack, prod, time.Minute, lanes["production"]+" with ERROR_RATE="+rate, func(a appAnswer) bool {
		return a.Lane == lanes["production"] && a.Env["ERROR_RATE"] == rate
	})
	waitIdle(t, d, site.name)

	began := time.Now()
	prodLoad := startSampler(t, stack, prod, 2, 3*time.Minute)
	stagingLoad := startSampler(t, stack, staging, 2, 3*time.Minute)

	// 5xx over all answers, by lane; "or … * 0" gives a lane that answered no 5xx a 0 rather
	// than no series.
	all := fmt.Sprintf(`sum by (lane) (rate(app_requests_total{site=%q}[%s]))`, site.name, promRateWindow)
	errorRate := fmt.Sprintf(`sum by (lane) (rate(app_requests_total{site=%q, code=~"5.."}[%s])) / %s or %s * 0`,
		site.name, promRateWindow, all, all)
	sel := fmt.Sprintf(`app_requests_total{site=%q}`, site.name)
	var got PromVector
	WaitFor(t, 2*time.Minute, "the error rate by lane: production's about "+rate+", staging's 0", func() (bool, string) {
		var err error
		got, err = PromQuery(ctx, promURL, errorRate)
		if err != nil {
			return false, err.Error()
		}
		byLane := map[string]float64{}
		for _, smp := range got {
			byLane[smp.Labels["lane"]] = smp.Value
		}
		p, okP := byLane[label("production")]
		s, okS := byLane[label("staging")]
		// The window must be full of load: a rate over the start of the load is no figure.
		full := time.Since(began) > 12*time.Second
		return full && okP && okS && math.Abs(p-promErrorRate) <= 0.02 && s == 0, got.String()
	})
	t.Logf("error rate by lane after %s of load: %s (production is lane %s)", time.Since(began).Round(time.Second), got, label("production"))

	// The figures the sampler saw agree: Fabio answered production's 500s as the app gave them.
	samples := prodLoad.snapshot()
	failed := 0
	for _, smp := range samples {
		if smp.status == 500 {
			failed++
		}
	}
	require.NotEmpty(t, samples)
	seen := float64(failed) / float64(len(samples))
	t.Logf("the production sampler: %d of %d requests answered 500 (%.3f)", failed, len(samples), seen)
	assert.InDelta(t, promErrorRate, seen, 0.02, "the share of 500s production's clients got")
	for _, smp := range stagingLoad.snapshot() {
		require.Equal(t, 200, smp.status, "staging has no ERROR_RATE: %s", smp)
	}

	// Each instance's series carries lane, site, service and slot.
	series, err := PromQuery(ctx, promURL, fmt.Sprintf(`count by (lane, site, service, slot, job) (%s)`, sel))
	require.NoError(t, err)
	t.Logf("series of the site's instances: %s", series)
	var labelled []string
	for _, smp := range series {
		l := smp.Labels
		labelled = append(labelled, l["lane"]+" "+l["slot"]+" "+l["site"]+" "+l["service"]+" "+l["job"])
	}
	slices.Sort(labelled)
	want := []string{
		label("production") + " production " + site.name + " " + site.name + " " + PromJobApps,
		label("staging") + " staging " + site.name + " " + site.name + " " + PromJobApps,
	}
	slices.Sort(want)
	assert.Equal(t, want, labelled)

	// What Fabio exports about the routes of this site.
	names, err := PromQuery(ctx, promURL, fmt.Sprintf(`count by (__name__) ({job=%q, host=%q})`, PromJobFabio, prod))
	require.NoError(t, err)
	t.Logf("fabio's series for host %s: %s", prod, names)
	routes, err := PromQuery(ctx, promURL, fmt.Sprintf(`fabio_route_count{host=%q}`, prod))
	require.NoError(t, err)
	t.Logf("fabio_route_count for host %s: %s", prod, routes)
	every, err := PromQuery(ctx, promURL, fmt.Sprintf(`count by (__name__) ({job=%q})`, PromJobFabio))
	require.NoError(t, err)
	t.Logf("every fabio metric: %s", every)
	routeCount := fmt.Sprintf(`sum(increase(fabio_route_count{host=%q}[%s]))`, prod, promRateWindow)
	appCount := fmt.Sprintf(`sum(increase(app_requests_total{site=%q, lane=%q}[%s]))`, site.name, label("production"), promRateWindow)
	fabioRoute, err := PromQuery(ctx, promURL, routeCount)
	require.NoError(t, err)
	appRequests, err := PromQuery(ctx, promURL, appCount)
	require.NoError(t, err)
	t.Logf("requests over %s: fabio's route to %s %s, the production lane's own count %s", promRateWindow, prod, fabioRoute, appRequests)
	require.Len(t, fabioRoute, 1, "fabio counts the requests of the route to %s", prod)
	require.Len(t, appRequests, 1)
	assert.InEpsilon(t, appRequests[0].Value, fabioRoute[0].Value, 0.2, "fabio's route count and the app's own count of production's requests")

	// Fabio's per-route figures by lane: its target is the instance's URL, the apps' instance
	// label its address.
	byLane, err := PromQuery(ctx, promURL, fmt.Sprintf(`sum by (lane) (
  label_replace(increase(fabio_route_count{host=%q}[%s]), "instance", "$1", "target", "http://([^/]+)/")
  * on (instance) group_left (lane) max by (instance, lane) (up{job=%q})
)`, prod, promRateWindow, PromJobApps))
	require.NoError(t, err)
	t.Logf("fabio's requests to %s over %s by lane: %s", prod, promRateWindow, byLane)
	require.Len(t, byLane, 1, "one lane serves %s", prod)
	assert.Equal(t, label("production"), byLane[0].Labels["lane"])
	assert.InEpsilon(t, fabioRoute[0].Value, byLane[0].Value, 0.05, "every request of the route is on production's lane")
	status, err := PromQuery(ctx, promURL, `sum by (code) (fabio_http_status_count)`)
	require.NoError(t, err)
	t.Logf("fabio's answers by status code, all routes: %s", status)
}

// TestOwnPrometheusStops: a test's own Prometheus scrapes Fabio like the shared one, and once
// stopped its queries fail to connect (what an analysis sees of a Prometheus that is down).
func TestOwnPrometheusStops(t *testing.T) {
	stack := Shared(t)
	t.Parallel()
	ctx := context.Background()
	p := stack.StartPrometheus(t)
	up, err := PromQuery(ctx, p.URL, `up{job="`+PromJobFabio+`"}`)
	require.NoError(t, err)
	require.Len(t, up, 1, "fabio is a target: %s", up)
	assert.Equal(t, 1.0, up[0].Value)

	require.NoError(t, p.Stop())
	_, err = PromQuery(ctx, p.URL, "up")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connection refused")
	require.NoError(t, p.Stop(), "a second Stop is harmless")
}
