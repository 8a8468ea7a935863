package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"
)

// pollInterval is how often waits look again.
const pollInterval = 100 * time.Millisecond

// WaitFor polls cond every 100ms until it is done; after timeout the test fails with what it
// waited for and what cond saw last.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (done bool, seen string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if seen, ok := poll(ctx, func() (bool, string, error) {
		done, seen := cond()
		return done, seen, nil
	}); !ok {
		t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, seen)
	}
}

// Poll is WaitFor for code without a testing.TB (the demo): it polls cond every 100ms until
// it is done or ctx ends, and then says what it waited for and what it saw last.
func Poll(ctx context.Context, what string, cond func() (done bool, seen string)) error {
	start := time.Now()
	if seen, ok := poll(ctx, func() (bool, string, error) {
		done, seen := cond()
		return done, seen, nil
	}); !ok {
		return fmt.Errorf("gave up after %s waiting for %s (%v); last seen: %s",
			time.Since(start).Round(time.Millisecond), what, context.Cause(ctx), seen)
	}
	return nil
}

// waitUntil polls cond until it is done, it fails, or ctx ends; the error says what it waited
// for and what it saw last.
func waitUntil(ctx context.Context, what string, cond func() (bool, string, error)) error {
	start := time.Now()
	var failed error
	seen, ok := poll(ctx, func() (bool, string, error) {
		done, seen, err := cond()
		failed = err
		return done, seen, err
	})
	switch {
	case failed != nil:
		return fmt.Errorf("waiting for %s: %w", what, failed)
	case !ok:
		return fmt.Errorf("gave up after %s waiting for %s (%v); last seen: %s",
			time.Since(start).Round(time.Millisecond), what, context.Cause(ctx), seen)
	}
	return nil
}

// poll runs cond until done (true), an error (false) or ctx's end (false); it returns the
// last seen.
func poll(ctx context.Context, cond func() (bool, string, error)) (string, bool) {
	seen := "nothing yet"
	for {
		done, s, err := cond()
		if s != "" {
			seen = s
		}
		if err != nil {
			return seen, false
		}
		if done {
			return seen, true
		}
		select {
		case <-ctx.Done():
			return seen, false
		case <-time.After(pollInterval):
		}
	}
}

// Suffix returns 6 random lowercase letters and digits, the first a letter, for job IDs and
// site names that must not collide between tests.
func Suffix() string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	const alnum = letters + "0123456789"
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	for i := range b {
		set := alnum
		if i == 0 {
			set = letters
		}
		b[i] = set[int(b[i])%len(set)]
	}
	return string(b)
}
