package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeDir writes files (name → content) into a new folder, next to an empty job.nomad.hcl that
// declarations can name as their job, and returns the folder.
func writeDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "job.nomad.hcl"), nil, 0o644))
	for name, content := range files {
		path := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	}
	return dir
}

// clearTokenEnv makes the client tokens and TLS settings independent of the environment the
// tests run in.
func clearTokenEnv(t *testing.T) {
	t.Helper()
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("NOMAD_TOKEN", "")
	t.Setenv(envConsulSSL, "")
	cfg := Default()
	for _, c := range []clientTLS{consulTLS(&cfg.Consul), nomadTLS(&cfg.Nomad)} {
		for _, s := range append(c.files(), c.sni) {
			t.Setenv(s.env, "")
		}
	}
}

// requireDiagnostics asserts that err lists problems and returns them.
func requireDiagnostics(t testing.TB, err error) Diagnostics {
	t.Helper()
	require.Error(t, err)
	var diags Diagnostics
	require.True(t, errors.As(err, &diags), "error is %T, not Diagnostics: %v", err, err)
	require.NotEmpty(t, diags)
	return diags
}

// minimalSite is the least a valid site declares.
const minimalSite = `
site "web" {
  job     = "job.nomad.hcl"
  service = "web"
  slot "production" {}
  slot "staging" {}
}
`

var linePrefix = regexp.MustCompile(`^(.+):(\d+):(\d+): \S`)

func TestLoadExample(t *testing.T) {
	clearTokenEnv(t)
	cfg, err := Load("../slots.hcl.example")
	require.NoError(t, err)

	root, err := filepath.Abs("..")
	require.NoError(t, err)

	assert.Equal(t, []string{"../slots.hcl.example"}, cfg.Files)
	assert.Equal(t, "info", cfg.LogLevel)
	assert.Equal(t, "slotd", cfg.KVPrefix)
	assert.Equal(t, "127.0.0.1:4680", cfg.HTTP.Address)
	assert.Empty(t, cfg.HTTP.Token)
	assert.Equal(t, "127.0.0.1:8500", cfg.Consul.Address)
	assert.Equal(t, "http://127.0.0.1:4646", cfg.Nomad.Address)

	require.Len(t, cfg.Sites, 1)
	web := cfg.Site("web")
	require.NotNil(t, web)
	assert.Equal(t, filepath.Join(root, "e2e/testapp/testapp.nomad.hcl"), web.Job)
	assert.Equal(t, "web", web.Service)
	assert.Equal(t, map[string]string{"binary": filepath.Join(root, "bin/testapp"), "app_version": "v1"}, web.Vars)
	assert.Equal(t, DefaultDeployTimeout, web.DeployTimeout)
	assert.Equal(t, "../slots.hcl.example", web.Range.Filename)

	assert.Equal(t, []string{"/", "/healthz"}, web.Warmup.Paths)
	assert.Equal(t, []int{200}, web.Warmup.Statuses)
	assert.Equal(t, "www.example.com", web.Warmup.Host)
	assert.Equal(t, 5*time.Second, web.Warmup.Timeout)
	assert.Equal(t, 5, web.Warmup.Attempts)
	assert.Equal(t, DefaultWarmupInterval, web.Warmup.Interval)

	assert.Equal(t, time.Minute, web.Monitor.Window)
	assert.True(t, web.Monitor.AutoRollback)
	assert.Equal(t, DefaultMonitorThreshold, web.Monitor.Threshold)
	assert.Equal(t, DefaultMonitorGrace, web.Monitor.Grace)
	assert.Equal(t, time.Minute, web.Monitor.RollbackWindow)

	assert.Equal(t, []string{"production", "staging"}, web.SlotNames())
	prod, staging := web.Slot("production"), web.Slot("staging")
	assert.Equal(t, []string{"urlprefix-www.example.com/"}, prod.Tags)
	assert.Equal(t, []string{"urlprefix-preview.example.com/"}, prod.PreviewTags)
	assert.Equal(t, []string{"urlprefix-previous.example.com/"}, prod.PreviousTags)
	assert.Equal(t, map[string]string{"FEATURE_X": "off", "SHOW_ENV": "FEATURE_X,DATABASE_URL"}, prod.Settings)
	assert.Equal(t, map[string]string{"DATABASE_URL": "postgres://prod-db/app"}, prod.Sticky)
	assert.Empty(t, prod.AutoSwap)
	assert.Equal(t, []string{"urlprefix-staging.example.com/"}, staging.Tags)
	assert.Empty(t, staging.PreviewTags)
	assert.Equal(t, map[string]string{"FEATURE_X": "on", "SHOW_ENV": "FEATURE_X,DATABASE_URL"}, staging.Settings)
	assert.Equal(t, map[string]string{"DATABASE_URL": "postgres://staging-db/app"}, staging.Sticky)
	assert.Empty(t, staging.AutoSwap, "the example shows auto_swap in a comment only")
}

