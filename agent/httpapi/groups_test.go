package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/metrics"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// TestGroupRoutes: the group routes check the group, the body and the slots of every member
// before they ask the backend, and answer what it starts.
func TestGroupRoutes(t *testing.T) {
	const swap = "/v1/groups/storefront/swap"
	tests := []struct {
		name         string
		method, path string
		body         string
		notLeading   bool
		starting     string // a member that is still starting
		want         int
		wantError    string         // the error of a 4xx or 5xx answer
		wantOp       *api.Operation // what a 202 answers, without its ID and members
		wantPage     *[2]uint64     // the history page the backend was asked for: limit, before
		check        func(*testing.T, []byte)
	}{
		{name: "list", method: "GET", path: "/v1/groups", want: 200, check: func(t *testing.T, body []byte) {
			var groups []api.Group
			require.NoError(t, json.Unmarshal(body, &groups))
			require.Len(t, groups, 1)
			assert.Equal(t, "storefront", groups[0].Name)
			assert.Equal(t, []string{"web", "blog"}, groups[0].Sites)
		}},
		{name: "one", method: "GET", path: "/v1/groups/storefront", want: 200, check: func(t *testing.T, body []byte) {
			var g api.Group
			require.NoError(t, json.Unmarshal(body, &g))
			assert.Equal(t, api.Group{Name: "storefront", Sites: []string{"web", "blog"}}, g)
		}},
		{name: "unknown group", method: "GET", path: "/v1/groups/nope", want: 404, wantError: `not found: no group "nope" (groups: storefront)`},

		{
			name: "swap into production by default", method: "POST", path: swap, body: `{"source":"staging"}`, want: 202,
			wantOp: &api.Operation{Kind: api.KindSwap, Group: "storefront", Source: "staging", Target: "production", State: api.StatePending},
		},
		{
			name: "preview swap with a target", method: "POST", path: swap, body: `{"source":"production","target":"staging","preview":true}`, want: 202,
			wantOp: &api.Operation{Kind: api.KindSwap, Group: "storefront", Source: "production", Target: "staging", Preview: true, State: api.StatePending},
		},
		{
			name: "swap without source", method: "POST", path: swap, body: `{}`, want: 400,
			wantError: "bad request: source is required: the slot to swap in on every site of group storefront (slots they all have: production, staging)",
		},
		{
			name: "source a member lacks", method: "POST", path: swap, body: `{"source":"qa"}`, want: 404,
			wantError: `not found: site web of group storefront has no slot "qa" (slots: production, staging)`,
		},
		{
			name: "target a member lacks", method: "POST", path: swap, body: `{"source":"staging","target":"live"}`, want: 404,
			wantError: `not found: site web of group storefront has no slot "live" (slots: production, staging)`,
		},
		{name: "source and target the same", method: "POST", path: swap, body: `{"source":"production"}`, want: 400, wantError: `source and target are both "production"`},
		{name: "swap with an unknown field", method: "POST", path: swap, body: `{"source":"staging","sites":["web"]}`, want: 400, wantError: "malformed JSON body"},
		{name: "swap of an unknown group", method: "POST", path: "/v1/groups/nope/swap", body: `{"source":"staging"}`, want: 404, wantError: `no group "nope"`},
		{name: "swap on a daemon that does not lead", method: "POST", path: swap, body: `{"source":"staging"}`, notLeading: true, want: 503, wantError: "not the leader"},
		{
			name: "swap while a member starts", method: "POST", path: swap, body: `{"source":"staging"}`, starting: "blog", want: 503,
			wantError: "site blog of group storefront is starting; nothing was started, retry in a few seconds",
		},

		{name: "rollback", method: "POST", path: "/v1/groups/storefront/rollback", want: 202, wantOp: &api.Operation{Kind: api.KindRollback, Group: "storefront", State: api.StatePending}},
		{name: "rollback of an unknown group", method: "POST", path: "/v1/groups/nope/rollback", want: 404},
		{name: "rollback while a member starts", method: "POST", path: "/v1/groups/storefront/rollback", starting: "web", want: 503, wantError: "site web of group storefront is starting"},

		{name: "history", method: "GET", path: "/v1/groups/storefront/history", want: 200, wantPage: &[2]uint64{defaultHistoryPage, 0}, check: func(t *testing.T, body []byte) {
			var ops []api.Operation
			require.NoError(t, json.Unmarshal(body, &ops))
			require.Len(t, ops, 1)
			assert.Equal(t, "storefront", ops[0].Group)
		}},
		{name: "history page", method: "GET", path: "/v1/groups/storefront/history?limit=5&before=9", want: 200, wantPage: &[2]uint64{5, 9}},
		{name: "history limit over what is kept", method: "GET", path: "/v1/groups/storefront/history?limit=100000", want: 200, wantPage: &[2]uint64{200, 0}},
		{name: "history limit zero", method: "GET", path: "/v1/groups/storefront/history?limit=0", want: 400, wantError: "ask for 1 to 200 operations (group storefront keeps 200)"},
		{name: "history before not a seq", method: "GET", path: "/v1/groups/storefront/history?before=x", want: 400, wantError: `before "x" is not an operation's seq`},
		{name: "history of an unknown group", method: "GET", path: "/v1/groups/nope/history", want: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newFakeBackend("", nil)
			b.leading, b.ready = !tc.notLeading, true
			b.starting = map[string]bool{tc.starting: true}
			s := b.server(t)
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, bytes.NewReader([]byte(tc.body))))
			require.Equal(t, tc.want, rec.Code, rec.Body.String())
			if tc.wantError != "" {
				var e api.ErrorResponse
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
				assert.Contains(t, e.Error, tc.wantError)
			}
			if tc.method == "POST" && tc.want != 202 {
				assert.Zero(t, b.started, "the backend is not asked")
			}
			if tc.wantOp != nil {
				var op api.Operation
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &op))
				assert.Equal(t, []api.GroupMember{{Site: "web", State: api.StatePending}, {Site: "blog", State: api.StatePending}}, op.Members)
				assert.NotEmpty(t, op.ID)
				op.ID, op.Members = "", nil
				assert.Equal(t, *tc.wantOp, op)
			}
			if tc.wantPage != nil {
				assert.Equal(t, *tc.wantPage, [2]uint64{uint64(b.history.limit), b.history.before})
			}
			if tc.check != nil {
				tc.check(t, rec.Body.Bytes())
			}
		})
	}
}

// vanishingGroup is a backend whose groups are gone after the first lookup, as after a reload
// that removes them while a request is checked.
type vanishingGroup struct {
	*fakeBackend
	lookups int
}

func (b *vanishingGroup) Group(name string) *config.Group {
	b.lookups++
	if b.lookups > 1 {
		return nil
	}
	return b.fakeBackend.Group(name)
}

// TestGroupGoneWhileChecked: a group removed between the route's lookup and the readiness
// check is left to the backend to answer, not refused as a site "" that is starting.
func TestGroupGoneWhileChecked(t *testing.T) {
	fb := newFakeBackend("", nil)
	fb.leading, fb.ready = true, true
	b := &vanishingGroup{fakeBackend: fb}
	s, err := New(fb.cfg.HTTP.Address, b, metrics.New().Registry, hclog.NewNullLogger())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/v1/groups/storefront/rollback", nil))
	assert.Equal(t, 202, rec.Code, rec.Body.String())
	assert.Equal(t, 1, fb.started, "the backend was asked")
}
