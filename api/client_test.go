package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/internal/testcert"
)

// request is what the fake agent saw.
type request struct {
	Method, URI, Auth, ContentType, Body string
}

// fakeAgent answers every request with status and body and records what it got.
func fakeAgent(t testing.TB, status int, body string) (*Client, *[]request) {
	t.Helper()
	var (
		mu   sync.Mutex
		seen []request
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, request{r.Method, r.RequestURI, r.Header.Get("Authorization"), r.Header.Get("Content-Type"), string(b)})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(Config{Address: srv.URL, Token: "s3cret"})
	require.NoError(t, err)
	return c, &seen
}

func TestClientRequests(t *testing.T) {
	opJSON := `{"id":"op-1","site":"web","kind":"swap","state":"pending","source":"staging","target":"production","phases":[{"name":"apply","state":"pending"}],"index":3}`
	wantOp := &Operation{ID: "op-1", Site: "web", Kind: KindSwap, State: StatePending, Source: "staging",
		Target: "production", Phases: []Phase{{Name: PhaseApply, State: PhasePending}}, Index: 3}

	cases := []struct {
		name     string
		call     func(context.Context, *Client) (any, error)
		status   int
		answer   string
		want     any
		method   string
		uri      string
		wantBody string // JSON; empty means no body
	}{
		{
			name:   "sites",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Sites(ctx) },
			status: 200, answer: `[{"name":"web","service":"web","slots":[{"name":"production","lane":"web-a","version":7,"tags":["production"],"healthy":2,"total":3}]}]`,
			want: []Site{{Name: "web", Service: "web", Slots: []Slot{{Name: "production", Lane: "web-a", Version: 7,
				Tags: []string{"production"}, Healthy: 2, Total: 3}}}},
			method: "GET", uri: "/v1/sites",
		},
		{
			name:   "site escapes its name",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Site(ctx, "a b/c") },
			status: 200, answer: `{"name":"a b/c","operation":` + opJSON + `}`,
			want:   &Site{Name: "a b/c", Operation: wantOp},
			method: "GET", uri: "/v1/sites/a%20b%2Fc",
		},
		{
			name: "deploy",
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.Deploy(ctx, "web", "staging", map[string]string{"image": "web:2"})
			},
			status: 202, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/sites/web/slots/staging/deploy", wantBody: `{"vars":{"image":"web:2"}}`,
		},
		{
			name:   "deploy without vars sends an empty object",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Deploy(ctx, "web", "staging", nil) },
			status: 202, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/sites/web/slots/staging/deploy", wantBody: `{"vars":{}}`,
		},
		{
			name:   "settings",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Settings(ctx, "web", "production") },
			status: 200, answer: `{"settings":{"A":"1"},"sticky":{"DB":"x"}}`,
			want:   &Settings{Settings: map[string]string{"A": "1"}, Sticky: map[string]string{"DB": "x"}},
			method: "GET", uri: "/v1/sites/web/slots/production/settings",
		},
		{
			name: "set setting",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.SetSetting(ctx, "web", "staging", "FEATURE_X", "on", true)
			},
			status: 204,
			method: "PUT", uri: "/v1/sites/web/slots/staging/settings/FEATURE_X", wantBody: `{"value":"on","sticky":true}`,
		},
		{
			name: "set setting ignores an answer body",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.SetSetting(ctx, "web", "staging", "K", "", false)
			},
			status: 200, answer: `{"settings":{}}`,
			method: "PUT", uri: "/v1/sites/web/slots/staging/settings/K", wantBody: `{"value":"","sticky":false}`,
		},
		{
			name: "delete setting",
			call: func(ctx context.Context, c *Client) (any, error) {
				return nil, c.DeleteSetting(ctx, "web", "staging", "FEATURE_X")
			},
			status: 204,
			method: "DELETE", uri: "/v1/sites/web/slots/staging/settings/FEATURE_X",
		},
		{
			name: "swap",
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.Swap(ctx, "web", SwapRequest{Source: "staging", Target: "production", Preview: true})
			},
			status: 202, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/sites/web/swap", wantBody: `{"source":"staging","target":"production","preview":true}`,
		},
		{
			name:   "rollback",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Rollback(ctx, "web") },
			status: 202, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/sites/web/rollback",
		},
		{
			name:   "operation",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Operation(ctx, "op-1", 0) },
			status: 200, answer: opJSON, want: wantOp,
			method: "GET", uri: "/v1/operations/op-1",
		},
		{
			name:   "operation blocking on an index",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Operation(ctx, "op-1", 42) },
			status: 200, answer: opJSON, want: wantOp,
			method: "GET", uri: "/v1/operations/op-1?index=42&wait=5m0s",
		},
		{
			name:   "complete",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Complete(ctx, "op-1") },
			status: 200, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/operations/op-1/complete",
		},
		{
			name:   "cancel",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Cancel(ctx, "op-1") },
			status: 200, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/operations/op-1/cancel",
		},
		{
			name:   "history",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.History(ctx, "web", HistoryPage{}) },
			status: 200, answer: `[` + opJSON + `]`, want: []Operation{*wantOp},
			method: "GET", uri: "/v1/sites/web/history",
		},
		{
			name: "history page",
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.History(ctx, "web", HistoryPage{Limit: 5, Before: 1234})
			},
			status: 200, answer: `[` + opJSON + `]`, want: []Operation{*wantOp},
			method: "GET", uri: "/v1/sites/web/history?before=1234&limit=5",
		},
		{
			name:   "groups",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Groups(ctx) },
			status: 200, answer: `[{"name":"storefront","sites":["shop","blog"],"operation":` + opJSON + `}]`,
			want:   []Group{{Name: "storefront", Sites: []string{"shop", "blog"}, Operation: wantOp}},
			method: "GET", uri: "/v1/groups",
		},
		{
			name:   "group escapes its name",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Group(ctx, "a b/c") },
			status: 200, answer: `{"name":"a b/c","sites":["shop","blog"],"last_operation":` + opJSON + `}`,
			want:   &Group{Name: "a b/c", Sites: []string{"shop", "blog"}, LastOperation: wantOp},
			method: "GET", uri: "/v1/groups/a%20b%2Fc",
		},
		{
			name: "group swap",
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.SwapGroup(ctx, "storefront", SwapRequest{Source: "staging", Target: "production"})
			},
			status: 202, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/groups/storefront/swap", wantBody: `{"source":"staging","target":"production","preview":false}`,
		},
		{
			name:   "group rollback",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.RollbackGroup(ctx, "storefront") },
			status: 202, answer: opJSON, want: wantOp,
			method: "POST", uri: "/v1/groups/storefront/rollback",
		},
		{
			name: "group history page",
			call: func(ctx context.Context, c *Client) (any, error) {
				return c.GroupHistory(ctx, "storefront", HistoryPage{Limit: 5, Before: 1234})
			},
			status: 200, answer: `[` + opJSON + `]`, want: []Operation{*wantOp},
			method: "GET", uri: "/v1/groups/storefront/history?before=1234&limit=5",
		},
		{
			name:   "health",
			call:   func(ctx context.Context, c *Client) (any, error) { return c.Health(ctx) },
			status: 200, answer: `{"status":"ok","leader":true,"version":"0.1.0"}`,
			want:   &Health{Status: "ok", Leader: true, Version: "0.1.0"},
			method: "GET", uri: "/v1/health",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, seen := fakeAgent(t, tc.status, tc.answer)
			got, err := tc.call(context.Background(), c)
			require.NoError(t, err)
			if tc.want != nil {
				assert.Equal(t, tc.want, got)
			}
			require.Len(t, *seen, 1)
			r := (*seen)[0]
			assert.Equal(t, tc.method, r.Method)
			assert.Equal(t, tc.uri, r.URI)
			assert.Equal(t, "Bearer s3cret", r.Auth)
			if tc.wantBody == "" {
				assert.Empty(t, r.Body)
				assert.Empty(t, r.ContentType)
			} else {
				assert.JSONEq(t, tc.wantBody, r.Body)
				assert.Equal(t, "application/json", r.ContentType)
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	cases := []struct {
		name   string
		status int
		answer string
		want   StatusError
	}{
		{"bad input", 400, `{"error":"unknown field \"sauce\""}`, StatusError{Code: 400, Message: `unknown field "sauce"`}},
		{"no token", 401, `{"error":"missing or wrong token"}`, StatusError{Code: 401, Message: "missing or wrong token"}},
		{"no such site", 404, `{"error":"no site \"nope\""}`, StatusError{Code: 404, Message: `no site "nope"`}},
		{"busy site", 409, `{"error":"operation op-9 runs on site web"}`, StatusError{Code: 409, Message: "operation op-9 runs on site web"}},
		{"not the leader", 503, `{"error":"not the leader","leader_address":"http://10.0.0.2:4680"}`,
			StatusError{Code: 503, Message: "not the leader", LeaderAddress: "http://10.0.0.2:4680"}},
		{"plain text answer", 502, "bad gateway\n", StatusError{Code: 502, Message: "bad gateway"}},
		{"empty answer", 500, "", StatusError{Code: 500, Message: "internal server error"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := fakeAgent(t, tc.status, tc.answer)
			_, err := c.Site(context.Background(), "web")
			var se *StatusError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tc.want, *se)
			assert.Equal(t, "slotd: "+strconv.Itoa(tc.want.Code)+": "+tc.want.Message, err.Error())
		})
	}
}

