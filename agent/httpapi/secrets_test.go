package httpapi

import (
	"cmp"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

func ptr[T any](v T) *T { return &v }

// TestReadAccess: who may read, and who may reveal, for each token configuration.
func TestReadAccess(t *testing.T) {
	const settings = "/v1/sites/web/slots/production/settings"
	tests := []struct {
		name         string
		token        string
		readRequires *bool
		method, path string
		bearer       string // the token sent, if any
		want         int
		wantDB       string // production's sticky DB in a 200 answer of settings
		wantMessage  string // part of the error of a 4xx answer
	}{
		{name: "no token: reads are open, masked", path: settings, want: 200, wantDB: api.Hidden},
		{name: "no token: anyone may reveal", path: settings + "?reveal=true", want: 200, wantDB: "prod-db"},
		{name: "no token: read_requires_token alone requires nothing", readRequires: ptr(true), path: settings, want: 200, wantDB: api.Hidden},

		{name: "token: a read without it is refused", token: "s3cret", path: settings, want: 401, wantMessage: "bearer token"},
		{name: "token: a read of the site without it is refused", token: "s3cret", path: "/v1/sites/web", want: 401},
		{name: "token: a read of the sites without it is refused", token: "s3cret", path: "/v1/sites", want: 401},
		{name: "token: history without it is refused", token: "s3cret", path: "/v1/sites/web/history", want: 401},
		{name: "token: an operation without it is refused", token: "s3cret", path: "/v1/operations/op-old", want: 401},
		{name: "token: the groups without it are refused", token: "s3cret", path: "/v1/groups", want: 401},
		{name: "token: a group without it is refused", token: "s3cret", path: "/v1/groups/storefront", want: 401},
		{name: "token: a group's history without it is refused", token: "s3cret", path: "/v1/groups/storefront/history", want: 401},
		{name: "token: a group with it", token: "s3cret", path: "/v1/groups/storefront", bearer: "s3cret", want: 200},
		{name: "token: a read with it is masked", token: "s3cret", path: settings, bearer: "s3cret", want: 200, wantDB: api.Hidden},
		{name: "token: reveal with it", token: "s3cret", path: settings + "?reveal=true", bearer: "s3cret", want: 200, wantDB: "prod-db"},
		{name: "token: reveal=false with it is masked", token: "s3cret", path: settings + "?reveal=false", bearer: "s3cret", want: 200, wantDB: api.Hidden},
		{name: "token: reveal without it", token: "s3cret", path: settings + "?reveal=true", want: 401},
		{name: "token: health is open", token: "s3cret", path: "/v1/health", want: 200},
		{name: "token: health ignores reveal", token: "s3cret", path: "/v1/health?reveal=true", want: 200},
		{name: "token: metrics follow reads", token: "s3cret", path: "/v1/metrics", want: 401},
		{name: "token: metrics with it", token: "s3cret", path: "/v1/metrics", bearer: "s3cret", want: 200},

		{name: "read_requires_token = true: a read without it is refused", token: "s3cret", readRequires: ptr(true), path: settings, want: 401},
		{name: "read_requires_token = true: a read with it", token: "s3cret", readRequires: ptr(true), path: settings, bearer: "s3cret", want: 200, wantDB: api.Hidden},

		{name: "read_requires_token = false: a read without it is masked", token: "s3cret", readRequires: ptr(false), path: settings, want: 200, wantDB: api.Hidden},
		{name: "read_requires_token = false: reveal without it", token: "s3cret", readRequires: ptr(false), path: settings + "?reveal=true", want: 401, wantMessage: "the token is needed to reveal"},
		{name: "read_requires_token = false: reveal with a wrong one", token: "s3cret", readRequires: ptr(false), path: settings + "?reveal=1", bearer: "nope", want: 401, wantMessage: "the token is needed to reveal"},
		{name: "read_requires_token = false: reveal with it", token: "s3cret", readRequires: ptr(false), path: settings + "?reveal=true", bearer: "s3cret", want: 200, wantDB: "prod-db"},
		{name: "read_requires_token = false: metrics are open", token: "s3cret", readRequires: ptr(false), path: "/v1/metrics", want: 200},
		{name: "read_requires_token = false: writes still need it", token: "s3cret", readRequires: ptr(false), method: "POST", path: "/v1/sites/web/rollback", want: 401},
		{name: "read_requires_token = false: groups are open", token: "s3cret", readRequires: ptr(false), path: "/v1/groups", want: 200},
		{name: "read_requires_token = false: a group rollback still needs it", token: "s3cret", readRequires: ptr(false), method: "POST", path: "/v1/groups/storefront/rollback", want: 401},
		{name: "read_requires_token = false: a group swap still needs it", token: "s3cret", readRequires: ptr(false), method: "POST", path: "/v1/groups/storefront/swap", want: 401},

		{name: "a bad reveal", path: settings + "?reveal=yes", want: 400, wantMessage: `reveal="yes"`},
		{name: "an empty reveal", token: "s3cret", path: settings + "?reveal=", bearer: "s3cret", want: 400},
		// The handler would answer 503 (this agent does not lead): reveal is checked before it runs.
		{name: "a bad reveal on a write is refused before the write", token: "s3cret", method: "DELETE", path: settings + "/FEATURE?reveal=maybe", bearer: "s3cret", want: 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newFakeBackend(tc.token, tc.readRequires).server(t)
			req := httptest.NewRequest(cmp.Or(tc.method, "GET"), tc.path, nil)
			if tc.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			require.Equal(t, tc.want, rec.Code, rec.Body.String())
			if tc.wantMessage != "" {
				var e api.ErrorResponse
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
				assert.Contains(t, e.Error, tc.wantMessage)
			}
			if tc.wantDB != "" {
				var s api.Settings
				require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &s))
				assert.Equal(t, tc.wantDB, s.Sticky["DB"])
				assert.Equal(t, "prod-feature", s.Settings["FEATURE"], "swappable values are never masked")
				assert.Equal(t, tc.wantDB == api.Hidden, s.Masked)
			}
		})
	}
}

