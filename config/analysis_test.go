package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The attributes of a valid analysis, one a line.
const (
	promAttr  = `prometheus = "http://127.0.0.1:9090"`
	queryAttr = `query = "sum(rate(app_requests_total{lane=\"{{.Lane}}\",code=~\"5..\"}[1m]))"`
	maxAttr   = `max = 0.01`
)

// withAnalyses is site "web" whose monitor block holds the given analysis blocks.
func withAnalyses(blocks ...string) string {
	return decl{site: "  monitor {\n" + strings.Join(blocks, "\n") + "\n  }"}.String()
}

// analysisBlock is `analysis "name" { … }` with one attribute a line.
func analysisBlock(name string, attrs ...string) string {
	return "    analysis \"" + name + "\" {\n      " + strings.Join(attrs, "\n      ") + "\n    }"
}

// oneAnalysis is a site with one analysis "errors" of the valid attributes and extra.
func oneAnalysis(extra ...string) string {
	return withAnalyses(analysisBlock("errors", append([]string{promAttr, queryAttr, maxAttr}, extra...)...))
}

func TestAnalysisRules(t *testing.T) {
	m := " " + marker
	cases := []struct {
		name    string
		src     string
		summary string
		detail  string
		col     int
	}{
		{name: "name not a DNS label", src: withAnalyses(strings.Replace(analysisBlock("Errors", promAttr, queryAttr, maxAttr), "{", "{"+m, 1)), col: 14, summary: "Invalid analysis name"},
		{
			name:    "name twice",
			src:     withAnalyses(analysisBlock("errors", promAttr, queryAttr, maxAttr), strings.Replace(analysisBlock("errors", promAttr, queryAttr, maxAttr), "{", "{"+m, 1)),
			summary: "Duplicate analysis", detail: `Analysis "errors" is already declared in site "web" at $DIR/slots.hcl:`, col: 14,
		},
		{name: "prometheus left out", src: withAnalyses(strings.Replace(analysisBlock("errors", queryAttr, maxAttr), "{", "{"+m, 1)), summary: "Missing required argument", detail: `"prometheus"`},
		{name: "query left out", src: withAnalyses(strings.Replace(analysisBlock("errors", promAttr, maxAttr), "{", "{"+m, 1)), summary: "Missing required argument", detail: `"query"`},
		{name: "prometheus without scheme", src: withAnalyses(analysisBlock("errors", `prometheus = "127.0.0.1:9090"`+m, queryAttr, maxAttr)), summary: "Invalid prometheus", detail: `"127.0.0.1:9090" is not the URL`, col: 7},
		{name: "prometheus other scheme", src: withAnalyses(analysisBlock("errors", `prometheus = "ftp://prom:9090"`+m, queryAttr, maxAttr)), summary: "Invalid prometheus"},
		{name: "prometheus without host", src: withAnalyses(analysisBlock("errors", `prometheus = "http:///api"`+m, queryAttr, maxAttr)), summary: "Invalid prometheus"},
		{name: "prometheus with a query", src: withAnalyses(analysisBlock("errors", `prometheus = "http://prom:9090/?x=1"`+m, queryAttr, maxAttr)), summary: "Invalid prometheus"},
		{name: "prometheus empty", src: withAnalyses(analysisBlock("errors", `prometheus = ""`+m, queryAttr, maxAttr)), summary: "Invalid prometheus"},
		{name: "query empty", src: withAnalyses(analysisBlock("errors", promAttr, `query = ""`+m, maxAttr)), summary: "Empty query", col: 7},
		{name: "query blank", src: withAnalyses(analysisBlock("errors", promAttr, `query = "  "`+m, maxAttr)), summary: "Empty query"},
		{
			name:    "query names an unknown variable",
			src:     withAnalyses(analysisBlock("errors", promAttr, `query = "up{lane=\"{{.Lanes}}\"}"`+m, maxAttr)),
			summary: "Invalid query template", detail: "can't evaluate field Lanes", col: 7,
		},
		{
			name:    "query template lists what it may name",
			src:     withAnalyses(analysisBlock("errors", promAttr, `query = "{{.site}}"`+m, maxAttr)),
			summary: "Invalid query template", detail: "may name {{.Site}}, {{.Service}}, {{.Group}}, {{.Slot}}, {{.Lane}}, {{.Job}}, {{.Version}}, {{.OtherLane}}, {{.OtherJob}}, {{.OtherVersion}}",
		},
		{name: "query template unclosed", src: withAnalyses(analysisBlock("errors", promAttr, `query = "up{lane=\"{{.Lane\"}"`+m, maxAttr)), summary: "Invalid query template"},
		{name: "query template unknown function", src: withAnalyses(analysisBlock("errors", promAttr, `query = "{{upper .Lane}}"`+m, maxAttr)), summary: "Invalid query template", detail: `"upper" not defined`},
		{name: "query renders to nothing", src: withAnalyses(analysisBlock("errors", promAttr, `query = "{{if .Group}}{{else}}{{end}}"`+m, maxAttr)), summary: "Empty query", detail: "renders to nothing"},
		{name: "neither min nor max", src: withAnalyses(strings.Replace(analysisBlock("errors", promAttr, queryAttr), "{", "{"+m, 1)), summary: "No bounds", col: 14},
		{name: "min above max", src: withAnalyses(analysisBlock("errors", promAttr, queryAttr, `max = 0.1`, `min = 0.5`+m)), summary: "Invalid bounds", detail: "min 0.5 is greater than max 0.1"},
		{name: "max not a number", src: withAnalyses(analysisBlock("errors", promAttr, queryAttr, `max = "1%"`+m)), summary: "Unsuitable value type"},
		{name: "interval below a second", src: oneAnalysis(`interval = "500ms"` + m), summary: "Invalid interval", detail: "interval is 500ms"},
		{name: "interval zero", src: oneAnalysis(`interval = "0s"` + m), summary: "Invalid duration", detail: "longer than 0s"},
		{name: "interval unparseable", src: oneAnalysis(`interval = "often"` + m), summary: "Invalid duration"},
		{name: "failures zero", src: oneAnalysis(`failures = 0` + m), summary: "Invalid failures", detail: "failures is 0"},
		{name: "failures negative", src: oneAnalysis(`failures = -2` + m), summary: "Invalid failures"},
		{name: "on_inconclusive unknown", src: oneAnalysis(`on_inconclusive = "skip"` + m), summary: "Invalid on_inconclusive", detail: `"skip" is not one of pass, fail, pause`},
		{name: "on_inconclusive empty", src: oneAnalysis(`on_inconclusive = ""` + m), summary: "Invalid on_inconclusive"},
		{name: "before_switch_for without before_switch", src: oneAnalysis(`before_switch_for = "30s"` + m), summary: "before_switch_for without before_switch"},
		{
			name:    "before_switch_for shorter than interval",
			src:     oneAnalysis(`interval = "10s"`, `before_switch = true`, `before_switch_for = "5s"`+m),
			summary: "Invalid before_switch_for", detail: "before_switch_for is 5s, shorter than interval 10s",
		},
		{name: "before_switch_for zero", src: oneAnalysis(`before_switch = true`, `before_switch_for = "0s"`+m), summary: "Invalid duration"},
		{name: "unknown attribute", src: oneAnalysis(`threshold = 1` + m), summary: "Unsupported argument"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { requireOneProblem(t, tc.src, tc.summary, tc.detail, tc.col) })
	}
}

