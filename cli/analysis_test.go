package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// measured builds an evaluation of analysis name in phase, sec seconds after t0.
func measured(name, phase string, sec float64, value *float64, verdict, msg string) api.Measurement {
	return api.Measurement{Analysis: name, Phase: phase, At: *at(sec), Value: value, Verdict: verdict, Message: msg}
}

func val(v float64) *float64 { return &v }

const unreachable = "Prometheus unreachable: dial tcp 127.0.0.1:9090: connect: connection refused"

// A swap judged by its analyses, version by version: one before the switch, then the monitor
// window, where errors fails.
var (
	warmPassed    = measured("errors", "warm", 2.5, val(0.001), api.VerdictPass, "0.001 ≤ max 0.01")
	monitorPassed = measured("errors", "monitor", 13.1, val(0.0021), api.VerdictPass, "0.0021 ≤ max 0.01")
	monitorFailed = measured("errors", "monitor", 23.1, val(0.052), api.VerdictFail, "0.052 > max 0.01")
	latencyNone   = measured("latency", "monitor", 23.2, nil, api.VerdictInconclusive, unreachable)

	analysedPhases = func(monitor api.Phase) []api.Phase {
		return []api.Phase{phase("warm", "succeeded", 0, 2, ""), phase("switch", "succeeded", 3, 3.1, ""), monitor}
	}
	analysedMonitoring = withMeasurements(swapOp(6, api.StateMonitoring, analysedPhases(phase("monitor", "running", 3.1, -1, ""))...), warmPassed)
	analysedMeasured   = withMeasurements(swapOp(7, api.StateMonitoring, analysedPhases(phase("monitor", "running", 3.1, -1, ""))...), warmPassed, monitorPassed)
	analysedFailed     = withMeasurements(withError(swapOp(8, api.StateFailed, analysedPhases(phase("monitor", "failed", 3.1, 23.3, "analysis errors failed"))...),
		"monitor: analysis errors failed"), warmPassed, monitorPassed, monitorFailed, latencyNone)
)

func withMeasurements(op api.Operation, ms ...api.Measurement) api.Operation {
	op.Measurements = ms
	return op
}

func withWaiting(op api.Operation, why string) api.Operation { op.Waiting = why; return op }

const (
	gateRefused = "gate before-switch refused: 403 Forbidden: change freeze"
	noMeasure   = `analysis "errors" measured nothing in 3 evaluation(s) before the switch (last: no data); on_inconclusive = "pause" holds the swap`
)

// TestFollowerPrintsAnalyses: each measurement is one line, printed once, in the order it was
// taken among the phases' lines; why an operation waits, when it appears or changes.
func TestFollowerPrintsAnalyses(t *testing.T) {
	analysedLines := `swap op-1: web staging -> production
==> warm: started
==> warm: succeeded in 2s
    analysis errors (warm): 0.001 ≤ max 0.01  pass
==> switch: started
==> switch: succeeded in 100ms
==> monitor: started
    analysis errors (monitor): 0.0021 ≤ max 0.01  pass
    analysis errors (monitor): 0.052 > max 0.01  FAIL
    analysis latency (monitor): inconclusive: ` + unreachable + `
==> monitor: failed after 20.2s: analysis errors failed
swap op-1 failed after 12.1s: monitor: analysis errors failed
`
	waitingWarmed := swapOp(5, api.StatePreviewing, phase("apply", "succeeded", 0, 3.2, ""), phase("warm", "succeeded", 3.2, 5, ""))
	cases := []struct {
		name     string
		versions []api.Operation
		want     string
		code     int
	}{
		{
			name:     "measurements as they arrive",
			versions: []api.Operation{analysedMonitoring, analysedMeasured, analysedMeasured, analysedFailed},
			want:     analysedLines,
			code:     1,
		},
		{
			name:     "a finished swap followed reads in the order things happened",
			versions: []api.Operation{analysedFailed},
			want:     analysedLines,
			code:     1,
		},
		{
			name: "a measurement dropped from the newest kept is not printed again",
			versions: []api.Operation{analysedMeasured,
				withMeasurements(analysedFailed, monitorPassed, monitorFailed, latencyNone)},
			want: analysedLines,
			code: 1,
		},
		{
			name:     "a swap waiting for its gate says why and how to go on",
			versions: []api.Operation{swapWarming, withWaiting(waitingWarmed, gateRefused)},
			want: `swap op-1: web staging -> production
==> apply: started
==> apply: succeeded in 3.2s (3/3 instances healthy)
==> warm: started
==> warm: succeeded in 1.8s
    waiting: ` + gateRefused + `; slotd swap -complete web to go on, -cancel to undo
swap op-1 is previewing: staging's candidate is on production's preview routes.
  finish the swap:  slotd swap -complete web
  cancel it:        slotd swap -cancel web
`,
		},
		{
			name: "a new reason to wait is printed, the same one once",
			versions: []api.Operation{
				withWaiting(waitingWarmed, noMeasure),
				withWaiting(swapOp(6, api.StatePreviewing, waitingWarmed.Phases...), noMeasure),
				withWaiting(swapOp(7, api.StatePreviewing, waitingWarmed.Phases...), gateRefused),
				swapOp(8, api.StateSucceeded, waitingWarmed.Phases...),
			},
			want: `swap op-1: web staging -> production
==> apply: started
==> apply: succeeded in 3.2s
==> warm: started
==> warm: succeeded in 1.8s
    waiting: ` + noMeasure + `; slotd swap -complete web to go on, -cancel to undo
    waiting: ` + gateRefused + `; slotd swap -complete web to go on, -cancel to undo
swap op-1 succeeded in 12.1s
`,
		},
		{
			name:     "a group waits for the -group form",
			versions: []api.Operation{withWaiting(groupPreview, "gate before-switch of site blog refused: 403 Forbidden")},
			want: `swap op-g: group storefront (web, blog) staging -> production (preview)
    site web (op-w): previewing
    site blog (op-b): previewing
    waiting: gate before-switch of site blog refused: 403 Forbidden; slotd swap -complete -group storefront to go on, -cancel to undo
swap op-g is previewing: staging's candidate is on production's preview routes.
  finish the swap:  slotd swap -complete -group storefront
  cancel it:        slotd swap -cancel -group storefront
`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			f := newFollower(&out, func() time.Time { return now }, false)
			for i := range tc.versions {
				f.update(&tc.versions[i])
			}
			code := f.finish(&tc.versions[len(tc.versions)-1], false)
			assert.Equal(t, tc.want, out.String())
			assert.Equal(t, tc.code, code)
		})
	}
}

