package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

func TestUsage(t *testing.T) {
	cases := []struct {
		name       string
		args       []string
		code       int
		stdout     string // a part of stdout
		stderr     string // a part of stderr
		noRequests bool
	}{
		{name: "no command", args: nil, code: 2, stderr: "Commands:\n  agent"},
		{name: "help", args: []string{"help"}, code: 0, stdout: "Commands:\n  agent"},
		{name: "-h", args: []string{"-h"}, code: 0, stdout: "  follow"},
		{name: "help on a command", args: []string{"help", "swap"}, code: 0, stdout: "Usage: slotd swap <site> <source> [target]"},
		{name: "help on an unknown command", args: []string{"help", "frob"}, code: 2, stderr: `unknown command "frob"`},
		{name: "unknown command", args: []string{"frob"}, code: 2, stderr: `error: unknown command "frob"`},
		{name: "unknown flag", args: []string{"status", "-bogus"}, code: 2, stderr: "flag provided but not defined: -bogus"},
		{name: "status with two sites", args: []string{"status", "a", "b"}, code: 2, stderr: "want at most a site"},
		{name: "deploy without a slot", args: []string{"deploy", "web"}, code: 2, stderr: "want a site and a slot, got 1"},
		{name: "deploy with a bad var", args: []string{"deploy", "web", "staging", "-var", "image"}, code: 2, stderr: `"image" is not key=value`},
		{name: "scale without counts", args: []string{"scale", "web", "production"}, code: 2, stderr: "at least one group=count"},
		{name: "scale with a bad count", args: []string{"scale", "web", "production", "app=-1"}, code: 2, stderr: `such as app=3; got "app=-1"`},
		{name: "scale without a group", args: []string{"scale", "web", "production", "=3"}, code: 2, stderr: `got "=3"`},
		{name: "scale with a group twice", args: []string{"scale", "web", "production", "app=1", "app=2"}, code: 2, stderr: `group "app" given twice`},
		{name: "swap without a source", args: []string{"swap", "web"}, code: 2, stderr: "usage: slotd swap"},
		{name: "swap with four slots", args: []string{"swap", "web", "a", "b", "c"}, code: 2, stderr: "got 4 arguments"},
		{name: "complete and cancel", args: []string{"swap", "-complete", "-cancel", "web"}, code: 2, stderr: "exclude each other"},
		{name: "complete with preview", args: []string{"swap", "-complete", "web", "-preview"}, code: 2, stderr: "-preview starts a swap"},
		{name: "complete without a site", args: []string{"swap", "-complete"}, code: 2, stderr: "want a site or -group, got 0"},
		{name: "group swap with a site too", args: []string{"swap", "-group", "storefront", "web", "staging", "production"}, code: 2,
			stderr: "error: -group storefront names the sites; give only the source slot and maybe a target slot, not a site (got web staging production)\n"},
		{name: "group swap without a source", args: []string{"swap", "-group", "storefront"}, code: 2, stderr: "with -group, want a source slot and maybe a target slot, got 0 arguments"},
		{name: "group swap with an empty group", args: []string{"swap", "-group", "", "staging"}, code: 2, stderr: `invalid value "" for flag -group: empty: name a group declared in slots.hcl`},
		{name: "group complete with a site too", args: []string{"swap", "-complete", "-group", "storefront", "web"}, code: 2, stderr: "-group storefront names the sites; give no site with it (got web)"},
		{name: "group cancel with preview", args: []string{"swap", "-cancel", "-group", "storefront", "-preview"}, code: 2, stderr: "-preview starts a swap"},
		{name: "group rollback with a site too", args: []string{"rollback", "web", "-group", "storefront"}, code: 2, stderr: "-group storefront names the sites; give no site with it (got web)"},
		{name: "rollback with two sites", args: []string{"rollback", "web", "api"}, code: 2, stderr: "want a site, got 2 arguments"},
		{name: "group history with a site too", args: []string{"history", "-group", "storefront", "web"}, code: 2, stderr: "-group storefront names the sites; give no site with it (got web)"},
		{name: "rollback without a site", args: []string{"rollback"}, code: 2, stderr: "want a site"},
		{name: "history without a site", args: []string{"history"}, code: 2, stderr: "want a site"},
		{name: "history limit zero", args: []string{"history", "web", "-limit", "0"}, code: 2, stderr: "-limit 0: show 1 or more"},
		{name: "history before not a seq", args: []string{"history", "web", "-before", "last"}, code: 2, stderr: `invalid value "last" for flag -before`},
		{name: "follow without an id", args: []string{"follow"}, code: 2, stderr: "want an operation ID"},
		{name: "settings set without a value", args: []string{"settings", "web", "staging", "set", "K"}, code: 2, stderr: `set wants KEY=VALUE, KEY=@FILE or KEY=-, got "K"`},
		{name: "settings sticky unset", args: []string{"settings", "web", "staging", "unset", "K", "-sticky"}, code: 2, stderr: "-sticky goes with set"},
		{name: "settings sticky show", args: []string{"settings", "web", "staging", "-sticky"}, code: 2, stderr: "-sticky goes with set"},
		{name: "settings unknown sub-command", args: []string{"settings", "web", "staging", "frob", "K"}, code: 2, stderr: `unknown sub-command "frob"`},
		{name: "settings one argument", args: []string{"settings", "web"}, code: 2, stderr: "got 1 arguments"},
		{name: "validate without a file", args: []string{"validate"}, code: 2, stderr: "want one file or directory"},
		{name: "agent without -config", args: []string{"agent"}, code: 2, stderr: "-config is required"},
		{name: "negative wait", args: []string{"swap", "web", "staging", "-wait", "-1s"}, code: 2, stderr: `invalid value "-1s" for flag -wait: -1s is negative: 0 means do not wait`},
		{name: "wait not a duration", args: []string{"deploy", "web", "staging", "-wait", "soon"}, code: 2, stderr: `"soon" is not a duration such as 30s or 2m`},
		{name: "agent with an argument", args: []string{"agent", "-config", "x.hcl", "y"}, code: 2, stderr: `unexpected argument "y"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			api := newFakeAPI(t)
			r := run(t, api.srv.URL, tc.args...)
			assert.Equal(t, tc.code, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			assert.Contains(t, r.stdout, tc.stdout)
			assert.Contains(t, r.stderr, tc.stderr)
			if tc.code == 2 {
				assert.Empty(t, r.stdout)
			}
			assert.Empty(t, api.requests(), "a usage error must not reach the agent")
		})
	}
}

func TestHelpOnEveryCommand(t *testing.T) {
	for _, cmd := range commands() {
		for _, flag := range []string{"-h", "-help", "--help"} {
			t.Run(cmd.name+flag, func(t *testing.T) {
				r := run(t, "http://127.0.0.1:1", cmd.name, flag)
				assert.Equal(t, 0, r.code)
				assert.Empty(t, r.stderr)
				assert.True(t, strings.HasPrefix(r.stdout, "Usage: slotd "+cmd.name+" "), "starts with the usage line:\n%s", r.stdout)
				assert.Contains(t, r.stdout, "\n  Example")
				assert.Contains(t, r.stdout, "\n    slotd "+cmd.name)
				before, client, _ := strings.Cut(r.stdout, "\nClient options:\n")
				_, own, _ := strings.Cut(before, "\nCommand options:\n")
				switch cmd.name {
				case "agent", "deploy", "swap", "settings":
					assert.NotEmpty(t, own, "a Command options block before the Client options")
				}
				for _, f := range []string{"address", "token", "token-file", "ca-cert", "json", "detach", "wait"} {
					assert.NotContains(t, own, "-"+f, "client option -%s among the command's own", f)
				}
				switch cmd.name {
				case "agent", "validate":
					assert.Empty(t, client, "%s calls no agent: no client options", cmd.name)
				default:
					for _, f := range []string{"-address=<URL>", "-token=<token>", "-token-file=<file>", "-ca-cert=<file>", "-json", "-detach", "-wait=<duration>"} {
						assert.Contains(t, client, "\n  "+f+"\n", "client option %s", f)
					}
				}
			})
		}
	}
}

// TestHelpLayout: a command's help is its usage, what it does, its own options, then the
// client options in a block of their own, as Nomad's commands print theirs.
func TestHelpLayout(t *testing.T) {
	r := run(t, "http://127.0.0.1:1", "deploy", "-h")
	require.Equal(t, 0, r.code)
	want := `Usage: slotd deploy <site> <slot> [-var key=value]... [options]

  Registers a new version of the slot's lane with the given job variables (on top of the
`
	require.True(t, strings.HasPrefix(r.stdout, want), "got:\n%s", r.stdout)
	before, client, ok := strings.Cut(r.stdout, "\nClient options:\n\n")
	require.True(t, ok, "a Client options block:\n%s", r.stdout)
	_, own, ok := strings.Cut(before, "\nCommand options:\n\n")
	require.True(t, ok, "a Command options block before the Client options:\n%s", r.stdout)
	assert.Equal(t, "  -var=<key=value>\n    job variable as key=value; repeat for more\n", own)
	for _, f := range []string{"address", "token", "ca-cert", "json", "detach", "wait"} {
		assert.NotContains(t, own, "-"+f, "client option -%s among the command's own", f)
	}
	assert.Contains(t, client, `  -wait=<duration>
    how long a write waits, with one line saying so, while the agent is starting
    or no leader is known yet (it answers 503 with Retry-After), as a duration
    such as 30s; 0 fails at once (default 2m0s)
`)
	assert.NotContains(t, client, "-var")
	for line := range strings.Lines(r.stdout) {
		assert.LessOrEqual(t, len(strings.TrimRight(line, "\n")), 94, "a line too long: %q", line)
	}
}

// TestFlagBlocks: whatever a command declares is listed with its own options, whatever
// clientFlags.register adds with the client's.
func TestFlagBlocks(t *testing.T) {
	fs := newFlagSet(&command{name: "x"})
	fs.Bool("reveal", false, "show the values")
	var cf clientFlags
	cf.register(fs, false)
	fs.String("after", "", "declared after the client options")
	var b strings.Builder
	(&command{name: "x", usage: "[options]", help: "Does x."}).printHelp(&b, fs)
	assert.Equal(t, `Usage: slotd x [options]

  Does x.

Command options:

  -after=<string>
    declared after the client options

  -reveal
    show the values

Client options:

  -address=<URL>
    URL of the slotd agent ($SLOTD_ADDR, default http://127.0.0.1:4680)

  -ca-cert=<file>
    PEM file of the CA that signed the agent's TLS certificate ($SLOTD_CACERT)

  -detach
    no effect: this command starts no operation

  -json
    print the result as JSON on stdout (for a followed operation: its final
    state; progress goes to stderr)

  -token=<token>
    bearer token for the agent's API; prefer -token-file or $SLOTD_TOKEN: a
    -token shows in the process list and shell history

  -token-file=<file>
    file holding the bearer token (surrounding white space is ignored); else
    $SLOTD_TOKEN

  -wait=<duration>
    how long a write waits, with one line saying so, while the agent is starting
    or no leader is known yet (it answers 503 with Retry-After), as a duration
    such as 30s; 0 fails at once (default 2m0s)
`, b.String())
	require.NoError(t, fs.Parse([]string{"-reveal", "-wait", "5s", "-token", "t"}))
	assert.Equal(t, 5*time.Second, cf.wait)
	assert.Equal(t, "t", cf.token)
}

func TestCommandsCallTheAPI(t *testing.T) {
	started := swapOp(1, api.StatePending)
	cases := []struct {
		name   string
		args   []string
		env    map[string]string
		want   []seen // method, path, query, body (JSON) of every request
		auth   string
		stdout string
	}{
		{
			name: "deploy with vars after the positional arguments",
			args: []string{"deploy", "web", "staging", "-var", "image=web:2", "-var", "msg=a=b", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/sites/web/slots/staging/deploy", Body: `{"vars":{"image":"web:2","msg":"a=b"}}`}},
		},
		{
			name: "deploy with flags first",
			args: []string{"deploy", "-detach", "-var", "image=web:3", "web", "qa"},
			want: []seen{{Method: "POST", Path: "/v1/sites/web/slots/qa/deploy", Body: `{"vars":{"image":"web:3"}}`}},
		},
		{
			name: "scale",
			args: []string{"scale", "web", "production", "app=3", "worker=0", "-detach"},
			want: []seen{{Method: "PUT", Path: "/v1/sites/web/slots/production/scale", Body: `{"app":3,"worker":0}`}},
		},
		{
			name: "swap into production by default",
			args: []string{"swap", "web", "staging", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/sites/web/swap", Body: `{"source":"staging","target":"production","preview":false}`}},
		},
		{
			name: "swap with a target and preview after the arguments",
			args: []string{"swap", "web", "staging", "qa", "-preview", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/sites/web/swap", Body: `{"source":"staging","target":"qa","preview":true}`}},
		},
		{
			name: "flags end at --",
			args: []string{"swap", "-detach", "--", "web", "-staging"},
			want: []seen{{Method: "POST", Path: "/v1/sites/web/swap", Body: `{"source":"-staging","target":"production","preview":false}`}},
		},
		{
			name: "settle",
			args: []string{"settle", "web", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/sites/web/settle"}},
		},
		{
			name: "rollback",
			args: []string{"rollback", "web", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/sites/web/rollback"}},
		},
		{
			name: "complete finds the site's operation",
			args: []string{"swap", "-complete", "web", "-detach"},
			want: []seen{{Method: "GET", Path: "/v1/sites/web"}, {Method: "POST", Path: "/v1/operations/op-1/complete"}},
		},
		{
			name: "cancel finds the site's operation",
			args: []string{"swap", "web", "-cancel", "-detach"},
			want: []seen{{Method: "GET", Path: "/v1/sites/web"}, {Method: "POST", Path: "/v1/operations/op-1/cancel"}},
		},
		{
			name:   "settings set",
			args:   []string{"settings", "web", "staging", "set", "FEATURE_X=on"},
			want:   []seen{{Method: "PUT", Path: "/v1/sites/web/slots/staging/settings/FEATURE_X", Body: `{"value":"on","sticky":false}`}},
			stdout: "set FEATURE_X (swappable) on web/staging",
		},
		{
			name:   "settings set sticky with = in the value",
			args:   []string{"settings", "-sticky", "web", "production", "set", "DATABASE_URL=postgres://db/app?sslmode=require"},
			want:   []seen{{Method: "PUT", Path: "/v1/sites/web/slots/production/settings/DATABASE_URL", Body: `{"value":"postgres://db/app?sslmode=require","sticky":true}`}},
			stdout: "set DATABASE_URL (sticky) on web/production",
		},
		{
			name:   "settings set an empty value",
			args:   []string{"settings", "web", "staging", "set", "EMPTY=", "-sticky"},
			want:   []seen{{Method: "PUT", Path: "/v1/sites/web/slots/staging/settings/EMPTY", Body: `{"value":"","sticky":true}`}},
			stdout: "set EMPTY (sticky)",
		},
		{
			name:   "settings unset",
			args:   []string{"settings", "web", "staging", "unset", "FEATURE_X"},
			want:   []seen{{Method: "DELETE", Path: "/v1/sites/web/slots/staging/settings/FEATURE_X"}},
			stdout: "removed FEATURE_X from web/staging",
		},
		{
			name: "names are escaped",
			args: []string{"settings", "my site", "a/b"},
			want: []seen{{Method: "GET", Path: "/v1/sites/my%20site/slots/a%2Fb/settings"}},
		},
		{
			name: "token from the environment",
			args: []string{"status"},
			env:  map[string]string{api.EnvToken: "from-env"},
			want: []seen{{Method: "GET", Path: "/v1/sites"}},
			auth: "Bearer from-env",
		},
		{
			name: "token flag wins over the environment",
			args: []string{"history", "web", "-token", "from-flag"},
			env:  map[string]string{api.EnvToken: "from-env"},
			want: []seen{{Method: "GET", Path: "/v1/sites/web/history", Query: "limit=51"}},
			auth: "Bearer from-flag",
		},
		{
			name: "settings are read masked",
			args: []string{"settings", "web", "production"},
			want: []seen{{Method: "GET", Path: "/v1/sites/web/slots/production/settings"}},
		},
		{
			name: "settings -reveal",
			args: []string{"settings", "web", "production", "-reveal"},
			want: []seen{{Method: "GET", Path: "/v1/sites/web/slots/production/settings", Query: "reveal=true"}},
		},
		{
			name: "settings set -reveal -json reads them revealed",
			args: []string{"settings", "-reveal", "web", "production", "set", "A=1", "-json"},
			want: []seen{
				{Method: "PUT", Path: "/v1/sites/web/slots/production/settings/A", Query: "reveal=true", Body: `{"value":"1","sticky":false}`},
				{Method: "GET", Path: "/v1/sites/web/slots/production/settings", Query: "reveal=true"},
			},
		},
		{
			name: "status of a site -reveal",
			args: []string{"status", "web", "-reveal", "-json"},
			want: []seen{{Method: "GET", Path: "/v1/sites/web", Query: "reveal=true"}},
		},
		{
			name: "status -reveal",
			args: []string{"status", "-reveal"},
			want: []seen{{Method: "GET", Path: "/v1/sites", Query: "reveal=true"}},
		},
		{
			name: "group swap into production by default",
			args: []string{"swap", "-group", "storefront", "staging", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/groups/storefront/swap", Body: `{"source":"staging","target":"production","preview":false}`}},
		},
		{
			name: "group swap with a target and preview",
			args: []string{"swap", "staging", "qa", "-preview", "-group", "storefront", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/groups/storefront/swap", Body: `{"source":"staging","target":"qa","preview":true}`}},
		},
		{
			name: "complete finds the group's operation",
			args: []string{"swap", "-complete", "-group", "storefront", "-detach"},
			want: []seen{{Method: "GET", Path: "/v1/groups/storefront"}, {Method: "POST", Path: "/v1/operations/op-1/complete"}},
		},
		{
			name: "cancel finds the group's operation",
			args: []string{"swap", "-group", "storefront", "-cancel", "-detach"},
			want: []seen{{Method: "GET", Path: "/v1/groups/storefront"}, {Method: "POST", Path: "/v1/operations/op-1/cancel"}},
		},
		{
			name: "group rollback",
			args: []string{"rollback", "-group", "storefront", "-detach"},
			want: []seen{{Method: "POST", Path: "/v1/groups/storefront/rollback"}},
		},
		{
			name: "group history",
			args: []string{"history", "-group", "storefront", "-limit", "5"},
			want: []seen{{Method: "GET", Path: "/v1/groups/storefront/history", Query: "limit=6"}},
		},
		{
			name: "follow -detach reads the operation once",
			args: []string{"follow", "op-1", "-detach"},
			want: []seen{{Method: "GET", Path: "/v1/operations/op-1"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.reply("POST /v1/sites/{site}/slots/{slot}/deploy", 202, started)
			f.reply("POST /v1/sites/{site}/swap", 202, started)
			f.reply("PUT /v1/sites/{site}/slots/{slot}/scale", 202, started)
			f.reply("POST /v1/sites/{site}/rollback", 202, started)
			f.reply("POST /v1/sites/{site}/settle", 200, started)
			f.reply("GET /v1/sites/{site}", 200, api.Site{Name: "web", Operation: &started})
			f.reply("POST /v1/operations/{id}/complete", 200, started)
			f.reply("POST /v1/operations/{id}/cancel", 200, started)
			f.reply("PUT /v1/sites/{site}/slots/{slot}/settings/{key}", 204, nil)
			f.reply("DELETE /v1/sites/{site}/slots/{slot}/settings/{key}", 204, nil)
			f.reply("GET /v1/sites/{site}/slots/{slot}/settings", 200, api.Settings{})
			f.reply("GET /v1/sites", 200, []api.Site{})
			f.reply("GET /v1/sites/{site}/history", 200, []api.Operation{})
			f.reply("POST /v1/groups/{group}/swap", 202, started)
			f.reply("POST /v1/groups/{group}/rollback", 202, started)
			f.reply("GET /v1/groups/{group}", 200, api.Group{Name: "storefront", Sites: []string{"web", "api"}, Operation: &started})
			f.reply("GET /v1/groups/{group}/history", 200, []api.Operation{})
			f.operation(started)

			e, stdout, stderr := testEnv(f.srv.URL, tc.env)
			code := e.run(tc.args)
			require.Equal(t, 0, code, "stderr: %s", stderr)
			assert.Contains(t, stdout.String(), tc.stdout)

			got := f.requests()
			require.Len(t, got, len(tc.want))
			for i, w := range tc.want {
				assert.Equal(t, w.Method, got[i].Method)
				assert.Equal(t, w.Path, got[i].Path)
				assert.Equal(t, w.Query, got[i].Query)
				if w.Body == "" {
					assert.Empty(t, got[i].Body)
				} else {
					assert.JSONEq(t, w.Body, got[i].Body)
				}
				assert.Equal(t, tc.auth, got[i].Auth)
			}
		})
	}
}

func TestDetachPrintsHowToFollow(t *testing.T) {
	f := newFakeAPI(t)
	f.reply("POST /v1/sites/{site}/swap", 202, swapOp(1, api.StatePending))
	r := run(t, f.srv.URL, "swap", "web", "staging", "-detach")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "swap op-1: web staging -> production\nswap op-1 is pending; follow it with: slotd follow op-1\n", r.stdout)

	r = run(t, f.srv.URL, "swap", "web", "staging", "-detach", "-json")
	require.Equal(t, 0, r.code, r.stderr)
	var op api.Operation
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &op))
	assert.Equal(t, swapOp(1, api.StatePending), op)
}

func TestErrors(t *testing.T) {
	cases := []struct {
		name   string
		status int
		answer api.ErrorResponse
		stderr string
	}{
		{"busy site", 409, api.ErrorResponse{Error: "operation op-9 runs on site web"},
			"error: operation op-9 runs on site web (HTTP 409)\n"},
		{"no such slot", 404, api.ErrorResponse{Error: `site web has no slot "stagin"`},
			"error: site web has no slot \"stagin\" (HTTP 404)\n"},
		{"no token", 401, api.ErrorResponse{Error: "missing or wrong token"},
			"error: missing or wrong token (HTTP 401); pass the agent's token with -token-file, SLOTD_TOKEN or -token\n"},
		{"not the leader, and the leader cannot be reached", 503, api.ErrorResponse{Error: "not the leader", LeaderAddress: "http://127.0.0.1:1"},
			"error: not the leader (HTTP 503); the leader is at http://127.0.0.1:1\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.reply("POST /v1/sites/{site}/slots/{slot}/deploy", tc.status, tc.answer)
			r := run(t, f.srv.URL, "deploy", "web", "staging")
			assert.Equal(t, 1, r.code)
			assert.Equal(t, tc.stderr, r.stderr)
			assert.Empty(t, r.stdout)
		})
	}

	t.Run("no agent", func(t *testing.T) {
		r := run(t, "http://127.0.0.1:1", "status")
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, "error: Get \"http://127.0.0.1:1/v1/sites\"")
		assert.Contains(t, r.stderr, "is the agent running there? (set -address or SLOTD_ADDR)")
	})
	t.Run("bad address", func(t *testing.T) {
		r := run(t, "http://127.0.0.1:1", "status", "-address", "ftp://x")
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, "scheme must be http or https")
	})
	t.Run("a setting value the agent would refuse", func(t *testing.T) {
		f := newFakeAPI(t)
		f.reply("PUT /v1/sites/{site}/slots/{slot}/settings/{key}", 204, nil)
		r := run(t, f.srv.URL, "settings", "web", "staging", "set", "BIG="+strings.Repeat("x", config.MaxSettingValue+1))
		assert.Equal(t, 1, r.code)
		assert.Equal(t, "error: the value of setting \"BIG\" is 65537 bytes, over the limit of 65536 bytes (64 KiB) for one value; keep larger data in a file or a store the app reads\n", r.stderr)
		assert.Empty(t, f.requests(), "nothing is sent")
	})
	t.Run("complete without a running operation", func(t *testing.T) {
		f := newFakeAPI(t)
		f.reply("GET /v1/sites/{site}", 200, api.Site{Name: "web"})
		r := run(t, f.srv.URL, "swap", "-complete", "web")
		assert.Equal(t, 1, r.code)
		assert.Equal(t, "error: site web has no running operation\n", r.stderr)
	})
}

func TestJSONOutput(t *testing.T) {
	sites := []api.Site{{Name: "web", Service: "web", Slots: []api.Slot{{Name: "production", Lane: "web-a", Version: 3, Healthy: 2, Total: 2}}}}
	settings := api.Settings{Settings: map[string]string{"A": "1"}, Sticky: map[string]string{"B": "2"}}
	history := []api.Operation{swapOp(9, api.StateSucceeded)}
	final := swapOp(5, api.StateSucceeded, phase("apply", "succeeded", 0, 3.2, ""))

	cases := []struct {
		name string
		args []string
		into any
		want any
	}{
		{"status", []string{"status", "-json"}, &[]api.Site{}, &sites},
		{"status of a site", []string{"status", "web", "-json"}, &api.Site{}, &sites[0]},
		{"settings", []string{"settings", "-json", "web", "production"}, &api.Settings{}, &settings},
		{"settings after set", []string{"settings", "web", "production", "set", "A=1", "-json"}, &api.Settings{}, &settings},
		{"history", []string{"history", "web", "-json"}, &[]api.Operation{}, &history},
		{"a followed swap prints its final state", []string{"swap", "web", "staging", "-json"}, &api.Operation{}, &final},
		{"follow", []string{"follow", "op-1", "-json"}, &api.Operation{}, &final},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.reply("GET /v1/sites", 200, sites)
			f.reply("GET /v1/sites/{site}", 200, sites[0])
			f.reply("GET /v1/sites/{site}/slots/{slot}/settings", 200, settings)
			f.reply("PUT /v1/sites/{site}/slots/{slot}/settings/{key}", 204, nil)
			f.reply("GET /v1/sites/{site}/history", 200, history)
			f.reply("POST /v1/sites/{site}/swap", 202, swapOp(1, api.StatePending))
			f.operation(swapOp(1, api.StatePending), final)

			r := run(t, f.srv.URL, tc.args...)
			require.Equal(t, 0, r.code, r.stderr)
			require.NoError(t, json.Unmarshal([]byte(r.stdout), tc.into), "stdout:\n%s", r.stdout)
			assert.Equal(t, tc.want, tc.into)
		})
	}
}

func TestStatusTable(t *testing.T) {
	running := swapOp(4, api.StateWarming)
	running.CreatedAt = now.Add(-12 * time.Second)
	last := swapOp(3, api.StateSucceeded)
	sites := []api.Site{
		{Name: "web", Slots: []api.Slot{
			{Name: "production", Lane: "web-a", Version: 12, Healthy: 3, Total: 3, Scale: map[string]int{"worker": 1, "app": 3}, ScaleSource: "declared"},
			{Name: "staging", Lane: "web-b", Version: 7, Healthy: 1, Total: 2, Scale: map[string]int{"app": 2}, ScaleSource: "kv"},
		}, LastOperation: &last},
		{Name: "api-gateway", Slots: []api.Slot{
			{Name: "production", Lane: "api-gateway-a", Version: 1, Healthy: 0, Total: 0},
		}, Operation: &running},
		{Name: "empty"},
	}
	f := newFakeAPI(t)
	f.reply("GET /v1/sites", 200, sites)
	f.reply("GET /v1/groups", 200, []api.Group{})
	r := run(t, f.srv.URL, "status")
	require.Equal(t, 0, r.code, r.stderr)
	table := []string{
		"SITE         SLOT        LANE           VERSION  HEALTHY  SCALE           LAST OPERATION",
		"web          production  web-a          12       3/3      app=3,worker=1  swap succeeded 1m ago",
		"web          staging     web-b          7        1/2      app=2           ",
		"api-gateway  production  api-gateway-a  1        0/0      -               swap warming for 12s",
		"empty        -           -              -        -        -               -",
	}
	assert.Equal(t, strings.Join(append(table, ""), "\n"), r.stdout, "no groups, no groups table")

	// Groups follow the sites: their sites, and the running or last group operation with its ID.
	groupRunning := swapOp(6, api.StateSwitching)
	groupRunning.ID, groupRunning.Site, groupRunning.Group, groupRunning.CreatedAt = "op-7", "", "storefront", now.Add(-5*time.Second)
	groupLast := swapOp(5, api.StateFailed)
	groupLast.ID, groupLast.Site, groupLast.Group = "op-6", "", "edge"
	f = newFakeAPI(t)
	f.reply("GET /v1/sites", 200, sites)
	f.reply("GET /v1/groups", 200, []api.Group{
		{Name: "edge", Sites: []string{"api-gateway", "web"}, LastOperation: &groupLast},
		{Name: "storefront", Sites: []string{"web", "api-gateway"}, Operation: &groupRunning},
		{Name: "idle", Sites: []string{"web", "empty"}},
	})
	r = run(t, f.srv.URL, "status")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, strings.Join(append(table,
		"",
		"GROUP       SITES             OPERATION",
		"edge        api-gateway, web  swap op-6 failed 1m ago",
		"storefront  web, api-gateway  swap op-7 switching for 5s",
		"idle        web, empty        -",
		""), "\n"), r.stdout)
}

// TestLaneText: a held slot's lane says whose settings it still runs, and until when.
func TestLaneText(t *testing.T) {
	until := time.Date(2026, 11, 30, 12, 3, 4, 0, time.Local)
	assert.Equal(t, "web-a", laneText(api.Slot{Lane: "web-a"}))
	assert.Equal(t, "-", laneText(api.Slot{}))
	assert.Equal(t, "web-a (held as production until 12:03:04)", laneText(api.Slot{Lane: "web-a", HeldFor: "production", HeldUntil: &until}))
}

func TestStatusOfASite(t *testing.T) {
	running := swapOp(4, api.StateWarming)
	site := api.Site{Name: "web", Operation: &running, Slots: []api.Slot{
		{Name: "production", Lane: "web-a", Version: 12, Healthy: 1, Total: 2, Scale: map[string]int{"app": 2}, ScaleSource: "live", Instances: []api.Instance{
			{Alloc: "0b1c2d3e-aaaa-bbbb-cccc-000000000001", Address: "10.0.0.1", Port: 24567, Healthy: true, Status: "passing"},
			{Alloc: "5f6a7b8c-aaaa-bbbb-cccc-000000000002", Address: "10.0.0.2", Port: 31001, Healthy: false},
		}},
		{Name: "staging", Lane: "web-b", Version: 7, Healthy: 1, Total: 1, Instances: []api.Instance{
			{Alloc: "9d8e7f6a-aaaa-bbbb-cccc-000000000003", Address: "10.0.0.3", Port: 20001, Healthy: true},
		}},
	}}
	f := newFakeAPI(t)
	f.reply("GET /v1/sites/{site}", 200, site)
	r := run(t, f.srv.URL, "status", "web")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, strings.Join([]string{
		"SITE  SLOT        LANE   VERSION  HEALTHY  SCALE       LAST OPERATION",
		"web   production  web-a  12       1/2      live app=2  swap warming for 1m",
		"web   staging     web-b  7        1/1      -           ",
		"",
		"SLOT        ALLOC     ADDRESS         STATUS",
		"production  0b1c2d3e  10.0.0.1:24567  passing",
		"production  5f6a7b8c  10.0.0.2:31001  critical",
		"staging     9d8e7f6a  10.0.0.3:20001  passing",
		"",
		"running: swap op-1: web staging -> production, warming; follow it with: slotd follow op-1",
		"",
	}, "\n"), r.stdout)
	assert.Equal(t, []seen{{Method: "GET", Path: "/v1/sites/web"}}, f.requests())
}

func TestSettingsTable(t *testing.T) {
	f := newFakeAPI(t)
	f.reply("GET /v1/sites/{site}/slots/{slot}/settings", 200, api.Settings{
		Settings: map[string]string{"FEATURE_X": "on", "LOG_LEVEL": "debug", "DATABASE_URL": "sqlite://"},
		Sticky:   map[string]string{"DATABASE_URL": "postgres://prod-db/app"},
	})
	r := run(t, f.srv.URL, "settings", "web", "production")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, strings.Join([]string{
		"KEY           VALUE                   KIND",
		"DATABASE_URL  sqlite://               swappable (sticky wins)",
		"FEATURE_X     on                      swappable",
		"LOG_LEVEL     debug                   swappable",
		"DATABASE_URL  postgres://prod-db/app  sticky",
		"",
	}, "\n"), r.stdout)

	f = newFakeAPI(t)
	masked := api.Settings{Settings: map[string]string{"FEATURE_X": "on"}, Sticky: map[string]string{"DATABASE_URL": api.Hidden}, Masked: true}
	f.reply("GET /v1/sites/{site}/slots/{slot}/settings", 200, masked)
	r = run(t, f.srv.URL, "settings", "web", "production")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, strings.Join([]string{
		"KEY           VALUE     KIND",
		"FEATURE_X     on        swappable",
		"DATABASE_URL  <hidden>  sticky",
		"sticky values are hidden; -reveal shows them",
		"",
	}, "\n"), r.stdout)
	r = run(t, f.srv.URL, "settings", "web", "production", "-json")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"DATABASE_URL": "<hidden>"`, "the marker as written, not HTML-escaped")
	assert.Contains(t, r.stdout, `"masked": true`)

	f = newFakeAPI(t)
	f.reply("GET /v1/sites/{site}/slots/{slot}/settings", 200, api.Settings{})
	r = run(t, f.srv.URL, "settings", "web", "qa")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "no settings on web/qa\n", r.stdout)
}

func TestHistoryTable(t *testing.T) {
	failed := swapOp(8, api.StateFailed)
	failed.ID, failed.Error = "op-2", "warm: 10.0.0.3:20001 answered 503 to /healthz"
	deploy := api.Operation{ID: "op-1", Site: "web", Kind: api.KindDeploy, Slot: "staging", State: api.StateSucceeded,
		Trigger: "api", CreatedAt: t0.Add(-time.Hour), FinishedAt: at(-3600 + 45)}
	rollback := swapOp(9, api.StateSucceeded)
	rollback.ID, rollback.Kind, rollback.RollbackOf, rollback.Trigger = "op-3", api.KindRollback, "op-0", "monitor"
	rollback.Source, rollback.Target = "production", "staging"

	f := newFakeAPI(t)
	f.reply("GET /v1/sites/{site}/history", 200, []api.Operation{rollback, failed, deploy})
	r := run(t, f.srv.URL, "history", "web")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, strings.Join([]string{
		"ID    KIND      SLOTS                  STATE      STARTED  TOOK   DETAIL",
		"op-3  rollback  production -> staging  succeeded  1m ago   12.1s  reverses op-0; started by monitor",
		"op-2  swap      staging -> production  failed     1m ago   12.1s  warm: 10.0.0.3:20001 answered 503 to /healthz",
		"op-1  deploy    staging                succeeded  1h ago   45s    -",
		"",
	}, "\n"), r.stdout)

	f = newFakeAPI(t)
	f.reply("GET /v1/sites/{site}/history", 200, []api.Operation{})
	r = run(t, f.srv.URL, "history", "web")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "no finished operations on site web\n", r.stdout)
}

