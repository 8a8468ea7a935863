// Package failpoint holds the named points in slotd's operations where a test makes the daemon
// fail on purpose: exit as if killed, panic, fail, hang or pause. Every point is inert unless
// SLOTD_FAILPOINTS (read at start) or Enable names it.
package failpoint

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// Env is the variable that enables failpoints at start: "name=action;name=action", where an
// action is exit, panic, error, hang or sleep(<duration>).
const Env = "SLOTD_FAILPOINTS"

// ExitCode is the status a daemon exits with at an "exit" failpoint.
const ExitCode = 42

var (
	mu     sync.Mutex
	points = map[string]string{}
)

func init() {
	if err := Parse(os.Getenv(Env)); err != nil {
		fmt.Fprintf(os.Stderr, "slotd: %s: %v\n", Env, err)
		os.Exit(2)
	}
}

// Parse enables the failpoints of a SLOTD_FAILPOINTS value.
func Parse(spec string) error {
	for _, item := range strings.Split(spec, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, action, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q: want name=action", item)
		}
		if err := Enable(strings.TrimSpace(name), strings.TrimSpace(action)); err != nil {
			return err
		}
	}
	return nil
}

// Enable makes the named point act: exit, panic, error, hang or sleep(<duration>).
func Enable(name, action string) error {
	if _, err := parseAction(action); err != nil {
		return fmt.Errorf("failpoint %s: %w", name, err)
	}
	mu.Lock()
	defer mu.Unlock()
	points[name] = action
	return nil
}

// Disable makes the named point inert again.
func Disable(name string) {
	mu.Lock()
	defer mu.Unlock()
	delete(points, name)
}

func parseAction(action string) (time.Duration, error) {
	switch action {
	case "exit", "panic", "error", "hang":
		return 0, nil
	}
	if d, ok := strings.CutPrefix(action, "sleep("); ok && strings.HasSuffix(d, ")") {
		return time.ParseDuration(strings.TrimSuffix(d, ")"))
	}
	return 0, fmt.Errorf("unknown action %q: want exit, panic, error, hang or sleep(<duration>)", action)
}

// Inject acts at the named point if it is enabled: nil when it is not (or after a sleep).
func Inject(ctx context.Context, name string) error {
	mu.Lock()
	action, ok := points[name]
	mu.Unlock()
	if !ok {
		return nil
	}
	switch action {
	case "exit":
		fmt.Fprintf(os.Stderr, "slotd: failpoint %s: exiting\n", name)
		os.Exit(ExitCode)
	case "panic":
		panic("failpoint " + name)
	case "error":
		return fmt.Errorf("failpoint %s", name)
	case "hang":
		<-ctx.Done()
		return fmt.Errorf("failpoint %s: %w", name, ctx.Err())
	}
	d, _ := parseAction(action)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("failpoint %s: %w", name, ctx.Err())
	}
}
