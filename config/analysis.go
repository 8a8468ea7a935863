package config

import (
	"net/url"
	"slices"
	"strings"
	"text/template"
	"time"
)

// Defaults and bounds of an analysis (monitor { analysis "name" { … } }).
const (
	// DefaultAnalysisInterval is the pause between two evaluations of an analysis' query.
	DefaultAnalysisInterval = 10 * time.Second
	// MinAnalysisInterval bounds how often a query is sent: Prometheus scrapes every few
	// seconds at best, so asking more often measures the same samples again.
	MinAnalysisInterval = time.Second
	// DefaultAnalysisFailures is how many failing evaluations in a row fail an analysis.
	DefaultAnalysisFailures = 1
	// DefaultOnInconclusive is what an evaluation that measured nothing counts as: neither a
	// pass nor a failure, so a Prometheus that cannot answer holds a swap rather than passing
	// it silently or failing it for a reason that is not the release's.
	DefaultOnInconclusive = InconclusivePause
)

// What an inconclusive evaluation counts as (on_inconclusive).
const (
	InconclusivePass  = "pass"
	InconclusiveFail  = "fail"
	InconclusivePause = "pause"
)

var inconclusiveRules = []string{InconclusivePass, InconclusiveFail, InconclusivePause}

// QueryVars are what an analysis' query template can name, as {{.Site}} and so on: the lane
// being judged and the lane it replaces, so one query can compare the two. The agent/analysis
// package calls them analysis.Vars.
type QueryVars struct {
	Site    string // the site's name
	Service string // the Consul service of the site's lanes
	Group   string // the swap group, when a group is swapped; empty otherwise
	Slot    string // the slot being judged, such as production
	// Lane is the name of the lane being judged, such as b: what its instances' Consul
	// service meta slotd_lane holds (relabel it into a label of your metrics); Job is that
	// lane's Nomad job ID, such as web-b, and Version the job's version.
	Lane    string
	Job     string
	Version string
	// OtherLane, OtherJob and OtherVersion are the lane the judged one replaces (empty when
	// none).
	OtherLane    string
	OtherJob     string
	OtherVersion string
}

// queryVarNames lists QueryVars' fields, for messages.
const queryVarNames = "{{.Site}}, {{.Service}}, {{.Group}}, {{.Slot}}, {{.Lane}}, {{.Job}}, {{.Version}}, {{.OtherLane}}, {{.OtherJob}}, {{.OtherVersion}}"

// RenderQuery renders an analysis' query template (its name names it in errors) with v.
func RenderQuery(name, query string, v QueryVars) (string, error) {
	t, err := template.New(name).Parse(query)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := t.Execute(&b, v); err != nil {
		return "", err
	}
	return b.String(), nil
}

func (b *builder) completeAnalysis(a *Analysis) {
	a.Interval = b.duration(a.Range, "interval", a.IntervalRaw, DefaultAnalysisInterval, true)
	if !b.src.set(a.Range, "failures") {
		a.Failures = DefaultAnalysisFailures
	}
	if !b.src.set(a.Range, "on_inconclusive") {
		a.OnInconclusive = DefaultOnInconclusive
	}
	// A failures that is wrong is reported as such; the default then counts one.
	a.BeforeSwitchFor = b.duration(a.Range, "before_switch_for", a.BeforeSwitchForRaw,
		a.Interval*time.Duration(max(a.Failures, 1)), true)
}

// validateAnalyses checks the analyses of a site's monitor block.
func (b *builder) validateAnalyses(s *Site) {
	seen := map[string]*Analysis{}
	for _, a := range s.Monitor.Analyses {
		b.validateAnalysis(s, a)
		if first, ok := seen[a.Name]; ok {
			b.errorf(b.src.labelRange(a.Range), "Duplicate analysis",
				"Analysis %q is already declared in site %q at %s; rename or remove one of them.",
				a.Name, s.Name, position(first.Range))
			continue
		}
		seen[a.Name] = a
	}
}

