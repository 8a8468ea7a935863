package cli

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/slotd/slotd/api"
)

// What the CLI shows of a swap's analyses (monitor { analysis … }): each measurement as a line
// of the follow, their outcome per operation in the history, and why an operation waits.

// measurementKey tells one measurement from the others of an operation across its versions;
// the list keeps only the newest api.MaxMeasurements, so a position would not.
type measurementKey struct {
	analysis, phase string
	at              int64
}

func keyOf(m api.Measurement) measurementKey {
	return measurementKey{analysisName(m), m.Phase, m.At.UnixNano()}
}

// analysisName names a measurement's analysis, with the member site in a group operation's
// ("shop/errors").
func analysisName(m api.Measurement) string {
	if m.Site != "" {
		return m.Site + "/" + m.Analysis
	}
	return m.Analysis
}

// measurementText is one measurement as the follow prints it: the analysis and phase, what
// was measured against which bound, and the verdict (FAIL in capitals, to stand out).
func measurementText(m api.Measurement) string {
	head := fmt.Sprintf("analysis %s%s: ", analysisName(m), suffix(" ", parens(m.Phase)))
	what := m.Message
	if what == "" && m.Value != nil {
		what = compact(*m.Value)
	}
	verdict := m.Verdict // pass, or a verdict this CLI does not know yet
	switch m.Verdict {
	case api.VerdictInconclusive:
		return head + "inconclusive" + suffix(": ", what)
	case api.VerdictFail:
		verdict = "FAIL"
	}
	if what == "" {
		return head + verdict
	}
	return head + what + "  " + verdict
}

// compact is a measured value with at most four significant digits: 0.0021, 0.05213, 312.4.
func compact(v float64) string {
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// analysesText is the outcome of an operation's analyses for the history: per analysis, in
// the order they were first measured, how many evaluations had each verdict ("errors 6
// pass/2 fail, latency 8 pass"); "" when nothing was measured.
func analysesText(op *api.Operation) string {
	type tally struct {
		name     string
		verdicts []string // in the order pass, fail, inconclusive, then others as first seen
		counts   map[string]int
	}
	var tallies []*tally
	byName := map[string]*tally{}
	for _, m := range op.Measurements {
		name := analysisName(m)
		t := byName[name]
		if t == nil {
			t = &tally{name: name, counts: map[string]int{}}
			byName[name] = t
			tallies = append(tallies, t)
		}
		if t.counts[m.Verdict] == 0 {
			t.verdicts = append(t.verdicts, m.Verdict)
		}
		t.counts[m.Verdict]++
	}
	parts := make([]string, 0, len(tallies))
	for _, t := range tallies {
		slices.SortStableFunc(t.verdicts, func(a, b string) int { return verdictRank(a) - verdictRank(b) })
		counted := make([]string, len(t.verdicts))
		for i, v := range t.verdicts {
			counted[i] = fmt.Sprintf("%d %s", t.counts[v], v)
		}
		parts = append(parts, t.name+" "+strings.Join(counted, "/"))
	}
	return strings.Join(parts, ", ")
}

// verdictRank orders verdicts for the history: pass, fail, inconclusive, then any other.
func verdictRank(v string) int {
	switch v {
	case api.VerdictPass:
		return 0
	case api.VerdictFail:
		return 1
	case api.VerdictInconclusive:
		return 2
	}
	return 3
}

// waitingText says why op waits previewing and how to go on, "" when it does not wait.
func waitingText(op *api.Operation) string {
	if op.Waiting == "" {
		return ""
	}
	return fmt.Sprintf("waiting: %s; slotd swap -complete %s to go on, -cancel to undo", op.Waiting, goesOnWith(op).arg())
}

// goesOnWith is the subject whose -complete or -cancel acts on op: its site, or its group for
// a group operation and for a member site's part of one.
func goesOnWith(op *api.Operation) subject {
	if op.GroupOperation != "" && op.Group != "" {
		return subject{name: op.Group, group: true}
	}
	return subjectOfOperation(op)
}

// updateMeasurements prints op's measurements that were not printed yet; the caller holds f.mu.
func (f *follower) updateMeasurements(op *api.Operation) {
	f.printMeasurements(op, func(api.Measurement) bool { return true })
}

// measurementsUntil prints op's measurements taken up to t that were not printed yet, before
// a phase's line at t; nothing when t is unknown. The caller holds f.mu.
func (f *follower) measurementsUntil(op *api.Operation, t *time.Time) {
	if t == nil {
		return
	}
	f.printMeasurements(op, func(m api.Measurement) bool { return !m.At.After(*t) })
}

func (f *follower) printMeasurements(op *api.Operation, due func(api.Measurement) bool) {
	for _, m := range op.Measurements {
		k := keyOf(m)
		if f.measured[k] || !due(m) {
			continue
		}
		f.measured[k] = true
		f.printf("    %s\n", measurementText(m))
	}
}

// updateWaiting prints why op waits when that appears or changes; the caller holds f.mu.
func (f *follower) updateWaiting(op *api.Operation) {
	if op.Waiting == f.waiting {
		return
	}
	f.waiting = op.Waiting
	if text := waitingText(op); text != "" {
		f.printf("    %s\n", text)
	}
}
