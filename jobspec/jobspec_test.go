package jobspec

import (
	"errors"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/zclconf/go-cty/cty"
)

// readVarFile parses src as the Nomad server does a variables file and returns its values.
func readVarFile(t testing.TB, src string) map[string]string {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "vars.hcl", hcl.InitialPos)
	require.False(t, diags.HasErrors(), "parse %q: %s", src, diags)
	attrs, diags := f.Body.JustAttributes()
	require.False(t, diags.HasErrors(), "attributes of %q: %s", src, diags)
	out := make(map[string]string, len(attrs))
	for name, attr := range attrs {
		v, diags := attr.Expr.Value(nil) // nil context: any interpolation left unescaped fails
		require.False(t, diags.HasErrors(), "value of %s in %q: %s", name, src, diags)
		require.Equal(t, cty.String, v.Type(), "type of %s", name)
		out[name] = v.AsString()
	}
	return out
}

func TestVarFileRoundTrip(t *testing.T) {
	cases := map[string]string{
		"plain":          "web:1.0",
		"empty":          "",
		"quotes":         `say "hi"`,
		"backslashes":    `C:\path\to\ and \n literally`,
		"newlines":       "line1\nline2\r\n\ttabbed",
		"interpolation":  "${var.secret} and ${ upper(x) }",
		"directive":      "%{ if true }yes%{ endif }",
		"escaped_interp": "$${already} %%{escaped}",
		"dollars":        "$ $$ $$$ {} $",
		"trailing":       "ends with $",
		"percent":        "100% sure, 50%{",
		"unicode":        "héllo wörld ✓ 日本 \u00a0nbsp",
		"control":        "bell\a nul\x00 esc\x1b",
		"braces":         "{{ .Template }} }",
		"hash":           "# not a comment // nor this /* */",
		"heredoc":        "<<EOF\nx\nEOF",
	}
	src := VarFile(cases)
	assert.Equal(t, cases, readVarFile(t, src), "variables file:\n%s", src)
}

func TestVarFileEachValue(t *testing.T) {
	// One value per file too, so one bad escape cannot hide behind another.
	for _, v := range []string{`"`, `\`, `\"`, "\n", "${", "$${", "$$${", "%{", "%%{", "$", "%", "${}", "\\${x}"} {
		t.Run(v, func(t *testing.T) {
			assert.Equal(t, map[string]string{"v": v}, readVarFile(t, VarFile(map[string]string{"v": v})))
		})
	}
}

func TestVarFileSorted(t *testing.T) {
	assert.Equal(t, "app_version = \"2\"\nbinary      = \"/bin/app\"\ncount       = \"3\"\n",
		VarFile(map[string]string{"count": "3", "binary": "/bin/app", "app_version": "2"}))
	assert.Equal(t, "", VarFile(nil))
}

// fakeParser records the request and answers with job or err.
type fakeParser struct {
	req *nomadapi.JobsParseRequest
	job *nomadapi.Job
	err error
}

func (f *fakeParser) ParseHCLOpts(req *nomadapi.JobsParseRequest) (*nomadapi.Job, error) {
	f.req = req
	return f.job, f.err
}

func TestParse(t *testing.T) {
	t.Run("sends source and variables, canonicalized", func(t *testing.T) {
		p := &fakeParser{job: testJob(t)}
		job, err := Parse(p, "jobs/web.nomad.hcl", `job "web" {}`, map[string]string{"image": `web:"1"`})
		require.NoError(t, err)
		assert.Equal(t, "web", *job.ID)
		assert.Equal(t, &nomadapi.JobsParseRequest{
			JobHCL:       `job "web" {}`,
			Variables:    "image = \"web:\\\"1\\\"\"\n",
			Canonicalize: true,
		}, p.req)
	})
	t.Run("server error names the file", func(t *testing.T) {
		cause := errors.New(`Unexpected response code: 400 (input.hcl:3,5-9: Unsupported argument; An argument named "imag" is not expected here.)`)
		_, err := Parse(&fakeParser{err: cause}, "jobs/web.nomad.hcl", "", nil)
		require.Error(t, err)
		assert.Equal(t, `parse jobspec jobs/web.nomad.hcl: Unexpected response code: 400 (jobs/web.nomad.hcl:3,5-9: Unsupported argument; An argument named "imag" is not expected here.)`, err.Error())
		assert.ErrorIs(t, err, cause)
		var pe *ParseError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, "jobs/web.nomad.hcl", pe.File)
	})
	t.Run("bad variable names never reach the server", func(t *testing.T) {
		p := &fakeParser{job: testJob(t)}
		_, err := Parse(p, "jobs/web.nomad.hcl", "", map[string]string{"ok": "1", "not ok": "2", "9lives": "3"})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "jobs/web.nomad.hcl")
		assert.Contains(t, err.Error(), `"not ok"`)
		assert.Contains(t, err.Error(), `"9lives"`)
		assert.Nil(t, p.req)
	})
	t.Run("no job", func(t *testing.T) {
		_, err := Parse(&fakeParser{job: &nomadapi.Job{}}, "jobs/web.nomad.hcl", "", nil)
		assert.EqualError(t, err, "parse jobspec jobs/web.nomad.hcl: the Nomad server returned no job")
	})
}
