package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestSecretsOffTheCommandLine: a setting's value and the API token can come from a file or
// stdin instead of argv; what is read is sent as it was written, less exactly one trailing
// newline for a value and surrounding white space for a token; a source that cannot be read
// stops the command before any request.
func TestSecretsOffTheCommandLine(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"db-url":     "postgres://db/app?sslmode=require\n",
		"two-nl":     "line one\nline two\n\n",
		"no-nl":      "plain",
		"crlf":       "windows\r\n",
		"at-sign":    "@literally\n",
		"empty":      "",
		"token":      "  s3cret-token\n",
		"blank":      " \n\t\n",
		"huge-value": strings.Repeat("x", maxValueFile+1),
	}
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
	}
	at := func(name string) string { return "@" + filepath.Join(dir, name) }
	const put = "/v1/sites/web/slots/production/settings/K"

	cases := []struct {
		name  string
		args  []string
		stdin string
		env   map[string]string
		value string // the value sent; with err empty
		auth  string
		err   string // part of stderr when the command must stop before any request
	}{
		{name: "value from a file", args: []string{"K=" + at("db-url"), "-sticky"}, value: "postgres://db/app?sslmode=require"},
		{name: "a file loses exactly one trailing newline", args: []string{"K=" + at("two-nl")}, value: "line one\nline two\n"},
		{name: "a file without a trailing newline", args: []string{"K=" + at("no-nl")}, value: "plain"},
		{name: "a carriage return stays", args: []string{"K=" + at("crlf")}, value: "windows\r"},
		{name: "a value starting with @ through a file", args: []string{"K=" + at("at-sign")}, value: "@literally"},
		{name: "an empty file is an empty value", args: []string{"K=" + at("empty")}, value: ""},
		{name: "value from stdin", args: []string{"K=-", "-sticky"}, stdin: "from-stdin\n", value: "from-stdin"},
		{name: "stdin without a newline", args: []string{"K=-"}, stdin: "a=b", value: "a=b"},
		{name: "a value written inline stays as written", args: []string{"K=x@y-"}, value: "x@y-"},
		{name: "token from -token-file", args: []string{"K=v", "-token-file", filepath.Join(dir, "token")}, value: "v", auth: "Bearer s3cret-token"},
		{name: "token from SLOTD_TOKEN", args: []string{"K=v"}, env: map[string]string{api.EnvToken: "env-token"}, value: "v", auth: "Bearer env-token"},
		{name: "-token-file before SLOTD_TOKEN", args: []string{"K=v", "-token-file", filepath.Join(dir, "token")}, env: map[string]string{api.EnvToken: "env-token"}, value: "v", auth: "Bearer s3cret-token"},
		{name: "-token still works", args: []string{"K=v", "-token", "argv-token"}, value: "v", auth: "Bearer argv-token"},

		{name: "missing value file", args: []string{"K=" + at("nope")}, err: "read the value of K: open " + filepath.Join(dir, "nope")},
		{name: "@ without a path", args: []string{"K=@"}, err: "K=@ names no file"},
		{name: "value file over the limit", args: []string{"K=" + at("huge-value")}, err: "the value of K in " + filepath.Join(dir, "huge-value") + " is over 1048576 bytes"},
		{name: "missing token file", args: []string{"K=v", "-token-file", filepath.Join(dir, "nope")}, err: "read -token-file: open " + filepath.Join(dir, "nope")},
		{name: "blank token file", args: []string{"K=v", "-token-file", filepath.Join(dir, "blank")}, err: "is empty; write the agent's token into it"},
		{name: "-token and -token-file", args: []string{"K=v", "-token", "t", "-token-file", filepath.Join(dir, "token")}, err: "-token and -token-file both give the token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t)
			f.reply("PUT /v1/sites/{site}/slots/{slot}/settings/{key}", 204, nil)
			e, stdout, stderr := testEnv(f.srv.URL, tc.env)
			e.stdin = strings.NewReader(tc.stdin)
			code := e.run(append([]string{"settings", "web", "production", "set"}, tc.args...))
			if tc.err != "" {
				assert.Equal(t, exitError, code)
				assert.Contains(t, stderr.String(), tc.err)
				assert.Empty(t, stdout.String())
				assert.Empty(t, f.requests(), "nothing is sent when the value or token cannot be read")
				return
			}
			require.Equal(t, exitOK, code, stderr.String())
			got := f.requests()
			require.Len(t, got, 1)
			assert.Equal(t, put, got[0].Path)
			assert.Equal(t, tc.auth, got[0].Auth)
			var body api.SettingRequest
			require.NoError(t, json.Unmarshal([]byte(got[0].Body), &body))
			assert.Equal(t, tc.value, body.Value)
		})
	}
}