func TestDefault(t *testing.T) {
	cfg := Default()
	assert.Equal(t, DefaultLogLevel, cfg.LogLevel)
	assert.False(t, cfg.LogJSON)
	assert.Equal(t, DefaultKVPrefix, cfg.KVPrefix)
	assert.Equal(t, DefaultHistoryLimit, cfg.HistoryLimit)
	assert.Equal(t, HTTP{Address: DefaultHTTPAddress}, cfg.HTTP)
	assert.Equal(t, Consul{Address: DefaultConsulAddress}, cfg.Consul)
	assert.Equal(t, Nomad{Address: DefaultNomadAddress}, cfg.Nomad)
	assert.Empty(t, cfg.Sites)

	statuses := DefaultWarmupStatuses()
	assert.Len(t, statuses, 200)
	assert.Equal(t, 200, statuses[0])
	assert.Equal(t, 399, statuses[len(statuses)-1])
}

// TestSiteDefaults checks what a site gets for everything it leaves out.
func TestSiteDefaults(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{"slots.hcl": minimalSite})
	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)

	def := Default()
	assert.Equal(t, def.LogLevel, cfg.LogLevel)
	assert.Equal(t, def.KVPrefix, cfg.KVPrefix)
	assert.Equal(t, def.HTTP.Address, cfg.HTTP.Address)
	assert.Equal(t, def.Consul.Address, cfg.Consul.Address)
	assert.Equal(t, def.Nomad.Address, cfg.Nomad.Address)

	require.Len(t, cfg.Sites, 1)
	s := cfg.Sites[0]
	assert.Equal(t, filepath.Join(dir, "job.nomad.hcl"), s.Job)
	assert.Equal(t, DefaultDeployTimeout, s.DeployTimeout)
	assert.Equal(t, DefaultHistoryLimit, s.HistoryLimit)
	assert.NotNil(t, s.Vars)
	assert.Equal(t, hcl.Pos{Line: 2, Column: 1, Byte: 1}, s.Range.Start, "Range is the site header")

	require.NotNil(t, s.Warmup)
	assert.Equal(t, []string{"/"}, s.Warmup.Paths)
	assert.Equal(t, DefaultWarmupStatuses(), s.Warmup.Statuses)
	assert.Equal(t, DefaultWarmupTimeout, s.Warmup.Timeout)
	assert.Equal(t, DefaultWarmupAttempts, s.Warmup.Attempts)
	assert.Equal(t, DefaultWarmupInterval, s.Warmup.Interval)
	assert.Empty(t, s.Warmup.Host)

	require.NotNil(t, s.Monitor)
	assert.Equal(t, DefaultMonitorWindow, s.Monitor.Window)
	assert.Equal(t, DefaultMonitorThreshold, s.Monitor.Threshold)
	assert.Equal(t, DefaultMonitorGrace, s.Monitor.Grace)
	assert.Equal(t, DefaultMonitorWindow, s.Monitor.RollbackWindow, "the hold lasts the monitor window by default")
	assert.False(t, s.Monitor.AutoRollback)

	for _, sl := range s.Slots {
		assert.NotNil(t, sl.Settings, sl.Name)
		assert.NotNil(t, sl.Sticky, sl.Name)
	}
}

