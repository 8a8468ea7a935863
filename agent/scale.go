package agent

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"

	"github.com/slotd/slotd/agent/store"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// A slot's scale is sticky, like Azure's scale settings: the instance counts per task group
// belong to the slot, not to the code a swap moves (DESIGN.md §3). KV holds each slot's counts
// in …/slots/<slot>/scale; a declared scale wins over KV, and a "live" one is what Nomad runs.

// metaScale is the lane job's meta that shows the counts of the slot it serves ("app=3"), or
// "live": it changes only together with the counts, so it never restarts a lane on its own.
const metaScale = "slotd_scale"

// resolveScale gives set the scale of slot: the declared counts, or for "live" the counts the
// slot's lane runs in Nomad now, or else the counts KV stores (set.Scale as read).
func (a *Agent) resolveScale(ctx context.Context, cfg *config.Site, slot *config.Slot, lane string, set store.SlotSettings) (store.SlotSettings, error) {
	switch {
	case slot.Scale != nil:
		set.Scale = maps.Clone(slot.Scale)
	case slot.ScaleLive:
		// What the lane runs while it serves the slot; a lane that runs as another slot (the
		// middle of a swap) tells nothing of this slot's size: KV has it from before.
		set.Live = true
		counts, serves, err := a.lanes.laneCounts(ctx, cfg, lane)
		if err != nil {
			return set, err
		}
		if counts != nil && serves == slot.Name {
			set.Scale = counts
		}
	}
	return set, nil
}

// slotSet is a slot's settings and resolved scale, from what KV holds for it.
func (a *Agent) slotSet(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState) (store.SlotSettings, error) {
	return a.resolveScale(ctx, cfg, slot, ss.Lane.Value, ss.Values())
}

// laneCounts is the count of every task group of a lane's job in Nomad (nil when it has none)
// and the slot the job runs as.
func (a *Agent) laneCounts(ctx context.Context, site *config.Site, lane string) (map[string]int, string, error) {
	job, err := a.laneJob(ctx, site, lane)
	if err != nil || job == nil {
		return nil, "", err
	}
	return groupCounts(job), laneEnv(job, site.Service)[jobspec.EnvSlot], nil
}

