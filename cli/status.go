package cli

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/slotd/slotd/api"
)

func statusCommand() *command {
	return &command{
		name:     "status",
		synopsis: "show sites, slots, lanes, versions and health",
		usage:    "[site] [options]",
		help: `
Prints a table of every site's slots: the lane (Nomad job) serving each slot, its job
version, its healthy and total instances, its scale (instance counts per task group, sticky
to the slot; "live" when Nomad's counts decide), and the site's running or last operation;
then a table of the swap groups: their sites and their running or last group operation;
then, for each running operation that waits for -complete or -cancel, why (a gate refused,
an analysis before the switch measured nothing) and how to go on. With a site, also every
instance of each slot; with -json, the sites only (GET /v1/groups has the groups), each
slot's settings too, sticky values as <hidden> unless -reveal is given.

Examples:
  slotd status
  slotd status web -json`,
		run: runStatus,
	}
}

func runStatus(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, false)
	cf.registerReveal(fs.FlagSet)
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}
	if len(pos) > 1 {
		return e.usageError(cmd, "want at most a site, got %d arguments", len(pos))
	}
	c, err := e.client(&cf)
	if err != nil {
		return e.fail(err)
	}
	ctx, stop := e.interrupt()
	defer stop()

	if len(pos) == 0 {
		sites, err := c.Sites(ctx)
		if err != nil {
			return e.fail(err)
		}
		if cf.json {
			return e.printJSON(sites)
		}
		if len(sites) == 0 {
			fmt.Fprintln(e.stdout, "no sites declared")
			return exitOK
		}
		groups, err := c.Groups(ctx)
		if err != nil {
			return e.fail(err)
		}
		e.printSlots(e.stdout, sites)
		if len(groups) > 0 {
			fmt.Fprintln(e.stdout)
			e.printGroups(e.stdout, groups)
		}
		printWaiting(e.stdout, sites, groups)
		return exitOK
	}

	site, err := c.Site(ctx, pos[0])
	if err != nil {
		return e.fail(err)
	}
	if cf.json {
		return e.printJSON(site)
	}
	e.printSlots(e.stdout, []api.Site{*site})
	e.printInstances(e.stdout, site)
	if op := site.Operation; op != nil {
		fmt.Fprintf(e.stdout, "\nrunning: %s, %s; follow it with: slotd follow %s\n", describe(op), op.State, op.ID)
		if w := waitingText(op); w != "" {
			fmt.Fprintf(e.stdout, "  %s\n", w)
		}
	}
	return exitOK
}

// printSlots prints one row per slot; the site's operation goes on its first row.
func (e *env) printSlots(w io.Writer, sites []api.Site) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tSLOT\tLANE\tVERSION\tHEALTHY\tSCALE\tLAST OPERATION")
	for _, s := range sites {
		last := e.operationText(s.Operation, s.LastOperation, false)
		if len(s.Slots) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%s\n", s.Name, last)
			continue
		}
		for i, sl := range s.Slots {
			if i > 0 {
				last = ""
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%s\t%s\n", s.Name, sl.Name, laneText(sl), sl.Version, sl.Healthy, sl.Total, scaleText(sl), last)
		}
	}
	_ = tw.Flush()
}

// printWaiting prints, after the tables, a line for each running operation that waits
// previewing for -complete or -cancel, and why: once each, though a group operation is the
// running operation of every member site too.
func printWaiting(w io.Writer, sites []api.Site, groups []api.Group) {
	ops := make([]*api.Operation, 0, len(sites)+len(groups))
	for _, s := range sites {
		ops = append(ops, s.Operation)
	}
	for _, g := range groups {
		ops = append(ops, g.Operation)
	}
	printed := map[string]bool{}
	for _, op := range ops {
		if op == nil || op.Waiting == "" || printed[op.ID] {
			continue
		}
		if len(printed) == 0 {
			fmt.Fprintln(w)
		}
		printed[op.ID] = true
		fmt.Fprintf(w, "%s: %s %s %s\n", subjectOfOperation(op), op.Kind, op.ID, waitingText(op))
	}
}

// laneText is a slot's lane for the table; a held lane says that it still runs another slot's
// settings (the one it served before the swap), so the slot has no lane of its own until then.
func laneText(sl api.Slot) string {
	if sl.HeldFor == "" || sl.HeldUntil == nil {
		return orDash(sl.Lane)
	}
	return fmt.Sprintf("%s (held as %s until %s)", sl.Lane, sl.HeldFor, sl.HeldUntil.Local().Format(time.TimeOnly))
}

