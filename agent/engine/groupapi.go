package engine

import (
	"context"
	"fmt"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// What the HTTP API asks of the engine about swap groups (DESIGN.md: sites swapped as one).

// Group is a declared group's configuration, nil when there is none.
func (e *Engine) Group(name string) *config.Group {
	return e.groupConfig(name)
}

// GroupNames are the declared groups, sorted.
func (e *Engine) GroupNames() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var names []string
	for _, g := range e.groups {
		names = append(names, g.Name)
	}
	return names
}

// GroupStatus is a group with its running group operation and its newest finished one.
func (e *Engine) GroupStatus(ctx context.Context, name string) (*api.Group, error) {
	g := e.groupConfig(name)
	if g == nil {
		return nil, fmt.Errorf("%w: no group %q", ErrNotFound, name)
	}
	return &api.Group{Name: g.Name, Sites: append([]string(nil), g.Sites...)}, nil
}

// GroupSwap starts a swap of source into target on every member site of the group, as one
// operation; preview stops every member after apply.
func (e *Engine) GroupSwap(name, source, target string, preview bool) (*api.Operation, error) {
	return nil, fmt.Errorf("group swaps are not built yet")
}

// GroupRollback swaps back the group's last group swap on every member.
func (e *Engine) GroupRollback(name string) (*api.Operation, error) {
	return nil, fmt.Errorf("group rollbacks are not built yet")
}

// GroupHistory is a page of a group's finished group operations, newest first.
func (e *Engine) GroupHistory(name string, limit int, before uint64) ([]api.Operation, error) {
	return []api.Operation{}, nil
}

func (e *Engine) groupConfig(name string) *config.Group {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, g := range e.groups {
		if g.Name == name {
			return g
		}
	}
	return nil
}
