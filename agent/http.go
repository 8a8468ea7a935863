package agent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/jobspec"

	"github.com/slotd/slotd/agent/store"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

const (
	// maxBody is the largest request body the API reads.
	maxBody = 1 << 20
	// defaultBlock and maxBlock bound how long GET /v1/operations/{id}?index= waits.
	defaultBlock = 5 * time.Minute
	maxBlock     = 10 * time.Minute
	// defaultHistoryPage is how many operations GET /v1/sites/{site}/history answers without
	// ?limit= (fewer when the site keeps fewer).
	defaultHistoryPage = 50
	// retryAfter is the Retry-After of a write refused while a site starts or a leader is
	// elected: both pass within seconds, and the client waits instead of failing.
	retryAfter = 2 * time.Second
)

// errUnauthorized is a missing or wrong bearer token.
var errUnauthorized = errors.New("missing or wrong bearer token: send Authorization: Bearer <token>")

// errTooLarge is a request body over maxBody.
var errTooLarge = errors.New("request body over 1 MiB")

// handlerFunc is what every route implements: a value to encode as JSON, or a typed error.
type handlerFunc func(r *http.Request) (status int, body any, err error)

func (a *Agent) newServer() *http.Server {
	mux := http.NewServeMux()
	route := func(pattern string, write bool, h handlerFunc) {
		mux.Handle(pattern, a.wrap(write, h))
	}
	route("GET /v1/sites", false, a.handleSites)
	route("GET /v1/sites/{site}", false, a.handleSite)
	route("POST /v1/sites/{site}/slots/{slot}/deploy", true, a.handleDeploy)
	route("GET /v1/sites/{site}/slots/{slot}/settings", false, a.handleSettings)
	route("PUT /v1/sites/{site}/slots/{slot}/settings/{key}", true, a.handleSetSetting)
	route("DELETE /v1/sites/{site}/slots/{slot}/settings/{key}", true, a.handleDeleteSetting)
	route("PUT /v1/sites/{site}/slots/{slot}/scale", true, a.handleScale)
	route("POST /v1/sites/{site}/swap", true, a.handleSwap)
	route("POST /v1/sites/{site}/rollback", true, a.handleRollback)
	route("POST /v1/sites/{site}/settle", true, a.handleSettle)
	route("GET /v1/sites/{site}/history", false, a.handleHistory)
	route("GET /v1/operations/{id}", false, a.handleOperation)
	route("POST /v1/operations/{id}/complete", true, a.handleComplete)
	route("POST /v1/operations/{id}/cancel", true, a.handleCancel)
	// Open whatever the token rules say: Nomad's and Consul's health checks send no token.
	mux.Handle("GET /v1/health", a.respond(a.handleHealth))
	metrics := promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{})
	mux.Handle("GET /v1/metrics", a.guard(false, metrics))
	return &http.Server{
		Handler:           a.logRequests(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      maxBlock + time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
}

func (a *Agent) serve() error {
	cfg := a.config()
	var err error
	if cfg.HTTP.TLSCertFile != "" {
		err = a.server.ServeTLS(a.listener, cfg.HTTP.TLSCertFile, cfg.HTTP.TLSKeyFile)
	} else {
		err = a.server.Serve(a.listener)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (a *Agent) config() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// statusRecorder remembers the status a handler wrote, for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (a *Agent) logRequests(next http.Handler) http.Handler {
	log := a.logger.Named("http")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}

// authorized reports whether a request may go on: writes need the token, reads too unless
// read_requires_token = false (config.HTTP.ReadsNeedToken).
func (a *Agent) authorized(r *http.Request, write bool) bool {
	h := a.config().HTTP
	if !write && !h.ReadsNeedToken() {
		return true
	}
	return hasToken(r, h.Token)
}

// hasToken checks the request's bearer token in constant time; an open API has no token, so
// every request has it.
func hasToken(r *http.Request, token string) bool {
	if token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) == 1
}

func (a *Agent) guard(write bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.authorized(r, write) {
			a.logger.Warn("unauthorized request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			writeJSON(w, http.StatusUnauthorized, api.ErrorResponse{Error: errUnauthorized.Error()})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// wrap turns a handlerFunc into a handler: auth, secrets masked unless revealed (secrets.go),
// body limit, JSON encoding and error mapping.
func (a *Agent) wrap(write bool, h handlerFunc) http.Handler {
	return a.guard(write, a.respond(a.masked(h)))
}

// respond runs a handlerFunc with the body limit and answers its value or error as JSON.
func (a *Agent) respond(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		status, body, err := h(r)
		if err != nil {
			code, resp, retry := a.errorResponse(err)
			if retry > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
			}
			writeJSON(w, code, resp)
			return
		}
		writeJSON(w, status, body)
	})
}

// errorResponse maps err to a status and a body; retry, when not zero, is the Retry-After of a
// refusal that passes by itself.
func (a *Agent) errorResponse(err error) (code int, resp api.ErrorResponse, retry time.Duration) {
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr), errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge, api.ErrorResponse{Error: errTooLarge.Error()}, 0
	case errors.Is(err, errRevealNeedsToken):
		return http.StatusUnauthorized, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, store.ErrBadRequest):
		return http.StatusBadRequest, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, store.ErrBusy):
		return http.StatusConflict, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, errStarting):
		return http.StatusServiceUnavailable, api.ErrorResponse{Error: err.Error()}, retryAfter
	case errors.Is(err, errNotLeader):
		leader := a.leaderAddress()
		if leader == "" {
			// Just started, the lock just came free, or Consul is slow to say: this passes within
			// seconds, so the client is asked to retry rather than pointed elsewhere.
			msg := err.Error() + ", and no leader is known yet; nothing was started, retry in a few seconds"
			return http.StatusServiceUnavailable, api.ErrorResponse{Error: msg}, retryAfter
		}
		return http.StatusServiceUnavailable, api.ErrorResponse{Error: err.Error(), LeaderAddress: leader}, 0
	default:
		a.logger.Error("request failed", "error", err)
		return http.StatusInternalServerError, api.ErrorResponse{Error: err.Error()}, 0
	}
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// Readable "<hidden>" and "<token>" for people with curl; the type says JSON, not HTML.
	enc.SetEscapeHTML(false)
	_ = enc.Encode(body)
}