// TestGroupHistoryTable: a group's history lists its group operations with the errors of
// their members, and a full page says how to ask for the next with -group.
func TestGroupHistoryTable(t *testing.T) {
	failed := swapOp(8, api.StateFailed)
	failed.ID, failed.Site, failed.Group, failed.Seq = "op-9", "", "storefront", 9
	failed.Error = "warm failed on site blog; every site is back as it was"
	failed.Members = []api.GroupMember{
		{Site: "web", Operation: "op-10", State: api.StateCancelled},
		{Site: "blog", Operation: "op-11", State: api.StateFailed, Error: "10.0.0.3:20001 answered 503 to /healthz"},
	}
	done := swapOp(9, api.StateSucceeded)
	done.ID, done.Site, done.Group, done.Seq = "op-5", "", "storefront", 5
	older := done
	older.ID, older.Seq = "op-2", 2

	f := newFakeAPI(t)
	f.reply("GET /v1/groups/{group}/history", 200, []api.Operation{failed, done, older})
	r := run(t, f.srv.URL, "history", "-group", "storefront", "-limit", "2")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, strings.Join([]string{
		"ID    KIND  SLOTS                  STATE      STARTED  TOOK   DETAIL",
		"op-9  swap  staging -> production  failed     1m ago   12.1s  warm failed on site blog; every site is back as it was; blog: 10.0.0.3:20001 answered 503 to /healthz",
		"op-5  swap  staging -> production  succeeded  1m ago   12.1s  -",
		"older operations: slotd history -group storefront -limit 2 -before 5",
		"",
	}, "\n"), r.stdout)
	assert.Equal(t, []seen{{Method: "GET", Path: "/v1/groups/storefront/history", Query: "limit=3"}}, f.requests())

	f = newFakeAPI(t)
	f.reply("GET /v1/groups/{group}/history", 200, []api.Operation{})
	r = run(t, f.srv.URL, "history", "-group", "storefront")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "no finished operations on group storefront\n", r.stdout)

	// A member's own part says which group operation it belongs to.
	part := swapOp(9, api.StateSucceeded)
	part.ID, part.Group, part.GroupOperation = "op-10", "storefront", "op-9"
	f = newFakeAPI(t)
	f.reply("GET /v1/sites/{site}/history", 200, []api.Operation{part})
	r = run(t, f.srv.URL, "history", "web")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "op-10  swap  staging -> production  succeeded  1m ago   12.1s  part of op-9 of group storefront\n")
}

