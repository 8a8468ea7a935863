// Package httpapi serves slotd's HTTP API over a backend: routes check their input, and one
// wrapper does authentication, leadership and start-up refusals, secrets and error mapping.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/slotd/slotd/agent/engine"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

const (
	// maxBody is the largest request body the API reads.
	maxBody = 1 << 20
	// defaultBlock and maxBlock bound how long GET /v1/operations/{id}?index= waits.
	defaultBlock = 5 * time.Minute
	maxBlock     = 10 * time.Minute
	// defaultHistoryPage is how many operations GET /v1/sites/{site}/history and
	// /v1/groups/{group}/history answer without ?limit= (fewer when fewer are kept).
	defaultHistoryPage = 50
	// retryAfter is the Retry-After of a write refused while a site starts or a leader is
	// elected: both pass within seconds, and the client waits instead of failing.
	retryAfter = 2 * time.Second
)

// errUnauthorized is a missing or wrong bearer token.
var errUnauthorized = errors.New("missing or wrong bearer token: send Authorization: Bearer <token>")

// errTooLarge is a request body over maxBody.
var errTooLarge = errors.New("request body over 1 MiB")

// Backend is what the API serves: the engine's sites, groups and operations, and the daemon's
// health.
type Backend interface {
	Leading() bool
	// LeaderAddress is who leads, "" when no one is known (asked of Consul: it may take a while).
	LeaderAddress() string
	Health() (api.Health, bool)
	Config() *config.Config

	Site(name string) *config.Site
	SiteNames() []string
	Ready(site string) bool
	Status(ctx context.Context, site string, detail bool) (*api.Site, error)
	Settings(site, slot string) (api.Settings, error)
	SetSetting(site, slot, key, value string, sticky bool) (api.Settings, error)
	DeleteSetting(site, slot, key string) (api.Settings, error)
	History(site string, limit int, before uint64) ([]api.Operation, error)
	Deploy(site, slot string, vars map[string]string) (*api.Operation, error)
	Scale(site, slot string, counts map[string]int) (*api.Operation, error)
	Swap(site, source, target string, preview bool) (*api.Operation, error)
	Rollback(site string) (*api.Operation, error)
	Settle(ctx context.Context, site string) (*api.Operation, error)
	Operation(ctx context.Context, id string, index uint64) (*api.Operation, error)
	Complete(ctx context.Context, id string) (*api.Operation, error)
	Cancel(ctx context.Context, id string) (*api.Operation, error)

	Group(name string) *config.Group
	GroupNames() []string
	GroupStatus(ctx context.Context, name string) (*api.Group, error)
	GroupSwap(group, source, target string, preview bool) (*api.Operation, error)
	GroupRollback(group string) (*api.Operation, error)
	GroupHistory(group string, limit int, before uint64) ([]api.Operation, error)
}

// Server is the HTTP API on its listener.
type Server struct {
	b        Backend
	logger   hclog.Logger
	listener net.Listener
	http     *http.Server
}

// New binds the listener (a bad address fails at start) and builds the routes.
func New(address string, b Backend, registry *prometheus.Registry, logger hclog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", address, err)
	}
	s := &Server{b: b, logger: logger, listener: ln}
	s.http = &http.Server{
		Handler:           s.logRequests(s.routes(registry)),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      maxBlock + time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
	return s, nil
}

// Addr is where the API listens.
func (s *Server) Addr() string { return s.listener.Addr().String() }

// Handler is the API's handler, for tests that call it directly.
func (s *Server) Handler() http.Handler { return s.http.Handler }

// Serve serves the API until Shutdown; TLS when the config names a certificate.
func (s *Server) Serve() error {
	h := s.b.Config().HTTP
	var err error
	if h.TLSCertFile != "" {
		err = s.http.ServeTLS(s.listener, h.TLSCertFile, h.TLSKeyFile)
	} else {
		err = s.http.Serve(s.listener)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the API gracefully, within ctx.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// Close closes the listener of a server that never served.
func (s *Server) Close() error { return s.listener.Close() }

// access is what a route needs before its work runs, checked once by the wrapper (handle).
type access int

const (
	// read: the token when reads need it.
	read access = iota
	// write: the token, and this daemon must lead.
	write
	// operation: a write that starts an operation on the {site}, or on every member site of
	// the {group}, which must be brought up.
	operation
)

// prepared is a route's work once its input checked out.
type prepared func(ctx context.Context) (status int, body any, err error)

// route checks a request's input (400, 404) and returns the work to do.
type route func(r *http.Request) (prepared, error)

func (s *Server) routes(registry *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, a access, rt route) { mux.Handle(pattern, s.handle(a, rt)) }
	handle("GET /v1/sites", read, s.sites)
	handle("GET /v1/sites/{site}", read, s.site)
	handle("POST /v1/sites/{site}/slots/{slot}/deploy", operation, s.deploy)
	handle("GET /v1/sites/{site}/slots/{slot}/settings", read, s.settings)
	handle("PUT /v1/sites/{site}/slots/{slot}/settings/{key}", write, s.setSetting)
	handle("DELETE /v1/sites/{site}/slots/{slot}/settings/{key}", write, s.deleteSetting)
	handle("PUT /v1/sites/{site}/slots/{slot}/scale", operation, s.scale)
	handle("POST /v1/sites/{site}/swap", operation, s.swap)
	handle("POST /v1/sites/{site}/rollback", operation, s.rollback)
	handle("POST /v1/sites/{site}/settle", write, s.settle)
	handle("GET /v1/sites/{site}/history", read, s.history)
	handle("GET /v1/operations/{id}", read, s.operation)
	handle("POST /v1/operations/{id}/complete", write, s.complete)
	handle("POST /v1/operations/{id}/cancel", write, s.cancel)
	handle("GET /v1/groups", read, s.groups)
	handle("GET /v1/groups/{group}", read, s.group)
	handle("POST /v1/groups/{group}/swap", operation, s.groupSwap)
	handle("POST /v1/groups/{group}/rollback", operation, s.groupRollback)
	handle("GET /v1/groups/{group}/history", read, s.groupHistory)
	// Open whatever the token rules say: Nomad's and Consul's health checks send no token.
	mux.Handle("GET /v1/health", s.respond(func(*http.Request) (prepared, error) { return s.health, nil }, read))
	mux.Handle("GET /v1/metrics", s.guard(read, promhttp.HandlerFor(registry, promhttp.HandlerOpts{})))
	return mux
}

// statusRecorder remembers the status a handler wrote, for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) logRequests(next http.Handler) http.Handler {
	log := s.logger.Named("http")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}