// decode reads a JSON body strictly: unknown fields, trailing data and empty bodies are errors.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			return errTooLarge
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: empty body: send a JSON object", store.ErrBadRequest)
		}
		return fmt.Errorf("%w: malformed JSON body: %v", store.ErrBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: malformed JSON body: data after the object", store.ErrBadRequest)
	}
	return nil
}

// decodeWrite decodes the body of a write, and refuses it on a daemon that does not lead.
func (a *Agent) decodeWrite(r *http.Request, v any) error {
	if err := decode(r, v); err != nil {
		return err
	}
	return a.leading()
}

// leading refuses requests that need the leader on a daemon that is not.
func (a *Agent) leading() error {
	if !a.isLeader() {
		return errNotLeader
	}
	return nil
}

func (a *Agent) lookupSite(r *http.Request) (*site, *config.Site, error) {
	name := r.PathValue("site")
	s := a.site(name)
	if s == nil {
		return nil, nil, fmt.Errorf("%w: no site %q", ErrNotFound, name)
	}
	return s, s.config(), nil
}

// lookupSiteSlot resolves the {site} and {slot} of a request.
func (a *Agent) lookupSiteSlot(r *http.Request) (*site, *config.Site, *config.Slot, error) {
	s, site, err := a.lookupSite(r)
	if err != nil {
		return nil, nil, nil, err
	}
	slot, err := lookupSlot(site, r.PathValue("slot"))
	return s, site, slot, err
}

// lookupSetting resolves the {site}, {slot} and {key} of a settings request.
func (a *Agent) lookupSetting(r *http.Request) (*config.Site, *config.Slot, string, error) {
	_, site, slot, err := a.lookupSiteSlot(r)
	if err != nil {
		return nil, nil, "", err
	}
	key := r.PathValue("key")
	return site, slot, key, store.CheckSettingKey(key)
}

