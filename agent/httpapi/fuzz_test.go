package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/sites/web/swap"},
	{"POST", "/v1/sites/web/slots/staging/deploy"},
	{"PUT", "/v1/sites/web/slots/staging/settings/FEATURE"},
	{"PUT", "/v1/sites/web/slots/staging/settings/bad-key"},
	{"POST", "/v1/operations/op-1/complete"},
	{"POST", "/v1/sites/nope/swap"},
	{"POST", "/v1/groups/storefront/swap"},
	{"POST", "/v1/groups/nope/swap"},
}

// FuzzRequestBodies sends arbitrary bodies to every write route: the agent never panics and
// answers each with a JSON error of a status the contract names, or 503 (not the leader).
func FuzzRequestBodies(f *testing.F) {
	for _, seed := range []string{
		`{"source":"staging","target":"production","preview":false}`,
		`{"vars":{"image":"web:2"}}`,
		`{"value":"x","sticky":true}`,
		`{"source":1}`, `{"unknown":true}`, `{}`, ``, `null`, `[]`, `{"a":`, `{} {}`,
		`{"vars":{"bad name":"x"}}`, `{"value":"` + string(bytes.Repeat([]byte("a"), 64)) + `"}`,
	} {
		for i := range fuzzRoutes {
			f.Add(uint8(i), []byte(seed))
		}
	}
	h := newFakeBackend("", nil).server(f).Handler()
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(r.method, r.path, bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable:
		default:
			t.Fatalf("%s %s with %q: status %d", r.method, r.path, body, rec.Code)
		}
		var e api.ErrorResponse
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
			t.Fatalf("%s %s: answer is not a JSON error: %q", r.method, r.path, rec.Body.String())
		}
	})
}

func TestRequestChecks(t *testing.T) {
	h := newFakeBackend("s3cret", nil).server(t).Handler()
	big := append([]byte(`{"value":"`), bytes.Repeat([]byte("a"), maxBody)...)
	big = append(big, []byte(`"}`)...)
	tests := []struct {
		name, method, path, auth, body string
		want                           int
	}{
		{"write without token", "POST", "/v1/sites/web/swap", "", `{"source":"staging"}`, 401},
		{"write with a wrong token", "POST", "/v1/sites/web/swap", "Bearer nope", `{"source":"staging"}`, 401},
		{"health is open", "GET", "/v1/health", "", "", 200},
		{"metrics with the token", "GET", "/v1/metrics", "Bearer s3cret", "", 200},
		{"unknown field", "POST", "/v1/sites/web/swap", "Bearer s3cret", `{"source":"staging","force":true}`, 400},
		{"malformed json", "POST", "/v1/sites/web/swap", "Bearer s3cret", `{"source":`, 400},
		{"trailing data", "POST", "/v1/sites/web/swap", "Bearer s3cret", `{"source":"staging"} x`, 400},
		{"missing source", "POST", "/v1/sites/web/swap", "Bearer s3cret", `{}`, 400},
		{"same slot twice", "POST", "/v1/sites/web/swap", "Bearer s3cret", `{"source":"production"}`, 400},
		{"unknown site", "POST", "/v1/sites/nope/swap", "Bearer s3cret", `{"source":"staging"}`, 404},
		{"unknown slot", "POST", "/v1/sites/web/swap", "Bearer s3cret", `{"source":"qa"}`, 404},
		{"bad setting key", "PUT", "/v1/sites/web/slots/staging/settings/1BAD", "Bearer s3cret", `{"value":"x"}`, 400},
		{"reserved setting key", "PUT", "/v1/sites/web/slots/staging/settings/SLOTD_SLOT", "Bearer s3cret", `{"value":"x"}`, 400},
		{"setting value with a NUL byte", "PUT", "/v1/sites/web/slots/staging/settings/K", "Bearer s3cret", `{"value":"a\u0000b"}`, 400},
		{"setting value over 64 KiB", "PUT", "/v1/sites/web/slots/staging/settings/K", "Bearer s3cret", `{"value":"` + strings.Repeat("a", config.MaxSettingValue+1) + `"}`, 400},
		{"setting value of 64 KiB, not the leader", "PUT", "/v1/sites/web/slots/staging/settings/K", "Bearer s3cret", `{"value":"` + strings.Repeat("a", config.MaxSettingValue) + `"}`, 503},
		{"body over 1 MiB", "PUT", "/v1/sites/web/slots/staging/settings/K", "Bearer s3cret", string(big), 413},
		{"history limit not a number", "GET", "/v1/sites/web/history?limit=ten", "Bearer s3cret", "", 400},
		{"history limit zero", "GET", "/v1/sites/web/history?limit=0", "Bearer s3cret", "", 400},
		{"history before not a seq", "GET", "/v1/sites/web/history?before=-1", "Bearer s3cret", "", 400},
		{"wrong method", "DELETE", "/v1/sites/web/swap", "Bearer s3cret", "", 405},
		{"valid write, not the leader", "POST", "/v1/sites/web/swap", "Bearer s3cret", `{"source":"staging"}`, 503},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, bytes.NewReader([]byte(tc.body)))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			require.Equal(t, tc.want, rec.Code, rec.Body.String())
			if tc.want == 405 {
				require.NotEmpty(t, rec.Header().Get("Allow"))
			}
			if tc.path == "/v1/metrics" {
				require.Contains(t, rec.Body.String(), "slotd_leader 0")
			}
		})
	}
}
