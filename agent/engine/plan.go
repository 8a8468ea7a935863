package engine

import (
	"maps"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/config"
)

// effectiveEnv is swappable overlaid by sticky (DESIGN.md §2).
func effectiveEnv(swappable, sticky map[string]string) map[string]string {
	env := make(map[string]string, len(swappable)+len(sticky))
	maps.Copy(env, swappable)
	maps.Copy(env, sticky)
	return env
}

// slotTags are the routes of a slot: its name (for <slot>.<service>.service.consul) and its tags.
func slotTags(s *config.Slot) []string {
	return append([]string{s.Name}, s.Tags...)
}

// steady is a lane serving slot s with settings set: the state between operations.
func steady(s *config.Slot, set store.SlotSettings) lanes.State {
	return lanes.State{Slot: s.Name, Tags: slotTags(s), Env: effectiveEnv(set.Settings, set.Sticky), Scale: maps.Clone(set.Scale), Live: set.Live}
}

// The states of a swap of source into target. src and tgt are the settings of the two slots as
// they were when the swap started; the source lane carries the app of src.

// applied: the source lane off the source's routes, with the target's sticky settings and
// identity and the target's scale, reachable only through the target's preview tags (phase 1).
func applied(target *config.Slot, src, tgt store.SlotSettings) lanes.State {
	return lanes.State{Slot: target.Name, Tags: append([]string(nil), target.PreviewTags...), Env: effectiveEnv(src.Settings, tgt.Sticky),
		Scale: maps.Clone(tgt.Scale), Live: tgt.Live}
}

// drainedTags are the tags of the target lane as it leaves the target's routes (phase 3,
// break): none, or the target's previous_tags when the lane will be held.
func drainedTags(target *config.Slot, hold bool) []string {
	if hold {
		return append([]string(nil), target.PreviousTags...)
	}
	return nil
}

// laneName is the name of lane i of a site: a, b, c, …, z, aa, ab, …
func laneName(i int) string {
	if i < 26 {
		return string(rune('a' + i))
	}
	return laneName(i/26-1) + laneName(i%26)
}

// assignLanes binds every slot without a lane to the first free lane, in declaration order.
func assignLanes(slots []string, bound map[string]string) map[string]string {
	out := make(map[string]string, len(slots))
	used := map[string]bool{}
	for _, s := range slots {
		if l := bound[s]; l != "" {
			out[s] = l
			used[l] = true
		}
	}
	next := 0
	for _, s := range slots {
		if out[s] != "" {
			continue
		}
		for used[laneName(next)] {
			next++
		}
		out[s] = laneName(next)
		used[out[s]] = true
	}
	return out
}