func lookupSlot(site *config.Site, name string) (*config.Slot, error) {
	slot := site.Slot(name)
	if slot == nil {
		return nil, fmt.Errorf("%w: site %s has no slot %q (slots: %s)", ErrNotFound, site.Name, name, strings.Join(site.SlotNames(), ", "))
	}
	return slot, nil
}

func (a *Agent) handleSites(r *http.Request) (int, any, error) {
	out := []api.Site{}
	sites := a.siteList()
	sort.Slice(sites, func(i, j int) bool { return sites[i].name < sites[j].name })
	for _, s := range sites {
		view, err := a.siteView(r.Context(), s, false)
		if err != nil {
			return 0, nil, err
		}
		out = append(out, *view)
	}
	return http.StatusOK, out, nil
}

func (a *Agent) handleSite(r *http.Request) (int, any, error) {
	s, _, err := a.lookupSite(r)
	if err != nil {
		return 0, nil, err
	}
	view, err := a.siteView(r.Context(), s, true)
	return http.StatusOK, view, err
}

// siteView assembles a site's status from KV (bindings, operations) and Consul (instances).
func (a *Agent) siteView(ctx context.Context, s *site, detail bool) (*api.Site, error) {
	cfg := s.config()
	st, err := a.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return nil, err
	}
	entries, _, err := a.lanes.SiteEntries(ctx, cfg, 0, 0)
	if err != nil {
		return nil, err
	}
	view := &api.Site{Name: cfg.Name, Service: cfg.Service, Ready: s.snapshot().ready && a.isLeader(), Slots: []api.Slot{}}
	for _, slot := range cfg.Slots {
		ss := st.Slot(slot.Name)
		v := api.Slot{Name: slot.Name, Version: ss.BoundVersion(), Tags: slotTags(slot), AutoSwap: slot.AutoSwap}
		if ss.Lane.Value != "" {
			v.Lane = jobspec.JobID(cfg.Name, ss.Lane.Value)
		}
		for _, e := range entries {
			if ss.Lane.Value == "" || e.Service.Meta[lanes.MetaLane] != ss.Lane.Value {
				continue
			}
			v.Total++
			status := e.Checks.AggregatedStatus()
			if status == consulapi.HealthPassing {
				v.Healthy++
			}
			if detail {
				addr := e.Service.Address
				if addr == "" {
					addr = e.Node.Address
				}
				v.Instances = append(v.Instances, api.Instance{
					Alloc: allocOf(e.Service.ID), Node: e.Node.Node, Address: addr, Port: e.Service.Port,
					Tags: e.Service.Tags, Healthy: status == consulapi.HealthPassing, Status: status,
				})
			}
		}
		if set, err := a.slotSet(ctx, cfg, slot, ss); err == nil {
			v.Scale, v.ScaleSource = set.Scale, scaleSource(slot)
		}
		if detail {
			set := ss.Values()
			v.Settings = &api.Settings{Settings: set.Settings, Sticky: set.Sticky}
		}
		view.Slots = append(view.Slots, v)
	}
	running, err := a.store.RunningOperation(cfg.Name)
	if err != nil {
		return nil, err
	}
	if running != nil {
		if mem := a.ops.get(running.ID); mem != nil {
			running = mem
		}
		view.Operation = running
		if slot, until, ok := holding(cfg, running); ok {
			for i := range view.Slots {
				if view.Slots[i].Name == slot {
					view.Slots[i].HeldFor, view.Slots[i].HeldUntil = running.Target, &until
				}
			}
		}
	}
	last, err := a.store.HistoryPage(cfg.Name, 1, 0)
	if err != nil {
		return nil, err
	}
	if len(last) > 0 {
		view.LastOperation = &last[0]
	}
	return view, nil
}

// holding reports whether op is a swap that holds its former target lane now: the slot that
// lane is bound to (the swap's Source), and when the hold ends at the latest.
func holding(cfg *config.Site, op *api.Operation) (string, time.Time, bool) {
	sw, settle := op.Phase(api.PhaseSwitch), op.Phase(api.PhaseSettle)
	if (op.Kind != api.KindSwap && op.Kind != api.KindRollback) || !op.Switched || api.Terminal(op.State) ||
		sw == nil || sw.EndedAt == nil || settle == nil || settle.State != api.PhasePending || cfg.Monitor == nil {
		return "", time.Time{}, false
	}
	return op.Source, sw.EndedAt.Add(cfg.Monitor.RollbackWindow), true
}

