package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/slotd/slotd/agent/engine"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
)

// errRevealNeedsToken is ?reveal=true without the token on a daemon that has one (401): sticky
// values are production secrets, whatever read_requires_token says about other reads.
var errRevealNeedsToken = fmt.Errorf("the token is needed to reveal sticky values: send Authorization: Bearer <token> with reveal=true, or leave reveal out to get them as %q", api.Hidden)

// masked runs a route and replaces the secrets in its answer by api.Hidden, unless the request
// asks for them with ?reveal=true and may see them. The reveal parameter is checked before the
// route, so a bad one changes nothing.
func (s *Server) masked(rt route) route {
	return func(r *http.Request) (prepared, error) {
		reveal, err := s.reveal(r)
		if err != nil {
			return nil, err
		}
		work, err := rt(r)
		if err != nil || reveal {
			return work, err
		}
		return func(ctx context.Context) (int, any, error) {
			status, body, err := work(ctx)
			if err != nil {
				return status, body, err
			}
			return status, maskAnswer(body, s.sensitiveVars), nil
		}, nil
	}
}

// reveal reads ?reveal=: true, false or left out. true needs the token when there is one.
func (s *Server) reveal(r *http.Request) (bool, error) {
	q := r.URL.Query()
	if !q.Has("reveal") {
		return false, nil
	}
	v := q.Get("reveal")
	reveal, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: reveal=%q: write reveal=true to get sticky values in clear, or leave it out", store.ErrBadRequest, v)
	}
	if reveal && !hasToken(r, s.b.Config().HTTP.Token) {
		s.logger.Warn("unauthorized reveal", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		return false, errRevealNeedsToken
	}
	return reveal, nil
}

// sensitiveVars are the job variables that a site declares sensitive; none for a site that is
// not declared (any more).
func (s *Server) sensitiveVars(site string) []string {
	if cfg := s.b.Site(site); cfg != nil {
		return cfg.SensitiveVars
	}
	return nil
}

// maskAnswer returns an API answer with every sticky value, and the value of every job
// variable that sensitive(site) names, replaced by api.Hidden. It copies what it changes:
// answers share maps with the operations registry. Every answer type that carries settings or
// job variables is handled here.
func maskAnswer(body any, sensitive func(site string) []string) any {
	site := func(s api.Site) api.Site { return maskSite(s, sensitive(s.Name)) }
	op := func(o api.Operation) api.Operation { return maskOperation(o, sensitive(o.Site)) }
	switch v := body.(type) {
	case api.Settings:
		return maskSettings(v)
	case *api.Settings:
		return maskPtr(v, maskSettings)
	case *api.Site:
		return maskPtr(v, site)
	case []api.Site:
		return maskAll(v, site)
	case *api.Operation:
		return maskPtr(v, op)
	case []api.Operation:
		return maskAll(v, op)
	}
	return body
}

// maskPtr masks a copy of *p; nil stays nil.
func maskPtr[T any](p *T, mask func(T) T) *T {
	if p == nil {
		return nil
	}
	m := mask(*p)
	return &m
}

// maskAll masks a copy of every element of s; nil stays nil.
func maskAll[T any](s []T, mask func(T) T) []T {
	if s == nil {
		return nil
	}
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = mask(v)
	}
	return out
}

func maskSettings(s api.Settings) api.Settings {
	if len(s.Sticky) == 0 {
		return s
	}
	hidden := make(map[string]string, len(s.Sticky))
	for k := range s.Sticky {
		hidden[k] = api.Hidden
	}
	s.Sticky, s.Masked = hidden, true
	return s
}

func maskSite(s api.Site, sensitive []string) api.Site {
	s.Slots = maskAll(s.Slots, func(sl api.Slot) api.Slot {
		sl.Settings = maskPtr(sl.Settings, maskSettings)
		return sl
	})
	op := func(o api.Operation) api.Operation { return maskOperation(o, sensitive) }
	s.Operation, s.LastOperation = maskPtr(s.Operation, op), maskPtr(s.LastOperation, op)
	return s
}

func maskOperation(op api.Operation, sensitive []string) api.Operation {
	op.Vars = engine.HideVars(op.Vars, sensitive)
	return op
}
