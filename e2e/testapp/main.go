// Command testapp is the small HTTP server the e2e scenarios and the demo run under Nomad's
// raw_exec driver; knobs in its environment make it slow, cold, unhealthy or failing on purpose,
// and /metrics shows what its users got.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults when neither Nomad nor the caller names an address.
const (
	defaultIP        = "127.0.0.1"
	defaultPort      = "8080"
	defaultSlowDelay = 2 * time.Second
	// shutdownTimeout bounds the graceful shutdown; Nomad's kill_timeout is longer.
	shutdownTimeout = 3 * time.Second
)

// settings is what the environment asks of the app, read once at start.
type settings struct {
	Lane    string // NOMAD_JOB_ID
	Alloc   string // NOMAD_ALLOC_ID
	Version string // APP_VERSION
	Slot    string // SLOTD_SLOT
	Env     map[string]string

	StartupDelay    time.Duration
	SlowFirst       int64
	SlowDelay       time.Duration
	FailHealthz     bool
	FailHealthzFile string
	FailPath        string
	// ErrorRate is the fraction of counted requests answered 500, spread evenly (ERROR_RATE).
	ErrorRate float64
	// AddedLatency delays every answer but /healthz and /metrics (ADDED_LATENCY).
	AddedLatency time.Duration
}

// info is the JSON body of GET /.
type info struct {
	Lane    string            `json:"lane"`
	Alloc   string            `json:"alloc"`
	Version string            `json:"version"`
	Slot    string            `json:"slot"`
	Env     map[string]string `json:"env"`
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if err := run(); err != nil {
		log.Fatalf("testapp: %v", err)
	}
}