// handleSettle ends the hold of the swap that holds its former target lane now (slotd
// settle): that lane takes the source's settings and routes, and the monitor goes on.
func (a *Agent) handleSettle(r *http.Request) (int, any, error) {
	s, site, err := a.lookupSite(r)
	if err != nil {
		return 0, nil, err
	}
	if err := a.leading(); err != nil {
		return 0, nil, err
	}
	if run := s.snapshot().running; run != nil {
		cur := a.ops.get(run.op.ID)
		if _, _, ok := holding(site, cur); ok && (cur.State == api.StateMonitoring || cur.State == api.StateHolding) {
			return a.signal(r.Context(), run, ctlSettle, cur.Index)
		}
	}
	return 0, nil, fmt.Errorf("%w: site %s holds no lane: only a swap that is monitoring or holding its former target lane can settle", store.ErrBadRequest, site.Name)
}

// allocOf takes the allocation ID out of a Nomad service ID: _nomad-task-<alloc>-<...>.
func allocOf(serviceID string) string {
	rest, ok := strings.CutPrefix(serviceID, "_nomad-task-")
	if !ok || len(rest) < 36 {
		return serviceID
	}
	return rest[:36]
}

func (a *Agent) handleDeploy(r *http.Request) (int, any, error) {
	s, site, slot, err := a.lookupSiteSlot(r)
	if err != nil {
		return 0, nil, err
	}
	var req api.DeployRequest
	if err := a.decodeWrite(r, &req); err != nil {
		return 0, nil, err
	}
	for k := range req.Vars {
		if !store.EnvName(k) {
			return 0, nil, fmt.Errorf("%w: job variable name %q: use letters, digits and _, not starting with a digit", store.ErrBadRequest, k)
		}
	}
	// Parse before anything starts, so a bad variable is a 400 and changes nothing.
	app, err := lanes.FileSource(site, req.Vars)
	if err != nil {
		return 0, nil, err
	}
	if err := a.lanes.Check(site, app); err != nil {
		return 0, nil, fmt.Errorf("%w: %v", store.ErrBadRequest, err)
	}
	op := &api.Operation{Kind: api.KindDeploy, Trigger: "api", Slot: slot.Name, Vars: hideVars(req.Vars, site.SensitiveVars)}
	started, err := a.start(s, op, []string{api.PhaseDeploy}, a.deployOp(site, slot.Name, req.Vars))
	return http.StatusAccepted, started, err
}

// handleScale changes the counts of task groups of a slot whose scale slots.hcl does not
// declare, as an operation: body {"app": 3}; groups left out keep their counts.
func (a *Agent) handleScale(r *http.Request) (int, any, error) {
	s, site, slot, err := a.lookupSiteSlot(r)
	if err != nil {
		return 0, nil, err
	}
	var counts map[string]int
	if err := a.decodeWrite(r, &counts); err != nil {
		return 0, nil, err
	}
	if slot.ScaleDeclared() {
		return 0, nil, fmt.Errorf("%w: the scale of slot %s is declared in slots.hcl (%s): change it there and reload",
			store.ErrBadRequest, slot.Name, slot.Range.String())
	}
	if len(counts) == 0 {
		return 0, nil, fmt.Errorf(`%w: the body names no task group: send counts by group, such as {"app": 3}`, store.ErrBadRequest)
	}
	for g, n := range counts {
		if err := store.CheckCount(g, n); err != nil {
			return 0, nil, fmt.Errorf("%w: %v", store.ErrBadRequest, err)
		}
	}
	op := &api.Operation{Kind: api.KindScale, Trigger: "api", Slot: slot.Name, Scale: maps.Clone(counts)}
	started, err := a.start(s, op, []string{api.PhasePreflight, api.PhaseRollout}, a.scaleOp(site, slot.Name, counts))
	return http.StatusAccepted, started, err
}

