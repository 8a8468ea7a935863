// Command demo runs slotd's demo (`make demo`): the real Consul, Nomad and Fabio on their
// well-known loopback ports, until Ctrl-C stops everything it started.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/slotd/slotd/api"
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

	stopAgent, err := runDemo(ctx, stack, os.Stdout)
	if stopAgent != nil {
		defer stopAgent()
	}
	if err != nil {
		return err
	}
	fmt.Println("\nCtrl-C stops the demo and everything it started.")
	<-ctx.Done()
	return nil
}

// runDemo is the demo proper, run once the stack is up: it starts
// `bin/slotd agent -config slots.hcl.example`, deploys v1 into production and v2 into staging
// through slotd's API, and prints how to reach each slot and the `slotd swap` to try. The
// function it returns stops the agent (SIGTERM, then waits), before the stack stops.
func runDemo(ctx context.Context, stack *e2e.Stack, out io.Writer) (func(), error) {
	agent, exited, err := startAgent(stack)
	if err != nil {
		return nil, err
	}
	stop := func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Minute):
			_ = agent.Process.Kill()
			<-exited
		}
	}
	return stop, deployDemo(ctx, stack, out)
}

func deployDemo(ctx context.Context, stack *e2e.Stack, out io.Writer) error {
	client, err := api.NewClient(api.Config{Address: demoAPI})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "slotd is bringing up the site \"web\": lanes web-a (production) and web-b (staging) …")
	waitCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := e2e.Poll(waitCtx, "site web ready", func() (bool, string) {
		s, err := client.Site(waitCtx, "web")
		if err != nil {
			return false, err.Error()
		}
		return s.Ready, fmt.Sprintf("ready=%v", s.Ready)
	}); err != nil {
		return fmt.Errorf("%w (agent log: %s)", err, agentLog(stack))
	}
	for _, d := range []struct{ slot, version string }{{"production", "v1"}, {"staging", "v2"}} {
		fmt.Fprintf(out, "deploying %s into %s …\n", d.version, d.slot)
		op, err := client.Deploy(ctx, "web", d.slot, map[string]string{"app_version": d.version})
		if err != nil {
			return fmt.Errorf("deploy %s into %s: %w", d.version, d.slot, err)
		}
		op, err = client.Wait(ctx, op.ID, nil)
		if err != nil {
			return err
		}
		if op.State != api.StateSucceeded {
			return fmt.Errorf("deploy %s into %s %s: %s", d.version, d.slot, op.State, op.Error)
		}
	}
	fabio := "http://" + stack.FabioAddr + "/"
	fmt.Fprintf(out, `
The demo is up. Everything listens on 127.0.0.1.

  Consul UI   http://%[1]s/ui/  (Key/Value → slotd/sites/web; Services → web)
  Nomad UI    %[2]s/ui/jobs     (jobs web-a and web-b: the lanes)
  Fabio       %[3]s             (routes: http://%[4]s/)
  slotd API   %[5]s/v1/sites
  logs        %[6]s

Reach each slot through Fabio:
  curl -H 'Host: www.example.com' %[3]s        # production: v1
  curl -H 'Host: staging.example.com' %[3]s    # staging: v2

Then try, in another terminal:
  bin/slotd status
  bin/slotd swap web staging production        # v2 into production, live phase by phase
  bin/slotd swap web staging -preview          # candidate on Host: preview.example.com, then:
  bin/slotd swap -complete web                 #   or: bin/slotd swap -cancel web
  bin/slotd rollback web
  bin/slotd settings web staging set FEATURE_X=beta
  bin/slotd history web
`, stack.ConsulAddr, stack.NomadAddr, fabio, stack.FabioUIAddr, demoAPI, filepath.Join(stack.Dir, "*.log"))
	return nil
}

// demoAPI is where slots.hcl.example puts slotd's API.
const demoAPI = "http://127.0.0.1:4680"

func agentLog(stack *e2e.Stack) string { return filepath.Join(stack.Dir, "slotd.log") }

// startAgent runs bin/slotd on slots.hcl.example, logging to the stack's folder.
func startAgent(stack *e2e.Stack) (*exec.Cmd, <-chan struct{}, error) {
	bin, err := filepath.Abs(filepath.Join("bin", "slotd"))
	if err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, nil, fmt.Errorf("%s is missing: run `make build` (make demo does)", bin)
	}
	logf, err := os.Create(agentLog(stack))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, "agent", "-config", "slots.hcl.example")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start slotd: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(exited)
	}()
	return cmd, exited, nil
}
