package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/slotd/slotd/agent"
	"github.com/slotd/slotd/config"
)

// daemon is what the agent command runs.
type daemon interface {
	Run(ctx context.Context) error
	Reload(cfg *config.Config) error
}

var _ daemon = (*agent.Agent)(nil)

func newAgent(cfg *config.Config, logger hclog.Logger) (daemon, error) {
	return agent.New(cfg, logger)
}

func agentCommand() *command {
	return &command{
		name:     "agent",
		synopsis: "run the daemon",
		usage:    "-config <file|dir>",
		help: `
Runs the slotd daemon with the site declarations of a file, or of every *.hcl file in a
directory. SIGHUP reloads the declarations (a file with errors logs every problem and the
old declarations stay); SIGINT or SIGTERM stop the daemon, a second one stops it at once.

Example:
  slotd agent -config /etc/slotd/slots.hcl`,
		run: runAgent,
	}
}

func runAgent(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	path := fs.String("config", "", "declarations `file` or directory (required)")
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return e.usageError(cmd, "unexpected argument %q", pos[0])
	}
	if *path == "" {
		return e.usageError(cmd, "-config is required")
	}

	cfg, err := e.loadConfig(*path)
	if err != nil {
		printProblems(e, err)
		return exitError
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "slotd",
		Level:      logLevel(cfg.LogLevel),
		JSONFormat: cfg.LogJSON,
		Output:     e.stderr,
	})
	d, err := e.newDaemon(cfg, logger)
	if err != nil {
		logger.Error("start agent", "error", err)
		return exitError
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	e.notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer e.stopNotify(sigs)

	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()

	stopping := false
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				reload(e, d, *path, logger)
				continue
			}
			if stopping {
				logger.Warn("second signal, exiting without a clean stop", "signal", sig.String())
				return exitError
			}
			logger.Info("stopping", "signal", sig.String())
			stopping = true
			cancel()
		case err := <-errc:
			if err != nil && !(stopping && errors.Is(err, context.Canceled)) {
				logger.Error("agent stopped", "error", err)
				return exitError
			}
			logger.Info("agent stopped")
			return exitOK
		}
	}
}

// reload applies the declarations at path, or keeps the old ones when they have errors.
func reload(e *env, d daemon, path string, logger hclog.Logger) {
	logger.Info("reloading", "config", path)
	cfg, err := e.loadConfig(path)
	if err != nil {
		for _, line := range problems(err) {
			logger.Error("reload: keeping the old config", "problem", line)
		}
		return
	}
	if err := d.Reload(cfg); err != nil {
		logger.Error("reload: keeping the old config", "error", err)
		return
	}
	logger.SetLevel(logLevel(cfg.LogLevel))
}

func logLevel(s string) hclog.Level {
	if l := hclog.LevelFromString(s); l != hclog.NoLevel {
		return l
	}
	return hclog.Info
}

// problems splits a config.Load error into its lines, one per problem.
func problems(err error) []string {
	var out []string
	for _, line := range strings.Split(err.Error(), "\n") {
		if strings.TrimSpace(line) != "" {
			out = append(out, line)
		}
	}
	return out
}

func printProblems(e *env, err error) {
	for _, line := range problems(err) {
		fmt.Fprintln(e.stderr, line)
	}
}

func validateCommand() *command {
	return &command{
		name:     "validate",
		synopsis: "check a declarations file; exit 1 with every error",
		usage:    "<file|dir>",
		help: `
Checks site declarations without contacting Consul or Nomad. Prints every problem as
file:line:col: message and exits 1, or prints a summary and exits 0.

Example:
  slotd validate slots.hcl`,
		run: runValidate,
	}
}

func runValidate(e *env, cmd *command, args []string) int {
	fs := newFlagSet(cmd)
	pos, code, ok := e.parse(cmd, fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return e.usageError(cmd, "want one file or directory, got %d arguments", len(pos))
	}
	cfg, err := e.loadConfig(pos[0])
	if err != nil {
		printProblems(e, err)
		return exitError
	}
	slots := 0
	for _, s := range cfg.Sites {
		slots += len(s.Slots)
	}
	files := pos[0]
	if len(cfg.Files) > 0 {
		files = strings.Join(cfg.Files, ", ")
	}
	counts := plural(len(cfg.Sites), "site") + ", " + plural(slots, "slot")
	if len(cfg.Groups) > 0 {
		counts += ", " + plural(len(cfg.Groups), "group")
	}
	fmt.Fprintf(e.stdout, "ok: %s (%s)\n", counts, files)
	return exitOK
}

func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