// authorized reports whether a request may go on: writes need the token, reads too unless
// read_requires_token = false (config.HTTP.ReadsNeedToken).
func (s *Server) authorized(r *http.Request, a access) bool {
	h := s.b.Config().HTTP
	if a == read && !h.ReadsNeedToken() {
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

func (s *Server) guard(a access, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r, a) {
			s.logger.Warn("unauthorized request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			writeJSON(w, http.StatusUnauthorized, api.ErrorResponse{Error: errUnauthorized.Error()})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handle is the one wrapper of every route: the token, secrets masked unless revealed
// (secrets.go), the body limit, the route's input checks, then leadership and start-up, then
// the route's work; JSON answers and error mapping.
func (s *Server) handle(a access, rt route) http.Handler {
	return s.guard(a, s.respond(s.masked(rt), a))
}

// respond runs a route with the body limit and answers its value or error as JSON.
func (s *Server) respond(rt route, a access) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		status, body, err := s.run(r, rt, a)
		if err != nil {
			code, resp, retry := s.errorResponse(err)
			if retry > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
			}
			writeJSON(w, code, resp)
			return
		}
		writeJSON(w, status, body)
	})
}

// run checks the route's input, then what its access needs, then does its work.
func (s *Server) run(r *http.Request, rt route, a access) (int, any, error) {
	work, err := rt(r)
	if err != nil {
		return 0, nil, err
	}
	if a >= write && !s.b.Leading() {
		return 0, nil, engine.ErrNotLeader
	}
	if a == operation {
		if err := s.ready(r); err != nil {
			return 0, nil, err
		}
	}
	return work(r.Context())
}

// ready checks that the sites an operation route starts on are up: the {site}, or every
// member of the {group}. A site is not while its owner has not heard of the leadership yet or
// is still bringing it up.
func (s *Server) ready(r *http.Request) error {
	if name := r.PathValue("group"); name != "" {
		g := s.b.Group(name)
		if g == nil {
			return nil // gone since the route looked it up: the backend says so
		}
		for _, site := range g.Sites {
			if !s.b.Ready(site) {
				return fmt.Errorf("site %s of group %s is %w; nothing was started, retry in a few seconds", site, g.Name, engine.ErrStarting)
			}
		}
		return nil
	}
	if site := r.PathValue("site"); !s.b.Ready(site) {
		return fmt.Errorf("site %s is %w; nothing was started, retry in a few seconds", site, engine.ErrStarting)
	}
	return nil
}

// errorResponse maps err to a status and a body; retry, when not zero, is the Retry-After of a
// refusal that passes by itself.
func (s *Server) errorResponse(err error) (code int, resp api.ErrorResponse, retry time.Duration) {
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr), errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge, api.ErrorResponse{Error: errTooLarge.Error()}, 0
	case errors.Is(err, errRevealNeedsToken):
		return http.StatusUnauthorized, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, store.ErrBadRequest):
		return http.StatusBadRequest, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, engine.ErrNotFound):
		return http.StatusNotFound, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, store.ErrBusy):
		return http.StatusConflict, api.ErrorResponse{Error: err.Error()}, 0
	case errors.Is(err, engine.ErrStarting):
		return http.StatusServiceUnavailable, api.ErrorResponse{Error: err.Error()}, retryAfter
	case errors.Is(err, engine.ErrNotLeader):
		leader := s.b.LeaderAddress()
		if leader == "" {
			// Just started, the lock just came free, or Consul is slow to say: this passes within
			// seconds, so the client is asked to retry rather than pointed elsewhere.
			msg := err.Error() + ", and no leader is known yet; nothing was started, retry in a few seconds"
			return http.StatusServiceUnavailable, api.ErrorResponse{Error: msg}, retryAfter
		}
		return http.StatusServiceUnavailable, api.ErrorResponse{Error: err.Error(), LeaderAddress: leader}, 0
	default:
		s.logger.Error("request failed", "error", err)
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

// answer is the work of a route that answers what fn gives, with status.
func answer[T any](status int, fn func(ctx context.Context) (T, error)) prepared {
	return func(ctx context.Context) (int, any, error) {
		v, err := fn(ctx)
		return status, v, err
	}
}