// TestExplicitValues checks that written values win over defaults, including the ones that
// are only valid because a zero is allowed there.
func TestExplicitValues(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{"slots.hcl": `
log_json = true
site "web" {
  job            = "job.nomad.hcl"
  service        = "web"
  deploy_timeout = "90s"
  warmup {
    paths    = ["/ready"]
    interval = "0s"
    attempts = 1
  }
  monitor {
    threshold = 0.5
    grace     = "0s"
    window    = "30s"
    rollback_window = "0s"
  }
  slot "production" {}
  slot "staging" {}
}
`})
	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)
	s := cfg.Sites[0]
	assert.True(t, cfg.LogJSON)
	assert.Equal(t, 90*time.Second, s.DeployTimeout)
	assert.Equal(t, []string{"/ready"}, s.Warmup.Paths)
	assert.Equal(t, time.Duration(0), s.Warmup.Interval)
	assert.Equal(t, 1, s.Warmup.Attempts)
	assert.Equal(t, 0.5, s.Monitor.Threshold)
	assert.Equal(t, time.Duration(0), s.Monitor.Grace)
	assert.Equal(t, 30*time.Second, s.Monitor.Window)
	assert.Equal(t, time.Duration(0), s.Monitor.RollbackWindow, "0s settles at once")
}

// TestHistoryLimit: a site keeps the top-level history_limit unless it sets its own.
func TestHistoryLimit(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{"slots.hcl": `
history_limit = 50
site "web" {
  job     = "job.nomad.hcl"
  service = "web"
  slot "production" {}
  slot "staging" {}
}
site "api" {
  job           = "job.nomad.hcl"
  service       = "api"
  history_limit = 5
  slot "production" {}
  slot "staging" {}
}
`})
	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)
	assert.Equal(t, 50, cfg.HistoryLimit)
	assert.Equal(t, 50, cfg.Site("web").HistoryLimit, "a site without its own takes the top-level limit")
	assert.Equal(t, 5, cfg.Site("api").HistoryLimit, "a site's own limit wins")
}

func TestExpressions(t *testing.T) {
	clearTokenEnv(t)
	t.Setenv("SLOTD_TEST_DB", "postgres://from-env/app")
	dir := writeDir(t, map[string]string{
		"jobs/web.nomad.hcl": "",
		"slots.hcl": `
site "web" {
  job     = "jobs/web.nomad.hcl"
  service = "web"
  vars    = { binary = "${config_dir}/bin/app", unset = env("SLOTD_TEST_UNSET_VARIABLE"), count = 3 }
  slot "production" {
    sticky = { DATABASE_URL = env("SLOTD_TEST_DB") }
  }
  slot "staging" {}
}
`})
	t.Setenv("SLOTD_TEST_UNSET_VARIABLE", "")
	require.NoError(t, os.Unsetenv("SLOTD_TEST_UNSET_VARIABLE"))

	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)
	s := cfg.Sites[0]
	assert.Equal(t, filepath.Join(dir, "jobs/web.nomad.hcl"), s.Job)
	assert.Equal(t, map[string]string{"binary": filepath.Join(dir, "bin/app"), "unset": "", "count": "3"}, s.Vars)
	assert.Equal(t, "postgres://from-env/app", s.Slot("production").Sticky["DATABASE_URL"])
}

func TestAbsoluteJobStays(t *testing.T) {
	clearTokenEnv(t)
	jobs := writeDir(t, nil)
	job := filepath.Join(jobs, "job.nomad.hcl")
	dir := writeDir(t, map[string]string{"slots.hcl": strings.Replace(minimalSite, `"job.nomad.hcl"`, strconv.Quote(job), 1)})
	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)
	assert.Equal(t, job, cfg.Sites[0].Job)
}

