// Package cli is the slotd command line (DESIGN.md §7): the agent, validate, and the client
// commands that call the agent's HTTP API and follow operations live.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/term"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // an error, or an operation that failed or was cancelled
	exitUsage = 2 // a command line that cannot be run
)

// Run runs the command line args (without the program name) and returns the exit code.
func Run(args []string, stdout, stderr io.Writer) int {
	e := &env{
		stdin:      os.Stdin,
		stdout:     stdout,
		stderr:     stderr,
		getenv:     os.Getenv,
		now:        time.Now,
		isTerminal: isTerminal,
		loadConfig: config.Load,
		newDaemon:  newAgent,
		notify:     signal.Notify,
		stopNotify: signal.Stop,
		interrupt: func() (context.Context, context.CancelFunc) {
			return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		},
	}
	return e.run(args)
}

// env is everything a command touches outside its arguments, so tests can replace it.
type env struct {
	// stdin is where `settings … set KEY=-` reads its value.
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	isTerminal     func(io.Writer) bool

	// loadConfig serves validate and agent; newDaemon, notify and stopNotify the agent.
	loadConfig func(path string) (*config.Config, error)
	newDaemon  func(*config.Config, hclog.Logger) (daemon, error)
	notify     func(chan<- os.Signal, ...os.Signal)
	stopNotify func(chan<- os.Signal)

	// interrupt gives client commands a context that Ctrl-C cancels.
	interrupt func() (context.Context, context.CancelFunc)
}

// command is one sub-command of slotd.
type command struct {
	name     string
	synopsis string // one line for the command list
	usage    string // the argument line, after "slotd <name> "
	help     string // what it does, and an example
	run      func(e *env, cmd *command, args []string) int
}

func commands() []*command {
	return []*command{
		agentCommand(),
		validateCommand(),
		statusCommand(),
		deployCommand(),
		swapCommand(),
		rollbackCommand(),
		settleCommand(),
		settingsCommand(),
		scaleCommand(),
		historyCommand(),
		followCommand(),
	}
}

func (e *env) run(args []string) int {
	if len(args) == 0 {
		e.printCommands(e.stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && name == "help" {
			if cmd := findCommand(args[1]); cmd != nil {
				return cmd.run(e, cmd, []string{"-h"})
			}
			fmt.Fprintf(e.stderr, "error: unknown command %q\n", args[1])
			e.printCommands(e.stderr)
			return exitUsage
		}
		e.printCommands(e.stdout)
		return exitOK
	}
	cmd := findCommand(name)
	if cmd == nil {
		fmt.Fprintf(e.stderr, "error: unknown command %q\n", name)
		e.printCommands(e.stderr)
		return exitUsage
	}
	return cmd.run(e, cmd, args[1:])
}

func findCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (e *env) printCommands(w io.Writer) {
	var b strings.Builder
	b.WriteString("Usage: slotd <command> [arguments] [options]\n\n")
	b.WriteString("Deployment slots for Nomad and Consul: deploy into a slot, test it, swap it into production.\n\n")
	b.WriteString("Commands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-10s %s\n", c.name, c.synopsis)
	}
	b.WriteString("\nRun 'slotd <command> -h' for the usage of a command.\n")
	_, _ = io.WriteString(w, b.String())
}

// usageError reports a command line that cannot be run.
func (e *env) usageError(cmd *command, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "error: %s\nusage: slotd %s %s\nRun 'slotd %s -h' for help.\n",
		fmt.Sprintf(format, args...), cmd.name, cmd.usage, cmd.name)
	return exitUsage
}

// fail reports an error that stops the command.
func (e *env) fail(err error) int {
	fmt.Fprintf(e.stderr, "error: %s\n", describeError(err))
	return exitError
}

// describeError is err for an operator: the server's own message, and what to do about it
// where that is clear.
func describeError(err error) string {
	var se *api.StatusError
	if !errors.As(err, &se) {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return err.Error() + "; is the agent running there? (set -address or " + api.EnvAddress + ")"
		}
		return err.Error()
	}
	msg := fmt.Sprintf("%s (HTTP %d)", se.Message, se.Code)
	switch {
	case se.Code == 401:
		msg += "; pass the agent's token with -token-file, " + api.EnvToken + " or -token"
	case se.Code == 503 && se.LeaderAddress != "":
		msg += "; the leader is at " + se.LeaderAddress
	}
	return msg
}

// printJSON writes v as indented JSON, with <hidden> as written (no HTML escapes).
func (e *env) printJSON(v any) int {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return e.fail(fmt.Errorf("encode JSON: %w", err))
	}
	if _, err := e.stdout.Write(b.Bytes()); err != nil {
		return exitError
	}
	return exitOK
}

// isTerminal reports whether w is a terminal, where progress may redraw its line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
