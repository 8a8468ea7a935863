package lanes

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// A lane's instance counts: what Nomad runs, what a lane is rendered with, and whether it places.

// MetaScale is the lane job's meta that shows the counts of the slot it serves ("app=3"), or
// "live": it changes only together with the counts, so it never restarts a lane on its own.
const MetaScale = "slotd_scale"

// Counts is the count of every task group of a lane's job in Nomad (nil when it has none)
// and the slot the job runs as.
func (l *Lanes) Counts(ctx context.Context, cfg *config.Site, lane string) (map[string]int, string, error) {
	job, err := l.Job(ctx, cfg, lane)
	if err != nil || job == nil {
		return nil, "", err
	}
	return GroupCounts(job), LaneEnv(job, cfg.Service)[jobspec.EnvSlot], nil
}

// GroupCounts is the count of every task group of job (1 where the job leaves it out).
func GroupCounts(job *nomadapi.Job) map[string]int {
	out := make(map[string]int, len(job.TaskGroups))
	for _, g := range job.TaskGroups {
		if g.Name == nil {
			continue
		}
		n := 1
		if g.Count != nil {
			n = *g.Count
		}
		out[*g.Name] = n
	}
	return out
}

// FormatScale writes counts as "app=3,worker=1", in group order.
func FormatScale(counts map[string]int) string {
	groups := make([]string, 0, len(counts))
	for g := range counts {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	parts := make([]string, len(groups))
	for i, g := range groups {
		parts[i] = g + "=" + strconv.Itoa(counts[g])
	}
	return strings.Join(parts, ",")
}

// ApplyScale gives job the counts of want and the meta that shows them. A group that want
// names but the job does not have is an error that says which: the scale or the jobspec is
// wrong, and rendering the lane without it would change its size silently.
func ApplyScale(job *nomadapi.Job, jobFile string, want State) error {
	if want.Scale == nil {
		// No counts known yet (a slot's first lane): the jobspec's own, which the slot keeps
		// from now on; the meta says so from the first version, so keeping them restarts nothing.
		scaleMeta(job, want)
		return nil
	}
	byName := map[string]*nomadapi.TaskGroup{}
	var names []string
	for _, g := range job.TaskGroups {
		if g.Name != nil {
			byName[*g.Name] = g
			names = append(names, *g.Name)
		}
	}
	var missing []string
	for group, n := range want.Scale {
		g := byName[group]
		if g == nil {
			missing = append(missing, group)
			continue
		}
		g.Count = &n
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("the scale of slot %s names task group %s, which the job in %s does not have (its groups: %s): change the slot's scale",
			want.Slot, strings.Join(missing, ", "), jobFile, strings.Join(names, ", "))
	}
	scaleMeta(job, want)
	return nil
}

// scaleMeta shows the counts of the slot a lane serves in the job's meta.
func scaleMeta(job *nomadapi.Job, want State) {
	if job.Meta == nil {
		job.Meta = map[string]string{}
	}
	if want.Live {
		job.Meta[MetaScale] = "live"
	} else {
		job.Meta[MetaScale] = FormatScale(GroupCounts(job))
	}
}

// Plan asks Nomad's scheduler whether lane in state want would place, touching nothing:
// the pre-flight of a swap and a deploy. An error says which groups would not place and why;
// the change says what registering it would do to the running allocations.
func (l *Lanes) Plan(ctx context.Context, cfg *config.Site, lane string, src Source, want State) (jobspec.Change, error) {
	job, err := l.Render(cfg, lane, src, want)
	if err != nil {
		return jobspec.Restart, err
	}
	cctx, cancel := callCtx(ctx)
	plan, _, err := l.nomad.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return jobspec.Restart, fmt.Errorf("plan job %s: %w", jobspec.JobID(cfg.Name, lane), err)
	}
	return Classify(plan), PlacementError(jobspec.JobID(cfg.Name, lane), want, plan)
}

// PlacementError reads the allocations a plan could not place, nil when it places all.
func PlacementError(id string, want State, plan *nomadapi.JobPlanResponse) error {
	if plan == nil || len(plan.FailedTGAllocs) == 0 {
		return nil
	}
	groups := make([]string, 0, len(plan.FailedTGAllocs))
	for g := range plan.FailedTGAllocs {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var parts []string
	for _, g := range groups {
		parts = append(parts, failedGroup(g, want.Scale[g], plan.FailedTGAllocs[g]))
	}
	at := ""
	if want.Scale != nil {
		at = " at scale " + FormatScale(want.Scale)
	}
	return fmt.Errorf("nomad cannot place %s as %s%s: %s", id, want.Slot, at, strings.Join(parts, "; "))
}

// failedGroup says why one task group would not place, from Nomad's allocation metric, the
// way `nomad job plan` does: how many (of wanted, when known), and which nodes were filtered or
// exhausted by what.
func failedGroup(group string, wanted int, m *nomadapi.AllocationMetric) string {
	if m == nil {
		return fmt.Sprintf("task group %q: allocations would not place", group)
	}
	failed := m.CoalescedFailures + 1
	var b strings.Builder
	fmt.Fprintf(&b, "task group %q: %d allocation", group, failed)
	if failed != 1 {
		b.WriteString("s")
	}
	if wanted >= failed {
		fmt.Fprintf(&b, " of %d", wanted)
	}
	fmt.Fprintf(&b, " would not place: %d node", m.NodesEvaluated)
	if m.NodesEvaluated != 1 {
		b.WriteString("s")
	}
	fmt.Fprintf(&b, " evaluated, %d filtered, %d exhausted", m.NodesFiltered, m.NodesExhausted)
	if len(m.DimensionExhausted) > 0 {
		fmt.Fprintf(&b, " (exhausted %s)", countsText(m.DimensionExhausted))
	}
	if len(m.ConstraintFiltered) > 0 {
		fmt.Fprintf(&b, " (filtered by %s)", countsText(m.ConstraintFiltered))
	}
	if len(m.ClassFiltered) > 0 {
		fmt.Fprintf(&b, " (filtered class %s)", countsText(m.ClassFiltered))
	}
	if len(m.QuotaExhausted) > 0 {
		fmt.Fprintf(&b, " (quota exhausted: %s)", strings.Join(m.QuotaExhausted, ", "))
	}
	if m.NodesEvaluated == 0 && m.NodesInPool == 0 {
		b.WriteString(" (no node in the node pool)")
	}
	return b.String()
}

// countsText writes a metric's reasons as `"memory" on 1 node, "cpu" on 2 nodes`.
func countsText(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		unit := "nodes"
		if m[k] == 1 {
			unit = "node"
		}
		parts[i] = fmt.Sprintf("%q on %d %s", k, m[k], unit)
	}
	return strings.Join(parts, ", ")
}
