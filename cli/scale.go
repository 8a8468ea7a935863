package cli

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/slotd/slotd/api"
)

func scaleCommand() *command {
	return &command{
		name:     "scale",
		synopsis: "change a slot's instance counts",
		usage:    "<site> <slot> <group>=<count>... [flags]",
		help: `
Sets the instance count of task groups of the site's job for one slot; groups left out keep
theirs. A slot's scale is sticky: it stays with the slot when a swap moves the code. The
change runs as an operation: a pre-flight plans the lane at the new counts with Nomad, then
the lane rolls out, health-gated. A slot whose scale slots.hcl declares is changed there.
` + followHelp + `

Examples:
  slotd scale web production app=10
  slotd scale web staging app=1 worker=0`,
		run: runScale,
	}
}

func runScale(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	var cf clientFlags
	cf.register(fs, true)
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}
	if len(pos) < 3 {
		return e.usageError(cmd, "want a site, a slot and at least one group=count, got %d arguments", len(pos))
	}
	counts := map[string]int{}
	for _, arg := range pos[2:] {
		group, n, found := strings.Cut(arg, "=")
		count, err := strconv.Atoi(n)
		if !found || group == "" || err != nil || count < 0 {
			return e.usageError(cmd, "want <group>=<count> with a count of 0 or more, such as app=3; got %q", arg)
		}
		if _, dup := counts[group]; dup {
			return e.usageError(cmd, "group %q given twice", group)
		}
		counts[group] = count
	}
	return e.startAndFollow(&cf, func(ctx context.Context, c *api.Client) (*api.Operation, error) {
		return c.Scale(ctx, pos[0], pos[1], counts)
	})
}

// scaleText is a slot's scale for the status table: "app=3", "live app=4", or "-".
func scaleText(sl api.Slot) string {
	if len(sl.Scale) == 0 {
		if sl.ScaleSource == "live" {
			return "live"
		}
		return "-"
	}
	groups := make([]string, 0, len(sl.Scale))
	for g := range sl.Scale {
		groups = append(groups, g)
	}
	slices.Sort(groups)
	parts := make([]string, len(groups))
	for i, g := range groups {
		parts[i] = g + "=" + strconv.Itoa(sl.Scale[g])
	}
	s := strings.Join(parts, ",")
	if sl.ScaleSource == "live" {
		s = "live " + s
	}
	return s
}