func TestTokens(t *testing.T) {
	cases := []struct {
		name                string
		src                 string
		env                 map[string]string
		http, consul, nomad string
	}{
		{
			name: "from the environment",
			env:  map[string]string{"CONSUL_HTTP_TOKEN": "consul-env", "NOMAD_TOKEN": "nomad-env"},
			http: "", consul: "consul-env", nomad: "nomad-env",
		},
		{
			name: "inline wins over the environment",
			src:  `consul { token = "consul-inline" }` + "\n" + `nomad { token = "nomad-inline" }`,
			env:  map[string]string{"CONSUL_HTTP_TOKEN": "consul-env", "NOMAD_TOKEN": "nomad-env"},
			http: "", consul: "consul-inline", nomad: "nomad-inline",
		},
		{
			name: "files, trimmed",
			src: `http { token_file = "http.token" }` + "\n" +
				`consul { token_file = "consul.token" }` + "\n" +
				`nomad { token_file = "nomad.token" }`,
			env:  map[string]string{"CONSUL_HTTP_TOKEN": "consul-env", "NOMAD_TOKEN": "nomad-env"},
			http: "http-file", consul: "consul-file", nomad: "nomad-file",
		},
		{
			name: "inline empty means no token, not the environment",
			src:  `consul { token = "" }`,
			env:  map[string]string{"CONSUL_HTTP_TOKEN": "consul-env", "NOMAD_TOKEN": ""},
			http: "", consul: "", nomad: "",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			dir := writeDir(t, map[string]string{
				"slots.hcl":    tc.src + "\n" + minimalSite,
				"http.token":   "  http-file\n",
				"consul.token": "consul-file\n",
				"nomad.token":  "\tnomad-file\n\n",
			})
			cfg, err := Load(filepath.Join(dir, "slots.hcl"))
			require.NoError(t, err)
			assert.Equal(t, tc.http, cfg.HTTP.Token)
			assert.Equal(t, tc.consul, cfg.Consul.Token)
			assert.Equal(t, tc.nomad, cfg.Nomad.Token)
		})
	}
}

func TestTokenFilesAbsolute(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{
		"slots.hcl":    `http { token_file = "secrets/http" }` + "\n" + minimalSite,
		"secrets/http": "tok",
	})
	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "secrets/http"), cfg.HTTP.TokenFile)
	assert.Equal(t, "tok", cfg.HTTP.Token)
}

func TestLoadDirectory(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{
		"daemon.hcl": `
log_level = "debug"
http { address = "127.0.0.1:9999" }
`,
		"web.hcl": minimalSite,
		"api.hcl": strings.Replace(minimalSite, `site "web"`, `site "api"`, 1),
		// Neither of these is a declarations file: a jobspec next to them, and an editor's file.
		"web.nomad.hcl": `job "web" {}`,
		".#web.hcl":     `not hcl at all {`,
		"README.md":     "not hcl either {",
	})

	cfg, err := Load(dir)
	require.NoError(t, err)
	assert.Equal(t, []string{
		filepath.Join(dir, "api.hcl"), filepath.Join(dir, "daemon.hcl"), filepath.Join(dir, "web.hcl"),
	}, cfg.Files)
	assert.Equal(t, "debug", cfg.LogLevel)
	assert.Equal(t, "127.0.0.1:9999", cfg.HTTP.Address)
	assert.Equal(t, DefaultConsulAddress, cfg.Consul.Address)

	require.Len(t, cfg.Sites, 2)
	assert.Equal(t, "api", cfg.Sites[0].Name, "sites are in name order")
	assert.Equal(t, "web", cfg.Sites[1].Name)
	assert.Equal(t, filepath.Join(dir, "api.hcl"), cfg.Sites[0].Range.Filename)
	assert.Equal(t, filepath.Join(dir, "web.hcl"), cfg.Sites[1].Range.Filename)
}

func TestSitesInNameOrder(t *testing.T) {
	clearTokenEnv(t)
	var src strings.Builder
	for _, name := range []string{"zeta", "alpha", "mid"} {
		src.WriteString(strings.Replace(minimalSite, `site "web"`, "site "+strconv.Quote(name), 1))
	}
	dir := writeDir(t, map[string]string{"slots.hcl": src.String()})
	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)
	var names []string
	for _, s := range cfg.Sites {
		names = append(names, s.Name)
	}
	assert.Equal(t, []string{"alpha", "mid", "zeta"}, names)
}

// TestGroupsAcrossFiles: groups from every file add up, in name order, and may list sites of
// other files.
func TestGroupsAcrossFiles(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{
		"a.hcl": "group \"web-first\" {\n  sites = [\"web\", \"api\"]\n}\n" + minimalSite,
		"b.hcl": "group \"api-first\" {\n  sites = [\"api\", \"web\", \"docs\"]\n}\n",
		"c.hcl": strings.Replace(minimalSite, `site "web"`, `site "api"`, 1) +
			strings.Replace(minimalSite, `site "web"`, `site "docs"`, 1),
	})
	cfg, err := Load(dir)
	require.NoError(t, err)
	require.Len(t, cfg.Groups, 2)
	assert.Equal(t, "api-first", cfg.Groups[0].Name, "groups are in name order")
	assert.Equal(t, []string{"api", "web", "docs"}, cfg.Groups[0].Sites, "members keep the order written")
	assert.Equal(t, filepath.Join(dir, "b.hcl"), cfg.Groups[0].Range.Filename)
	assert.Equal(t, "web-first", cfg.Groups[1].Name)
	assert.Equal(t, []string{"web", "api"}, cfg.Group("web-first").Sites)
	assert.Nil(t, cfg.Group("nope"))
}

