package config

import (
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// examplePath is the example declarations. Fuzzing under its name resolves their job file, so
// the example parses and mutations of it reach the deepest checks.
const examplePath = "../slots.hcl.example"

// brokenSeeds are mistakes of many kinds for the fuzzer to start from; testdata/fuzz/FuzzParse
// holds the same inputs in Go's corpus format, and inputs that once made Parse stall or crash
// (dollar-run, deep-parens, nested-for: see limits.go).
var brokenSeeds = []string{
	"site \"web\" {\n  job = \"e2e/testapp/testapp.nomad.hcl\"\n",
	"kv_prefix = \nlog_level = \"info\"\n",
	"log_level = \"info\"\nlog_level = \"debug\"\nhttp {}\nhttp {}\n",
	"job \"web\" {\n  group \"app\" {}\n}\n",
	"site \"Web\" {\n  job = \"nope.hcl\"\n  service = \"\"\n  slot \"A_B\" {}\n}\n",
	"site \"web\" {\n  job = \"e2e/testapp/testapp.nomad.hcl\"\n  service = \"web\"\n  slot \"a\" { auto_swap = \"b\" }\n  slot \"b\" { auto_swap = \"c\" }\n  slot \"c\" { auto_swap = \"a\" }\n  slot \"d\" { auto_swap = \"d\" }\n  slot \"e\" { auto_swap = \"zz\" }\n}\n",
	"site \"web\" {\n  job = \"e2e/testapp/testapp.nomad.hcl\"\n  service = \"web\"\n  deploy_timeout = \"-1s\"\n  warmup {\n    paths = [\"x\", \"\"]\n    statuses = [0, 200, 1000]\n    attempts = 0\n    timeout = \"5\"\n    interval = \"\"\n  }\n  monitor {\n    threshold = 1e400\n    window = \"0s\"\n    grace = \"-1h\"\n  }\n  slot \"a\" {}\n  slot \"b\" {}\n}\n",
	"site \"web\" {\n  job = \"e2e/testapp/testapp.nomad.hcl\"\n  service = \"web\"\n  slot \"a\" {\n    settings = { \"1X\" = \"v\", SLOTD_SITE = \"v\", K = \"v\", K = \"w\" }\n    sticky = { K = \"s\", \"\" = \"e\", (\"computed\") = \"c\" }\n    tags = [\"\", \" \"]\n    preview_tags = [\"\"]\n  }\n  slot \"a\" {}\n}\n",
	"http {\n  address = \"nohost\"\n  token_file = \"/dev/null\"\n  tls_cert_file = \"c.pem\"\n  read_requires_token = true\n}\nconsul {\n  token = \"t\"\n  token_file = \"\"\n  address = \"\"\n}\nnomad {\n  address = \"127.0.0.1:4646\"\n  token_file = \"/nonexistent/token\"\n}\n",
	"site \"web\" {\n  job = \"${config_dir}/${var.x}\"\n  service = upper(\"web\")\n  vars = { a = env(\"A\", \"B\"), b = env(null), c = env([1]) }\n  slot \"a\" {}\n  slot \"b\" {}\n}\n",
	"site \"web\" {\n  job = [\"x\"]\n  service = 5\n  vars = [\"a\"]\n  warmup {\n    statuses = \"200\"\n    attempts = 1.5\n    paths = null\n  }\n  slot \"a\" { settings = { A = [1], B = null } }\n  slot \"b\" { tags = null }\n}\n",
	"site \"web\" {\n  job = <<EOT\n${config_dir}/job.hcl\nEOT\n  service = \"web\"\n  vars = { for k in [\"a\", \"b\"] : k => \"${k}-x\" }\n  slot \"a\" { sticky = { for k in [\"X\", \"X\"] : k => k } }\n  slot {}\n  slot \"b\" \"c\" {}\n}\n",
	"site \"web\" {\n  slot \"a\" {\n    slot \"b\" {\n      warmup { monitor {} }\n    }\n  }\n}\n",
	"\xff\xfe site \"\x00\" { job = \"\xc3\x28\" }\n",
	"",
	"site \"web\" { job = \"a\", service = \"b\" }\n",
}

// FuzzParse checks that no input makes Parse panic, and that every problem it reports has a
// position a reader can go to.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile(examplePath)
	require.NoError(f, err)
	f.Add(example)
	for _, seed := range brokenSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse(examplePath, src)
		if err == nil {
			require.NotNil(t, cfg)
			return
		}
		var diags Diagnostics
		require.True(t, errors.As(err, &diags), "error is %T, not Diagnostics: %v", err, err)
		require.NotEmpty(t, diags)
		// Plain checks: an input with thousands of problems runs them thousands of times, and
		// the fuzzer runs such an input thousands of times more to minimize it.
		for _, d := range diags {
			switch {
			case d.Subject == nil:
				t.Fatalf("%s: no position", d.Summary)
			case d.Subject.Filename == "":
				t.Fatalf("%s: no file name", d.Summary)
			case d.Subject.Start.Line < 1:
				t.Fatalf("%s: line %d before the first", d.Summary, d.Subject.Start.Line)
			}
		}
	})
}