func (a *Agent) handleSettings(r *http.Request) (int, any, error) {
	_, site, slot, err := a.lookupSiteSlot(r)
	if err != nil {
		return 0, nil, err
	}
	st, err := a.store.LoadSlots(site.Name, nil)
	if err != nil {
		return 0, nil, err
	}
	set := st.Slot(slot.Name).Values()
	return http.StatusOK, api.Settings{Settings: set.Settings, Sticky: set.Sticky}, nil
}

// handleSetSetting writes one setting; a key that changes kind (swappable ↔ sticky) moves in
// the same transaction. The site converges its lane to the change by itself.
func (a *Agent) handleSetSetting(r *http.Request) (int, any, error) {
	site, slot, key, err := a.lookupSetting(r)
	if err != nil {
		return 0, nil, err
	}
	var req api.SettingRequest
	if err := a.decodeWrite(r, &req); err != nil {
		return 0, nil, err
	}
	kind, other := store.KindSwappable, store.KindSticky
	if req.Sticky {
		kind, other = other, kind
	}
	return a.changeSetting(site, slot.Name, func(ss *store.SlotState) map[string]map[string]string {
		into, from := ss.Doc(kind).Values, ss.Doc(other).Values
		into[key] = req.Value
		delete(from, key)
		return map[string]map[string]string{kind: into, other: from}
	})
}

func (a *Agent) handleDeleteSetting(r *http.Request) (int, any, error) {
	site, slot, key, err := a.lookupSetting(r)
	if err != nil {
		return 0, nil, err
	}
	if err := a.leading(); err != nil {
		return 0, nil, err
	}
	found := false
	status, body, err := a.changeSetting(site, slot.Name, func(ss *store.SlotState) map[string]map[string]string {
		_, inSet := ss.Settings.Values[key]
		_, inSticky := ss.Sticky.Values[key]
		found = inSet || inSticky
		delete(ss.Settings.Values, key)
		delete(ss.Sticky.Values, key)
		return map[string]map[string]string{store.KindSwappable: ss.Settings.Values, store.KindSticky: ss.Sticky.Values}
	})
	if err == nil && !found {
		return 0, nil, fmt.Errorf("%w: slot %s has no setting %q", ErrNotFound, slot.Name, key)
	}
	return status, body, err
}

// changeSetting applies a change to one slot's settings documents, check-and-set against the
// documents as read, retrying on a race. change edits the values it is given (copies) and
// returns the documents by kind.
func (a *Agent) changeSetting(site *config.Site, slot string, change func(*store.SlotState) map[string]map[string]string) (int, any, error) {
	for attempt := 0; ; attempt++ {
		st, err := a.store.LoadSlots(site.Name, nil)
		if err != nil {
			return 0, nil, err
		}
		ss := st.Slot(slot)
		old := map[string]store.SettingsDoc{store.KindSwappable: ss.Settings, store.KindSticky: ss.Sticky}
		edit := store.NewSlotState()
		edit.Settings.Values, edit.Sticky.Values = ss.Values().Settings, ss.Values().Sticky
		var ops consulapi.KVTxnOps
		for kind, values := range change(edit) {
			ops = append(ops, a.store.DocOps(site.Name, slot, kind, old[kind], values)...)
		}
		_, err = a.store.Txn(ops)
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			return 0, nil, err
		}
		if s := a.site(site.Name); s != nil {
			if _, err := s.do(s.convergeNow); err != nil {
				a.logger.Warn("settings changed; rolling them out waits for the next look", "site", site.Name, "error", err)
			}
		}
		st, err = a.store.LoadSlots(site.Name, nil)
		if err != nil {
			return 0, nil, err
		}
		set := st.Slot(slot).Values()
		return http.StatusOK, api.Settings{Settings: set.Settings, Sticky: set.Sticky}, nil
	}
}