// TestNoSecretInAnyAnswer reads every route that can carry a sticky value or a job variable:
// without reveal none shows in clear, with it every sticky value does, and so does a
// sensitive variable kept before it was declared sensitive.
func TestNoSecretInAnyAnswer(t *testing.T) {
	b := newFakeBackend("s3cret", nil)
	s := b.server(t)
	b.ops["op-mem"] = &api.Operation{ID: "op-mem", Site: "web", Kind: api.KindDeploy, State: api.StateDeploying,
		Vars: map[string]string{"db_password": runningPassword}}
	secrets := []string{"prod-db", "staging-db", historyPassword, runningPassword}
	// Each path, and what it shows in clear with reveal: sticky values, and the sensitive
	// variable of an operation kept before its variable was declared sensitive.
	for path, revealed := range map[string][]string{
		"/v1/sites":     {historyPassword, runningPassword},
		"/v1/sites/web": {"prod-db", "staging-db", historyPassword, runningPassword},
		"/v1/sites/web/slots/production/settings": {"prod-db"},
		"/v1/sites/web/slots/staging/settings":    {"staging-db"},
		"/v1/sites/web/history":                   {historyPassword},
		"/v1/operations/op-old":                   {historyPassword},
		"/v1/operations/op-now":                   {runningPassword},
		"/v1/operations/op-mem":                   {runningPassword},
	} {
		for _, reveal := range []bool{false, true} {
			target := path
			if reveal {
				target += "?reveal=true"
			}
			t.Run(target, func(t *testing.T) {
				req := httptest.NewRequest("GET", target, nil)
				req.Header.Set("Authorization", "Bearer s3cret")
				rec := httptest.NewRecorder()
				s.Handler().ServeHTTP(rec, req)
				require.Equal(t, 200, rec.Code, rec.Body.String())
				body := rec.Body.String()
				if reveal {
					for _, s := range revealed {
						assert.Contains(t, body, s)
					}
					return
				}
				for _, s := range secrets {
					assert.NotContains(t, body, s)
				}
				assert.Contains(t, body, api.Hidden)
			})
		}
	}
	// The masked answers did not change what the registry holds.
	assert.Equal(t, runningPassword, b.ops["op-mem"].Vars["db_password"])
}