// TestHistoryPages: -limit and -before ask the API for a page (one more than shown, to know
// whether older operations are kept), and a full page ends with how to ask for the next.
func TestHistoryPages(t *testing.T) {
	page := make([]api.Operation, 3)
	for i := range page {
		page[i] = swapOp(1, api.StateSucceeded)
		page[i].ID, page[i].Seq = fmt.Sprintf("op-%d", 30-i), uint64(30-i)
	}
	tests := []struct {
		name      string
		args      []string
		reply     []api.Operation
		wantQuery string
		wantIDs   []string
		wantNext  string
	}{
		{name: "the newest page", args: []string{"history", "web"}, reply: page, wantQuery: "limit=51", wantIDs: []string{"op-30", "op-29", "op-28"}},
		{name: "a full page says how to go on", args: []string{"history", "web", "-limit", "2", "-before", "31"}, reply: page,
			wantQuery: "before=31&limit=3", wantIDs: []string{"op-30", "op-29"}, wantNext: "older operations: slotd history web -limit 2 -before 29\n"},
		{name: "the last page", args: []string{"history", "web", "-limit", "3"}, reply: page, wantQuery: "limit=4", wantIDs: []string{"op-30", "op-29", "op-28"}},
		{name: "past the oldest", args: []string{"history", "web", "-before", "1"}, wantQuery: "before=1&limit=51"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.reply("GET /v1/sites/{site}/history", 200, append([]api.Operation{}, tc.reply...))
			r := run(t, f.srv.URL, tc.args...)
			require.Equal(t, 0, r.code, r.stderr)
			got := f.requests()
			require.Len(t, got, 1)
			assert.Equal(t, tc.wantQuery, got[0].Query)
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			var ids []string
			for _, l := range lines[1:] {
				if id, _, _ := strings.Cut(l, " "); strings.HasPrefix(id, "op-") {
					ids = append(ids, id)
				}
			}
			assert.Equal(t, tc.wantIDs, ids, r.stdout)
			if tc.wantNext != "" {
				assert.True(t, strings.HasSuffix(r.stdout, tc.wantNext), r.stdout)
			} else {
				assert.NotContains(t, r.stdout, "older operations")
			}
			if len(tc.wantIDs) == 0 {
				assert.Equal(t, "no finished operations on site web before seq 1\n", r.stdout)
			}

			// -json prints the page as asked, without the one more.
			f = newFakeAPI(t)
			f.reply("GET /v1/sites/{site}/history", 200, append([]api.Operation{}, tc.reply...))
			r = run(t, f.srv.URL, append(tc.args, "-json")...)
			require.Equal(t, 0, r.code, r.stderr)
			var printed []api.Operation
			require.NoError(t, json.Unmarshal([]byte(r.stdout), &printed))
			assert.Len(t, printed, len(tc.wantIDs))
		})
	}
}

