package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/zclconf/go-cty/cty"

	"github.com/slotd/slotd/agent"
	"github.com/slotd/slotd/config"
)

// taskTemplates reads slotd.nomad.hcl's template blocks as Nomad would submit them: their data
// by destination, with the job's variables at their defaults.
func taskTemplates(t *testing.T) map[string]string {
	t.Helper()
	src, err := os.ReadFile("slotd.nomad.hcl")
	require.NoError(t, err)
	f, diags := hclsyntax.ParseConfig(src, "slotd.nomad.hcl", hcl.InitialPos)
	require.False(t, diags.HasErrors(), diags.Error())
	vars := map[string]cty.Value{}
	var task *hclsyntax.Block
	for _, b := range f.Body.(*hclsyntax.Body).Blocks {
		switch b.Type {
		case "variable":
			if d := b.Body.Attributes["default"]; d != nil {
				v, diags := d.Expr.Value(nil)
				require.False(t, diags.HasErrors(), diags.Error())
				vars[b.Labels[0]] = v
			}
		case "job":
			task = child(t, child(t, b, "group"), "task")
		}
	}
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{"var": cty.ObjectVal(vars)}}
	out := map[string]string{}
	for _, b := range task.Body.Blocks {
		if b.Type != "template" {
			continue
		}
		var dest, data string
		for name, to := range map[string]*string{"destination": &dest, "data": &data} {
			v, diags := b.Body.Attributes[name].Expr.Value(ctx)
			require.False(t, diags.HasErrors(), diags.Error())
			*to = v.AsString()
		}
		out[dest] = data
	}
	return out
}

func child(t *testing.T, b *hclsyntax.Block, typ string) *hclsyntax.Block {
	t.Helper()
	for _, c := range b.Body.Blocks {
		if c.Type == typ {
			return c
		}
	}
	t.Fatalf("no %s block in %s", typ, b.Type)
	return nil
}

// varItem is an item of a Nomad variable as Nomad's templates see it.
type varItem struct{ Value string }

// TestJobRequiresAPIToken renders the daemon's settings and its API token file the way the
// task does (the node's address, the Nomad variable's items) and loads them: without api_token
// the daemon refuses to start, naming the token file; with it, its API requires the token.
func TestJobRequiresAPIToken(t *testing.T) {
	tmpls := taskTemplates(t)
	cases := []struct {
		name  string
		items map[string]string
		err   string // part of the load error; empty: loads
	}{
		{name: "api_token set", items: map[string]string{"slots_hcl": "", "api_token": "s3cret"}},
		{name: "api_token left out", items: map[string]string{"slots_hcl": ""}, err: "secrets/api_token"},
		{name: "api_token empty", items: map[string]string{"slots_hcl": "", "api_token": ""}, err: "secrets/api_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			alloc := t.TempDir()
			env := map[string]string{
				"NOMAD_ADDR_http":   "10.0.0.7:25123",
				"NOMAD_ALLOC_DIR":   filepath.Join(alloc, "alloc"),
				"NOMAD_SECRETS_DIR": filepath.Join(alloc, "secrets"),
			}
			items := map[string]*varItem{}
			for k, v := range tc.items {
				items[k] = &varItem{v}
			}
			funcs := template.FuncMap{
				"env": func(k string) string { return env[k] },
				"nomadVar": func(path string) map[string]*varItem {
					require.Equal(t, "nomad/jobs/slotd", path)
					return items
				},
			}
			for _, dest := range []string{"local/config/00-nomad.hcl", "secrets/api_token"} {
				data, ok := tmpls[dest]
				require.True(t, ok, "no template writes %s", dest)
				tmpl, err := template.New(dest).Funcs(funcs).Parse(data)
				require.NoError(t, err)
				var b strings.Builder
				require.NoError(t, tmpl.Execute(&b, nil))
				path := filepath.Join(alloc, dest)
				require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
				require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
			}
			cfg, err := config.Load(filepath.Join(alloc, "local/config"))
			if tc.err != "" {
				require.Error(t, err, "the daemon starts without api_token")
				assert.Contains(t, err.Error(), tc.err)
				assert.Contains(t, err.Error(), "token_file")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "s3cret", cfg.HTTP.Token)
			assert.Equal(t, env["NOMAD_ADDR_http"], cfg.HTTP.Address)
		})
	}
}

// nomadMaxKillTimeout is a Nomad client's max_kill_timeout when its configuration leaves it out:
// a job's kill_timeout above it is cut down to it.
const nomadMaxKillTimeout = 30 * time.Second

// TestKillTimeoutCoversTheStop: Nomad waits the task's kill_timeout after SIGTERM before it
// kills the daemon; that must cover the daemon's stop (its phases' grace, the release of the
// leadership, the API's shutdown), and fit under a default client's max_kill_timeout, which
// would cut it down silently.
func TestKillTimeoutCoversTheStop(t *testing.T) {
	src, err := os.ReadFile("slotd.nomad.hcl")
	require.NoError(t, err)
	f, diags := hclsyntax.ParseConfig(src, "slotd.nomad.hcl", hcl.InitialPos)
	require.False(t, diags.HasErrors(), diags.Error())
	var task *hclsyntax.Block
	for _, b := range f.Body.(*hclsyntax.Body).Blocks {
		if b.Type == "job" {
			task = child(t, child(t, b, "group"), "task")
		}
	}
	attr := task.Body.Attributes["kill_timeout"]
	require.NotNil(t, attr, "the slotd task sets no kill_timeout (Nomad's default is 5s)")
	v, diags := attr.Expr.Value(nil)
	require.False(t, diags.HasErrors(), diags.Error())
	kill, err := time.ParseDuration(v.AsString())
	require.NoError(t, err)
	assert.GreaterOrEqual(t, kill, agent.StopTime, "kill_timeout %s is shorter than the daemon's stop (%s)", kill, agent.StopTime)
	assert.LessOrEqual(t, kill, nomadMaxKillTimeout, "kill_timeout %s is over a default client's max_kill_timeout", kill)
}