func (a *Agent) handleSwap(r *http.Request) (int, any, error) {
	s, site, err := a.lookupSite(r)
	if err != nil {
		return 0, nil, err
	}
	var req api.SwapRequest
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.Source == "" {
		return 0, nil, fmt.Errorf("%w: source is required: the slot to swap in (slots: %s)", store.ErrBadRequest, strings.Join(site.SlotNames(), ", "))
	}
	if req.Target == "" {
		req.Target = "production"
	}
	if _, err := lookupSlot(site, req.Source); err != nil {
		return 0, nil, err
	}
	if _, err := lookupSlot(site, req.Target); err != nil {
		return 0, nil, err
	}
	if req.Source == req.Target {
		return 0, nil, fmt.Errorf("%w: source and target are both %q: swap two different slots", store.ErrBadRequest, req.Source)
	}
	if err := a.leading(); err != nil {
		return 0, nil, err
	}
	op := &api.Operation{Kind: api.KindSwap, Trigger: "api", Source: req.Source, Target: req.Target, Preview: req.Preview}
	started, err := a.start(s, op, swapPhases, a.swapOp(site, req.Source, req.Target))
	return http.StatusAccepted, started, err
}

func (a *Agent) handleRollback(r *http.Request) (int, any, error) {
	if _, _, err := a.lookupSite(r); err != nil {
		return 0, nil, err
	}
	if err := a.leading(); err != nil {
		return 0, nil, err
	}
	s := a.site(r.PathValue("site"))
	if s == nil {
		return 0, nil, fmt.Errorf("%w: no site %q", ErrNotFound, r.PathValue("site"))
	}
	op, err := s.do(func() (*api.Operation, error) { return s.rollback("api") })
	return http.StatusAccepted, op, err
}

// handleHistory answers a page of a site's finished operations, newest first: ?limit=N of
// them (default defaultHistoryPage, at most what the site keeps), older than ?before=SEQ
// when given, so that the Seq of a page's last operation asks for the next page.
func (a *Agent) handleHistory(r *http.Request) (int, any, error) {
	_, site, err := a.lookupSite(r)
	if err != nil {
		return 0, nil, err
	}
	keeps := store.HistoryKeeps(site.HistoryLimit)
	limit := min(defaultHistoryPage, keeps)
	q := r.URL.Query()
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return 0, nil, fmt.Errorf("%w: limit %q is not a whole number of 1 or more: ask for 1 to %d operations (site %s keeps %d)",
				store.ErrBadRequest, v, keeps, site.Name, keeps)
		}
		limit = min(n, keeps)
	}
	var before uint64
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return 0, nil, fmt.Errorf("%w: before %q is not an operation's seq: pass the seq of the oldest operation of the page before, such as before=1234",
				store.ErrBadRequest, v)
		}
		before = n
	}
	hist, err := a.store.HistoryPage(site.Name, limit, before)
	return http.StatusOK, hist, err
}

// handleOperation answers an operation; with ?index=N it blocks until the index differs.
func (a *Agent) handleOperation(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	q := r.URL.Query()
	var index uint64
	if v := q.Get("index"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: index %q is not a number", store.ErrBadRequest, v)
		}
		index = n
	}
	wait := defaultBlock
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return 0, nil, fmt.Errorf("%w: wait %q is not a positive duration such as 30s", store.ErrBadRequest, v)
		}
		wait = min(d, maxBlock)
	}
	if op := a.ops.get(id); op != nil {
		if index == 0 {
			return http.StatusOK, op, nil
		}
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		defer cancel()
		return http.StatusOK, a.ops.wait(ctx, id, index), nil
	}
	op, err := a.findOperation(id)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, op, nil
}

// findOperation looks for an operation this daemon has not seen, in KV: each site's running
// operation, then its history newest first, no further back than the site keeps.
func (a *Agent) findOperation(id string) (*api.Operation, error) {
	if !strings.HasPrefix(id, "op-") {
		return nil, fmt.Errorf("%w: no operation %q", ErrNotFound, id)
	}
	for _, s := range a.siteList() {
		if op, err := a.store.RunningOperation(s.name); err == nil && op != nil && op.ID == id {
			return op, nil
		}
		var found *api.Operation
		err := a.store.WalkHistory(s.name, 0, store.HistoryKeeps(s.config().HistoryLimit), func(op *api.Operation) bool {
			if op.ID == id {
				found = op
			}
			return found == nil
		})
		if err != nil {
			return nil, err
		}
		if found != nil {
			return found, nil
		}
	}
	return nil, fmt.Errorf("%w: no operation %q", ErrNotFound, id)
}