func (e *env) printInstances(w io.Writer, site *api.Site) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "SLOT\tALLOC\tADDRESS\tSTATUS")
	n := 0
	for _, sl := range site.Slots {
		for _, in := range sl.Instances {
			n++
			status := in.Status
			if status == "" {
				status = "critical"
				if in.Healthy {
					status = "passing"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\n", sl.Name, shortID(in.Alloc), in.Address, in.Port, status)
		}
	}
	if n == 0 {
		fmt.Fprintln(w, "no instances")
		return
	}
	_ = tw.Flush()
}

// operationText is a running operation, or else the newest finished one, as "kind state
// age"; withID puts the operation's ID after its kind.
func (e *env) operationText(running, last *api.Operation, withID bool) string {
	kind := func(op *api.Operation) string {
		if withID {
			return op.Kind + " " + op.ID
		}
		return op.Kind
	}
	if op := running; op != nil {
		if op.CreatedAt.IsZero() {
			return kind(op) + " " + op.State
		}
		return fmt.Sprintf("%s %s for %s", kind(op), op.State, age(e.now().Sub(op.CreatedAt)))
	}
	op := last
	if op == nil {
		return "-"
	}
	at := op.UpdatedAt
	if op.FinishedAt != nil {
		at = *op.FinishedAt
	}
	if at.IsZero() {
		return kind(op) + " " + op.State
	}
	return fmt.Sprintf("%s %s %s ago", kind(op), op.State, age(e.now().Sub(at)))
}

// historyPage is how many operations slotd history shows without -limit (the API's default).
const historyPage = 50

func historyCommand() *command {
	return &command{
		name:     "history",
		synopsis: "list a site's or a group's finished operations",
		usage:    "<site> [-limit N] [-before SEQ] [options]\n       slotd history -group <group> [-limit N] [-before SEQ] [options]",
		help: `
Lists the site's finished deploys, swaps, rollbacks and settings rollouts, newest first,
with how they ended and how their analyses' evaluations came out ("errors 6 pass/2 fail"):
the newest 50 unless -limit says otherwise. 'slotd follow <id>' prints one operation's
phases and every measurement; -json prints them all. The site keeps its last history_limit
operations (default 200). When older ones are kept, the last line says how to see them:
-before with the seq of the oldest operation shown. With -group, the group's finished group
swaps and rollbacks (a group keeps the top-level history_limit); each member site's part of
them is in that site's own history too.

Example:
  slotd history web -limit 10
  slotd history web -limit 10 -before 1234
  slotd history -group storefront`,
		run: runHistory,
	}
}

func runHistory(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, false)
	limit := fs.Int("limit", historyPage, "show at most `N` operations (no more than the site or group keeps)")
	before := fs.Uint64("before", 0, "show the operations older than the one of this `seq` (see the last line of a page)")
	var group groupFlag
	group.register(fs, "list the finished group operations of the swap `group` instead of a site's operations")
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}
	subj, rest, code, ok := e.subjectOf(cmd, &group, pos, 0, "give no site with it")
	if !ok {
		return code
	}
	if !subj.group && len(rest) != 0 {
		return e.usageError(cmd, "want a site, got %d arguments", len(pos))
	}
	if *limit < 1 {
		return e.usageError(cmd, "-limit %d: show 1 or more operations", *limit)
	}
	c, err := e.client(&cf)
	if err != nil {
		return e.fail(err)
	}
	ctx, stop := e.interrupt()
	defer stop()
	// One more than shown tells whether older operations are kept.
	ops, err := subj.history(ctx, c, api.HistoryPage{Limit: min(*limit, math.MaxInt-1) + 1, Before: *before})
	if err != nil {
		return e.fail(err)
	}
	more := len(ops) > *limit
	ops = ops[:min(len(ops), *limit)]
	if cf.json {
		if ops == nil {
			ops = []api.Operation{}
		}
		return e.printJSON(ops)
	}
	if len(ops) == 0 {
		if *before != 0 {
			fmt.Fprintf(e.stdout, "no finished operations on %s before seq %d\n", subj, *before)
			return exitOK
		}
		fmt.Fprintf(e.stdout, "no finished operations on %s\n", subj)
		return exitOK
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tSLOTS\tSTATE\tSTARTED\tTOOK\tDETAIL")
	for _, op := range ops {
		started := "-"
		if !op.CreatedAt.IsZero() {
			started = age(e.now().Sub(op.CreatedAt)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", op.ID, op.Kind, slots(&op), op.State, started,
			orDash(operationDuration(&op)), orDash(detail(&op)))
	}
	_ = tw.Flush()
	if more {
		fmt.Fprintf(e.stdout, "older operations: slotd history %s -limit %d -before %d\n", subj.arg(), *limit, ops[len(ops)-1].Seq)
	}
	return exitOK
}

// slots names the slots an operation touched.
func slots(op *api.Operation) string {
	if op.Kind == api.KindDeploy || op.Kind == api.KindScale {
		return orDash(op.Slot)
	}
	if op.Source == "" && op.Target == "" {
		return "-"
	}
	return op.Source + " -> " + op.Target
}

// detail is what else there is to know about a finished operation.
func detail(op *api.Operation) string {
	var parts []string
	if op.Error != "" {
		parts = append(parts, op.Error)
	}
	for _, m := range op.Members {
		if m.Error != "" {
			parts = append(parts, m.Site+": "+m.Error)
		}
	}
	if a := analysesText(op); a != "" {
		parts = append(parts, a)
	}
	if op.GroupOperation != "" {
		parts = append(parts, "part of "+op.GroupOperation+" of group "+op.Group)
	}
	if op.Preview {
		parts = append(parts, "preview")
	}
	if op.RollbackOf != "" {
		parts = append(parts, "reverses "+op.RollbackOf)
	}
	if op.Trigger != "" && op.Trigger != "api" {
		parts = append(parts, "started by "+op.Trigger)
	}
	return strings.Join(parts, "; ")
}

// age is a coarse duration for tables: 42s, 5m, 3h, 4d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// shortID is the first 8 characters of a Nomad allocation ID, as Nomad's CLI shows them.
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
