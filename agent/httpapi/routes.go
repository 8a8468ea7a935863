package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/slotd/slotd/agent/engine"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Each route checks its input and returns its work; handle runs it once access allows.

func (s *Server) lookupSite(r *http.Request) (*config.Site, error) {
	name := r.PathValue("site")
	cfg := s.b.Site(name)
	if cfg == nil {
		return nil, fmt.Errorf("%w: no site %q", engine.ErrNotFound, name)
	}
	return cfg, nil
}

// lookupSlot resolves the {site} and {slot} of a request.
func (s *Server) lookupSlot(r *http.Request) (*config.Site, *config.Slot, error) {
	cfg, err := s.lookupSite(r)
	if err != nil {
		return nil, nil, err
	}
	slot, err := slotOf(cfg, r.PathValue("slot"))
	return cfg, slot, err
}

// lookupSetting resolves the {site}, {slot} and {key} of a settings request.
func (s *Server) lookupSetting(r *http.Request) (*config.Site, *config.Slot, string, error) {
	cfg, slot, err := s.lookupSlot(r)
	if err != nil {
		return nil, nil, "", err
	}
	key := r.PathValue("key")
	return cfg, slot, key, store.CheckSettingKey(key)
}

func slotOf(cfg *config.Site, name string) (*config.Slot, error) {
	slot := cfg.Slot(name)
	if slot == nil {
		return nil, fmt.Errorf("%w: site %s has no slot %q (slots: %s)", engine.ErrNotFound, cfg.Name, name, strings.Join(cfg.SlotNames(), ", "))
	}
	return slot, nil
}

func (s *Server) sites(*http.Request) (prepared, error) {
	return answer(http.StatusOK, func(ctx context.Context) ([]api.Site, error) {
		return readAll(ctx, s.b.SiteNames(), func(ctx context.Context, name string) (*api.Site, error) {
			return s.b.Status(ctx, name, false)
		})
	}), nil
}