// runningRun finds the run of an operation in flight in this daemon.
func (a *Agent) runningRun(id string) (*run, error) {
	for _, s := range a.siteList() {
		if r := s.snapshot().running; r != nil && r.op.ID == id {
			return r, nil
		}
	}
	if _, err := a.findOperation(id); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: operation %s is not running", store.ErrBusy, id)
}

// runningOp resolves the {id} of a request that controls an operation in flight here.
func (a *Agent) runningOp(r *http.Request) (*run, *api.Operation, error) {
	if err := a.leading(); err != nil {
		return nil, nil, err
	}
	id := r.PathValue("id")
	run, err := a.runningRun(id)
	if err != nil {
		return nil, nil, err
	}
	cur := a.ops.get(id)
	if cur == nil {
		return nil, nil, fmt.Errorf("%w: no operation %q", ErrNotFound, id)
	}
	return run, cur, nil
}

func (a *Agent) handleComplete(r *http.Request) (int, any, error) {
	run, cur, err := a.runningOp(r)
	if err != nil {
		return 0, nil, err
	}
	if cur.State != api.StatePreviewing {
		return 0, nil, fmt.Errorf("%w: operation %s is not previewing", store.ErrBusy, cur.ID)
	}
	return a.signal(r.Context(), run, ctlComplete, cur.Index)
}

// handleCancel cancels a previewing swap (its Source lane goes back), a swap before its
// switch, a deploy or settings Rollout (the lane goes back to its bound version), or ends the
// monitor of a swap. A swap that is switching or settling cannot be cancelled half-way.
func (a *Agent) handleCancel(r *http.Request) (int, any, error) {
	run, cur, err := a.runningOp(r)
	if err != nil {
		return 0, nil, err
	}
	id := cur.ID
	switch cur.State {
	case api.StatePreviewing:
		return a.signal(r.Context(), run, ctlCancel, cur.Index)
	case api.StateMonitoring, api.StateHolding:
		return a.signal(r.Context(), run, ctlFinish, cur.Index)
	case api.StateSwitching, api.StateSettling:
		return 0, nil, fmt.Errorf("%w: operation %s is %s and cannot stop half-way; roll back after it ends", store.ErrBusy, id, cur.State)
	}
	run.cancelled.Store(true)
	run.cancel()
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	return http.StatusOK, a.ops.wait(ctx, id, cur.Index), nil
}

// signal sends a control to a run and answers with the operation once it moved on.
func (a *Agent) signal(ctx context.Context, r *run, c string, index uint64) (int, any, error) {
	select {
	case r.control <- c:
	default:
		return 0, nil, fmt.Errorf("%w: operation %s is already handling a request", store.ErrBusy, r.op.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return http.StatusOK, a.ops.wait(ctx, r.op.ID, index), nil
}

// handleHealth answers whether the daemon leads, the state of each site on it, and whether it
// reached Consul and Nomad at its last probe: 503 when it did not reach one of them, so a health
// check on this path goes critical while the daemon cannot do its work.
func (a *Agent) handleHealth(*http.Request) (int, any, error) {
	consul, nomad := a.probes.last()
	h := api.Health{
		Status: api.HealthOK, Leader: a.isLeader(), Version: Version,
		Consul: consul, Nomad: nomad, Sites: map[string]string{},
	}
	for _, s := range a.siteList() {
		switch {
		case !h.Leader:
			h.Sites[s.name] = api.SiteStandby
		case s.snapshot().ready:
			h.Sites[s.name] = api.SiteReady
		default:
			h.Sites[s.name] = api.SiteStarting
		}
	}
	status := http.StatusOK
	if consul.Status == api.Unreachable || nomad.Status == api.Unreachable {
		h.Status, status = api.HealthFailing, http.StatusServiceUnavailable
	}
	if !h.Leader && consul.Status != api.Unreachable {
		// Asked of Consul, which would hold the answer for its whole deadline when it is down.
		h.LeaderAddress = a.leaderAddress()
	}
	return status, h, nil
}
