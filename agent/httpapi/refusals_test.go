package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestRefusalsWhileStarting: writes that cannot run yet but will within seconds answer 503 with
// Retry-After and say why.
func TestRefusalsWhileStarting(t *testing.T) {
	b := newFakeBackend("", nil)
	s := b.server(t)
	swap := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/v1/sites/web/swap", bytes.NewReader([]byte(`{"source":"staging"}`))))
		return rec
	}
	tests := []struct {
		name   string
		leader bool
		msg    string
	}{
		{name: "no leader elected yet", leader: false, msg: "this daemon is not the leader, and no leader is known yet; nothing was started, retry in a few seconds"},
		{name: "leading, site starting", leader: true, msg: "site web is starting; nothing was started, retry in a few seconds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b.leading = tc.leader
			rec := swap()
			require.Equal(t, http.StatusServiceUnavailable, rec.Code, rec.Body.String())
			assert.Equal(t, "2", rec.Header().Get("Retry-After"))
			var e api.ErrorResponse
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
			assert.Equal(t, tc.msg, e.Error)
			assert.Empty(t, e.LeaderAddress)
		})
	}
}

// TestSettingValueRefused: a value that no task environment can carry is refused before the
// backend is asked, with what to fix, and without the value (a sticky one is a secret).
func TestSettingValueRefused(t *testing.T) {
	b := newFakeBackend("", nil)
	b.leading, b.ready = true, true
	s := b.server(t)
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("PUT", "/v1/sites/web/slots/production/settings/DB",
		bytes.NewReader([]byte(`{"value":"secret\u0000tail","sticky":true}`))))
	require.Equal(t, http.StatusBadRequest, rec.Code, rec.Body.String())
	var e api.ErrorResponse
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
	assert.Equal(t, `bad request: the value of setting "DB" holds a NUL byte, which no environment variable can carry; remove it`, e.Error)
	assert.Zero(t, b.started, "the backend is not asked")
}
