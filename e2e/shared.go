package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
)

// shared is the package's one stack, started by the first Shared call and stopped by Main.
var shared struct {
	main  bool // Main runs
	once  sync.Once
	mu    sync.Mutex
	stack *Stack
	err   error
}

// Main runs the package's tests for TestMain: `func TestMain(m *testing.M) { os.Exit(e2e.Main(m)) }`.
// The first test that calls Shared starts one stack for the whole package (so -short runs,
// or -run picking tests without agents, start none); Main stops it when the tests are done,
// on a panic, or on SIGINT/SIGTERM. When a test failed it keeps the agents' logs and says
// where. SLOTD_E2E_LOGS=1 copies the agents' output to stderr as it comes.
func Main(m *testing.M) (code int) {
	shared.main = true
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigc:
			fmt.Fprintf(os.Stderr, "e2e: %s: stopping the stack\n", sig)
			stopShared(true)
			removeTestApp()
			os.Exit(1)
		case <-done:
		}
	}()

	finished := false
	defer func() {
		signal.Stop(sigc)
		close(done)
		stopShared(!finished || code != 0)
		removeTestApp()
	}()
	code = m.Run()
	finished = true
	return code
}

// Shared returns the package's shared stack, starting it on first use. In -short mode it
// skips the test; when the stack could not start, it fails the test with the reason.
func Shared(t testing.TB) *Stack {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: needs the real stack")
	}
	if !shared.main {
		t.Fatal("e2e: Shared needs the package's TestMain to call e2e.Main")
	}
	shared.once.Do(func() {
		var opts []Option
		if os.Getenv("SLOTD_E2E_LOGS") == "1" {
			opts = append(opts, WithLogOutput(os.Stderr))
		}
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		s, err := Start(ctx, opts...)
		shared.mu.Lock()
		shared.stack, shared.err = s, err
		shared.mu.Unlock()
	})
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.err != nil {
		t.Fatalf("e2e: the shared stack did not start: %v", shared.err)
	}
	if shared.stack == nil {
		t.Fatal("e2e: the shared stack has been stopped")
	}
	return shared.stack
}

// stopShared stops the shared stack if it runs, keeping its folder when keep is set.
func stopShared(keep bool) {
	shared.mu.Lock()
	s := shared.stack
	shared.stack = nil
	shared.mu.Unlock()
	if s == nil {
		return
	}
	if keep {
		s.opts.keepDir = true
		fmt.Fprintf(os.Stderr, "e2e: agent logs kept in %s\n", s.Dir)
	}
	if err := s.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: stop the shared stack: %v\n", err)
	}
}