// readAll reads each of names with read, in order: a list answer.
func readAll[T any](ctx context.Context, names []string, read func(context.Context, string) (*T, error)) ([]T, error) {
	out := []T{}
	for _, name := range names {
		v, err := read(ctx, name)
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, nil
}

func (s *Server) site(r *http.Request) (prepared, error) {
	cfg, err := s.lookupSite(r)
	if err != nil {
		return nil, err
	}
	return answer(http.StatusOK, func(ctx context.Context) (*api.Site, error) { return s.b.Status(ctx, cfg.Name, true) }), nil
}

func (s *Server) deploy(r *http.Request) (prepared, error) {
	cfg, slot, err := s.lookupSlot(r)
	if err != nil {
		return nil, err
	}
	var req api.DeployRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	for k := range req.Vars {
		if !store.EnvName(k) {
			return nil, fmt.Errorf("%w: job variable name %q: use letters, digits and _, not starting with a digit", store.ErrBadRequest, k)
		}
	}
	return answer(http.StatusAccepted, func(context.Context) (*api.Operation, error) {
		return s.b.Deploy(cfg.Name, slot.Name, req.Vars)
	}), nil
}

// scale changes the counts of task groups of a slot whose scale slots.hcl does not declare,
// as an operation: body {"app": 3}; groups left out keep their counts.
func (s *Server) scale(r *http.Request) (prepared, error) {
	cfg, slot, err := s.lookupSlot(r)
	if err != nil {
		return nil, err
	}
	var counts map[string]int
	if err := decode(r, &counts); err != nil {
		return nil, err
	}
	if slot.ScaleDeclared() {
		return nil, fmt.Errorf("%w: the scale of slot %s is declared in slots.hcl (%s): change it there and reload",
			store.ErrBadRequest, slot.Name, slot.Range.String())
	}
	if len(counts) == 0 {
		return nil, fmt.Errorf(`%w: the body names no task group: send counts by group, such as {"app": 3}`, store.ErrBadRequest)
	}
	for g, n := range counts {
		if err := store.CheckCount(g, n); err != nil {
			return nil, fmt.Errorf("%w: %v", store.ErrBadRequest, err)
		}
	}
	return answer(http.StatusAccepted, func(context.Context) (*api.Operation, error) {
		return s.b.Scale(cfg.Name, slot.Name, counts)
	}), nil
}

func (s *Server) settings(r *http.Request) (prepared, error) {
	cfg, slot, err := s.lookupSlot(r)
	if err != nil {
		return nil, err
	}
	return answer(http.StatusOK, func(context.Context) (api.Settings, error) { return s.b.Settings(cfg.Name, slot.Name) }), nil
}

// setSetting writes one setting; a key that changes kind (swappable ↔ sticky) moves in the
// same transaction. The site converges its lane to the change by itself.
func (s *Server) setSetting(r *http.Request) (prepared, error) {
	cfg, slot, key, err := s.lookupSetting(r)
	if err != nil {
		return nil, err
	}
	var req api.SettingRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := config.CheckSettingValue(key, req.Value); err != nil {
		return nil, fmt.Errorf("%w: %v", store.ErrBadRequest, err)
	}
	return answer(http.StatusOK, func(context.Context) (api.Settings, error) {
		return s.b.SetSetting(cfg.Name, slot.Name, key, req.Value, req.Sticky)
	}), nil
}

func (s *Server) deleteSetting(r *http.Request) (prepared, error) {
	cfg, slot, key, err := s.lookupSetting(r)
	if err != nil {
		return nil, err
	}
	return answer(http.StatusOK, func(context.Context) (api.Settings, error) {
		return s.b.DeleteSetting(cfg.Name, slot.Name, key)
	}), nil
}

func (s *Server) swap(r *http.Request) (prepared, error) {
	cfg, err := s.lookupSite(r)
	if err != nil {
		return nil, err
	}
	var req api.SwapRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Source == "" {
		return nil, fmt.Errorf("%w: source is required: the slot to swap in (slots: %s)", store.ErrBadRequest, strings.Join(cfg.SlotNames(), ", "))
	}
	if req.Target == "" {
		req.Target = "production"
	}
	for _, name := range []string{req.Source, req.Target} {
		if _, err := slotOf(cfg, name); err != nil {
			return nil, err
		}
	}
	if req.Source == req.Target {
		return nil, fmt.Errorf("%w: source and target are both %q: swap two different slots", store.ErrBadRequest, req.Source)
	}
	return answer(http.StatusAccepted, func(context.Context) (*api.Operation, error) {
		return s.b.Swap(cfg.Name, req.Source, req.Target, req.Preview)
	}), nil
}

func (s *Server) rollback(r *http.Request) (prepared, error) {
	cfg, err := s.lookupSite(r)
	if err != nil {
		return nil, err
	}
	return answer(http.StatusAccepted, func(context.Context) (*api.Operation, error) { return s.b.Rollback(cfg.Name) }), nil
}

// settle ends the hold of the swap that holds its former target lane now (slotd settle).
func (s *Server) settle(r *http.Request) (prepared, error) {
	cfg, err := s.lookupSite(r)
	if err != nil {
		return nil, err
	}
	return answer(http.StatusOK, func(ctx context.Context) (*api.Operation, error) { return s.b.Settle(ctx, cfg.Name) }), nil
}

// history answers a page of a site's finished operations, newest first (see historyPage).
func (s *Server) history(r *http.Request) (prepared, error) {
	cfg, err := s.lookupSite(r)
	if err != nil {
		return nil, err
	}
	limit, before, err := historyPage(r, "site "+cfg.Name, store.HistoryKeeps(cfg.HistoryLimit))
	if err != nil {
		return nil, err
	}
	return answer(http.StatusOK, func(context.Context) ([]api.Operation, error) { return s.b.History(cfg.Name, limit, before) }), nil
}

// historyPage reads the page a history request asks for: ?limit=N operations (default
// defaultHistoryPage, at most keeps, what the site or group named by owner keeps), older than
// ?before=SEQ when given, so that the Seq of a page's last operation asks for the next page.
func historyPage(r *http.Request, owner string, keeps int) (limit int, before uint64, err error) {
	limit = min(defaultHistoryPage, keeps)
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return 0, 0, fmt.Errorf("%w: limit %q is not a whole number of 1 or more: ask for 1 to %d operations (%s keeps %d)",
				store.ErrBadRequest, v, keeps, owner, keeps)
		}
		limit = min(n, keeps)
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return 0, 0, fmt.Errorf("%w: before %q is not an operation's seq: pass the seq of the oldest operation of the page before, such as before=1234",
				store.ErrBadRequest, v)
		}
		before = n
	}
	return limit, before, nil
}

// operation answers an operation; with ?index=N it blocks until the index differs.
func (s *Server) operation(r *http.Request) (prepared, error) {
	id := r.PathValue("id")
	q := r.URL.Query()
	var index uint64
	if v := q.Get("index"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: index %q is not a number", store.ErrBadRequest, v)
		}
		index = n
	}
	wait := defaultBlock
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%w: wait %q is not a positive duration such as 30s", store.ErrBadRequest, v)
		}
		wait = min(d, maxBlock)
	}
	return answer(http.StatusOK, func(ctx context.Context) (*api.Operation, error) {
		ctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		return s.b.Operation(ctx, id, index)
	}), nil
}

func (s *Server) complete(r *http.Request) (prepared, error) {
	id := r.PathValue("id")
	return answer(http.StatusOK, func(ctx context.Context) (*api.Operation, error) { return s.b.Complete(ctx, id) }), nil
}

func (s *Server) cancel(r *http.Request) (prepared, error) {
	id := r.PathValue("id")
	return answer(http.StatusOK, func(ctx context.Context) (*api.Operation, error) { return s.b.Cancel(ctx, id) }), nil
}

// health answers whether the daemon leads, the state of each site on it, and whether it
// reached Consul and Nomad at its last probe: 503 when it did not reach one of them, so a
// health check on this path goes critical while the daemon cannot do its work.
func (s *Server) health(context.Context) (int, any, error) {
	h, ok := s.b.Health()
	if !ok {
		return http.StatusServiceUnavailable, h, nil
	}
	return http.StatusOK, h, nil
}
