package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/config"
)

func TestValidate(t *testing.T) {
	good := &config.Config{
		Sites: []*config.Site{
			{Name: "web", Slots: []*config.Slot{{Name: "production"}, {Name: "staging"}}},
			{Name: "api", Slots: []*config.Slot{{Name: "production"}}},
		},
		Files: []string{"conf/a.hcl", "conf/b.hcl"},
	}
	one := &config.Config{Sites: []*config.Site{{Name: "web", Slots: []*config.Slot{{Name: "production"}}}}}
	grouped := &config.Config{
		Sites:  good.Sites,
		Groups: []*config.Group{{Name: "store", Sites: []string{"api", "web"}}},
		Files:  good.Files,
	}
	problems := errors.New("slots.hcl:3:5: Missing required argument; The argument \"job\" is required.\n" +
		"slots.hcl:9:14: Unknown slot; auto_swap names no slot of site web.")

	cases := []struct {
		name           string
		cfg            *config.Config
		err            error
		code           int
		stdout, stderr string
	}{
		{name: "good", cfg: good, stdout: "ok: 2 sites, 3 slots (conf/a.hcl, conf/b.hcl)\n"},
		{name: "one of each", cfg: one, stdout: "ok: 1 site, 1 slot (conf)\n"},
		{name: "groups", cfg: grouped, stdout: "ok: 2 sites, 3 slots, 1 group (conf/a.hcl, conf/b.hcl)\n"},
		{name: "every problem", err: problems, code: 1, stderr: problems.Error() + "\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, stdout, stderr := testEnv("", nil)
			var loaded string
			e.loadConfig = func(path string) (*config.Config, error) {
				loaded = path
				return tc.cfg, tc.err
			}
			code := e.run([]string{"validate", "conf"})
			assert.Equal(t, tc.code, code)
			assert.Equal(t, "conf", loaded)
			assert.Equal(t, tc.stdout, stdout.String())
			assert.Equal(t, tc.stderr, stderr.String())
		})
	}
}

func TestValidateARealFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "slots.hcl")
	require.NoError(t, os.WriteFile(path, []byte("site \"web\" {\n  job = \n}\n"), 0o600))
	r := run(t, "", "validate", path)
	assert.Equal(t, 1, r.code)
	assert.Empty(t, r.stdout)
	assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(path)+`:\d+:\d+: `, r.stderr)
}

// TestOpenAPIRefused: an API listening beyond loopback without token_file is refused by
// validate and by the agent, which starts no daemon; the message names token_file and the
// opt-out.
func TestOpenAPIRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "slots.hcl")
	require.NoError(t, os.WriteFile(path, []byte("http { address = \"0.0.0.0:4680\" }\n"), 0o600))
	for _, args := range [][]string{{"validate", path}, {"agent", "-config", path}} {
		t.Run(args[0], func(t *testing.T) {
			e, stdout, stderr := testEnv("", nil)
			e.newDaemon = func(*config.Config, hclog.Logger) (daemon, error) {
				return nil, errors.New("a daemon was started")
			}
			assert.Equal(t, 1, e.run(args))
			assert.Empty(t, stdout.String())
			assert.Contains(t, stderr.String(), path+":1:8: API open to the network")
			assert.Contains(t, stderr.String(), "set token_file")
			assert.Contains(t, stderr.String(), "insecure_no_token = true")
			assert.NotContains(t, stderr.String(), "a daemon was started")
		})
	}
}

// TestValidateRefusesSharedRouteTags: slotd validate names a route tag that would lead to two
// slots: one the job file gives every lane, one another slot declares, or another slot's name.
func TestValidateRefusesSharedRouteTags(t *testing.T) {
	dir := t.TempDir()
	job := `job "web" {
  group "app" {
    service {
      name = "web"
      tags = ["urlprefix-www.example.com/"]
    }
  }
}
`
	slots := `site "web" {
  job     = "web.nomad.hcl"
  service = "web"
  slot "production" { tags = ["urlprefix-www.example.com/"] }
  slot "staging" { tags = ["urlprefix-staging.example.com/", "production"] }
  slot "qa" { preview_tags = ["urlprefix-staging.example.com/"] }
}
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "web.nomad.hcl"), []byte(job), 0o600))
	path := filepath.Join(dir, "slots.hcl")
	require.NoError(t, os.WriteFile(path, []byte(slots), 0o600))
	r := run(t, "", "validate", path)
	assert.Equal(t, 1, r.code)
	assert.Empty(t, r.stdout)
	assert.Equal(t, path+`:4:31: Route tag in the jobspec's tags; tags of slot "production" holds "urlprefix-www.example.com/", which the job file gives service "web" at `+
		filepath.Join(dir, "web.nomad.hcl")+`:5:15: every lane carries it, so it would route to all of them; remove it from one of them.
`+path+`:5:62: Route tag names another slot; tags of slot "staging" holds "production", the name of slot "production": its lane would serve that slot's route; remove the tag.
`+path+`:6:31: Shared route tag; preview_tags of slot "qa" holds "urlprefix-staging.example.com/", which slot "staging" declares too (at `+path+`:5:28): a route tag leads to one slot; remove it from one of them.
`, r.stderr)
}

