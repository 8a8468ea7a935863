package agent

import (
	"fmt"
	"maps"
	"net/http"
	"strconv"

	"github.com/slotd/slotd/agent/store"

	"github.com/slotd/slotd/api"
)

// errRevealNeedsToken is ?reveal=true without the token on a daemon that has one (401): sticky
// values are production secrets, whatever read_requires_token says about other reads.
var errRevealNeedsToken = fmt.Errorf("the token is needed to reveal sticky values: send Authorization: Bearer <token> with reveal=true, or leave reveal out to get them as %q", api.Hidden)

// masked runs h and replaces the secrets in its answer by api.Hidden, unless the request asks
// for them with ?reveal=true and may see them. The reveal parameter is checked before h runs,
// so a bad one changes nothing.
func (a *Agent) masked(h handlerFunc) handlerFunc {
	return func(r *http.Request) (int, any, error) {
		reveal, err := a.reveal(r)
		if err != nil {
			return 0, nil, err
		}
		status, body, err := h(r)
		if err != nil || reveal {
			return status, body, err
		}
		return status, maskAnswer(body, a.sensitiveVars), nil
	}
}

// reveal reads ?reveal=: true, false or left out. true needs the token when there is one.
func (a *Agent) reveal(r *http.Request) (bool, error) {
	q := r.URL.Query()
	if !q.Has("reveal") {
		return false, nil
	}
	v := q.Get("reveal")
	reveal, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: reveal=%q: write reveal=true to get sticky values in clear, or leave it out", store.ErrBadRequest, v)
	}
	if reveal && !hasToken(r, a.config().HTTP.Token) {
		a.logger.Warn("unauthorized reveal", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		return false, errRevealNeedsToken
	}
	return reveal, nil
}

// sensitiveVars are the job variables that a site declares sensitive; none for a site that is
// not declared (any more).
func (a *Agent) sensitiveVars(site string) []string {
	if s := a.site(site); s != nil {
		return s.config().SensitiveVars
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
	op.Vars = hideVars(op.Vars, sensitive)
	return op
}

// hideVars copies vars with the value of each sensitive one replaced by api.Hidden. A deploy
// keeps this copy in its operation: the values live on only in the lane's Nomad job
// submission, which convergence and recovery read, so the journal and history need none.
func hideVars(vars map[string]string, sensitive []string) map[string]string {
	if vars == nil {
		return nil
	}
	out := maps.Clone(vars)
	for _, k := range sensitive {
		if _, ok := out[k]; ok {
			out[k] = api.Hidden
		}
	}
	return out
}
