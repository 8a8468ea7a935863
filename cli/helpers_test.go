package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// t0 is when every operation of the tests was created; now is when the tests look at them.
var (
	t0  = time.Date(2025, 3, 14, 9, 26, 0, 0, time.UTC)
	now = t0.Add(90 * time.Second)
)

func at(sec float64) *time.Time {
	t := t0.Add(time.Duration(sec * float64(time.Second)))
	return &t
}

// phase builds a phase that started at start seconds after t0 and ended at end (<0: not yet).
func phase(name, state string, start, end float64, msg string) api.Phase {
	p := api.Phase{Name: name, State: state, Message: msg}
	if start >= 0 {
		p.StartedAt = at(start)
	}
	if end >= 0 {
		p.EndedAt = at(end)
	}
	return p
}

// swapOp builds version index of swap op-1 of web, staging into production.
func swapOp(index uint64, state string, phases ...api.Phase) api.Operation {
	op := api.Operation{
		ID: "op-1", Site: "web", Kind: api.KindSwap, State: state, Trigger: "api",
		Source: "staging", Target: "production", Phases: phases,
		CreatedAt: t0, UpdatedAt: t0, Index: index,
	}
	if api.Terminal(state) {
		op.FinishedAt = at(12.1)
		op.UpdatedAt = *op.FinishedAt
	}
	return op
}

// seen is one request the fake agent got.
type seen struct {
	Method, Path, Query, Auth, Body string
}

// fakeAPI is an httptest agent: handlers per route pattern, every request recorded.
type fakeAPI struct {
	t   testing.TB
	mux *http.ServeMux
	srv *httptest.Server

	mu   sync.Mutex
	reqs []seen
}

func newFakeAPI(t testing.TB) *fakeAPI {
	t.Helper()
	f := &fakeAPI{t: t, mux: http.NewServeMux()}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("Authorization"), string(b)})
		f.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(b))
		f.mux.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// reply answers pattern with status and v as JSON.
func (f *fakeAPI) reply(pattern string, status int, v any) {
	f.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, status, v)
	})
}

// operation serves the versions of one operation like the agent: a read with ?index=N answers
// the first version whose Index is above N. Versions must end with one that stops following.
func (f *fakeAPI) operation(versions ...api.Operation) {
	f.mux.HandleFunc("GET /v1/operations/{id}", func(w http.ResponseWriter, r *http.Request) {
		var index uint64
		if s := r.URL.Query().Get("index"); s != "" {
			var err error
			index, err = strconv.ParseUint(s, 10, 64)
			require.NoError(f.t, err)
		}
		for _, v := range versions {
			if v.ID == r.PathValue("id") && v.Index > index {
				writeJSON(w, 200, v)
				return
			}
		}
		writeJSON(w, 404, api.ErrorResponse{Error: "no operation " + r.PathValue("id")})
	})
}

func (f *fakeAPI) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// result is what a command line did.
type result struct {
	code           int
	stdout, stderr string
}

// testEnv is an env that talks to addr, with a fixed clock and no terminal.
func testEnv(addr string, vars map[string]string) (*env, *bytes.Buffer, *bytes.Buffer) {
	var stdout, stderr bytes.Buffer
	if vars == nil {
		vars = map[string]string{}
	}
	if _, ok := vars[api.EnvAddress]; !ok {
		vars[api.EnvAddress] = addr
	}
	e := &env{
		stdin:      strings.NewReader(""),
		stdout:     &stdout,
		stderr:     &stderr,
		getenv:     func(k string) string { return vars[k] },
		now:        func() time.Time { return now },
		isTerminal: func(io.Writer) bool { return false },
		interrupt:  func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
		loadConfig: config.Load,
		newDaemon:  newAgent,
		notify:     func(chan<- os.Signal, ...os.Signal) {},
		stopNotify: func(chan<- os.Signal) {},
	}
	return e, &stdout, &stderr
}

func run(t testing.TB, addr string, args ...string) result {
	t.Helper()
	e, stdout, stderr := testEnv(addr, nil)
	code := e.run(args)
	return result{code, stdout.String(), stderr.String()}
}