func TestClientToken(t *testing.T) {
	cases := []struct {
		name, token, want string
	}{
		{"with a token", "abc", "Bearer abc"},
		{"without a token", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = append(got, r.Header.Get("Authorization"))
				_, _ = io.WriteString(w, `{}`)
			}))
			t.Cleanup(srv.Close)
			c, err := NewClient(Config{Address: srv.URL, Token: tc.token})
			require.NoError(t, err)
			_, err = c.Health(context.Background())
			require.NoError(t, err)
			require.NoError(t, c.DeleteSetting(context.Background(), "web", "qa", "K"))
			assert.Equal(t, []string{tc.want, tc.want}, got)
		})
	}
}

func TestClientReveal(t *testing.T) {
	cases := []struct {
		name   string
		reveal bool
		want   []string
	}{
		{"masked by default", false, []string{"", "index=4&wait=5m0s"}},
		{"reveal on every request, with the others' own query", true, []string{"reveal=true", "index=4&reveal=true&wait=5m0s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = append(got, r.URL.RawQuery)
				_, _ = io.WriteString(w, `{"id": "op-1", "index": 5}`)
			}))
			t.Cleanup(srv.Close)
			c, err := NewClient(Config{Address: srv.URL, Reveal: tc.reveal})
			require.NoError(t, err)
			_, err = c.Settings(context.Background(), "web", "production")
			require.NoError(t, err)
			_, err = c.Operation(context.Background(), "op-1", 4)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestNewClient(t *testing.T) {
	cases := []struct {
		name, address, wantBase, wantErr string
	}{
		{"empty means the default", "", "http://127.0.0.1:4680", ""},
		{"bare host and port", "10.0.0.1:4680", "http://10.0.0.1:4680", ""},
		{"https", "https://slotd.example.com/", "https://slotd.example.com", ""},
		{"path prefix kept", "https://proxy.example.com/slotd/", "https://proxy.example.com/slotd", ""},
		{"other scheme", "ftp://x", "", "scheme must be http or https"},
		{"no host", "http://", "", "no host"},
		{"query", "http://x/?a=b", "", "no query"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(Config{Address: tc.address})
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantBase, c.Address())
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	t.Setenv(EnvAddress, "")
	t.Setenv(EnvToken, "")
	t.Setenv(EnvCACert, "")
	assert.Equal(t, Config{Address: DefaultAddress}, DefaultConfig())

	t.Setenv(EnvAddress, "https://slotd:4680")
	t.Setenv(EnvToken, "tok")
	t.Setenv(EnvCACert, "/etc/slotd/ca.pem")
	assert.Equal(t, Config{Address: "https://slotd:4680", Token: "tok", CACert: "/etc/slotd/ca.pem"}, DefaultConfig())
}

func TestClientCACert(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600))

	c, err := NewClient(Config{Address: srv.URL, CACert: ca})
	require.NoError(t, err)
	h, err := c.Health(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "ok", h.Status)

	// Without the CA the server's certificate is not trusted.
	c, err = NewClient(Config{Address: srv.URL})
	require.NoError(t, err)
	_, err = c.Health(context.Background())
	require.Error(t, err)

	notPEM := filepath.Join(dir, "not.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello"), 0o600))
	_, err = NewClient(Config{Address: srv.URL, CACert: notPEM})
	require.ErrorContains(t, err, "no PEM certificate")
	_, err = NewClient(Config{Address: srv.URL, CACert: filepath.Join(dir, "missing.pem")})
	require.ErrorContains(t, err, "read CA certificate")
}

