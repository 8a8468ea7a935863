package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/slotd/slotd/api"
)

// spinInterval is how often the spinner line is redrawn: at most 10 times a second.
const spinInterval = 100 * time.Millisecond

var spinFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// follower prints an operation's progress from the versions it is given: one line when a
// phase starts, one when it ends, the phase's messages and the analyses' measurements in
// between, and why the operation waits when it does. On a terminal it also keeps a spinner
// line with the elapsed time of the current phase, redrawn by tick.
type follower struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
	tty bool

	op       *api.Operation // newest version seen
	phases   map[string]*seenPhase
	members  map[string]memberSeen // a group operation's member sites, by site
	measured map[measurementKey]bool
	waiting  string // the Waiting printed last
	frame    int
	drawn    bool // the spinner line is on screen
}

// seenPhase is what has been printed about a phase.
type seenPhase struct {
	started bool
	ended   string // the end state printed, "" while the phase has not ended
	message string // the last message printed
}

func newFollower(w io.Writer, now func() time.Time, tty bool) *follower {
	return &follower{w: w, now: now, tty: tty, phases: map[string]*seenPhase{}, members: map[string]memberSeen{},
		measured: map[measurementKey]bool{}}
}

// update prints what changed since the previous version: its phases, the state of each
// member site of a group operation, new measurements and why it waits. A measurement goes
// before the start or end of a phase that came after it, so a version that brings several
// changes at once (or a finished operation followed) still reads in the order they happened.
func (f *follower) update(op *api.Operation) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLine()
	if f.op == nil {
		f.printf("%s\n", describe(op))
	}
	f.op = op
	for i := range op.Phases {
		f.updatePhase(op, &op.Phases[i])
	}
	for _, m := range op.Members {
		f.updateMember(m)
	}
	f.updateMeasurements(op)
	f.updateWaiting(op)
}

func (f *follower) updatePhase(op *api.Operation, p *api.Phase) {
	seen := f.phases[p.Name]
	if seen == nil {
		seen = &seenPhase{}
		f.phases[p.Name] = seen
	}
	switch p.State {
	case api.PhasePending, "":
		return
	case api.PhaseRunning:
		if seen.ended != "" {
			return
		}
		if !seen.started {
			seen.started = true
			f.measurementsUntil(op, p.StartedAt)
			f.printf("==> %s: started\n", p.Name)
		}
		if p.Message != "" && p.Message != seen.message {
			f.printf("    %s: %s\n", p.Name, p.Message)
			seen.message = p.Message
		}
		return
	}

	// The phase has ended. It may end twice: a cancelled preview swap turns its succeeded
	// apply phase into cancelled as it puts the source back.
	if p.State == seen.ended {
		return
	}
	if !seen.started && p.State != api.PhaseSkipped && seen.ended == "" {
		seen.started = true
		f.measurementsUntil(op, p.StartedAt)
		f.printf("==> %s: started\n", p.Name)
	}
	f.measurementsUntil(op, p.EndedAt)
	first := seen.ended == ""
	seen.ended = p.State
	took := ""
	if first && p.StartedAt != nil && p.EndedAt != nil {
		took = formatDuration(p.EndedAt.Sub(*p.StartedAt))
	}
	switch p.State {
	case api.PhaseSucceeded:
		msg := ""
		if p.Message != "" && p.Message != seen.message {
			msg = " (" + p.Message + ")"
		}
		f.printf("==> %s: succeeded%s%s\n", p.Name, suffix(" in ", took), msg)
	case api.PhaseFailed:
		f.printf("==> %s: failed%s%s\n", p.Name, suffix(" after ", took), suffix(": ", p.Message))
	default: // skipped, cancelled, or a state this CLI does not know yet
		f.printf("==> %s: %s%s\n", p.Name, p.State, suffix(": ", p.Message))
	}
	seen.message = p.Message
}