func (b *builder) validateAnalysis(s *Site, a *Analysis) {
	if !dnsLabel.MatchString(a.Name) {
		b.errorf(b.src.labelRange(a.Range), "Invalid analysis name",
			"Analysis name %q is not a DNS label: %s. It names the analysis in measurements and metrics.", a.Name, labelRule)
	}
	if b.src.attr(a.Range, "prometheus") != nil {
		if u, err := url.Parse(a.Prometheus); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.RawQuery != "" || u.Fragment != "" {
			b.errorf(b.src.attrRange(a.Range, "prometheus"), "Invalid prometheus",
				"prometheus %q is not the URL of a Prometheus server; write it like \"http://127.0.0.1:9090\" (http or https, a host, no query).", a.Prometheus)
		}
	}
	if b.src.attr(a.Range, "query") != nil {
		b.validateQuery(s, a)
	}

	switch {
	case !b.src.set(a.Range, "min") && !b.src.set(a.Range, "max"):
		b.errorf(b.src.labelRange(a.Range), "No bounds",
			"Analysis %q sets neither min nor max; set max (such as max = 0.01 for an error rate) or min, or both.", a.Name)
	case a.Min != nil && a.Max != nil && *a.Min > *a.Max:
		b.errorf(b.src.attrRange(a.Range, "min"), "Invalid bounds",
			"min %g is greater than max %g: no value could pass; swap them.", *a.Min, *a.Max)
	}
	if b.src.set(a.Range, "interval") && a.Interval > 0 && a.Interval < MinAnalysisInterval {
		b.errorf(b.src.attrRange(a.Range, "interval"), "Invalid interval",
			"interval is %s; evaluate a query at most once a second (interval = \"1s\" or more, default %s).", a.Interval, DefaultAnalysisInterval)
	}
	if a.Failures < 1 {
		b.errorf(b.src.attrRange(a.Range, "failures"), "Invalid failures",
			"failures is %d; it is how many failing evaluations in a row fail the analysis (failures = 1 or more, default %d).", a.Failures, DefaultAnalysisFailures)
	}
	if !slices.Contains(inconclusiveRules, a.OnInconclusive) {
		b.errorf(b.src.attrRange(a.Range, "on_inconclusive"), "Invalid on_inconclusive",
			"on_inconclusive %q is not one of %s: what an evaluation that measured nothing counts as.",
			a.OnInconclusive, strings.Join(inconclusiveRules, ", "))
	}
	if b.src.set(a.Range, "before_switch_for") {
		at := b.src.attrRange(a.Range, "before_switch_for")
		switch {
		case !a.BeforeSwitch:
			b.errorf(at, "before_switch_for without before_switch",
				"before_switch_for is set but before_switch is not: the analysis is not evaluated before the switch; set before_switch = true, or remove before_switch_for.")
		case a.BeforeSwitchFor > 0 && a.BeforeSwitchFor < a.Interval:
			b.errorf(at, "Invalid before_switch_for",
				"before_switch_for is %s, shorter than interval %s: the query would never be evaluated before the switch; make it %s or more.",
				a.BeforeSwitchFor, a.Interval, a.Interval)
		}
	}
}

// validateQuery checks that the query is a template that renders, with sample values of the
// site, to something: a name it cannot evaluate fails here, not at the first swap.
func (b *builder) validateQuery(s *Site, a *Analysis) {
	at := b.src.attrRange(a.Range, "query")
	if strings.TrimSpace(a.Query) == "" {
		b.errorf(at, "Empty query", "query is empty; write the PromQL expression to evaluate, such as a rate of errors.")
		return
	}
	sample := QueryVars{
		Site: s.Name, Service: s.Service, Group: "group", Slot: "production",
		Lane: "b", Job: s.Name + "-b", Version: "2", OtherLane: "a", OtherJob: s.Name + "-a", OtherVersion: "1",
	}
	q, err := RenderQuery(a.Name, a.Query, sample)
	switch {
	case err != nil:
		b.errorf(at, "Invalid query template",
			"%v; query is a Go template that may name %s.", err, queryVarNames)
	case strings.TrimSpace(q) == "":
		b.errorf(at, "Empty query", "query renders to nothing; write the PromQL expression to evaluate.")
	}
}