func TestClientRefusesEmptyNames(t *testing.T) {
	c, seen := fakeAgent(t, 200, `{}`)
	for _, name := range []string{"", ".", ".."} {
		_, err := c.Site(context.Background(), name)
		require.ErrorContains(t, err, "invalid name")
	}
	assert.Empty(t, *seen)
}

// opServer serves versions of one operation the way the agent does: a read with ?index=N
// returns the first version whose index differs from N, in order.
type opServer struct {
	t        testing.TB
	mu       sync.Mutex
	versions []string // JSON answers; a number alone is an error status
	next     int
	indexes  []string // the index parameter of every read
}

func (s *opServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.URL.Path != "/v1/operations/op-1" {
		http.NotFound(w, r)
		return
	}
	s.indexes = append(s.indexes, r.URL.Query().Get("index"))
	if s.next >= len(s.versions) {
		s.t.Errorf("read %d after the last version", s.next)
		w.WriteHeader(500)
		return
	}
	v := s.versions[s.next]
	s.next++
	if code, err := strconv.Atoi(v); err == nil {
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"error":"boom"}`)
		return
	}
	_, _ = io.WriteString(w, v)
}

func op(index uint64, state string) string {
	b, _ := json.Marshal(Operation{ID: "op-1", Kind: KindSwap, State: state, Index: index})
	return string(b)
}

func TestWait(t *testing.T) {
	cases := []struct {
		name        string
		versions    []string
		wantStates  []string // what onChange saw
		wantIndexes []string // the index parameter of every read
		wantState   string
		wantErr     string
	}{
		{
			name:        "until succeeded",
			versions:    []string{op(3, StateApplying), op(5, StateWarming), op(8, StateSucceeded)},
			wantStates:  []string{StateApplying, StateWarming, StateSucceeded},
			wantIndexes: []string{"", "3", "5"},
			wantState:   StateSucceeded,
		},
		{
			name:        "a timed-out read is no change",
			versions:    []string{op(3, StateApplying), op(3, StateApplying), op(4, StateFailed)},
			wantStates:  []string{StateApplying, StateFailed},
			wantIndexes: []string{"", "3", "3"},
			wantState:   StateFailed,
		},
		{
			name:        "a lower index is a new version",
			versions:    []string{op(9, StateSwitching), op(2, StateSettling), op(4, StateCancelled)},
			wantStates:  []string{StateSwitching, StateSettling, StateCancelled},
			wantIndexes: []string{"", "9", "2"},
			wantState:   StateCancelled,
		},
		{
			name:        "stops at previewing",
			versions:    []string{op(3, StatePending), op(4, StatePreviewing)},
			wantStates:  []string{StatePending, StatePreviewing},
			wantIndexes: []string{"", "3"},
			wantState:   StatePreviewing,
		},
		{
			name:        "already finished",
			versions:    []string{op(3, StateSucceeded)},
			wantStates:  []string{StateSucceeded},
			wantIndexes: []string{""},
			wantState:   StateSucceeded,
		},
		{
			name:        "a server error is retried",
			versions:    []string{op(3, StateApplying), "500", op(6, StateSucceeded)},
			wantStates:  []string{StateApplying, StateSucceeded},
			wantIndexes: []string{"", "3", "3"},
			wantState:   StateSucceeded,
		},
		{
			name:        "a 404 ends the wait",
			versions:    []string{op(3, StateApplying), "404"},
			wantStates:  []string{StateApplying},
			wantIndexes: []string{"", "3"},
			wantState:   StateApplying,
			wantErr:     "follow operation op-1: slotd: 404: boom",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &opServer{t: t, versions: tc.versions}
			srv := httptest.NewServer(s)
			t.Cleanup(srv.Close)
			c, err := NewClient(Config{Address: srv.URL})
			require.NoError(t, err)

			var states []string
			got, err := c.Wait(context.Background(), "op-1", func(o *Operation) { states = append(states, o.State) })
			if tc.wantErr != "" {
				require.EqualError(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
			}
			require.NotNil(t, got)
			assert.Equal(t, tc.wantState, got.State)
			assert.Equal(t, tc.wantStates, states)
			assert.Equal(t, tc.wantIndexes, s.indexes)
		})
	}
}

func TestWaitStopsWithTheContext(t *testing.T) {
	started := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("index") == "" {
			_, _ = io.WriteString(w, op(3, StateWarming))
			return
		}
		close(started)
		<-r.Context().Done() // a blocking read that never sees a change
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(Config{Address: srv.URL})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	done := make(chan struct{})
	var got *Operation
	go func() {
		defer close(done)
		got, err = c.Wait(ctx, "op-1", nil)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after its context was cancelled")
	}
	require.True(t, errors.Is(err, context.Canceled), "err = %v", err)
	require.NotNil(t, got)
	assert.Equal(t, StateWarming, got.State)
}

func TestFollowFromAnAnswer(t *testing.T) {
	s := &opServer{t: t, versions: []string{op(7, StateWarming), op(9, StateSucceeded)}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	c, err := NewClient(Config{Address: srv.URL})
	require.NoError(t, err)

	// A completed preview swap may still read previewing; following until Terminal goes past it.
	start := &Operation{ID: "op-1", State: StatePreviewing, Index: 5}
	var states []string
	got, err := c.Follow(context.Background(), start, func(o *Operation) bool { return Terminal(o.State) },
		func(o *Operation) { states = append(states, o.State) })
	require.NoError(t, err)
	assert.Equal(t, StateSucceeded, got.State)
	assert.Equal(t, []string{StatePreviewing, StateWarming, StateSucceeded}, states)
	assert.Equal(t, []string{"5", "7"}, s.indexes)
}

// refusingAgent answers the first refusals requests with 503 and the given Retry-After, and
// the ones after with a started swap; it records the bodies it got.
func refusingAgent(t testing.TB, refusals int, retry string, wait time.Duration) (*Client, func() []string, *[]string) {
	t.Helper()
	var (
		mu     sync.Mutex
		bodies []string
		waits  []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		n := len(bodies)
		mu.Unlock()
		if n <= refusals {
			if retry != "" {
				w.Header().Set("Retry-After", retry)
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":"site web is starting; nothing was started, retry in a few seconds"}`)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"id":"op-1","state":"pending"}`)
	}))
	t.Cleanup(srv.Close)
	c, err := NewClient(Config{Address: srv.URL, Wait: wait, OnWait: func(se *StatusError, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, se.Message+" / "+d.String())
	}})
	require.NoError(t, err)
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), bodies...)
	}
	return c, got, &waits
}

func TestWritesWaitWhileStarting(t *testing.T) {
	swap := SwapRequest{Source: "staging", Target: "production"}
	const body = `{"source":"staging","target":"production","preview":false}`
	const refusal = "site web is starting; nothing was started, retry in a few seconds"
	cases := []struct {
		name     string
		refusals int
		retry    string // Retry-After of the refusals
		wait     time.Duration
		requests int    // how many the agent gets
		err      string // "" when the swap starts
		waits    int    // calls of OnWait
	}{
		{name: "sent again until the agent takes it", refusals: 2, retry: "1", wait: time.Minute, requests: 3, waits: 1},
		{name: "no wait: the refusal at once", refusals: 2, retry: "1", wait: 0, requests: 1, err: "slotd: 503: " + refusal},
		{name: "no Retry-After: the refusal at once", refusals: 2, retry: "", wait: time.Minute, requests: 1, err: "slotd: 503: " + refusal},
		{name: "gives up once the wait has passed", refusals: 100, retry: "1", wait: 1500 * time.Millisecond, requests: 3, err: "slotd: 503: " + refusal, waits: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, bodies, waits := refusingAgent(t, tc.refusals, tc.retry, tc.wait)
			began := time.Now()
			op, err := c.Swap(context.Background(), "web", swap)
			if tc.err == "" {
				require.NoError(t, err)
				assert.Equal(t, "op-1", op.ID)
			} else {
				require.EqualError(t, err, tc.err)
				var se *StatusError
				require.ErrorAs(t, err, &se)
				if tc.retry != "" {
					assert.Equal(t, time.Second, se.RetryAfter)
				}
			}
			got := bodies()
			require.Len(t, got, tc.requests)
			for _, b := range got {
				assert.JSONEq(t, body, b, "every attempt sends the whole body")
			}
			assert.Len(t, *waits, tc.waits)
			if tc.waits > 0 {
				assert.Equal(t, refusal+" / "+tc.wait.String(), (*waits)[0])
			}
			assert.Less(t, time.Since(began), tc.wait+time.Second, "waited past -wait")
		})
	}
}

func TestWaitStopsWithTheContextWhileRefused(t *testing.T) {
	c, _, _ := refusingAgent(t, 100, "2", time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.Swap(ctx, "web", SwapRequest{Source: "staging"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestRetryAfter(t *testing.T) {
	assert.Equal(t, 2*time.Second, retryAfter("2"))
	assert.Equal(t, time.Duration(0), retryAfter(""))
	assert.Equal(t, time.Duration(0), retryAfter("-3"))
	assert.Equal(t, time.Duration(0), retryAfter("soon"))
	d := retryAfter(time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
	assert.InDelta(t, time.Hour.Seconds(), d.Seconds(), 2)
}

// TestHealthWhenFailing: the agent's 503 with a health body is its health, not an error; any
// other 503 is.
func TestHealthWhenFailing(t *testing.T) {
	failing := `{"status":"failing","leader":true,"version":"0.2.0","consul":{"status":"unreachable","error":"connection refused"},"nomad":{"status":"reachable"},"sites":{"web":"ready"}}`
	c, _ := fakeAgent(t, 503, failing)
	h, err := c.Health(context.Background())
	require.NoError(t, err)
	assert.Equal(t, HealthFailing, h.Status)
	assert.Equal(t, Unreachable, h.Consul.Status)
	assert.Equal(t, "connection refused", h.Consul.Error)
	assert.Equal(t, map[string]string{"web": SiteReady}, h.Sites)

	c, _ = fakeAgent(t, 503, `{"error":"overloaded"}`)
	_, err = c.Health(context.Background())
	require.EqualError(t, err, "slotd: 503: overloaded")
}

// TestWritesFollowTheLeader: a standby's 503 that names the leader sends the write there, once,
// with the same body; a leader that names itself, or a second standby, is not followed further.
func TestWritesFollowTheLeader(t *testing.T) {
	var leaderGot, standbyGot []string
	var leaderURL string
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sites/{site}/swap", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		leaderGot = append(leaderGot, string(b))
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"id":"op-1","state":"pending"}`))
	})
	leader := httptest.NewServer(mux)
	defer leader.Close()
	leaderURL = leader.URL
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		standbyGot = append(standbyGot, string(b))
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, `{"error":"not the leader","leader_address":%q}`, leaderURL)
	}))
	defer standby.Close()

	c, err := NewClient(Config{Address: standby.URL})
	require.NoError(t, err)
	op, err := c.Swap(context.Background(), "web", SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err)
	assert.Equal(t, "op-1", op.ID)
	require.Len(t, standbyGot, 1)
	assert.Equal(t, standbyGot, leaderGot, "the leader gets the same body")

	// A standby pointing at another standby: one hop, then its refusal.
	leaderURL = standby.URL + "/"
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, `{"error":"not the leader","leader_address":%q}`, standby.URL)
	}))
	defer other.Close()
	c, err = NewClient(Config{Address: other.URL})
	require.NoError(t, err)
	_, err = c.Swap(context.Background(), "web", SwapRequest{Source: "staging"})
	var se *StatusError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, http.StatusServiceUnavailable, se.Code)
}

