package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// Bounds of the waits on a slotd process.
const (
	// procStopTimeout bounds a SIGTERM stop: an idle daemon stops at once, a running phase may
	// take up to the agent's stop time (agent.StopTime, 30s) to finish or be handed over.
	procStopTimeout = 3 * time.Minute
	// procKillTimeout bounds the wait for a SIGKILLed process to be reaped.
	procKillTimeout = 10 * time.Second
	// procLogTail is how many last lines of a slotd log a failure quotes.
	procLogTail = 40
)

var slotdBuild struct {
	once sync.Once
	path string
	err  error
}

// SlotdBinary builds ./cmd/slotd once per process and returns its absolute path. It goes into
// the test app's folder, which Main removes at the end.
func SlotdBinary(t testing.TB) string {
	t.Helper()
	app := TestAppBinary(t)
	slotdBuild.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		out := filepath.Join(filepath.Dir(app), "slotd")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/slotd")
		cmd.Dir = filepath.Dir(sourceDir())
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			slotdBuild.err = fmt.Errorf("build slotd: %w\n%s", err, msg)
			return
		}
		slotdBuild.path = out
	})
	if slotdBuild.err != nil {
		t.Fatalf("e2e: %v", slotdBuild.err)
	}
	return slotdBuild.path
}

// procDaemon is slotd running as a process of its own (`slotd agent -config <file>`), so a test
// can kill it as an operator or the kernel would. Its config file stays the same across
// restarts (and so its data_dir, where it keeps its leader session); its output, every run's,
// goes to one log file.
type procDaemon struct {
	t       testing.TB
	stack   *Stack
	config  string // path of its slots.hcl
	addr    string // its HTTP address
	logPath string
	client  *api.Client
	proc    *process  // the current run, or the last one once it exited
	started time.Time // when the current run was started
	runs    int
}

// startProcDaemon starts slotd as a process on the site's slots.hcl with the extra env (K=V)
// and waits until the site is ready.
func startProcDaemon(t testing.TB, stack *Stack, site siteSpec, env ...string) *procDaemon {
	t.Helper()
	p := launchProcDaemon(t, stack, site, env...)
	p.waitReady(site.name)
	return p
}

// launchProcDaemon starts slotd as a process on the site's slots.hcl, rendered with an HTTP
// address and a data_dir of its own, with the extra env (K=V); it does not wait for anything.
func launchProcDaemon(t testing.TB, stack *Stack, site siteSpec, env ...string) *procDaemon {
	t.Helper()
	return launchProcDaemonOn(t, stack, []siteSpec{site}, func(addr string) string { return site.hcl(t, stack, addr) }, env...)
}

// startProcDaemonGroup starts slotd as a process for the sites, declared as the swap group
// named group (the kv_prefix is the first site's), with the extra env (K=V), and waits until
// every site is ready.
func startProcDaemonGroup(t testing.TB, stack *Stack, group string, sites []siteSpec, env ...string) *procDaemon {
	t.Helper()
	p := launchProcDaemonOn(t, stack, sites, func(addr string) string {
		return sitesHCL(t, stack, addr, sites) + groupHCL(group, sites)
	}, env...)
	for _, s := range sites {
		p.waitReady(s.name)
	}
	return p
}

// launchProcDaemonOn starts slotd as a process for the sites on the slots.hcl that render
// gives for its HTTP address, with the extra env (K=V); it does not wait for anything.
func launchProcDaemonOn(t testing.TB, stack *Stack, sites []siteSpec, render func(addr string) string, env ...string) *procDaemon {
	t.Helper()
	for _, s := range sites {
		stack.PurgeSiteAtEnd(t, s.name)
	}
	dir := t.TempDir()
	p := &procDaemon{t: t, stack: stack, addr: freeAddr(t), config: filepath.Join(dir, "slots.hcl"), logPath: filepath.Join(dir, "slotd.log")}
	require.NoError(t, os.WriteFile(p.config, []byte(render(p.addr)), 0o644))
	client, err := api.NewClient(api.Config{Address: "http://" + p.addr, Token: sites[0].token, Reveal: true})
	require.NoError(t, err)
	p.client = client
	t.Cleanup(p.cleanup)
	p.launch(env)
	return p
}

