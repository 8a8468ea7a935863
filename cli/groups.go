package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/slotd/slotd/api"
)

// groupFlag is -group: the swap group a command works on instead of a site.
type groupFlag struct {
	name string
	set  bool
}

func (g *groupFlag) String() string { return g.name }

func (g *groupFlag) Set(s string) error {
	if s == "" {
		return errors.New("empty: name a group declared in slots.hcl")
	}
	g.name, g.set = s, true
	return nil
}

// register adds -group to fs; usage names the flag's value `group`.
func (g *groupFlag) register(fs *flagSet, usage string) { fs.Var(g, "group", usage) }

// subject is what a command works on: a site, or with -group a swap group.
type subject struct {
	name  string
	group bool
}

func (s subject) String() string {
	if s.group {
		return "group " + s.name
	}
	return "site " + s.name
}

// arg is the subject as a command line names it.
func (s subject) arg() string {
	if s.group {
		return "-group " + s.name
	}
	return s.name
}

// subjectOf is the command's subject: the -group, or else the site, the first positional
// argument. It returns the positional arguments after the site. With -group, more than most
// arguments mean a site was given too: it refuses them, saying what to give (want).
func (e *env) subjectOf(cmd *command, g *groupFlag, pos []string, most int, want string) (s subject, rest []string, code int, ok bool) {
	if g.set {
		if len(pos) > most {
			return subject{}, nil, e.usageError(cmd, "-group %s names the sites; %s (got %s)",
				g.name, want, strings.Join(pos, " ")), false
		}
		return subject{name: g.name, group: true}, pos, 0, true
	}
	if len(pos) == 0 {
		return subject{}, nil, e.usageError(cmd, "want a site or -group, got 0 arguments"), false
	}
	return subject{name: pos[0]}, pos[1:], 0, true
}

// running is the subject's running operation, nil when it has none.
func (s subject) running(ctx context.Context, c *api.Client) (*api.Operation, error) {
	if s.group {
		g, err := c.Group(ctx, s.name)
		if err != nil {
			return nil, err
		}
		return g.Operation, nil
	}
	site, err := c.Site(ctx, s.name)
	if err != nil {
		return nil, err
	}
	return site.Operation, nil
}

func (s subject) history(ctx context.Context, c *api.Client, page api.HistoryPage) ([]api.Operation, error) {
	if s.group {
		return c.GroupHistory(ctx, s.name, page)
	}
	return c.History(ctx, s.name, page)
}

// swapGroup starts a group swap. A 404 whose source is one of the group's sites is a site
// given with -group: the error says so.
func swapGroup(ctx context.Context, c *api.Client, group string, req api.SwapRequest) (*api.Operation, error) {
	op, err := c.SwapGroup(ctx, group, req)
	var se *api.StatusError
	if errors.As(err, &se) && se.Code == 404 {
		if g, gerr := c.Group(ctx, group); gerr == nil && slices.Contains(g.Sites, req.Source) {
			return nil, fmt.Errorf("%s is a site of group %s, not a slot: with -group give the slots only, such as slotd swap -group %s staging production",
				req.Source, group, group)
		}
	}
	return op, err
}

// printGroups prints one row per group: its sites, and its running or last group operation.
func (e *env) printGroups(w io.Writer, groups []api.Group) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tSITES\tOPERATION")
	for _, g := range groups {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", g.Name, strings.Join(g.Sites, ", "), e.operationText(g.Operation, g.LastOperation, true))
	}
	_ = tw.Flush()
}

// memberSeen is what has been printed about a member site of a group operation.
type memberSeen struct {
	state, err string
}

// updateMember prints a member site's part of a group operation when its state or error
// changed; the caller holds f.mu.
func (f *follower) updateMember(m api.GroupMember) {
	now := memberSeen{m.State, m.Error}
	if f.members[m.Site] == now {
		return
	}
	f.members[m.Site] = now
	f.printf("    site %s%s: %s%s\n", m.Site, suffix(" ", parens(m.Operation)), orDash(m.State), suffix(": ", m.Error))
}

func parens(s string) string {
	if s == "" {
		return ""
	}
	return "(" + s + ")"
}

// subjectOfOperation is what an operation works on: its group for a group operation, else
// its site.
func subjectOfOperation(op *api.Operation) subject {
	if op.Site == "" && op.Group != "" {
		return subject{name: op.Group, group: true}
	}
	return subject{name: op.Site}
}

// memberSites are the sites of a group operation, in its order.
func memberSites(op *api.Operation) []string {
	sites := make([]string, len(op.Members))
	for i, m := range op.Members {
		sites[i] = m.Site
	}
	return sites
}