// TestMaskAnswer: every answer type that carries settings or variables comes back masked, as
// a copy; anything else passes as it is.
func TestMaskAnswer(t *testing.T) {
	sensitive := func(site string) []string {
		if site == "web" {
			return []string{"db_password", "absent"}
		}
		return nil
	}
	set := func() *api.Settings {
		return &api.Settings{Settings: map[string]string{"FEATURE": "on"}, Sticky: map[string]string{"DB": "prod-db"}}
	}
	op := func(site string) *api.Operation {
		return &api.Operation{ID: "op-1", Site: site, Vars: map[string]string{"db_password": "pw", "image": "web:2"}}
	}
	maskedSet := &api.Settings{Settings: map[string]string{"FEATURE": "on"}, Sticky: map[string]string{"DB": api.Hidden}, Masked: true}
	maskedOp := &api.Operation{ID: "op-1", Site: "web", Vars: map[string]string{"db_password": api.Hidden, "image": "web:2"}}
	site := func() *api.Site {
		return &api.Site{Name: "web", Slots: []api.Slot{{Name: "production", Settings: set()}, {Name: "staging"}}, Operation: op("web"), LastOperation: op("web")}
	}
	maskedSite := &api.Site{Name: "web", Slots: []api.Slot{{Name: "production", Settings: maskedSet}, {Name: "staging"}}, Operation: maskedOp, LastOperation: maskedOp}

	tests := []struct {
		name     string
		body     func() any
		want     any
		mutation func(any) string // a value of the input that masking must leave as it was
	}{
		{"settings", func() any { return *set() }, *maskedSet, func(b any) string { return b.(api.Settings).Sticky["DB"] }},
		{"settings pointer", func() any { return set() }, maskedSet, func(b any) string { return b.(*api.Settings).Sticky["DB"] }},
		{"settings without sticky", func() any { return api.Settings{Settings: map[string]string{"A": "b"}} }, api.Settings{Settings: map[string]string{"A": "b"}}, nil},
		{"site", func() any { return site() }, maskedSite, func(b any) string {
			s := b.(*api.Site)
			return s.Slots[0].Settings.Sticky["DB"] + s.Operation.Vars["db_password"] + s.LastOperation.Vars["db_password"]
		}},
		{"sites", func() any { return []api.Site{*site()} }, []api.Site{*maskedSite}, func(b any) string { return b.([]api.Site)[0].Slots[0].Settings.Sticky["DB"] }},
		{"operation", func() any { return op("web") }, maskedOp, func(b any) string { return b.(*api.Operation).Vars["db_password"] }},
		{"operations", func() any { return []api.Operation{*op("web")} }, []api.Operation{*maskedOp}, func(b any) string { return b.([]api.Operation)[0].Vars["db_password"] }},
		{"operation of a site with no sensitive variables", func() any { return op("api") }, op("api"), nil},
		{"no operation", func() any { return (*api.Operation)(nil) }, (*api.Operation)(nil), nil},
		{"health", func() any { return api.Health{Status: "ok"} }, api.Health{Status: "ok"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.body()
			var before string
			if tc.mutation != nil {
				before = tc.mutation(in)
			}
			assert.Equal(t, tc.want, maskAnswer(in, sensitive))
			if tc.mutation != nil {
				assert.Equal(t, before, tc.mutation(in), "masking changed its input")
			}
		})
	}
}
