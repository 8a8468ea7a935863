package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
)

// TestSecrets: with a token configured, reads need it; sticky values and sensitive deploy
// variables appear in no API answer, no CLI output and no history entry in Consul unless
// revealed, and revealing needs the token.
func TestSecrets(t *testing.T) {
	t.Parallel()
	stack := Shared(t)
	apiKey, version := "sk-live-"+Suffix(), "v-secret-"+Suffix()
	site := newSite(func(s *siteSpec) {
		s.token = "t0ken-" + Suffix()
		s.sticky = map[string]map[string]string{"production": {"API_KEY": apiKey}}
		s.sensitiveVars = []string{"app_version"}
	})
	d := startDaemon(t, stack, site)
	ctx := context.Background()
	name, token := site.name, site.token
	secrets := []string{"prod-db", "staging-db", apiKey, version}

	// call sends one request to the agent and returns its status and body.
	call := func(method, path, bearer, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, "http://"+d.addr+path, strings.NewReader(body))
		require.NoError(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	noSecret := func(what, out string) {
		t.Helper()
		for _, s := range secrets {
			assert.NotContains(t, out, s, "%s shows a secret in clear", what)
		}
	}

	code, _ := call("GET", "/v1/sites/"+name, "", "")
	assert.Equal(t, 401, code, "a read without the token")
	code, _ = call("GET", "/v1/health", "", "")
	assert.Equal(t, 200, code, "health checks send no token")

	// A deploy with the sensitive variable: the lane runs its value, the operation shows none.
	masked, err := api.NewClient(api.Config{Address: "http://" + d.addr, Token: token})
	require.NoError(t, err)
	op, err := masked.Deploy(ctx, name, "staging", map[string]string{"app_version": version})
	require.NoError(t, err)
	assert.Equal(t, api.Hidden, op.Vars["app_version"], "the deploy's answer")
	op = waitTerminal(ctx, t, d, op)
	require.Equal(t, api.StateSucceeded, op.State, "deploy: %s", op.Error)
	waitAnswers(t, stack, site.host("staging"), 30*time.Second, "version "+version, func(a appAnswer) bool { return a.Version == version })
	// A write whose answer echoes the slot's settings (the same value: nothing rolls out).
	code, body := call("PUT", "/v1/sites/"+name+"/slots/production/settings/API_KEY", token, `{"value": "`+apiKey+`", "sticky": true}`)
	require.Equal(t, 200, code, body)
	noSecret("the answer of PUT settings", body)
	waitIdle(t, d, name)

	for _, path := range []string{
		"/v1/sites", "/v1/sites/" + name, "/v1/sites/" + name + "/slots/production/settings",
		"/v1/sites/" + name + "/slots/staging/settings", "/v1/sites/" + name + "/history", "/v1/operations/" + op.ID,
	} {
		code, body := call("GET", path, token, "")
		require.Equal(t, 200, code, "GET %s: %s", path, body)
		noSecret("GET "+path, body)
	}
	kv, _, err := stack.Consul.KV().List("slotd-"+name+"/sites/"+name+"/history/", nil)
	require.NoError(t, err)
	require.NotEmpty(t, kv, "the deploy's history entry in Consul")
	for _, p := range kv {
		assert.NotContains(t, string(p.Value), version, "history entry %s keeps the sensitive variable", p.Key)
	}

	for _, args := range [][]string{
		{"settings", name, "production"}, {"settings", name, "production", "-json"},
		{"status", name}, {"status", name, "-json"}, {"history", name, "-json"}, {"follow", op.ID, "-json"},
	} {
		code, out, errOut := slotdCLI(t, d, append(args, "-token", token)...)
		require.Equal(t, 0, code, "slotd %s: %s", strings.Join(args, " "), errOut)
		noSecret("slotd "+strings.Join(args, " "), out)
	}

	// Revealed with the token, and only with it.
	code, body = call("GET", "/v1/sites/"+name+"/slots/production/settings?reveal=true", token, "")
	require.Equal(t, 200, code, body)
	var set api.Settings
	require.NoError(t, json.Unmarshal([]byte(body), &set))
	assert.Equal(t, apiKey, set.Sticky["API_KEY"])
	assert.False(t, set.Masked)
	code, body = call("GET", "/v1/sites/"+name+"/slots/production/settings?reveal=true", "", "")
	assert.Equal(t, 401, code, body)
	code, out, _ := slotdCLI(t, d, "settings", name, "production", "-reveal", "-token", token)
	require.Equal(t, 0, code)
	assert.Contains(t, out, apiKey)
	code, out, _ = slotdCLI(t, d, "status", name, "-json", "-reveal", "-token", token)
	require.Equal(t, 0, code)
	assert.Contains(t, out, apiKey)
	code, _, errOut := slotdCLI(t, d, "settings", name, "production", "-reveal")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "401")
}