func TestMeasurementText(t *testing.T) {
	cases := []struct {
		name string
		m    api.Measurement
		want string
	}{
		{"pass", monitorPassed, "analysis errors (monitor): 0.0021 ≤ max 0.01  pass"},
		{"fail", monitorFailed, "analysis errors (monitor): 0.052 > max 0.01  FAIL"},
		{"inconclusive", latencyNone, "analysis latency (monitor): inconclusive: " + unreachable},
		{"inconclusive without a reason", measured("latency", "warm", 1, nil, api.VerdictInconclusive, ""), "analysis latency (warm): inconclusive"},
		{"a value without a message, compact", measured("p99", "monitor", 1, val(0.31234567), api.VerdictPass, ""), "analysis p99 (monitor): 0.3123  pass"},
		{"a large value", measured("rps", "monitor", 1, val(123456.7), api.VerdictFail, ""), "analysis rps (monitor): 1.235e+05  FAIL"},
		{"nothing but the verdict", measured("rps", "monitor", 1, nil, api.VerdictPass, ""), "analysis rps (monitor): pass"},
		{"nothing but a failing verdict", measured("rps", "monitor", 1, nil, api.VerdictFail, ""), "analysis rps (monitor): FAIL"},
		{"a verdict this CLI does not know", measured("rps", "", 1, val(2), "skipped", ""), "analysis rps: 2  skipped"},
		{"a member site's, in a group operation", func() api.Measurement {
			m := monitorFailed
			m.Site = "shop"
			return m
		}(), "analysis shop/errors (monitor): 0.052 > max 0.01  FAIL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, measurementText(tc.m))
		})
	}
}

func TestAnalysesText(t *testing.T) {
	cases := []struct {
		name string
		ms   []api.Measurement
		want string
	}{
		{"nothing measured", nil, ""},
		{"one analysis", []api.Measurement{warmPassed, monitorPassed}, "errors 2 pass"},
		{"verdicts in a fixed order, analyses as first measured",
			[]api.Measurement{latencyNone, monitorFailed, warmPassed, monitorFailed, monitorPassed, latencyNone,
				measured("latency", "monitor", 30, val(0.2), api.VerdictPass, "")},
			"latency 1 pass/2 inconclusive, errors 2 pass/2 fail"},
		{"a verdict this CLI does not know comes last",
			[]api.Measurement{measured("errors", "monitor", 1, nil, "skipped", ""), monitorFailed},
			"errors 1 fail/1 skipped"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, analysesText(&api.Operation{Measurements: tc.ms}))
		})
	}
}