func TestAnalysisValidEdges(t *testing.T) {
	cases := []struct {
		name string
		src  string
	}{
		{name: "min only", src: withAnalyses(analysisBlock("rps", promAttr, queryAttr, `min = 1`))},
		{name: "min equal to max", src: withAnalyses(analysisBlock("exact", promAttr, queryAttr, `min = 1`, `max = 1`))},
		{name: "interval of a second", src: oneAnalysis(`interval = "1s"`)},
		{name: "before_switch_for of one interval", src: oneAnalysis(`interval = "5s"`, `before_switch = true`, `before_switch_for = "5s"`)},
		{name: "on_inconclusive pass", src: oneAnalysis(`on_inconclusive = "pass"`)},
		{name: "on_inconclusive fail", src: oneAnalysis(`on_inconclusive = "fail"`)},
		{name: "prometheus over https with a path", src: withAnalyses(analysisBlock("errors", `prometheus = "https://metrics.example.com/prometheus"`, queryAttr, maxAttr))},
		{
			name: "every template variable",
			src: withAnalyses(analysisBlock("compare", promAttr,
				`query = "{{.Site}}{{.Service}}{{.Group}}{{.Slot}}{{.Lane}}{{.Version}}{{.OtherLane}}{{.OtherVersion}}"`, maxAttr)),
		},
		{name: "two analyses", src: withAnalyses(analysisBlock("errors", promAttr, queryAttr, maxAttr), analysisBlock("latency", promAttr, queryAttr, `max = 0.3`))},
		{name: "one name in two sites", src: oneAnalysis() + strings.Replace(oneAnalysis(), `site "web"`, `site "api"`, 1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			dir := writeDir(t, withCaseFiles(tc.src))
			_, err := Load(filepath.Join(dir, "slots.hcl"))
			assert.NoError(t, err)
		})
	}
}

