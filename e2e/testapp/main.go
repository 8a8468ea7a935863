// Command testapp is the small HTTP server the e2e scenarios and the demo run under Nomad's
// raw_exec driver; knobs in its environment make it slow, cold or unhealthy on purpose.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
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
	return s, nil
}

// newHandler serves /, /healthz, the failing path and an "ok" for any other path.
func newHandler(s settings) http.Handler {
	var served atomic.Int64 // requests other than /healthz, for SLOW_FIRST
	body := info{Lane: s.Lane, Alloc: s.Alloc, Version: s.Version, Slot: s.Slot, Env: s.Env}

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if reason := unhealthy(s); reason != "" {
				http.Error(w, "unhealthy: "+reason, http.StatusServiceUnavailable)
				return
			}
			fmt.Fprint(w, "ok")
			return
		}

		// A cold app: its first requests are slow until it has warmed up.
		if n := served.Add(1); n <= s.SlowFirst && s.SlowDelay > 0 {
			select {
			case <-time.After(s.SlowDelay):
			case <-r.Context().Done():
				return
			}
		}

		switch {
		case s.FailPath != "" && r.URL.Path == s.FailPath:
			http.Error(w, "failing on purpose: "+r.URL.Path, http.StatusInternalServerError)
		case r.URL.Path == "/":
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(body)
		default:
			fmt.Fprintf(w, "ok %s", r.URL.Path)
		}
	})
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
