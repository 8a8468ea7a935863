package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/slotd/slotd/api"
)

// flagSet is a command's flags: its own, and (for commands that call the agent) the client
// options, which its help lists apart. A command declares its own as on any flag.FlagSet
// (fs.Bool, fs.Var, …); clientFlags.register adds the client options.
type flagSet struct {
	*flag.FlagSet
	client map[string]bool // names of the client options
}

func newFlagSet(cmd *command) *flagSet {
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // usage and errors are printed by parse
	return &flagSet{FlagSet: fs, client: map[string]bool{}}
}

// parse parses args with flags before, between or after the positional arguments ("--" ends
// the flags), so "slotd swap web staging -preview" works. It returns the positional arguments,
// or ok=false with the exit code when the command must stop: help was asked for (0) or a flag
// is wrong (2).
func (e *env) parse(cmd *command, fs *flagSet, args []string) (pos []string, code int, ok bool) {
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

// helpWidth is where help text wraps.
const helpWidth = 80

// printHelp prints, as Nomad's commands do, the usage line, what the command does with an
// example, then its own options and the client options in separate blocks.
func (c *command) printHelp(w io.Writer, fs *flagSet) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: slotd %s %s\n\n", c.name, c.usage)
	for line := range strings.Lines(strings.TrimSpace(c.help) + "\n") {
		if strings.TrimSpace(line) == "" {
			b.WriteString("\n")
		} else {
			b.WriteString("  " + line)
		}
	}
	if fs != nil {
		var own, client []*flag.Flag
		fs.VisitAll(func(f *flag.Flag) {
			if fs.client[f.Name] {
				client = append(client, f)
			} else {
				own = append(own, f)
			}
		})
		writeOptions(&b, "Command options", own)
		writeOptions(&b, "Client options", client)
	}
	_, _ = io.WriteString(w, b.String())
}

// writeOptions writes a block of options: each as -name or -name=<placeholder>, its usage
// wrapped and indented below it, and its default when it is not the zero value.
func writeOptions(b *strings.Builder, title string, flags []*flag.Flag) {
	if len(flags) == 0 {
		return
	}
	fmt.Fprintf(b, "\n%s:\n", title)
	for _, f := range flags {
		placeholder, usage := flag.UnquoteUsage(f)
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			fmt.Fprintf(b, "\n  -%s\n", f.Name)
		} else {
			fmt.Fprintf(b, "\n  -%s=<%s>\n", f.Name, placeholder)
		}
		switch f.DefValue {
		case "", "false", "0", "0s":
		default:
			usage += " (default " + f.DefValue + ")"
		}
		b.WriteString(wrap(usage, "    ", helpWidth))
	}
}

// wrap breaks text into lines of at most width columns (longer words stay whole), each
// starting with indent.
func wrap(text, indent string, width int) string {
	var b strings.Builder
	line := indent
	for _, word := range strings.Fields(text) {
		if line != indent && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += word
	}
	b.WriteString(line + "\n")
	return b.String()
}

// clientFlags are the flags of every command that calls the agent.
type clientFlags struct {
	address   string
	token     string
	tokenFile string
	caCert    string
	json      bool
	detach    bool
	// reveal is a command option of the commands that print settings (registerReveal).
	reveal bool
	wait   time.Duration
}

// register adds the client options to fs, marked so that help lists them apart. Commands that
// start no operation accept -detach too, so one set of options fits every client command, but
// say that it does nothing there.
func (cf *clientFlags) register(fs *flagSet, follows bool) {
	own := flag.NewFlagSet("client", flag.ContinueOnError)
	own.StringVar(&cf.address, "address", "", "`URL` of the slotd agent ($"+api.EnvAddress+", default "+api.DefaultAddress+")")
	own.StringVar(&cf.token, "token", "", "bearer `token` for the agent's API; prefer -token-file or $"+api.EnvToken+": a -token shows in the process list and shell history")
	own.StringVar(&cf.tokenFile, "token-file", "", "`file` holding the bearer token (surrounding white space is ignored); else $"+api.EnvToken)
	own.StringVar(&cf.caCert, "ca-cert", "", "PEM `file` of the CA that signed the agent's TLS certificate ($"+api.EnvCACert+")")
	own.BoolVar(&cf.json, "json", false, "print the result as JSON on stdout (for a followed operation: its final state; progress goes to stderr)")
	detach := "return as soon as the operation starts instead of following it"
	if !follows {
		detach = "no effect: this command starts no operation"
	}
	own.BoolVar(&cf.detach, "detach", false, detach)
	cf.wait = api.DefaultWait
	own.Var((*waitFlag)(&cf.wait), "wait", "how long a write waits, with one line saying so, while the agent is starting or no leader is known yet (it answers 503 with Retry-After), as a `duration` such as 30s; 0 fails at once")
	own.VisitAll(func(f *flag.Flag) {
		fs.Var(f.Value, f.Name, f.Usage)
		fs.client[f.Name] = true
	})
}

// waitFlag is -wait: a duration, not negative.
type waitFlag time.Duration

func (w *waitFlag) String() string { return time.Duration(*w).String() }

func (w *waitFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 30s or 2m", s)
	}
	if d < 0 {
		return fmt.Errorf("%s is negative: 0 means do not wait", s)
	}
	*w = waitFlag(d)
	return nil
}

// registerReveal adds -reveal, the command option of the commands that print sticky values.
func (cf *clientFlags) registerReveal(fs *flag.FlagSet) {
	fs.BoolVar(&cf.reveal, "reveal", false, "show sticky values in clear instead of "+api.Hidden+" (needs the token when the agent has one)")
}

// client builds an API client from the flags, falling back to the environment.
func (e *env) client(cf *clientFlags) (*api.Client, error) {
	c := api.Config{Address: cf.address, Token: cf.token, CACert: cf.caCert, Reveal: cf.reveal, Wait: cf.wait,
		OnWait: func(refusal *api.StatusError, wait time.Duration) {
			// The agent's message says why before its first ";", and what to do after it,
			// which is what this does.
			why, _, _ := strings.Cut(refusal.Message, ";")
			fmt.Fprintf(e.stderr, "%s; waiting up to %s\n", why, wait)
		}}
	if c.Address == "" {
		c.Address = e.getenv(api.EnvAddress)
	}
	switch {
	case c.Token != "" && cf.tokenFile != "":
		return nil, errors.New("-token and -token-file both give the token; keep one (-token-file keeps it out of argv)")
	case cf.tokenFile != "":
		token, err := readTokenFile(cf.tokenFile)
		if err != nil {
			return nil, err
		}
		c.Token = token
	case c.Token == "":
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