func TestAnalysisDefaults(t *testing.T) {
	cases := []struct {
		name            string
		extra           []string
		interval        time.Duration
		failures        int
		onInconclusive  string
		beforeSwitch    bool
		beforeSwitchFor time.Duration
	}{
		{name: "left out", interval: 10 * time.Second, failures: 1, onInconclusive: "pause", beforeSwitchFor: 10 * time.Second},
		{
			name: "before_switch_for is interval × failures", extra: []string{`interval = "15s"`, `failures = 3`, `before_switch = true`},
			interval: 15 * time.Second, failures: 3, onInconclusive: "pause", beforeSwitch: true, beforeSwitchFor: 45 * time.Second,
		},
		{
			name: "written", extra: []string{`interval = "2s"`, `failures = 2`, `on_inconclusive = "fail"`, `before_switch = true`, `before_switch_for = "1m"`},
			interval: 2 * time.Second, failures: 2, onInconclusive: "fail", beforeSwitch: true, beforeSwitchFor: time.Minute,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			dir := writeDir(t, map[string]string{"slots.hcl": oneAnalysis(tc.extra...)})
			cfg, err := Load(filepath.Join(dir, "slots.hcl"))
			require.NoError(t, err)
			as := cfg.Sites[0].Monitor.Analyses
			require.Len(t, as, 1)
			a := as[0]
			assert.Equal(t, "errors", a.Name)
			assert.Equal(t, "http://127.0.0.1:9090", a.Prometheus)
			require.NotNil(t, a.Max)
			assert.Equal(t, 0.01, *a.Max)
			assert.Nil(t, a.Min)
			assert.Equal(t, tc.interval, a.Interval)
			assert.Equal(t, tc.failures, a.Failures)
			assert.Equal(t, tc.onInconclusive, a.OnInconclusive)
			assert.Equal(t, tc.beforeSwitch, a.BeforeSwitch)
			assert.Equal(t, tc.beforeSwitchFor, a.BeforeSwitchFor)
		})
	}
}

func TestRenderQuery(t *testing.T) {
	v := QueryVars{Site: "web", Service: "web-svc", Group: "store", Slot: "production", Lane: "b", Job: "web-b", Version: "7", OtherLane: "a", OtherJob: "web-a", OtherVersion: "6"}
	cases := []struct {
		name, query, want, err string
	}{
		{name: "every variable", query: "{{.Site}} {{.Service}} {{.Group}} {{.Slot}} {{.Lane}} {{.Job}} {{.Version}} {{.OtherLane}} {{.OtherJob}} {{.OtherVersion}}", want: "web web-svc store production b web-b 7 a web-a 6"},
		{name: "no variable", query: "sum(up)", want: "sum(up)"},
		{name: "PromQL braces stay", query: `rate(app_requests_total{lane="{{.Lane}}"}[1m])`, want: `rate(app_requests_total{lane="b"}[1m])`},
		{name: "unknown field", query: "{{.Lanes}}", err: `template: errors:1:2: executing "errors" at <.Lanes>: can't evaluate field Lanes`},
		{name: "bad syntax", query: "{{.Lane", err: "template: errors:1: unclosed action"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderQuery("errors", tc.query, v)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}