// TestHistoryShowsAnalyses: the history table sums up each operation's measurements; -json
// keeps every one of them.
func TestHistoryShowsAnalyses(t *testing.T) {
	failed := analysedFailed
	failed.ID = "op-2"
	passed := withMeasurements(swapOp(9, api.StateSucceeded), warmPassed, monitorPassed)
	passed.ID = "op-3"

	f := newFakeAPI(t)
	f.reply("GET /v1/sites/{site}/history", 200, []api.Operation{passed, failed})
	r := run(t, f.srv.URL, "history", "web")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, strings.Join([]string{
		"ID    KIND  SLOTS                  STATE      STARTED  TOOK   DETAIL",
		"op-3  swap  staging -> production  succeeded  1m ago   12.1s  errors 2 pass",
		"op-2  swap  staging -> production  failed     1m ago   12.1s  monitor: analysis errors failed; errors 2 pass/1 fail, latency 1 inconclusive",
		"",
	}, "\n"), r.stdout)

	r = run(t, f.srv.URL, "history", "web", "-json")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"measurements": [`)
	assert.Contains(t, r.stdout, `"value": 0.052`)
	assert.Contains(t, r.stdout, `"message": "`+unreachable+`"`)
}

// TestStatusShowsWaiting: a running operation that waits previewing says why, and how to go
// on, under the tables (a group operation once, though every member site runs it) and under
// a site's own status.
func TestStatusShowsWaiting(t *testing.T) {
	waiting := withWaiting(swapOp(4, api.StatePreviewing), gateRefused)
	waiting.CreatedAt = now.Add(-12 * time.Second)
	group := withWaiting(groupPreview, noMeasure)
	group.CreatedAt = now.Add(-5 * time.Second)
	sites := []api.Site{
		{Name: "web", Slots: []api.Slot{{Name: "production", Lane: "web-a", Version: 3, Healthy: 1, Total: 1}}, Operation: &waiting},
		{Name: "blog", Slots: []api.Slot{{Name: "production", Lane: "blog-a", Version: 2, Healthy: 1, Total: 1}}, Operation: &group},
		{Name: "shop", Slots: []api.Slot{{Name: "production", Lane: "shop-a", Version: 2, Healthy: 1, Total: 1}}, Operation: &group},
	}
	groups := []api.Group{{Name: "storefront", Sites: []string{"blog", "shop"}, Operation: &group}}

	f := newFakeAPI(t)
	f.reply("GET /v1/sites", 200, sites)
	f.reply("GET /v1/sites/{site}", 200, sites[0])
	f.reply("GET /v1/groups", 200, groups)

	cases := []struct {
		name  string
		args  []string
		whole bool // want is the whole output, else its end
		want  string
	}{
		{
			name:  "every site",
			whole: true,
			args:  []string{"status"},
			want: strings.Join([]string{
				"SITE  SLOT        LANE    VERSION  HEALTHY  SCALE  LAST OPERATION",
				"web   production  web-a   3        1/1      -      swap previewing for 12s",
				"blog  production  blog-a  2        1/1      -      swap previewing for 5s",
				"shop  production  shop-a  2        1/1      -      swap previewing for 5s",
				"",
				"GROUP       SITES       OPERATION",
				"storefront  blog, shop  swap op-g previewing for 5s",
				"",
				"site web: swap op-1 waiting: " + gateRefused + "; slotd swap -complete web to go on, -cancel to undo",
				"group storefront: swap op-g waiting: " + noMeasure + "; slotd swap -complete -group storefront to go on, -cancel to undo",
				"",
			}, "\n"),
		},
		{
			name: "one site",
			args: []string{"status", "web"},
			want: "running: swap op-1: web staging -> production, previewing; follow it with: slotd follow op-1\n" +
				"  waiting: " + gateRefused + "; slotd swap -complete web to go on, -cancel to undo\n",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, f.srv.URL, tc.args...)
			require.Equal(t, 0, r.code, r.stderr)
			if tc.whole {
				assert.Equal(t, tc.want, r.stdout)
			} else {
				assert.True(t, strings.HasSuffix(r.stdout, tc.want), r.stdout)
			}
		})
	}
}

func TestWaitingText(t *testing.T) {
	part := withWaiting(swapOp(3, api.StatePreviewing), gateRefused)
	part.Group, part.GroupOperation = "storefront", "op-g"
	cases := []struct {
		name string
		op   api.Operation
		want string
	}{
		{"not waiting", swapPreview, ""},
		{"a site's operation", withWaiting(swapPreview, gateRefused), "waiting: " + gateRefused + "; slotd swap -complete web to go on, -cancel to undo"},
		{"a group operation", withWaiting(groupPreview, gateRefused), "waiting: " + gateRefused + "; slotd swap -complete -group storefront to go on, -cancel to undo"},
		{"a member's part goes on with its group", part, "waiting: " + gateRefused + "; slotd swap -complete -group storefront to go on, -cancel to undo"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, waitingText(&tc.op))
		})
	}
}
