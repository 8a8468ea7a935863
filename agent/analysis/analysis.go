// Package analysis judges a lane by its metrics: it renders each analysis' Prometheus query
// for the lane, asks Prometheus, and turns the answers into measurements, verdicts and failures.
package analysis

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Vars are what a query template names: the site, the slot and lane being judged (Lane is its
// Nomad job ID, Version its job version) and the lane it replaces (OtherLane, OtherVersion).
// config checks every query against them at load.
type Vars = config.QueryVars

// Render is a's query for the lane of v.
func Render(a *config.Analysis, v Vars) (string, error) {
	q, err := config.RenderQuery(a.Name, a.Query, v)
	if err != nil {
		return "", fmt.Errorf("render the query of analysis %q: %w", a.Name, err)
	}
	return q, nil
}

// noData is why an empty answer is inconclusive.
const noData = "the query returned no data"

// Judge says what a measured value means for a: pass inside [min, max], fail outside, and
// inconclusive when nothing was measured (reason says why). The message says which bound.
func Judge(a *config.Analysis, value *float64, reason string) (verdict, message string) {
	if value == nil {
		if reason == "" {
			reason = noData
		}
		return api.VerdictInconclusive, reason
	}
	v := *value
	switch {
	case a.Max != nil && v > *a.Max:
		return api.VerdictFail, fmt.Sprintf("%s > max %s", number(v, *a.Max), number(*a.Max, v))
	case a.Min != nil && v < *a.Min:
		return api.VerdictFail, fmt.Sprintf("%s < min %s", number(v, *a.Min), number(*a.Min, v))
	case a.Min != nil && a.Max != nil:
		return api.VerdictPass, fmt.Sprintf("min %s ≤ %s ≤ max %s", number(*a.Min, v), number(v, *a.Min, *a.Max), number(*a.Max, v))
	case a.Max != nil:
		return api.VerdictPass, fmt.Sprintf("%s ≤ max %s", number(v, *a.Max), number(*a.Max, v))
	case a.Min != nil:
		return api.VerdictPass, fmt.Sprintf("%s ≥ min %s", number(v, *a.Min), number(*a.Min, v))
	}
	return api.VerdictPass, number(v)
}

// number prints v with four significant digits, or with all of them when four would print it
// like one of others: a message must never read "0.01 > max 0.01".
func number(v float64, others ...float64) string {
	short := strconv.FormatFloat(v, 'g', 4, 64)
	for _, o := range others {
		if o != v && strconv.FormatFloat(o, 'g', 4, 64) == short {
			return strconv.FormatFloat(v, 'g', -1, 64)
		}
	}
	if full := strconv.FormatFloat(v, 'g', -1, 64); len(full) <= len(short) {
		return full
	}
	return short
}

// Failed is why an analysis failed: Failures failing evaluations in a row (inconclusive ones
// among them when on_inconclusive = "fail").
type Failed struct {
	Analysis string
	// Measurements are the failing evaluations, oldest first.
	Measurements []api.Measurement
}

func (f *Failed) Error() string {
	msgs := make([]string, len(f.Measurements))
	for i, m := range f.Measurements {
		msgs[i] = m.Message
	}
	if len(f.Measurements) == 1 {
		return fmt.Sprintf("analysis %q failed: %s", f.Analysis, msgs[0])
	}
	return fmt.Sprintf("analysis %q failed %d times in a row: %s", f.Analysis, len(msgs), strings.Join(msgs, ", "))
}

// Values are the values the failing evaluations measured (nil where one measured nothing).
func (f *Failed) Values() []*float64 {
	vs := make([]*float64, len(f.Measurements))
	for i, m := range f.Measurements {
		vs[i] = m.Value
	}
	return vs
}

// Inconclusive is why Check could not judge a lane: an analysis with on_inconclusive = "pause"
// measured nothing in all of its evaluations before the switch.
type Inconclusive struct {
	Analysis string
	// Measurements are its evaluations, oldest first, all inconclusive.
	Measurements []api.Measurement
}

func (e *Inconclusive) Error() string {
	last := noData
	if n := len(e.Measurements); n > 0 {
		last = e.Measurements[n-1].Message
	}
	return fmt.Sprintf("analysis %q measured nothing in %d evaluation(s) before the switch (last: %s); on_inconclusive = %q holds the swap",
		e.Analysis, len(e.Measurements), last, config.InconclusivePause)
}
