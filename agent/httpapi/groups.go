package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/slotd/slotd/agent/engine"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// The routes of swap groups: sites swapped as one operation (group "name" { sites = [...] }).

// lookupGroup resolves the {group} of a request, with the declarations of its member sites.
func (s *Server) lookupGroup(r *http.Request) (*config.Group, []*config.Site, error) {
	name := r.PathValue("group")
	g := s.b.Group(name)
	if g == nil {
		return nil, nil, fmt.Errorf("%w: no group %q (groups: %s)", engine.ErrNotFound, name, orNone(s.b.GroupNames()))
	}
	members := make([]*config.Site, 0, len(g.Sites))
	for _, site := range g.Sites {
		cfg := s.b.Site(site)
		if cfg == nil {
			// Only between a reload that removes the site and the one that removes it from the group.
			return nil, nil, fmt.Errorf("%w: group %s lists site %q, which is not declared", engine.ErrNotFound, g.Name, site)
		}
		members = append(members, cfg)
	}
	return g, members, nil
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none declared"
	}
	return strings.Join(names, ", ")
}

func (s *Server) groups(*http.Request) (prepared, error) {
	return answer(http.StatusOK, func(ctx context.Context) ([]api.Group, error) {
		return readAll(ctx, s.b.GroupNames(), s.b.GroupStatus)
	}), nil
}

func (s *Server) group(r *http.Request) (prepared, error) {
	g, _, err := s.lookupGroup(r)
	if err != nil {
		return nil, err
	}
	return answer(http.StatusOK, func(ctx context.Context) (*api.Group, error) { return s.b.GroupStatus(ctx, g.Name) }), nil
}

// groupSwap swaps source into target on every member site as one operation. Like a site's
// swap, target defaults to production; both must be slots of every member.
func (s *Server) groupSwap(r *http.Request) (prepared, error) {
	g, members, err := s.lookupGroup(r)
	if err != nil {
		return nil, err
	}
	var req api.SwapRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Source == "" {
		return nil, fmt.Errorf("%w: source is required: the slot to swap in on every site of group %s (slots they all have: %s)",
			store.ErrBadRequest, g.Name, orNone(commonSlots(members)))
	}
	if req.Target == "" {
		req.Target = "production"
	}
	for _, cfg := range members {
		for _, name := range []string{req.Source, req.Target} {
			if cfg.Slot(name) == nil {
				return nil, fmt.Errorf("%w: site %s of group %s has no slot %q (slots: %s)",
					engine.ErrNotFound, cfg.Name, g.Name, name, strings.Join(cfg.SlotNames(), ", "))
			}
		}
	}
	if req.Source == req.Target {
		return nil, fmt.Errorf("%w: source and target are both %q: swap two different slots", store.ErrBadRequest, req.Source)
	}
	return answer(http.StatusAccepted, func(context.Context) (*api.Operation, error) {
		return s.b.GroupSwap(g.Name, req.Source, req.Target, req.Preview)
	}), nil
}

// commonSlots are the slots every member declares, in the first member's order.
func commonSlots(members []*config.Site) []string {
	var out []string
	for _, slot := range members[0].SlotNames() {
		if !slices.ContainsFunc(members, func(cfg *config.Site) bool { return cfg.Slot(slot) == nil }) {
			out = append(out, slot)
		}
	}
	return out
}

func (s *Server) groupRollback(r *http.Request) (prepared, error) {
	g, _, err := s.lookupGroup(r)
	if err != nil {
		return nil, err
	}
	return answer(http.StatusAccepted, func(context.Context) (*api.Operation, error) { return s.b.GroupRollback(g.Name) }), nil
}

// groupHistory answers a page of a group's finished group operations, newest first, paged as
// a site's history is; a group keeps as many as the top-level history_limit says.
func (s *Server) groupHistory(r *http.Request) (prepared, error) {
	g, _, err := s.lookupGroup(r)
	if err != nil {
		return nil, err
	}
	limit, before, err := historyPage(r, "group "+g.Name, store.HistoryKeeps(s.b.Config().HistoryLimit))
	if err != nil {
		return nil, err
	}
	return answer(http.StatusOK, func(context.Context) ([]api.Operation, error) { return s.b.GroupHistory(g.Name, limit, before) }), nil
}