// fakeDaemon records what the agent command does with it.
type fakeDaemon struct {
	started chan struct{}
	stuck   chan struct{} // when set, Run ignores its context and waits for this instead
	runErr  error         // what Run returns

	mu      sync.Mutex
	reloads []*config.Config
}

func (d *fakeDaemon) Run(ctx context.Context) error {
	close(d.started)
	if d.stuck != nil {
		<-d.stuck
		return nil
	}
	if d.runErr != nil {
		return d.runErr
	}
	<-ctx.Done()
	return ctx.Err()
}

func (d *fakeDaemon) Reload(cfg *config.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reloads = append(d.reloads, cfg)
	return nil
}

func (d *fakeDaemon) reloaded() []*config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*config.Config(nil), d.reloads...)
}

// agentHarness runs the agent command with a fake daemon, loader and signals.
type agentHarness struct {
	d      *fakeDaemon
	sigs   chan<- os.Signal
	stderr *lockedBuffer
	done   chan int

	mu   sync.Mutex
	cfg  *config.Config
	err  error
	path string
}

func startAgent(t *testing.T, d *fakeDaemon, cfg *config.Config, loadErr error) *agentHarness {
	t.Helper()
	h := &agentHarness{d: d, stderr: &lockedBuffer{}, done: make(chan int, 1), cfg: cfg, err: loadErr}
	e, _, _ := testEnv("", nil)
	e.stderr = h.stderr
	e.loadConfig = func(path string) (*config.Config, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.path = path
		return h.cfg, h.err
	}
	e.newDaemon = func(*config.Config, hclog.Logger) (daemon, error) { return d, nil }
	notified := make(chan chan<- os.Signal, 1)
	e.notify = func(c chan<- os.Signal, _ ...os.Signal) { notified <- c }
	e.stopNotify = func(chan<- os.Signal) {}
	go func() { h.done <- e.run([]string{"agent", "-config", "slots.hcl"}) }()
	select {
	case h.sigs = <-notified:
	case code := <-h.done:
		h.done <- code
	case <-time.After(10 * time.Second):
		t.Fatal("the agent command never listened for signals")
	}
	return h
}

func (h *agentHarness) load(cfg *config.Config, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cfg, h.err = cfg, err
}

func (h *agentHarness) exit(t *testing.T) int {
	t.Helper()
	select {
	case code := <-h.done:
		return code
	case <-time.After(10 * time.Second):
		t.Fatalf("the agent command did not exit; log:\n%s", h.stderr.String())
		return -1
	}
}

func TestAgentSignals(t *testing.T) {
	first := &config.Config{LogLevel: "info"}
	second := &config.Config{LogLevel: "debug", Sites: []*config.Site{{Name: "web"}}}

	d := &fakeDaemon{started: make(chan struct{})}
	h := startAgent(t, d, first, nil)
	<-d.started

	// A bad file keeps the old config and logs every problem.
	h.load(nil, errors.New("slots.hcl:1:1: first problem\nslots.hcl:2:1: second problem"))
	h.sigs <- syscall.SIGHUP
	require.Eventually(t, func() bool { return strings.Contains(h.stderr.String(), "second problem") },
		10*time.Second, 10*time.Millisecond, "log:\n%s", h.stderr.String())
	assert.Contains(t, h.stderr.String(), "first problem")
	assert.Empty(t, d.reloaded())

	// A good one is handed to the daemon.
	h.load(second, nil)
	h.sigs <- syscall.SIGHUP
	require.Eventually(t, func() bool { return len(d.reloaded()) == 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Same(t, second, d.reloaded()[0])

	h.sigs <- syscall.SIGTERM
	assert.Equal(t, 0, h.exit(t))
	assert.Contains(t, h.stderr.String(), "stopping")
	assert.Equal(t, "slots.hcl", h.path)
}

func TestAgentExits(t *testing.T) {
	cases := []struct {
		name    string
		daemon  *fakeDaemon
		loadErr error
		signals []os.Signal
		code    int
		log     string
	}{
		{name: "SIGINT stops it cleanly", daemon: &fakeDaemon{}, signals: []os.Signal{syscall.SIGINT}, code: 0, log: "agent stopped"},
		{name: "a failing daemon", daemon: &fakeDaemon{runErr: errors.New("consul unreachable")}, code: 1, log: "consul unreachable"},
		{name: "a second signal does not wait", daemon: &fakeDaemon{stuck: make(chan struct{})},
			signals: []os.Signal{syscall.SIGTERM, syscall.SIGINT}, code: 1, log: "second signal"},
		{name: "a bad file at start", loadErr: errors.New("slots.hcl:4:2: bad"), code: 1, log: "slots.hcl:4:2: bad\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.daemon
			if d == nil {
				d = &fakeDaemon{}
			}
			d.started = make(chan struct{})
			if d.stuck != nil {
				t.Cleanup(func() { close(d.stuck) })
			}
			h := startAgent(t, d, &config.Config{}, tc.loadErr)
			if tc.loadErr == nil {
				<-d.started
			}
			for _, s := range tc.signals {
				h.sigs <- s
			}
			assert.Equal(t, tc.code, h.exit(t))
			assert.Contains(t, h.stderr.String(), tc.log)
		})
	}
}
