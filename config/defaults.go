package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// maxSecretSize bounds what is read from a token file: a token is short, and a path to something
// else (a log, a device) must not make the daemon read without end.
const maxSecretSize = 64 << 10

// errNotRegular is why a path that names a directory or a device cannot be used as a file.
var errNotRegular = errors.New("not a regular file")

// Default returns the configuration of a daemon without declarations: every default filled in,
// no sites. Tokens and TLS settings from the environment are read by Load and Parse, not here.
func Default() *Config {
	return &Config{
		LogLevel:     DefaultLogLevel,
		KVPrefix:     DefaultKVPrefix,
		HistoryLimit: DefaultHistoryLimit,
		HTTP:         HTTP{Address: DefaultHTTPAddress},
		Consul:       Consul{Address: DefaultConsulAddress},
		Nomad:        Nomad{Address: DefaultNomadAddress},
	}
}

// complete fills what the declarations leave out, parses durations, makes paths absolute and
// reads tokens. A setting counts as left out when its attribute is not written: one written
// with a zero value is checked like any other value.
func (b *builder) complete() {
	b.completeHTTP(&b.cfg.HTTP)
	b.completeConsul(&b.cfg.Consul)
	b.completeNomad(&b.cfg.Nomad)
	for _, s := range b.cfg.Sites {
		b.completeSite(s)
	}
	for _, n := range b.cfg.Notify {
		b.completeNotify(n)
	}
}

func (b *builder) completeHTTP(h *HTTP) {
	if !b.src.set(h.Range, "address") {
		h.Address = DefaultHTTPAddress
	}
	h.TLSCertFile = b.path(h.Range, h.TLSCertFile)
	h.TLSKeyFile = b.path(h.Range, h.TLSKeyFile)
	if b.src.set(h.Range, "token_file") {
		h.TokenFile = b.path(h.Range, h.TokenFile)
		h.Token = b.readToken(h.Range, h.TokenFile)
	}
}

func (b *builder) completeConsul(c *Consul) {
	if !b.src.set(c.Range, "address") {
		c.Address = DefaultConsulAddress
	}
	c.TokenFile, c.Token = b.token(c.Range, "consul", c.TokenFile, c.Token, "CONSUL_HTTP_TOKEN")
	b.consulScheme(c)
	b.completeTLS(consulTLS(c))
}

func (b *builder) completeNomad(n *Nomad) {
	if !b.src.set(n.Range, "address") {
		n.Address = DefaultNomadAddress
	}
	n.TokenFile, n.Token = b.token(n.Range, "nomad", n.TokenFile, n.Token, "NOMAD_TOKEN")
	b.completeTLS(nomadTLS(n))
}

// token picks a client's token: from token_file, else token, else the environment variable env.
// It returns the token file made absolute and the token.
func (b *builder) token(block hcl.Range, client, tokenFile, token, env string) (string, string) {
	fileSet, inlineSet := b.src.set(block, "token_file"), b.src.set(block, "token")
	switch {
	case fileSet && inlineSet:
		b.errorf(b.src.attrRange(block, "token"), "Token given twice",
			"%s sets both token and token_file; keep one of them.", client)
		return tokenFile, ""
	case fileSet:
		tokenFile = b.path(block, tokenFile)
		return tokenFile, b.readToken(block, tokenFile)
	case inlineSet:
		return tokenFile, token
	default:
		return tokenFile, os.Getenv(env)
	}
}

// readToken reads the token file named by the token_file attribute of the block. The token
// itself never appears in a message.
func (b *builder) readToken(block hcl.Range, path string) string {
	at := b.src.attrRange(block, "token_file")
	if path == "" {
		b.errorf(at, "Empty token_file", "token_file is empty; name the file that holds the token, or remove token_file.")
		return ""
	}
	token, err := readSecret(path)
	switch {
	case err != nil:
		b.errorf(at, "Cannot read token file", "%v; fix token_file (a relative path starts at the folder of this file).", err)
	case token == "":
		b.errorf(at, "Empty token file", "Token file %q is empty; write the token into it, or remove token_file.", path)
	}
	return token
}

// readSecret reads a small regular file, trimmed of surrounding white space.
func readSecret(path string) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %w", path, errNotRegular)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretSize+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxSecretSize {
		return "", fmt.Errorf("%s is larger than %d bytes, too large for a token", path, maxSecretSize)
	}
	return strings.TrimSpace(string(data)), nil
}

func (b *builder) completeSite(s *Site) {
	if s.Vars == nil {
		s.Vars = map[string]string{}
	}
	s.Job = b.path(s.Range, s.Job)
	s.DeployTimeout = b.duration(s.Range, "deploy_timeout", s.DeployTimeoutRaw, DefaultDeployTimeout, true)
	if !b.src.set(s.Range, "history_limit") {
		s.HistoryLimit = b.cfg.HistoryLimit
	}
	if s.Warmup == nil {
		s.Warmup = &Warmup{}
	}
	b.completeWarmup(s.Warmup)
	if s.Monitor == nil {
		s.Monitor = &Monitor{}
	}
	b.completeMonitor(s.Monitor)
	b.completeGates(s)
	for _, sl := range s.Slots {
		if sl.Settings == nil {
			sl.Settings = map[string]string{}
		}
		if sl.Sticky == nil {
			sl.Sticky = map[string]string{}
		}
	}
}

func (b *builder) completeWarmup(w *Warmup) {
	if !b.src.set(w.Range, "paths") {
		w.Paths = []string{"/"}
	}
	if !b.src.set(w.Range, "statuses") {
		w.Statuses = DefaultWarmupStatuses()
	}
	if !b.src.set(w.Range, "attempts") {
		w.Attempts = DefaultWarmupAttempts
	}
	w.Timeout = b.duration(w.Range, "timeout", w.TimeoutRaw, DefaultWarmupTimeout, true)
	w.Interval = b.duration(w.Range, "interval", w.IntervalRaw, DefaultWarmupInterval, false)
}

func (b *builder) completeMonitor(m *Monitor) {
	if !b.src.set(m.Range, "threshold") {
		m.Threshold = DefaultMonitorThreshold
	}
	m.Window = b.duration(m.Range, "window", m.WindowRaw, DefaultMonitorWindow, true)
	m.Grace = b.duration(m.Range, "grace", m.GraceRaw, DefaultMonitorGrace, false)
	m.RollbackWindow = b.duration(m.Range, "rollback_window", m.RollbackWindowRaw, m.Window, false)
	for _, a := range m.Analyses {
		b.completeAnalysis(a)
	}
}

// duration parses the duration attribute name of the block, or returns def when it is not
// written. positive rejects 0 as well: a timeout or a window of 0 would let nothing pass.
func (b *builder) duration(block hcl.Range, name, raw string, def time.Duration, positive bool) time.Duration {
	if !b.src.set(block, name) {
		return def
	}
	at := b.src.attrRange(block, name)
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		b.errorf(at, "Invalid duration", "%s = %q is not a duration; write a number with a unit, such as \"10s\" or \"2m\".", name, raw)
	case positive && d <= 0:
		b.errorf(at, "Invalid duration", "%s is %s; it must be longer than 0s.", name, d)
	case d < 0:
		b.errorf(at, "Invalid duration", "%s is %s; it must not be negative.", name, d)
	}
	return d
}