// TestWaitsWhileStarting: a write refused with 503 and Retry-After is sent again until the
// agent takes it, with one line on stderr saying so; -wait 0 fails at once.
func TestWaitsWhileStarting(t *testing.T) {
	const refusal = "site web is starting; nothing was started, retry in a few seconds"
	cases := []struct {
		name     string
		args     []string
		code     int
		requests int
		stderr   string
	}{
		{name: "waits, then the swap starts", args: []string{"swap", "web", "staging", "-detach"}, code: 0, requests: 2,
			stderr: "site web is starting; waiting up to 2m0s\n"},
		{name: "waits as long as -wait says", args: []string{"swap", "web", "staging", "-detach", "-wait", "30s"}, code: 0, requests: 2,
			stderr: "site web is starting; waiting up to 30s\n"},
		{name: "-wait 0 fails at once", args: []string{"swap", "web", "staging", "-detach", "-wait", "0"}, code: 1, requests: 1,
			stderr: "error: " + refusal + " (HTTP 503)\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t)
			refused := false
			f.mux.HandleFunc("POST /v1/sites/{site}/swap", func(w http.ResponseWriter, r *http.Request) {
				if !refused {
					refused = true
					w.Header().Set("Retry-After", "1")
					writeJSON(w, http.StatusServiceUnavailable, api.ErrorResponse{Error: refusal})
					return
				}
				writeJSON(w, http.StatusAccepted, swapOp(1, api.StatePending))
			})
			r := run(t, f.srv.URL, tc.args...)
			assert.Equal(t, tc.code, r.code, r.stderr)
			assert.Equal(t, tc.stderr, r.stderr)
			assert.Len(t, f.requests(), tc.requests)
			if tc.code == 0 {
				assert.Contains(t, r.stdout, "swap op-1 is pending")
			}
		})
	}
}

// TestGroupSwapGivenASite: a site given with -group where the source slot goes is named as
// such; another unknown slot keeps the agent's message.
func TestGroupSwapGivenASite(t *testing.T) {
	f := newFakeAPI(t)
	f.reply("POST /v1/groups/{group}/swap", 404, api.ErrorResponse{Error: `not found: site web of group storefront has no slot "x" (slots: production, staging)`})
	f.reply("GET /v1/groups/{group}", 200, api.Group{Name: "storefront", Sites: []string{"web", "blog"}})

	r := run(t, f.srv.URL, "swap", "-group", "storefront", "web", "staging")
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "error: web is a site of group storefront, not a slot: with -group give the slots only, such as slotd swap -group storefront staging production\n", r.stderr)

	r = run(t, f.srv.URL, "swap", "-group", "storefront", "qa")
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "error: not found: site web of group storefront has no slot \"x\" (slots: production, staging) (HTTP 404)\n", r.stderr)
}
