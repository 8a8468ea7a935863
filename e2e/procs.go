package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// logTailLines is how many lines of an agent's log a start error quotes.
const logTailLines = 20

// process is one agent the harness started: its command, log file and exit.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has exited and been reaped
	waitErr error         // valid after done
	copied  chan struct{} // closed once its output is in the log file
}

// startProcess runs bin with args in its own process group, output to dir/<name>.log (and, when
// mirror is set, to mirror with a "<name>: " prefix).
func startProcess(name, bin string, args []string, dir string, mirror io.Writer) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	defer logFile.Close()

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = agentEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group, so Stop can kill whatever it leaves behind without touching ours.
		Setpgid: true,
		// If this process dies without Stop (a test timeout, a panic in a test goroutine),
		// the agent is told to shut down; Nomad in -dev mode then stops its allocations.
		Pdeathsig: syscall.SIGTERM,
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), copied: make(chan struct{})}

	var pw *os.File
	if mirror == nil {
		cmd.Stdout, cmd.Stderr = logFile, logFile
		close(p.copied)
	} else {
		// An *os.File, not an io.Writer, so that exec does not tie Wait to a copy that
		// descendants (Nomad's executors) could keep open.
		var pr *os.File
		if pr, pw, err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("pipe for %s output: %w", name, err)
		}
		cmd.Stdout, cmd.Stderr = pw, pw
		copyTo, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			pr.Close()
			pw.Close()
			return nil, fmt.Errorf("open %s log: %w", name, err)
		}
		go func() {
			defer close(p.copied)
			defer copyTo.Close()
			defer pr.Close()
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64*1024), 1024*1024)
			for sc.Scan() {
				line := sc.Bytes()
				_, _ = copyTo.Write(append(line, '\n'))
				_, _ = fmt.Fprintf(mirror, "%s: %s\n", name, line)
			}
		}()
	}

	err = spawn(cmd)
	if pw != nil {
		pw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// agentEnv is the parent's environment without settings meant for other Consul, Nomad or
// Vault servers, plus CHECKPOINT_DISABLE=1 (no update checks).
func agentEnv(environ []string) []string {
	env := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "CONSUL_") || strings.HasPrefix(k, "NOMAD_") ||
			strings.HasPrefix(k, "VAULT_") || strings.HasPrefix(k, "SLOTD_") || k == "CHECKPOINT_DISABLE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "CHECKPOINT_DISABLE=1")
}

// spawner starts every agent from one OS thread that never exits: Pdeathsig fires when the
// thread that forked the child ends, not the process, and Go may retire other threads.
var spawner struct {
	once sync.Once
	reqs chan spawnRequest
}

type spawnRequest struct {
	cmd  *exec.Cmd
	errc chan error
}

func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawner.reqs {
				r.errc <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawner.reqs <- spawnRequest{cmd: cmd, errc: errc}
	return <-errc
}

// pid is the process ID, or 0 when it never started.
func (p *process) pid() int {
	if p == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// exitError is an error saying that the agent stopped by itself, with its last log lines.
func (p *process) exitError() error {
	if ok, err := p.exited(); ok {
		return fmt.Errorf("%s exited early (%v)%s", p.name, err, p.tail())
	}
	return nil
}

// tail quotes the last lines of the agent's log, for error messages.
func (p *process) tail() string {
	select {
	case <-p.copied:
	case <-time.After(time.Second):
	}
	lines, err := lastLines(p.logPath, logTailLines)
	if err != nil {
		return fmt.Sprintf("\n(no log: %v)", err)
	}
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", p.logPath, strings.Join(lines, "\n"))
}

// lastLines returns up to n last lines of the file.
func lastLines(path string, n int) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}

// stop asks the agent to shut down (SIGTERM), kills it after grace, then kills what is left
// of its process group and of its descendants, looked for until it exited.
func (p *process) stop(grace time.Duration) error {
	if p.pid() == 0 {
		return nil
	}
	if ok, _ := p.exited(); ok {
		return nil // reaped: its PID may belong to someone else by now
	}
	var leftovers []procID
	collect := func() {
		for _, d := range descendants(p.pid()) {
			if !slices.Contains(leftovers, d) {
				leftovers = append(leftovers, d)
			}
		}
	}
	collect()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	deadline := time.After(grace)
	for exited := false; !exited; {
		select {
		case <-p.done:
			exited = true
		case <-time.After(100 * time.Millisecond):
			collect() // and what it starts while shutting down
		case <-deadline:
			err = fmt.Errorf("%s did not stop within %s after SIGTERM; killed it", p.name, grace)
			collect()
			_ = p.cmd.Process.Kill()
			<-p.done
			exited = true
		}
	}
	// A group keeps its ID from reuse while members remain; with none left this finds nothing.
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	killAll(leftovers)
	return err
}

// procID names a process across time: a PID may be reused, its start time tells them apart.
type procID struct {
	pid   int
	pgid  int
	start uint64
}

// readStat reads the parent PID, identity and state (R, S, Z, …) of pid from /proc.
func readStat(pid int) (ppid int, id procID, state byte, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, procID{}, 0, err
	}
	// The command name, in parentheses, may itself hold spaces and parentheses.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, procID{}, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 of proc(5), the state; then ppid, pgrp, …; starttime is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, procID{}, 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgid, err2 := strconv.Atoi(f[2])
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return 0, procID{}, 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return ppid, procID{pid: pid, pgid: pgid, start: start}, f[0][0], nil
}

// descendants lists every live process below root (children, their children, …).
func descendants(root int) []procID {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]procID{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, id, _, err := readStat(pid)
		if err != nil {
			continue // it ended meanwhile
		}
		children[ppid] = append(children[ppid], id)
	}
	var out []procID
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// alive reports whether the process still runs (a zombie counts as gone).
func (id procID) alive() bool {
	_, now, state, err := readStat(id.pid)
	return err == nil && now.start == id.start && state != 'Z'
}

// killAll SIGKILLs each process that is still the one that was collected, and the process
// group it leads (raw_exec tasks run as group leaders).
func killAll(ids []procID) {
	for _, id := range ids {
		if !id.alive() {
			continue
		}
		if id.pgid == id.pid {
			_ = syscall.Kill(-id.pid, syscall.SIGKILL)
		}
		_ = syscall.Kill(id.pid, syscall.SIGKILL)
	}
}

// waitGone waits until none of ids runs any more, or ctx ends; it returns those still running.
func waitGone(ctx context.Context, ids []procID) []procID {
	for {
		var left []procID
		for _, id := range ids {
			if id.alive() {
				left = append(left, id)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return left
		case <-time.After(50 * time.Millisecond):
		}
	}
}