// hostsTransport records the host of every request; it sends those to loopback and fails
// the others, as a network that reaches no other machine.
type hostsTransport struct {
	mu    sync.Mutex
	hosts []string
}

func (h *hostsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h.mu.Lock()
	h.hosts = append(h.hosts, r.URL.Host)
	h.mu.Unlock()
	if h := r.URL.Hostname(); h != "127.0.0.1" && h != "localhost" {
		return nil, errors.New("no route to " + r.URL.Host)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestForwardKeepsTheTokenEncrypted: a write that a standby refuses is sent on to the leader it
// names, except with a token to an http address beyond loopback: then nothing is sent there and
// the error says why and what to change.
func TestForwardKeepsTheTokenEncrypted(t *testing.T) {
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"id":"op-1","state":"pending"}`))
	}))
	t.Cleanup(leader.Close)
	cases := []struct {
		name, leader, token string
		forwarded           bool
		err                 string
	}{
		{name: "token to http beyond loopback", leader: "http://10.255.0.1:4680", token: "s3cret", err: "the token is not sent in clear text"},
		{name: "token to http on a host name", leader: "http://slotd-1.internal:4680", token: "s3cret", err: "tls_cert_file"},
		{name: "no token to http beyond loopback", leader: "http://10.255.0.1:4680", forwarded: true, err: "not the leader"},
		{name: "token to https beyond loopback", leader: "https://10.255.0.1:4680", token: "s3cret", forwarded: true, err: "not the leader"},
		{name: "token to http on loopback", leader: leader.URL, token: "s3cret", forwarded: true},
		{name: "token to http on localhost", leader: strings.Replace(leader.URL, "127.0.0.1", "localhost", 1), token: "s3cret", forwarded: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = fmt.Fprintf(w, `{"error":"not the leader","leader_address":%q}`, tc.leader)
			}))
			t.Cleanup(standby.Close)
			tr := &hostsTransport{}
			c, err := NewClient(Config{Address: standby.URL, Token: tc.token, HTTPClient: &http.Client{Transport: tr}})
			require.NoError(t, err)
			_, err = c.Swap(context.Background(), "web", SwapRequest{Source: "staging", Target: "production"})
			if tc.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.err)
			}
			leaderHost := strings.TrimPrefix(strings.TrimPrefix(tc.leader, "http://"), "https://")
			if tc.forwarded {
				assert.Equal(t, []string{strings.TrimPrefix(standby.URL, "http://"), leaderHost}, tr.hosts)
			} else {
				assert.Equal(t, []string{strings.TrimPrefix(standby.URL, "http://")}, tr.hosts, "nothing sent to the leader")
				var se *StatusError
				assert.ErrorAs(t, err, &se, "the standby's refusal is kept")
			}
		})
	}
}

// TestForwardToATLSLeader: a standby names a leader that serves TLS with a self-signed
// certificate; the client trusts it through CACert and sends the write there with the token.
func TestForwardToATLSLeader(t *testing.T) {
	certs := testcert.Write(t)
	var gotAuth string
	leader := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"id":"op-1","state":"pending"}`))
	}))
	pair, err := tls.LoadX509KeyPair(certs.CertFile, certs.KeyFile)
	require.NoError(t, err)
	leader.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	leader.StartTLS()
	t.Cleanup(leader.Close)
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, `{"error":"not the leader","leader_address":%q}`, leader.URL)
	}))
	t.Cleanup(standby.Close)

	c, err := NewClient(Config{Address: standby.URL, Token: "s3cret", CACert: certs.CertFile})
	require.NoError(t, err)
	op, err := c.Swap(context.Background(), "web", SwapRequest{Source: "staging", Target: "production"})
	require.NoError(t, err)
	assert.Equal(t, "op-1", op.ID)
	assert.Equal(t, "Bearer s3cret", gotAuth)

	gotAuth = ""
	c, err = NewClient(Config{Address: standby.URL, Token: "s3cret"})
	require.NoError(t, err)
	_, err = c.Swap(context.Background(), "web", SwapRequest{Source: "staging", Target: "production"})
	require.Error(t, err, "a leader whose certificate the client does not trust")
	assert.Empty(t, gotAuth)
}