func TestLoadDirectoryConflicts(t *testing.T) {
	clearTokenEnv(t)
	cases := []struct {
		name  string
		files map[string]string
		// want are the expected problems, in order: position of the later declaration and the
		// position of the earlier one that the message must mention.
		want [][2]string
	}{
		{
			name: "site declared in two files",
			files: map[string]string{
				"a.hcl": minimalSite,
				"b.hcl": "\n\n" + minimalSite,
			},
			want: [][2]string{{"b.hcl:4:6", "a.hcl:2:1"}},
		},
		{
			name: "group declared in two files",
			files: map[string]string{
				"a.hcl": minimalSite + strings.Replace(minimalSite, `site "web"`, `site "api"`, 1),
				"b.hcl": "group \"store\" {\n  sites = [\"web\", \"api\"]\n}\n",
				"c.hcl": "\ngroup \"store\" {\n  sites = [\"api\", \"web\"]\n}\n",
			},
			want: [][2]string{{"c.hcl:2:7", "b.hcl:1:1"}},
		},
		{
			name: "daemon settings declared in two files",
			files: map[string]string{
				"a.hcl": "log_level = \"info\"\nhttp {}\n" + minimalSite,
				"b.hcl": "http {}\nlog_level = \"debug\"\n",
			},
			want: [][2]string{{"b.hcl:1:1", "a.hcl:2:1"}, {"b.hcl:2:1", "a.hcl:1:1"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeDir(t, tc.files)
			_, err := Load(dir)
			diags := requireDiagnostics(t, err)
			lines := strings.Split(err.Error(), "\n")
			require.Len(t, diags, len(tc.want), err.Error())
			require.Len(t, lines, len(tc.want))
			for i, want := range tc.want {
				assert.True(t, strings.HasPrefix(lines[i], filepath.Join(dir, want[0])+": "), "%q should start at %s", lines[i], want[0])
				assert.Contains(t, lines[i], filepath.Join(dir, want[1]), "the earlier declaration")
			}
		})
	}
}

// TestLoadDirectoryReportsEveryFile checks that a syntax error in one file does not hide the
// problems of another.
func TestLoadDirectoryReportsEveryFile(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{
		"a.hcl": "site \"web\" {\n",
		"b.hcl": `log_level = "loud"`,
	})
	_, err := Load(dir)
	diags := requireDiagnostics(t, err)
	require.Len(t, diags, 2, err.Error())
	assert.Equal(t, filepath.Join(dir, "a.hcl"), diags[0].Subject.Filename)
	assert.Equal(t, filepath.Join(dir, "b.hcl"), diags[1].Subject.Filename)
	assert.Equal(t, "Invalid log_level", diags[1].Summary)
}

// TestLoadDirectoryUnreadableFile checks that a file that cannot be read is a problem at that
// file, reported with the problems of the others.
func TestLoadDirectoryUnreadableFile(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, map[string]string{"b.hcl": `kv_prefix = ""`})
	require.NoError(t, os.Symlink(filepath.Join(dir, "gone.hcl"), filepath.Join(dir, "a.hcl")))
	_, err := Load(dir)
	diags := requireDiagnostics(t, err)
	require.Len(t, diags, 2, err.Error())
	assert.Equal(t, "Cannot read file", diags[0].Summary)
	assert.True(t, strings.HasPrefix(err.Error(), filepath.Join(dir, "a.hcl")+":1:1: "), err.Error())
	assert.Equal(t, "Empty kv_prefix", diags[1].Summary)
}

func TestLoadPathErrors(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "nope.hcl"))
		require.Error(t, err)
		assert.ErrorIs(t, err, fs.ErrNotExist)
	})
	t.Run("directory without declarations", func(t *testing.T) {
		dir := writeDir(t, map[string]string{"notes.txt": "x"})
		_, err := Load(dir)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no *.hcl files in "+dir)
	})
}