func run() error {
	s, err := load(os.Environ())
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if s.StartupDelay > 0 {
		log.Printf("testapp: waiting %s before listening", s.StartupDelay)
		select {
		case <-time.After(s.StartupDelay):
		case <-ctx.Done():
			return nil
		}
	}

	addr := net.JoinHostPort(firstNonEmpty(os.Getenv("NOMAD_IP_http"), defaultIP),
		firstNonEmpty(os.Getenv("NOMAD_PORT_http"), os.Getenv("PORT"), defaultPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           newHandler(s),
		ReadHeaderTimeout: 5 * time.Second,
	}
	log.Printf("testapp: lane=%s alloc=%s version=%s listening on %s", s.Lane, s.Alloc, s.Version, ln.Addr())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Printf("testapp: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// load reads the settings from environ ("KEY=value" entries, as os.Environ gives them).
func load(environ []string) (settings, error) {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	s := settings{
		Lane:            env["NOMAD_JOB_ID"],
		Alloc:           env["NOMAD_ALLOC_ID"],
		Version:         env["APP_VERSION"],
		Slot:            env["SLOTD_SLOT"],
		Env:             map[string]string{},
		SlowDelay:       defaultSlowDelay,
		FailHealthzFile: env["FAIL_HEALTHZ_FILE"],
		FailPath:        env["FAIL_PATH"],
	}
	for _, name := range strings.Split(env["SHOW_ENV"], ",") {
		if name = strings.TrimSpace(name); name != "" {
			s.Env[name] = env[name]
		}
	}
	for k, v := range env {
		if strings.HasPrefix(k, "SLOTD_") {
			s.Env[k] = v
		}
	}

	var err error
	if v := env["STARTUP_DELAY"]; v != "" {
		if s.StartupDelay, err = time.ParseDuration(v); err != nil {
			return s, fmt.Errorf("STARTUP_DELAY: %w", err)
		}
	}
	if v := env["SLOW_FIRST"]; v != "" {
		if s.SlowFirst, err = strconv.ParseInt(v, 10, 64); err != nil {
			return s, fmt.Errorf("SLOW_FIRST: %w", err)
		}
	}
	if v := env["SLOW_DELAY"]; v != "" {
		if s.SlowDelay, err = time.ParseDuration(v); err != nil {
			return s, fmt.Errorf("SLOW_DELAY: %w", err)
		}
	}
	if v := env["FAIL_HEALTHZ"]; v != "" {
		if s.FailHealthz, err = strconv.ParseBool(v); err != nil {
			return s, fmt.Errorf("FAIL_HEALTHZ: %w", err)
		}
	}
	if v := env["ERROR_RATE"]; v != "" {
		s.ErrorRate, err = strconv.ParseFloat(v, 64)
		if err != nil || !(s.ErrorRate >= 0 && s.ErrorRate <= 1) {
			return s, fmt.Errorf("ERROR_RATE=%q: want a fraction from 0 to 1, e.g. 0.05", v)
		}
	}
	if v := env["ADDED_LATENCY"]; v != "" {
		s.AddedLatency, err = time.ParseDuration(v)
		if err != nil || s.AddedLatency < 0 {
			return s, fmt.Errorf("ADDED_LATENCY=%q: want a Go duration of 0 or more, e.g. 300ms", v)
		}
	}
	return s, nil
}

// newHandler serves /, /healthz, /metrics, the failing path and an "ok" for any other path.
// Every request but /healthz and /metrics is counted in /metrics by status code and timed.
func newHandler(s settings) http.Handler {
	var served atomic.Int64 // requests other than /healthz and /metrics
	body := info{Lane: s.Lane, Alloc: s.Alloc, Version: s.Version, Slot: s.Slot, Env: s.Env}

	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "app_requests_total",
		Help: "Requests answered, but /healthz and /metrics, by status code.",
	}, []string{"code"})
	duration := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "app_request_duration_seconds",
		Help:    "Time to answer the requests counted in app_requests_total.",
		Buckets: prometheus.DefBuckets,
	})
	reg.MustRegister(requests, duration)
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})

	serve := func(w http.ResponseWriter, r *http.Request, n int64) int {
		if s.AddedLatency > 0 {
			select {
			case <-time.After(s.AddedLatency):
			case <-r.Context().Done():
				return 499 // the client left; nginx's name for it
			}
		}
		// A cold app: its first requests are slow until it has warmed up.
		if n <= s.SlowFirst && s.SlowDelay > 0 {
			select {
			case <-time.After(s.SlowDelay):
			case <-r.Context().Done():
				return 499
			}
		}
		switch {
		case failsAt(n, s.ErrorRate):
			http.Error(w, fmt.Sprintf("failing on purpose: ERROR_RATE=%g", s.ErrorRate), http.StatusInternalServerError)
			return http.StatusInternalServerError
		case s.FailPath != "" && r.URL.Path == s.FailPath:
			http.Error(w, "failing on purpose: "+r.URL.Path, http.StatusInternalServerError)
			return http.StatusInternalServerError
		case r.URL.Path == "/":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(body)
		default:
			fmt.Fprintf(w, "ok %s", r.URL.Path)
		}
		return http.StatusOK
	}

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			if reason := unhealthy(s); reason != "" {
				http.Error(w, "unhealthy: "+reason, http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, "ok")
			return
		case "/metrics":
			metrics.ServeHTTP(w, r)
			return
		}
		began := time.Now()
		code := serve(w, r, served.Add(1))
		duration.Observe(time.Since(began).Seconds())
		requests.WithLabelValues(strconv.Itoa(code)).Inc()
	})
}

// failsAt reports whether the nth counted request (from 1) fails under ERROR_RATE rate: the
// failures are spread evenly, so any run of requests fails that fraction of them, give or
// take one, on each instance.
func failsAt(n int64, rate float64) bool {
	if rate <= 0 {
		return false
	}
	// The epsilon keeps n*rate that should be whole (20*0.05) from landing just below it.
	const eps = 1e-9
	return math.Floor(float64(n)*rate+eps) > math.Floor(float64(n-1)*rate+eps)
}

// unhealthy says why /healthz must fail, or "" when the app is healthy.
func unhealthy(s settings) string {
	if s.FailHealthz {
		return "FAIL_HEALTHZ is set"
	}
	if s.FailHealthzFile != "" {
		if _, err := os.Stat(s.FailHealthzFile); err == nil {
			return s.FailHealthzFile + " exists"
		}
	}
	return ""
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}
