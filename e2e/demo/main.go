// Command demo runs slotd's demo (`make demo`): the real Consul, Nomad and Fabio on their
// well-known loopback ports, until Ctrl-C stops everything it started.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/slotd/slotd/e2e"
)

// startTimeout bounds bringing the stack up.
const startTimeout = 3 * time.Minute

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Println("starting Consul, Nomad and Fabio on 127.0.0.1 …")
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	began := time.Now()
	stack, err := e2e.Start(startCtx, e2e.WithPorts(e2e.DemoPorts))
	if err != nil {
		return fmt.Errorf("start the stack: %w", err)
	}
	defer func() {
		fmt.Println("stopping everything …")
		if err := stack.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "demo: stop the stack: %v\n", err)
		}
	}()
	fmt.Printf("stack up in %s\n\n", time.Since(began).Round(100*time.Millisecond))

	if err := runDemo(ctx, stack, os.Stdout); err != nil {
		return err
	}
	fmt.Println("\nCtrl-C stops the demo and everything it started.")
	<-ctx.Done()
	return nil
}

// runDemo is the demo proper, run once the stack is up. It will start
// `bin/slotd agent -config slots.hcl.example`, deploy v1 into production and v2 into staging
// through slotd's API, and print how to reach each slot and the `slotd swap` to try.
func runDemo(_ context.Context, stack *e2e.Stack, out io.Writer) error {
	fmt.Fprintf(out, "Consul UI:  http://%s/ui/\n", stack.ConsulAddr)
	fmt.Fprintf(out, "Nomad UI:   %s/ui/\n", stack.NomadAddr)
	fmt.Fprintf(out, "Fabio:      http://%s/  (routes: http://%s/)\n", stack.FabioAddr, stack.FabioUIAddr)
	fmt.Fprintf(out, "Agent logs: %s\n", filepath.Join(stack.Dir, "*.log"))
	return nil
}