// groupCounts is the count of every task group of job (1 where the job leaves it out).
func groupCounts(job *nomadapi.Job) map[string]int {
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

// formatScale writes counts as "app=3,worker=1", in group order.
func formatScale(counts map[string]int) string {
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

// applyScale gives job the counts of want and the meta that shows them. A group that want
// names but the job does not have is an error that says which: the scale or the jobspec is
// wrong, and rendering the lane without it would change its size silently.
func applyScale(job *nomadapi.Job, jobFile string, want laneState) error {
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
func scaleMeta(job *nomadapi.Job, want laneState) {
	if job.Meta == nil {
		job.Meta = map[string]string{}
	}
	if want.Live {
		job.Meta[metaScale] = "live"
	} else {
		job.Meta[metaScale] = formatScale(groupCounts(job))
	}
}

// seedScale is what a slot's scale document needs at start: the declared counts (a changed
// declaration is a scale change), or, where KV holds none yet, the counts the slot's lane runs,
// so an undeclared slot keeps the size it had when it was first bound; a "live" slot's document
// follows what its lane runs. A lane not started yet gets its jobspec's counts, recorded when
// it starts (firstScale).
func (a *Agent) seedScale(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState, lane string) (consulapi.KVTxnOps, error) {
	if slot.Scale != nil {
		return a.store.ScaleOps(cfg.Name, slot.Name, ss.Scale, slot.Scale), nil
	}
	if ss.Scale.Index != 0 && !slot.ScaleLive {
		return nil, nil
	}
	counts, serves, err := a.lanes.laneCounts(ctx, cfg, lane)
	if err != nil {
		return nil, err
	}
	if counts == nil || serves != "" && serves != slot.Name {
		// No lane yet, or one that runs as another slot (a swap under way): nothing to learn.
		return nil, nil
	}
	return a.store.ScaleOps(cfg.Name, slot.Name, ss.Scale, counts), nil
}

// firstScale records the counts a lane started with as its slot's scale, when KV holds none.
func (a *Agent) firstScale(ctx context.Context, cfg *config.Site, slot *config.Slot, ss *store.SlotState) consulapi.KVTxnOps {
	if slot.ScaleDeclared() || ss.Scale.Index != 0 {
		return nil
	}
	counts, _, err := a.lanes.laneCounts(ctx, cfg, ss.Lane.Value)
	if err != nil || counts == nil {
		return nil // recorded at the next start
	}
	return a.store.ScaleOps(cfg.Name, slot.Name, ss.Scale, counts)
}

// planLane asks Nomad's scheduler whether lane in state want would place, touching nothing:
// the pre-flight of a swap and a deploy. An error says which groups would not place and why;
// the change says what registering it would do to the running allocations.
func (a *Agent) planLane(ctx context.Context, site *config.Site, lane string, src source, want laneState) (jobspec.Change, error) {
	job, err := a.render(site, lane, src, want)
	if err != nil {
		return jobspec.Restart, err
	}
	cctx, cancel := callCtx(ctx)
	plan, _, err := a.nomad.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return jobspec.Restart, fmt.Errorf("plan job %s: %w", jobID(site.Name, lane), err)
	}
	return classify(plan), placementError(jobID(site.Name, lane), want, plan)
}

// placementError reads the allocations a plan could not place, nil when it places all.
func placementError(id string, want laneState, plan *nomadapi.JobPlanResponse) error {
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
		at = " at scale " + formatScale(want.Scale)
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

// scaleOp changes the counts of task groups of a slot whose scale is not declared in HCL: a
// pre-flight plans the slot's lane at the new counts, then KV takes them and the lane rolls
// out, health-gated; a rollout that fails puts the lane and the counts back (failRollout).
func (a *Agent) scaleOp(cfg *config.Site, slotName string, counts map[string]int) opFunc {
	return func(ctx context.Context, r *run) error {
		slot := cfg.Slot(slotName)
		var ss *store.SlotState
		var want map[string]int
		err := r.phase(api.PhasePreflight, api.StatePending, func() error {
			st, err := a.store.LoadSlots(cfg.Name, nil)
			if err != nil {
				return err
			}
			ss = st.Slot(slotName)
			if ss.Lane.Value == "" || ss.Version.Value == "" {
				return fmt.Errorf("slot %s runs no lane yet", slotName)
			}
			set, err := a.slotSet(ctx, cfg, slot, ss)
			if err != nil {
				return err
			}
			if set.Scale == nil {
				if set.Scale, _, err = a.lanes.laneCounts(ctx, cfg, ss.Lane.Value); err != nil {
					return err
				}
			}
			want = maps.Clone(set.Scale)
			if want == nil {
				want = map[string]int{}
			}
			maps.Copy(want, counts)
			set.Scale = want
			src, err := a.lanes.submission(ctx, cfg, ss.Lane.Value, ss.BoundVersion(), true)
			if err != nil {
				return err
			}
			if _, err := a.lanes.planLane(ctx, cfg, ss.Lane.Value, src, steady(slot, set)); err != nil {
				return fmt.Errorf("pre-flight: %w; nothing was changed", err)
			}
			r.note(api.PhasePreflight, fmt.Sprintf("lane %s places at %s", ss.Lane.Value, formatScale(want)))
			return nil
		})
		if err != nil {
			return err
		}
		return r.phase(api.PhaseRollout, api.StateDeploying, func() error {
			if _, err := a.store.Txn(a.store.ScaleOps(cfg.Name, slotName, ss.Scale, want)); err != nil {
				return fmt.Errorf("write the scale of %s: %w", slotName, err)
			}
			msgs, _, err := a.converge(ctx, cfg, []string{slotName})
			r.note(api.PhaseRollout, strings.Join(msgs, "; "))
			return err
		})
	}
}

// scaleSource says where a slot's scale comes from, for status.
func scaleSource(slot *config.Slot) string {
	switch {
	case slot.ScaleLive:
		return "live"
	case slot.Scale != nil:
		return "declared"
	default:
		return "kv"
	}
}