// launch starts a new run of slotd; the previous one must have exited.
func (p *procDaemon) launch(env []string) {
	p.t.Helper()
	bin := SlotdBinary(p.t)
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(p.t, err, "open the slotd log")
	defer logFile.Close()
	p.runs++
	fmt.Fprintf(logFile, "=== e2e: run %d of slotd, env %q, at %s\n", p.runs, env, time.Now().Format(time.RFC3339Nano))

	cmd := exec.Command(bin, "agent", "-config", p.config)
	cmd.Dir = filepath.Dir(p.config)
	cmd.Env = append(agentEnv(os.Environ()), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own group, and killed when the test process dies (see spawn for why one thread
	// starts every child).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	proc := &process{name: "slotd", cmd: cmd, logPath: p.logPath, done: make(chan struct{}), copied: make(chan struct{})}
	close(proc.copied)
	p.started = time.Now()
	require.NoError(p.t, spawn(cmd), "start %s", bin)
	go func() {
		proc.waitErr = cmd.Wait()
		close(proc.done)
	}()
	p.proc = proc
	p.t.Logf("slotd run %d: pid %d, http %s, env %q, log %s", p.runs, p.pid(), p.addr, env, p.logPath)
}

// pid is the current run's process ID.
func (p *procDaemon) pid() int { return p.proc.pid() }

// running reports whether the current run has not exited.
func (p *procDaemon) running() bool {
	ok, _ := p.proc.exited()
	return !ok
}

// kill ends the current run with SIGKILL, as a crash would, and waits until it is reaped.
func (p *procDaemon) kill() {
	p.t.Helper()
	if !p.running() {
		return
	}
	_ = p.proc.cmd.Process.Signal(syscall.SIGKILL)
	p.waitExit(procKillTimeout)
}

// stop ends the current run with SIGTERM, as an operator would, and returns its exit code.
func (p *procDaemon) stop() int {
	p.t.Helper()
	if p.running() {
		_ = p.proc.cmd.Process.Signal(syscall.SIGTERM)
	}
	return p.waitExit(procStopTimeout)
}

// waitExit waits until the current run exits and returns its exit code (-1 when a signal
// ended it); after timeout the test fails with the end of the log.
func (p *procDaemon) waitExit(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.proc.done:
	case <-time.After(timeout):
		p.t.Fatalf("slotd (pid %d) did not exit within %s%s", p.pid(), timeout, p.tail())
	}
	var ee *exec.ExitError
	switch err := p.proc.waitErr; {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		p.t.Fatalf("wait for slotd (pid %d): %v", p.pid(), err)
		return -1
	}
}

// restart stops the current run (SIGTERM) if it still runs and starts a new one on the same
// config file with the extra env (K=V); it does not wait for anything.
func (p *procDaemon) restart(env ...string) {
	p.t.Helper()
	if p.running() {
		p.stop()
	}
	p.launch(env)
}

// exitCheck fails the test when the current run has exited; waits on the daemon call it so
// that they say so at once instead of running out of time.
func (p *procDaemon) exitCheck(waitingFor string) {
	p.t.Helper()
	if ok, err := p.proc.exited(); ok {
		p.t.Fatalf("slotd (pid %d) exited (%v) while the test waited for %s%s", p.pid(), err, waitingFor, p.tail())
	}
}

// waitReady waits until the daemon leads and every slot of the site is bound and healthy,
// with no operation running.
func (p *procDaemon) waitReady(site string) {
	p.t.Helper()
	ctx := context.Background()
	WaitFor(p.t, 4*time.Minute, "site "+site+" ready on slotd "+p.addr, func() (bool, string) {
		p.exitCheck("site " + site + " ready")
		s, err := p.client.Site(ctx, site)
		if err != nil {
			return false, err.Error()
		}
		if !s.Ready {
			return false, "site not ready"
		}
		for _, sl := range s.Slots {
			if sl.Lane == "" || sl.Healthy < 1 || sl.Healthy != sl.Total {
				return false, fmt.Sprintf("slot %s: lane %q %d/%d healthy", sl.Name, sl.Lane, sl.Healthy, sl.Total)
			}
		}
		h, err := p.client.Health(ctx)
		if err != nil || !h.Leader {
			return false, fmt.Sprintf("health %+v %v", h, err)
		}
		if s.Operation != nil {
			return false, fmt.Sprintf("operation %s %s %s", s.Operation.ID, s.Operation.Kind, s.Operation.State)
		}
		return true, ""
	})
}

// waitLeader waits until the daemon says it leads and returns how long after the start of its
// current run that was.
func (p *procDaemon) waitLeader(timeout time.Duration) time.Duration {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	last := "nothing yet"
	for {
		p.exitCheck("it to lead")
		h, err := p.client.Health(ctx)
		switch {
		case err == nil && h.Leader:
			return time.Since(p.started)
		case err == nil:
			last = fmt.Sprintf("%+v", *h)
		default:
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			p.t.Fatalf("timed out after %s waiting for slotd %s to lead; last seen: %s%s", timeout, p.addr, last, p.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitOp polls operation id until it has ended and returns it. Errors (the daemon restarting,
// not leading yet, the site still starting) count as not yet.
func (p *procDaemon) waitOp(id string, timeout time.Duration) *api.Operation {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var seen []string
	last := "nothing yet"
	for {
		p.exitCheck("operation " + id + " to end")
		op, err := p.client.Operation(ctx, id, 0)
		if err == nil {
			if len(seen) == 0 || seen[len(seen)-1] != op.State {
				seen = append(seen, op.State)
			}
			if api.Terminal(op.State) {
				return op
			}
			last = fmt.Sprintf("states seen %v (%s)", seen, phaseTimes(op))
		} else {
			last = fmt.Sprintf("states seen %v, then %v", seen, err)
		}
		select {
		case <-ctx.Done():
			p.t.Fatalf("timed out after %s waiting for operation %s to end on slotd %s; last seen: %s%s", timeout, id, p.addr, last, p.tail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// daemon is a view of this process for the helpers written for in-process daemons that only
// use its client and address (waitIdle, waitOpState, waitTerminal, laneJobs); it must not be
// started, stopped or restarted.
func (p *procDaemon) daemon() *daemon {
	return &daemon{t: p.t, client: p.client, addr: p.addr}
}

// log returns everything slotd wrote so far, every run's.
func (p *procDaemon) log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// mark writes a line of the test's into the log ("=== e2e: <what> at <time>"), so that what
// slotd did since can be found and quoted.
func (p *procDaemon) mark(what string) {
	p.t.Helper()
	f, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(p.t, err, "open the slotd log")
	defer f.Close()
	_, err = fmt.Fprintf(f, "=== e2e: %s at %s\n", what, time.Now().Format(time.RFC3339Nano))
	require.NoError(p.t, err, "write to the slotd log")
}

// tail quotes the last lines of the log for failure messages, without the access log of
// GET requests (the test's own polling, which would fill it).
func (p *procDaemon) tail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("\n(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimPrefix(withoutGets(string(b)), "\n"), "\n")
	lines = lines[max(0, len(lines)-procLogTail):]
	return fmt.Sprintf("\n--- last lines of %s (GET requests left out) ---\n%s", p.logPath, strings.Join(lines, "\n"))
}

// withoutGets returns the lines of a slotd log that are not the access log of a GET request,
// each after a newline.
func withoutGets(log string) string {
	var b strings.Builder
	for line := range strings.Lines(log) {
		if !strings.Contains(line, "request: method=GET") {
			b.WriteString("\n" + strings.TrimRight(line, "\n"))
		}
	}
	return b.String()
}

// cleanup kills the current run; when the test failed it keeps the log in the stack's folder
// (which Main keeps when a test failed) and quotes its end.
func (p *procDaemon) cleanup() {
	if p.proc != nil && p.running() {
		_ = p.proc.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-p.proc.done:
		case <-time.After(procKillTimeout):
			p.t.Errorf("slotd (pid %d) not reaped %s after SIGKILL", p.pid(), procKillTimeout)
		}
	}
	if !p.t.Failed() {
		return
	}
	kept := p.logPath
	if b, err := os.ReadFile(p.logPath); err == nil {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(p.t.Name()) + "-" + strings.ReplaceAll(p.addr, ":", "_") + ".log"
		dir := filepath.Join(p.stack.Dir, "slotd")
		if err := os.MkdirAll(dir, 0o755); err == nil && os.WriteFile(filepath.Join(dir, name), b, 0o644) == nil {
			kept = filepath.Join(dir, name)
		}
	}
	p.t.Logf("slotd %s log kept in %s%s", p.addr, kept, p.tail())
}
