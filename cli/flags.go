package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/slotd/slotd/api"
)

func newFlagSet(cmd *command) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // usage and errors are printed by parse
	return fs
}

// parse parses args with flags before, between or after the positional arguments ("--" ends
// the flags), so "slotd swap web staging -preview" works. It returns the positional arguments,
// or ok=false with the exit code when the command must stop: help was asked for (0) or a flag
// is wrong (2).
func (e *env) parse(cmd *command, fs *flag.FlagSet, args []string) (pos []string, code int, ok bool) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				cmd.printHelp(e.stdout, fs)
				return nil, exitOK, false
			}
			return nil, e.usageError(cmd, "%v", err), false
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), 0, true
		}
		if len(rest) == 0 {
			return pos, 0, true
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// printHelp prints the command's usage, what it does with an example, and its flags.
func (c *command) printHelp(w io.Writer, fs *flag.FlagSet) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: slotd %s %s\n\n%s\n", c.name, c.usage, strings.TrimSpace(c.help))
	if fs != nil {
		var flags strings.Builder
		fs.SetOutput(&flags)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		if flags.Len() > 0 {
			b.WriteString("\nFlags:\n")
			b.WriteString(flags.String())
		}
	}
	_, _ = io.WriteString(w, b.String())
}

// clientFlags are the flags of every command that calls the agent.
type clientFlags struct {
	address string
	token   string
	caCert  string
	json    bool
	detach  bool
	// reveal is a command option of the commands that print settings (registerReveal).
	reveal bool
}

// register adds the client flags to fs. Commands that start no operation accept -detach too, so
// one set of flags fits every client command, but say that it does nothing there.
func (cf *clientFlags) register(fs *flag.FlagSet, follows bool) {
	fs.StringVar(&cf.address, "address", "", "`URL` of the slotd agent (default $"+api.EnvAddress+" or "+api.DefaultAddress+")")
	fs.StringVar(&cf.token, "token", "", "bearer `token` for the agent's API (default $"+api.EnvToken+")")
	fs.StringVar(&cf.caCert, "ca-cert", "", "PEM `file` of the CA that signed the agent's TLS certificate (default $"+api.EnvCACert+")")
	fs.BoolVar(&cf.json, "json", false, "print the result as JSON on stdout (for a followed operation: its final state; progress goes to stderr)")
	detach := "return as soon as the operation starts instead of following it"
	if !follows {
		detach = "no effect: this command starts no operation"
	}
	fs.BoolVar(&cf.detach, "detach", false, detach)
}

// registerReveal adds -reveal, the command option of the commands that print sticky values.
func (cf *clientFlags) registerReveal(fs *flag.FlagSet) {
	fs.BoolVar(&cf.reveal, "reveal", false, "show sticky values in clear instead of "+api.Hidden+" (needs the token when the agent has one)")
}

// client builds an API client from the flags, falling back to the environment.
func (e *env) client(cf *clientFlags) (*api.Client, error) {
	c := api.Config{Address: cf.address, Token: cf.token, CACert: cf.caCert, Reveal: cf.reveal}
	if c.Address == "" {
		c.Address = e.getenv(api.EnvAddress)
	}
	if c.Token == "" {
		c.Token = e.getenv(api.EnvToken)
	}
	if c.CACert == "" {
		c.CACert = e.getenv(api.EnvCACert)
	}
	return api.NewClient(c)
}

// varsFlag collects repeated -var key=value flags.
type varsFlag map[string]string

func (v varsFlag) String() string {
	keys := sortedKeys(v)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + v[k]
	}
	return strings.Join(parts, " ")
}

func (v varsFlag) Set(s string) error {
	k, val, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	v[k] = val
	return nil
}
