package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestLoad(t *testing.T) {
	s, err := load([]string{
		"NOMAD_JOB_ID=web-a", "NOMAD_ALLOC_ID=1234", "APP_VERSION=v2", "SLOTD_SLOT=staging",
		"SLOTD_SITE=web", "SHOW_ENV=FEATURE_X, DATABASE_URL,,UNSET", "FEATURE_X=on",
		"DATABASE_URL=postgres://x=y", "OTHER=hidden", "STARTUP_DELAY=1s", "SLOW_FIRST=3",
		"SLOW_DELAY=10ms", "FAIL_HEALTHZ=true", "FAIL_PATH=/warm",
	})
	require.NoError(t, err)
	assert.Equal(t, "web-a", s.Lane)
	assert.Equal(t, "1234", s.Alloc)
	assert.Equal(t, "v2", s.Version)
	assert.Equal(t, "staging", s.Slot)
	assert.Equal(t, map[string]string{
		"FEATURE_X":    "on",
		"DATABASE_URL": "postgres://x=y",
		"UNSET":        "",
		"SLOTD_SLOT":   "staging",
		"SLOTD_SITE":   "web",
	}, s.Env)
	assert.Equal(t, time.Second, s.StartupDelay)
	assert.Equal(t, int64(3), s.SlowFirst)
	assert.Equal(t, 10*time.Millisecond, s.SlowDelay)
	assert.True(t, s.FailHealthz)
	assert.Equal(t, "/warm", s.FailPath)
}

func TestLoadDefaultsAndErrors(t *testing.T) {
	s, err := load(nil)
	require.NoError(t, err)
	assert.Equal(t, defaultSlowDelay, s.SlowDelay)
	assert.Zero(t, s.SlowFirst)
	assert.False(t, s.FailHealthz)
	assert.Empty(t, s.Env)

	for _, kv := range []string{"STARTUP_DELAY=soon", "SLOW_FIRST=many", "SLOW_DELAY=1", "FAIL_HEALTHZ=maybe"} {
		t.Run(kv, func(t *testing.T) {
			_, err := load([]string{kv})
			assert.Error(t, err)
		})
	}
}

func TestRoot(t *testing.T) {
	h := newHandler(settings{
		Lane: "web-b", Alloc: "abcd", Version: "v1", Slot: "production",
		Env: map[string]string{"SLOTD_SLOT": "production", "FEATURE_X": "off"},
	})
	rec := get(t, h, "/")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var got info
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
	assert.Equal(t, info{
		Lane: "web-b", Alloc: "abcd", Version: "v1", Slot: "production",
		Env: map[string]string{"SLOTD_SLOT": "production", "FEATURE_X": "off"},
	}, got)
}

func TestRootEnvIsAnObjectWhenEmpty(t *testing.T) {
	s, err := load(nil)
	require.NoError(t, err)
	rec := get(t, newHandler(s), "/")
	assert.JSONEq(t, `{"lane":"","alloc":"","version":"","slot":"","env":{}}`, rec.Body.String())
}

func TestPaths(t *testing.T) {
	h := newHandler(settings{FailPath: "/warm"})
	tests := []struct {
		name, path string
		code       int
		body       string
	}{
		{"healthz", "/healthz", http.StatusOK, "ok"},
		{"failing path", "/warm", http.StatusInternalServerError, "failing on purpose: /warm\n"},
		{"any other path", "/some/page", http.StatusOK, "ok /some/page"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := get(t, h, tc.path)
			assert.Equal(t, tc.code, rec.Code)
			assert.Equal(t, tc.body, rec.Body.String())
		})
	}
}

func TestHealthz(t *testing.T) {
	t.Run("fail flag", func(t *testing.T) {
		rec := get(t, newHandler(settings{FailHealthz: true}), "/healthz")
		assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	})
	t.Run("fail file appears and goes", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "unhealthy")
		h := newHandler(settings{FailHealthzFile: file})
		assert.Equal(t, http.StatusOK, get(t, h, "/healthz").Code)

		require.NoError(t, os.WriteFile(file, nil, 0o600))
		rec := get(t, h, "/healthz")
		assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
		assert.Contains(t, rec.Body.String(), file)

		require.NoError(t, os.Remove(file))
		assert.Equal(t, http.StatusOK, get(t, h, "/healthz").Code)
	})
}