// TestFiveMistakes is what `slotd validate` promises: every mistake at once, each on its own
// line with file:line:col.
func TestFiveMistakes(t *testing.T) {
	clearTokenEnv(t)
	src := `log_levle = "info"
site "web" {
  job     = "job.nomad.hcl"
  service = "web"
  warmup {
    attempts = 0
  }
  slot "Production" {}
  slot "staging" {
    settings  = { "MY-KEY" = "x" }
    auto_swap = "qa"
  }
}
`
	dir := writeDir(t, map[string]string{"slots.hcl": src})
	path := filepath.Join(dir, "slots.hcl")
	_, err := Load(path)
	diags := requireDiagnostics(t, err)
	require.Len(t, diags, 5, err.Error())

	lines := strings.Split(err.Error(), "\n")
	require.Len(t, lines, 5)
	want := []struct {
		line, col int
		summary   string
	}{
		{1, 1, "Unsupported argument"},
		{6, 5, "Invalid attempts"},
		{8, 8, "Invalid slot name"},
		{10, 19, "Invalid setting name"},
		{11, 5, "Unknown auto_swap slot"},
	}
	for i, w := range want {
		m := linePrefix.FindStringSubmatch(lines[i])
		require.NotNil(t, m, "line %q is not file:line:col: message", lines[i])
		assert.Equal(t, path, m[1])
		assert.Equal(t, strconv.Itoa(w.line), m[2], lines[i])
		assert.Equal(t, strconv.Itoa(w.col), m[3], lines[i])
		assert.Equal(t, w.summary, diags[i].Summary)
	}
}

func TestParse(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, nil)
	name := filepath.Join(dir, "slots.hcl")

	cfg, err := Parse(name, []byte(minimalSite))
	require.NoError(t, err)
	assert.Equal(t, []string{name}, cfg.Files)
	assert.Equal(t, filepath.Join(dir, "job.nomad.hcl"), cfg.Sites[0].Job, "relative to the named file's folder")

	_, err = Parse("", []byte("site {"))
	diags := requireDiagnostics(t, err)
	assert.Equal(t, "<input>", diags[0].Subject.Filename)
}

// TestNoSecretsInMessages checks that neither a token nor a setting's value ever reaches a
// message, whatever else is wrong around them.
func TestNoSecretsInMessages(t *testing.T) {
	clearTokenEnv(t)
	t.Setenv("SLOTD_TEST_SECRET", "secret-from-env")
	dir := writeDir(t, map[string]string{
		"token": "secret-in-file\n",
		"slots.hcl": `
consul {
  token      = "secret-inline"
  token_file = "token"
}
nomad { token = env("SLOTD_TEST_SECRET") }
http {
  token_file = "token"
  tls_key_file = "key.pem"
}
site "web" {
  job     = "job.nomad.hcl"
  service = "web"
  slot "production" {
    settings = { SAME = "secret-setting", "bad key" = "secret-bad" }
    sticky   = { SAME = "secret-sticky", SLOTD_X = "secret-reserved", D = "secret-d1", D = "secret-d2" }
  }
  slot "staging" {
    sticky = { "1X" = "secret-sticky-2" }
    auto_swap = "staging"
  }
}
`,
	})
	_, err := Load(filepath.Join(dir, "slots.hcl"))
	diags := requireDiagnostics(t, err)
	assert.GreaterOrEqual(t, len(diags), 7, err.Error())
	assert.NotContains(t, err.Error(), "secret-")
	for _, d := range diags {
		assert.NotContains(t, d.Summary+d.Detail, "secret-")
	}
}

func TestDiagnosticsError(t *testing.T) {
	r := func(line, col int) *hcl.Range {
		return &hcl.Range{Filename: "s.hcl", Start: hcl.Pos{Line: line, Column: col}, End: hcl.Pos{Line: line, Column: col}}
	}
	diags := Diagnostics{
		{Severity: hcl.DiagError, Summary: "First", Detail: "what to fix.", Subject: r(1, 2)},
		{Severity: hcl.DiagError, Summary: "Second", Detail: "spans\nlines.", Subject: r(3, 4)},
	}
	var err error = diags
	assert.Equal(t, "s.hcl:1:2: First; what to fix.\ns.hcl:3:4: Second; spans lines.", err.Error())
}