// finish prints the final line for the operation's last version and returns the exit code:
// 0 when it succeeded, stopped in preview, or was cancelled when a cancel was asked for (a
// cancel in the monitor phase ends the monitor, and the swap succeeds); 1 otherwise.
func (f *follower) finish(op *api.Operation, wantCancelled bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLine()
	took := operationDuration(op)
	switch op.State {
	case api.StateSucceeded:
		f.printf("%s %s succeeded%s\n", op.Kind, op.ID, suffix(" in ", took))
		return exitOK
	case api.StateFailed:
		f.printf("%s %s failed%s%s\n", op.Kind, op.ID, suffix(" after ", took), suffix(": ", op.Error))
		return exitError
	case api.StateCancelled:
		f.printf("%s %s cancelled%s%s\n", op.Kind, op.ID, suffix(" after ", took), suffix(": ", op.Error))
		if wantCancelled {
			return exitOK
		}
		return exitError
	case api.StatePreviewing:
		f.printf("%s %s is previewing: %s's candidate is on %s's preview routes.\n", op.Kind, op.ID, op.Source, op.Target)
		f.printf("  finish the swap:  slotd swap -complete %s\n", subjectOfOperation(op).arg())
		f.printf("  cancel it:        slotd swap -cancel %s\n", subjectOfOperation(op).arg())
		return exitOK
	default:
		f.printf("%s %s is %s\n", op.Kind, op.ID, op.State)
		return exitOK
	}
}

// interrupted says that following stopped while the operation goes on.
func (f *follower) interrupted(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLine()
	f.printf("stopped following; the operation goes on. Follow again with: slotd follow %s\n", id)
}

// tick redraws the spinner line: the running phase (or the operation's state) and how long
// it has run.
func (f *follower) tick() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.tty || f.op == nil || api.Stopped(f.op) {
		return
	}
	label, since := f.op.State, f.op.CreatedAt
	for _, p := range f.op.Phases {
		if p.State == api.PhaseRunning && p.StartedAt != nil {
			label, since = p.Name, *p.StartedAt
			break
		}
	}
	elapsed := time.Duration(0)
	if !since.IsZero() {
		elapsed = max(0, f.now().Sub(since))
	}
	frame := spinFrames[f.frame%len(spinFrames)]
	f.frame++
	fmt.Fprintf(f.w, "\r\x1b[K%s %s %s", frame, label, formatDuration(elapsed.Truncate(time.Second)))
	f.drawn = true
}

// spin redraws the spinner every spinInterval until the returned stop is called. Without a
// terminal it does nothing.
func (f *follower) spin() (stop func()) {
	if !f.tty {
		return func() {}
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(spinInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				f.tick()
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		f.mu.Lock()
		f.clearLine()
		f.mu.Unlock()
	}
}

// clearLine removes the spinner line before other output; the caller holds f.mu.
func (f *follower) clearLine() {
	if f.drawn {
		_, _ = io.WriteString(f.w, "\r\x1b[K")
		f.drawn = false
	}
}

func (f *follower) printf(format string, args ...any) {
	fmt.Fprintf(f.w, format, args...)
}

// describe is the first line about an operation: what it does to which slots.
func describe(op *api.Operation) string {
	var b strings.Builder
	if op.Site == "" && op.Group != "" {
		fmt.Fprintf(&b, "%s %s: group %s%s", op.Kind, op.ID, op.Group, suffix(" ", parens(strings.Join(memberSites(op), ", "))))
	} else {
		fmt.Fprintf(&b, "%s %s: %s", op.Kind, op.ID, op.Site)
	}
	switch op.Kind {
	case api.KindDeploy:
		fmt.Fprintf(&b, "/%s", op.Slot)
		if len(op.Vars) > 0 {
			fmt.Fprintf(&b, " with %s", varsFlag(op.Vars).String())
		}
	case api.KindScale:
		fmt.Fprintf(&b, "/%s to %s", op.Slot, scaleText(api.Slot{Scale: op.Scale}))
	default:
		if op.Source != "" || op.Target != "" {
			fmt.Fprintf(&b, " %s -> %s", op.Source, op.Target)
		}
	}
	var notes []string
	if op.Preview {
		notes = append(notes, "preview")
	}
	if op.RollbackOf != "" {
		notes = append(notes, "reverses "+op.RollbackOf)
	}
	if op.Trigger != "" && op.Trigger != "api" {
		notes = append(notes, "started by "+op.Trigger)
	}
	if op.GroupOperation != "" {
		notes = append(notes, "part of "+op.GroupOperation+" of group "+op.Group)
	}
	if len(notes) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(notes, ", "))
	}
	return b.String()
}

// operationDuration is how long op ran, or "" when its times are unknown.
func operationDuration(op *api.Operation) string {
	if op.CreatedAt.IsZero() {
		return ""
	}
	end := op.UpdatedAt
	if op.FinishedAt != nil {
		end = *op.FinishedAt
	}
	if end.Before(op.CreatedAt) {
		return ""
	}
	return formatDuration(end.Sub(op.CreatedAt))
}

// formatDuration is d to a tenth of a second under a minute ("3.2s"), to the second above
// ("2m5s").
func formatDuration(d time.Duration) string {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// suffix is prefix+s, or "" when s is empty.
func suffix(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