func TestSlowFirst(t *testing.T) {
	const delay = 300 * time.Millisecond
	h := newHandler(settings{SlowFirst: 2, SlowDelay: delay})

	// /healthz is never slowed and does not count.
	start := time.Now()
	assert.Equal(t, http.StatusOK, get(t, h, "/healthz").Code)
	assert.Less(t, time.Since(start), delay)

	for i := 1; i <= 2; i++ {
		start = time.Now()
		assert.Equal(t, http.StatusOK, get(t, h, "/x").Code)
		assert.GreaterOrEqual(t, time.Since(start), delay, "request %d must be slow", i)
	}
	start = time.Now()
	assert.Equal(t, http.StatusOK, get(t, h, "/").Code)
	assert.Less(t, time.Since(start), delay, "the app is warm after SLOW_FIRST requests")
}

func TestLoadKnobs(t *testing.T) {
	s, err := load([]string{"ERROR_RATE=0.05", "ADDED_LATENCY=300ms"})
	require.NoError(t, err)
	assert.Equal(t, 0.05, s.ErrorRate)
	assert.Equal(t, 300*time.Millisecond, s.AddedLatency)

	for _, kv := range []string{"ERROR_RATE=some", "ERROR_RATE=-0.1", "ERROR_RATE=1.5", "ERROR_RATE=NaN", "ADDED_LATENCY=300", "ADDED_LATENCY=-1s"} {
		t.Run(kv, func(t *testing.T) {
			_, err := load([]string{kv})
			require.Error(t, err)
			assert.Contains(t, err.Error(), kv[:strings.IndexByte(kv, '=')], "the error names the knob")
		})
	}
}

// TestErrorRate: ERROR_RATE answers that fraction of the requests with 500, spread evenly, and
// never /healthz or /metrics.
func TestErrorRate(t *testing.T) {
	for _, tc := range []struct {
		rate     float64
		requests int
		want     int
	}{
		{rate: 0, requests: 100, want: 0},
		{rate: 0.05, requests: 100, want: 5},
		{rate: 0.05, requests: 19, want: 0},
		{rate: 0.05, requests: 20, want: 1},
		{rate: 0.3, requests: 100, want: 30},
		{rate: 1, requests: 10, want: 10},
	} {
		t.Run(fmt.Sprintf("%g of %d", tc.rate, tc.requests), func(t *testing.T) {
			h := newHandler(settings{ErrorRate: tc.rate})
			failed := 0
			for i := range tc.requests {
				switch rec := get(t, h, "/any"); rec.Code {
				case http.StatusInternalServerError:
					failed++
				case http.StatusOK:
				default:
					t.Fatalf("request %d: status %d", i, rec.Code)
				}
				assert.Equal(t, http.StatusOK, get(t, h, "/healthz").Code, "health stays passing")
				assert.Equal(t, http.StatusOK, get(t, h, "/metrics").Code)
			}
			assert.Equal(t, tc.want, failed)
		})
	}
}

// TestAddedLatency: every answer but /healthz and /metrics waits ADDED_LATENCY.
func TestAddedLatency(t *testing.T) {
	h := newHandler(settings{AddedLatency: 50 * time.Millisecond})
	for _, tc := range []struct {
		path string
		slow bool
	}{{"/", true}, {"/any", true}, {"/healthz", false}, {"/metrics", false}} {
		began := time.Now()
		rec := get(t, h, tc.path)
		took := time.Since(began)
		assert.Equal(t, http.StatusOK, rec.Code, tc.path)
		if tc.slow {
			assert.GreaterOrEqual(t, took, 50*time.Millisecond, tc.path)
		} else {
			assert.Less(t, took, 50*time.Millisecond, tc.path)
		}
	}
}

// TestMetrics: /metrics counts each request but /healthz and /metrics by status code, and
// times them in a histogram.
func TestMetrics(t *testing.T) {
	h := newHandler(settings{ErrorRate: 0.25, FailPath: "/broken"})
	for range 8 {
		get(t, h, "/")
	}
	get(t, h, "/broken")
	get(t, h, "/healthz")
	get(t, h, "/metrics")
	rec := get(t, h, "/metrics")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Contains(t, rec.Header().Get("Content-Type"), "text/plain")
	body := rec.Body.String()
	// 9 requests: 2 of the 8 to / (every 4th) and /broken failed.
	assert.Contains(t, body, `app_requests_total{code="200"} 6`+"\n")
	assert.Contains(t, body, `app_requests_total{code="500"} 3`+"\n")
	assert.Contains(t, body, "app_request_duration_seconds_count 9\n")
	assert.Contains(t, body, `app_request_duration_seconds_bucket{le="+Inf"} 9`+"\n")
}
