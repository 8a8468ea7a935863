package config

import (
	"maps"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// decl composes a declarations file: daemon settings, then site "web" with extra site content
// and the bodies of its production and staging slots.
type decl struct{ daemon, site, prod, staging string }

func (d decl) String() string {
	return d.daemon + `
site "web" {
  job     = "job.nomad.hcl"
  service = "web"
` + d.site + `
  slot "production" {
` + d.prod + `
  }
  slot "staging" {
` + d.staging + `
  }
}
`
}

// marker ends the line a case expects its one problem on.
const marker = "# <-"

func markedLine(t testing.TB, src string) int {
	t.Helper()
	for i, line := range strings.Split(src, "\n") {
		if strings.HasSuffix(strings.TrimSpace(line), marker) {
			return i + 1
		}
	}
	t.Fatalf("no line ends in %q:\n%s", marker, src)
	return 0
}

// caseFiles are next to every case's declarations, for the rules about files.
var caseFiles = map[string]string{
	"token":       "tok\n",
	"empty.token": " \n",
	"big.token":   strings.Repeat("x", maxSecretSize+1),
	"jobs/x":      "",
	"cert.pem":    "",
	"key.pem":     "",
	"tagged.nomad.hcl": `job "web" {
  group "app" {
    service {
      name = "web"
      tags = ["edge", "qa", "${NOMAD_ALLOC_ID}", var.tag]
    }
    task "server" {
      service {
        name = "web"
        tags = ["from-task"]
      }
    }
  }
  group "other" {
    service {
      name = "api"
      tags = ["api-only"]
    }
  }
}
`,
}

// taggedJob is a declarations file of site "web" whose job is tagged.nomad.hcl.
func taggedJob(d decl) string {
	return strings.Replace(d.String(), `job     = "job.nomad.hcl"`, `job     = "tagged.nomad.hcl"`, 1)
}

// TestRules has one case per rule: a file with exactly one mistake gets exactly one problem, on
// the marked line, saying what to fix.
func TestRules(t *testing.T) {
	long := strings.Repeat("a", 64)
	cases := []struct {
		name    string
		src     string
		summary string
		detail  string // part of the detail; $DIR is the case's folder
		col     int    // expected column, when the case is about one
	}{
		// HCL's own checks.
		{name: "syntax error", src: "site \"web\" { " + marker + "\n", summary: "Unclosed configuration block"},
		{name: "unknown attribute", src: decl{site: `  colour = "blue" ` + marker}.String(), summary: "Unsupported argument"},
		{name: "unknown block", src: decl{site: `  healthcheck {} ` + marker}.String(), summary: "Unsupported block type"},
		{name: "unknown top-level block", src: "job \"web\" {} " + marker + "\n" + decl{}.String(), summary: "Unsupported block type"},
		{name: "attribute twice", src: decl{site: `  service = "api" ` + marker}.String(), summary: "Attribute redefined"},
		{name: "block twice", src: decl{site: "  warmup {}\n  warmup {} " + marker}.String(), summary: "Duplicate warmup block"},
		{name: "http block twice", src: "http {}\nhttp {} " + marker + "\n" + decl{}.String(), summary: "Duplicate http block"},
		{name: "slot without name", src: decl{site: `  slot {} ` + marker}.String(), summary: "Missing name for slot"},
		{
			name:    "job left out",
			src:     "site \"web\" { " + marker + "\n  service = \"web\"\n  slot \"a\" {}\n  slot \"b\" {}\n}\n",
			summary: "Missing required argument", detail: `"job"`,
		},
		{
			name:    "wrong type is reported once",
			src:     decl{site: "  warmup {\n    attempts = \"five\" " + marker + "\n  }"}.String(),
			summary: "Unsuitable value type",
		},
		{name: "unknown variable", src: decl{site: `  vars = { a = var.x } ` + marker}.String(), summary: "Unknown variable"},
		{name: "unknown function", src: decl{site: `  vars = { a = upper("x") } ` + marker}.String(), summary: "Call to unknown function"},

		// Sites and slots.
		{
			name:    "site twice",
			src:     decl{}.String() + strings.Replace(decl{}.String(), `site "web" {`, `site "web" { `+marker, 1),
			summary: "Duplicate site", detail: `already declared at $DIR/slots.hcl:2:1`, col: 6,
		},
		{name: "site name not a DNS label", src: strings.Replace(decl{}.String(), `site "web" {`, `site "Web" { `+marker, 1), summary: "Invalid site name", col: 6},
		{name: "site name with underscore", src: strings.Replace(decl{}.String(), `site "web" {`, `site "my_web" { `+marker, 1), summary: "Invalid site name"},
		{
			name:    "slot twice",
			src:     "site \"web\" {\n  job = \"job.nomad.hcl\"\n  service = \"web\"\n  slot \"a\" {}\n  slot \"b\" {}\n  slot \"a\" {} " + marker + "\n}\n",
			summary: "Duplicate slot", detail: `Slot "a" is already declared in site "web" at $DIR/slots.hcl:4:3`, col: 8,
		},
		{
			name:    "one slot",
			src:     "site \"web\" { " + marker + "\n  job = \"job.nomad.hcl\"\n  service = \"web\"\n  slot \"production\" {}\n}\n",
			summary: "Too few slots", detail: "declares 1 slot(s)",
		},
		{
			name:    "no slot",
			src:     "site \"web\" { " + marker + "\n  job = \"job.nomad.hcl\"\n  service = \"web\"\n}\n",
			summary: "Too few slots", detail: "declares 0 slot(s)",
		},
		{name: "slot name upper case", src: decl{site: `  slot "QA" {} ` + marker}.String(), summary: "Invalid slot name", col: 8},
		{name: "slot name leading dash", src: decl{site: `  slot "-qa" {} ` + marker}.String(), summary: "Invalid slot name"},
		{name: "slot name trailing dash", src: decl{site: `  slot "qa-" {} ` + marker}.String(), summary: "Invalid slot name"},
		{name: "slot name with dot", src: decl{site: `  slot "q.a" {} ` + marker}.String(), summary: "Invalid slot name"},
		{name: "slot name empty", src: decl{site: `  slot "" {} ` + marker}.String(), summary: "Invalid slot name"},
		{name: "slot name too long", src: decl{site: `  slot "` + long + `" {} ` + marker}.String(), summary: "Invalid slot name"},

		// scale.
		{name: "scale a word other than live", src: decl{prod: `    scale = "auto" ` + marker}.String(), summary: "Invalid scale", detail: `scale is "auto"`, col: 5},
		{name: "scale a number", src: decl{prod: `    scale = 3 ` + marker}.String(), summary: "Invalid scale", detail: "scale is a number"},
		{name: "scale a list", src: decl{prod: `    scale = [3] ` + marker}.String(), summary: "Invalid scale", detail: "scale is a tuple"},
		{name: "scale empty", src: decl{prod: `    scale = {} ` + marker}.String(), summary: "Invalid scale", detail: "names no task group"},
		{name: "scale count negative", src: decl{prod: `    scale = { app = -1 } ` + marker}.String(), summary: "Invalid scale count", detail: `task group "app"`, col: 15},
		{name: "scale count fraction", src: decl{prod: `    scale = { app = 1.5 } ` + marker}.String(), summary: "Invalid scale count"},
		{name: "scale count a string", src: decl{prod: `    scale = { web = 1, app = "3" } ` + marker}.String(), summary: "Invalid scale count", detail: `task group "app"`, col: 24},
		{name: "scale count too large", src: decl{prod: `    scale = { app = 10001 } ` + marker}.String(), summary: "Invalid scale count", detail: "from 0 to 10000"},
		{name: "scale group twice", src: decl{prod: "    scale = {\n      app = 1\n      app = 2 " + marker + "\n    }"}.String(), summary: "Duplicate key"},

		// auto_swap.
		{name: "auto_swap to a missing slot", src: decl{staging: `    auto_swap = "prod" ` + marker}.String(), summary: "Unknown auto_swap slot", detail: `names slot "prod", which site "web" does not declare; name one of: production.`},
		{name: "auto_swap to itself", src: decl{staging: `    auto_swap = "staging" ` + marker}.String(), summary: "Invalid auto_swap"},
		{
			name:    "auto_swap cycle of two",
			src:     decl{prod: `    auto_swap = "staging" ` + marker, staging: `    auto_swap = "production"`}.String(),
			summary: "Auto-swap cycle", detail: "(production → staging → production)",
		},
		{
			name: "auto_swap cycle of three",
			src: decl{
				site:    `  slot "qa" { auto_swap = "production" } ` + marker,
				prod:    `    auto_swap = "staging"`,
				staging: `    auto_swap = "qa"`,
			}.String(),
			summary: "Auto-swap cycle", detail: "(qa → production → staging → qa)", col: 15,
		},
		{
			name: "auto_swap chain into a cycle",
			src: decl{
				site:    `  slot "qa" { auto_swap = "production" }`,
				prod:    `    auto_swap = "staging" ` + marker,
				staging: `    auto_swap = "production"`,
			}.String(),
			summary: "Auto-swap cycle", detail: "(production → staging → production)",
		},

		// Settings.
		{name: "settings name", src: decl{prod: `    settings = { "MY-KEY" = "x" } ` + marker}.String(), summary: "Invalid setting name", detail: `"MY-KEY" in settings`, col: 18},
		{name: "settings name with digit first", src: decl{prod: `    settings = { "1X" = "x" } ` + marker}.String(), summary: "Invalid setting name"},
		{name: "sticky name", src: decl{prod: `    sticky = { "A B" = "x" } ` + marker}.String(), summary: "Invalid setting name", detail: `"A B" in sticky`},
		{name: "settings reserved", src: decl{prod: `    settings = { SLOTD_SLOT = "x" } ` + marker}.String(), summary: "Reserved setting name", detail: "SLOTD_"},
		{name: "sticky reserved", src: decl{prod: `    sticky = { A = "x", SLOTD_FOO = "x" } ` + marker}.String(), summary: "Reserved setting name", col: 25},
		{
			name:    "settings and sticky",
			src:     decl{prod: "    settings = { DB = \"x\" }\n    sticky = { DB = \"y\" } " + marker}.String(),
			summary: "Setting both swappable and sticky", detail: `"DB" of slot "production"`,
		},
		{name: "settings value with a NUL byte", src: decl{prod: `    settings = { A = "x", B = "x\u0000y" } ` + marker}.String(), summary: "Invalid setting value", detail: `settings of slot "production": the value of setting "B" holds a NUL byte`, col: 27},
		{name: "sticky value too long", src: decl{prod: `    sticky = { BIG = "` + strings.Repeat("x", MaxSettingValue+1) + `" } ` + marker}.String(), summary: "Invalid setting value", detail: "over the limit of 65536 bytes (64 KiB)"},
		{
			name:    "settings document too large",
			src:     decl{staging: "    settings = { " + marker + "\n      A = \"" + strings.Repeat("a", 50000) + "\"\n      B = \"" + strings.Repeat("b", 50000) + "\"\n      C = \"" + strings.Repeat("c", 50000) + "\"\n    }"}.String(),
			summary: "Settings too large", detail: "the settings document of 3 settings is 150035 bytes, over the limit of 131072 bytes",
		},
		{name: "settings key twice", src: decl{prod: `    settings = { A = "x", A = "y" } ` + marker}.String(), summary: "Duplicate key", col: 27},
		{name: "vars key twice", src: decl{site: `  vars = { a = "x", "a" = "y" } ` + marker}.String(), summary: "Duplicate key"},

		// Sensitive variables.
		{name: "sensitive_vars name", src: decl{site: `  sensitive_vars = ["db_password", "db password"] ` + marker}.String(), summary: "Invalid variable name", detail: `"db password"`, col: 36},
		{name: "sensitive_vars name empty", src: decl{site: `  sensitive_vars = [""] ` + marker}.String(), summary: "Invalid variable name"},
		{name: "sensitive_vars name twice", src: decl{site: `  sensitive_vars = ["a", "a"] ` + marker}.String(), summary: "Duplicate sensitive variable", detail: "first at $DIR/slots.hcl:", col: 26},
		{name: "sensitive_vars not a list", src: decl{site: `  sensitive_vars = "db_password" ` + marker}.String(), summary: "Unsuitable value type"},

		// job and service.
		{
			name:    "job missing",
			src:     strings.Replace(decl{}.String(), `job     = "job.nomad.hcl"`, `job = "jobs/web.nomad.hcl" `+marker, 1),
			summary: "File not found", detail: `job file "$DIR/jobs/web.nomad.hcl" does not exist`,
		},
		{
			name:    "job is a folder",
			src:     strings.Replace(decl{}.String(), `job     = "job.nomad.hcl"`, `job = "jobs" `+marker, 1),
			summary: "Not a file", detail: "not a regular file",
		},
		{name: "job empty", src: strings.Replace(decl{}.String(), `job     = "job.nomad.hcl"`, `job = "" `+marker, 1), summary: "Empty path"},
		{name: "service empty", src: strings.Replace(decl{}.String(), `service = "web"`, `service = "" `+marker, 1), summary: "Empty service"},
		{name: "service blank", src: strings.Replace(decl{}.String(), `service = "web"`, `service = "  " `+marker, 1), summary: "Empty service"},

		// Durations.
		{name: "deploy_timeout unparseable", src: decl{site: `  deploy_timeout = "soon" ` + marker}.String(), summary: "Invalid duration", detail: `deploy_timeout = "soon" is not a duration`},
		{name: "deploy_timeout zero", src: decl{site: `  deploy_timeout = "0s" ` + marker}.String(), summary: "Invalid duration", detail: "longer than 0s"},
		{name: "timeout without unit", src: decl{site: "  warmup {\n    timeout = \"5\" " + marker + "\n  }"}.String(), summary: "Invalid duration"},
		{name: "timeout empty", src: decl{site: "  warmup {\n    timeout = \"\" " + marker + "\n  }"}.String(), summary: "Invalid duration"},
		{name: "timeout zero", src: decl{site: "  warmup {\n    timeout = \"0s\" " + marker + "\n  }"}.String(), summary: "Invalid duration"},
		{name: "interval negative", src: decl{site: "  warmup {\n    interval = \"-1s\" " + marker + "\n  }"}.String(), summary: "Invalid duration", detail: "must not be negative"},
		{name: "window zero", src: decl{site: "  monitor {\n    window = \"0s\" " + marker + "\n  }"}.String(), summary: "Invalid duration"},
		{name: "window negative", src: decl{site: "  monitor {\n    window = \"-1m\" " + marker + "\n  }"}.String(), summary: "Invalid duration"},
		{name: "rollback_window negative", src: decl{site: "  monitor {\n    rollback_window = \"-5s\" " + marker + "\n  }"}.String(), summary: "Invalid duration"},
		{name: "grace negative", src: decl{site: "  monitor {\n    grace = \"-5s\" " + marker + "\n  }"}.String(), summary: "Invalid duration"},

		// Warm-up.
		{name: "status too low", src: decl{site: "  warmup {\n    statuses = [200, 99] " + marker + "\n  }"}.String(), summary: "Invalid status", detail: "Status 99", col: 22},
		{name: "status too high", src: decl{site: "  warmup {\n    statuses = [600] " + marker + "\n  }"}.String(), summary: "Invalid status"},
		{name: "statuses empty", src: decl{site: "  warmup {\n    statuses = [] " + marker + "\n  }"}.String(), summary: "No warm-up statuses"},
		{name: "attempts zero", src: decl{site: "  warmup {\n    attempts = 0 " + marker + "\n  }"}.String(), summary: "Invalid attempts", detail: "attempts is 0"},
		{name: "attempts negative", src: decl{site: "  warmup {\n    attempts = -1 " + marker + "\n  }"}.String(), summary: "Invalid attempts"},
		{name: "path without slash", src: decl{site: "  warmup {\n    paths = [\"/\", \"healthz\"] " + marker + "\n  }"}.String(), summary: "Invalid warm-up path", detail: `"healthz"`, col: 19},
		{name: "paths empty", src: decl{site: "  warmup {\n    paths = [] " + marker + "\n  }"}.String(), summary: "No warm-up paths"},

		// Monitor.
		{name: "threshold zero", src: decl{site: "  monitor {\n    threshold = 0 " + marker + "\n  }"}.String(), summary: "Invalid threshold"},
		{name: "threshold above one", src: decl{site: "  monitor {\n    threshold = 1.5 " + marker + "\n  }"}.String(), summary: "Invalid threshold"},
		{name: "threshold negative", src: decl{site: "  monitor {\n    threshold = -0.5 " + marker + "\n  }"}.String(), summary: "Invalid threshold"},

		// Tags.
		{name: "tag empty", src: decl{prod: `    tags = ["a", ""] ` + marker}.String(), summary: "Empty tag", detail: "tags holds", col: 18},
		{name: "preview tag blank", src: decl{prod: `    preview_tags = [" "] ` + marker}.String(), summary: "Empty tag", detail: "preview_tags holds"},
		{
			name:    "tag shared by two slots",
			src:     decl{prod: `    tags = ["www.example.com"]`, staging: `    tags = ["a", "www.example.com"] ` + marker}.String(),
			summary: "Shared route tag", detail: `tags of slot "staging" holds "www.example.com", which slot "production" declares too (at $DIR/slots.hcl:`, col: 18,
		},
		{
			name:    "preview tag shared with a previous tag",
			src:     decl{prod: `    previous_tags = ["old"]`, staging: `    preview_tags = ["old"] ` + marker}.String(),
			summary: "Shared route tag", detail: `preview_tags of slot "staging" holds "old"`,
		},
		{
			name:    "tag names another slot",
			src:     decl{staging: `    tags = ["production"] ` + marker}.String(),
			summary: "Route tag names another slot", detail: `tags of slot "staging" holds "production", the name of slot "production"`,
		},
		{
			name:    "preview tag names another slot",
			src:     decl{site: `  slot "qa" { preview_tags = ["staging"] } ` + marker}.String(),
			summary: "Route tag names another slot",
		},
		{
			name:    "tag in the jobspec's service tags",
			src:     taggedJob(decl{prod: `    tags = ["edge"] ` + marker}),
			summary: "Route tag in the jobspec's tags", detail: `which the job file gives service "web" at $DIR/tagged.nomad.hcl:5:15`,
		},
		{
			name:    "tag in a task service's tags",
			src:     taggedJob(decl{staging: `    previous_tags = ["from-task"] ` + marker}),
			summary: "Route tag in the jobspec's tags", detail: `tagged.nomad.hcl:10:17`,
		},
		{
			name:    "slot name in the jobspec's service tags",
			src:     taggedJob(decl{site: `  slot "qa" {} ` + marker}),
			summary: "Slot name in the jobspec's tags", detail: `with "qa" at $DIR/tagged.nomad.hcl:5:23, the name of slot "qa"`, col: 8,
		},

		// The daemon's own settings.
		{name: "log_level", src: decl{daemon: `log_level = "verbose" ` + marker}.String(), summary: "Invalid log_level", detail: "trace, debug, info, warn, error"},
		{name: "history_limit zero", src: decl{daemon: `history_limit = 0 ` + marker}.String(), summary: "Invalid history_limit", detail: "history_limit is 0; a site keeps at least"},
		{name: "site history_limit negative", src: decl{site: `  history_limit = -5 ` + marker}.String(), summary: "Invalid history_limit", detail: "history_limit is -5", col: 3},
		{name: "history_limit not a number", src: decl{site: `  history_limit = "many" ` + marker}.String(), summary: "Unsuitable value type"},
		{name: "kv_prefix empty", src: decl{daemon: `kv_prefix = "" ` + marker}.String(), summary: "Empty kv_prefix"},
		{name: "kv_prefix leading slash", src: decl{daemon: `kv_prefix = "/slotd" ` + marker}.String(), summary: "Invalid kv_prefix", detail: `write "slotd"`},
		{name: "kv_prefix trailing slash", src: decl{daemon: `kv_prefix = "apps/slotd/" ` + marker}.String(), summary: "Invalid kv_prefix", detail: `write "apps/slotd"`},
		{name: "http address without port", src: decl{daemon: `http { address = "localhost" } ` + marker}.String(), summary: "Invalid address", col: 8},
		{name: "http address named port", src: decl{daemon: `http { address = "127.0.0.1:http" } ` + marker}.String(), summary: "Invalid address"},
		{name: "http address port too big", src: decl{daemon: `http { address = "127.0.0.1:70000" } ` + marker}.String(), summary: "Invalid address"},
		{name: "http address empty", src: decl{daemon: `http { address = "" } ` + marker}.String(), summary: "Invalid address"},
		{name: "http token_file missing", src: decl{daemon: `http { token_file = "nope" } ` + marker}.String(), summary: "Cannot read token file", detail: "$DIR/nope"},
		{name: "http token_file empty name", src: decl{daemon: `http { token_file = "" } ` + marker}.String(), summary: "Empty token_file"},
		{name: "http token_file holds nothing", src: decl{daemon: `http { token_file = "empty.token" } ` + marker}.String(), summary: "Empty token file"},
		{name: "http token_file too large", src: decl{daemon: `http { token_file = "big.token" } ` + marker}.String(), summary: "Cannot read token file", detail: "too large for a token"},
		{name: "http token_file is a folder", src: decl{daemon: `http { token_file = "jobs" } ` + marker}.String(), summary: "Cannot read token file", detail: "not a regular file"},
		{name: "open API on every interface", src: decl{daemon: `http { address = ":4680" } ` + marker}.String(), summary: "API open to the network", detail: "set token_file"},
		{name: "open API on a wildcard IP", src: decl{daemon: `http { address = "0.0.0.0:4680" } ` + marker}.String(), summary: "API open to the network", detail: "insecure_no_token = true"},
		{name: "open API on a LAN address", src: decl{daemon: `http { address = "10.0.0.5:4680" } ` + marker}.String(), summary: "API open to the network", detail: `"10.0.0.5:4680"`},
		{name: "open API on IPv6", src: decl{daemon: `http { address = "[::]:4680" } ` + marker}.String(), summary: "API open to the network"},
		{name: "open API on a host name", src: decl{daemon: `http { address = "slotd.internal:4680" } ` + marker}.String(), summary: "API open to the network"},
		{
			name:    "insecure_no_token with a token",
			src:     decl{daemon: "http {\n  token_file = \"token\"\n  insecure_no_token = true " + marker + "\n}"}.String(),
			summary: "Token and no token", detail: "remove insecure_no_token",
		},
		{name: "read_requires_token without token", src: decl{daemon: `http { read_requires_token = true } ` + marker}.String(), summary: "No token to require"},
		{name: "tls cert without key", src: decl{daemon: `http { tls_cert_file = "cert.pem" } ` + marker}.String(), summary: "Incomplete TLS settings", detail: "tls_cert_file is set without tls_key_file"},
		{name: "tls key without cert", src: decl{daemon: `http { tls_key_file = "key.pem" } ` + marker}.String(), summary: "Incomplete TLS settings", detail: "tls_key_file is set without tls_cert_file"},
		{
			name:    "tls cert missing",
			src:     decl{daemon: "http {\n  tls_cert_file = \"nope.pem\" " + marker + "\n  tls_key_file = \"key.pem\"\n}"}.String(),
			summary: "File not found", detail: "$DIR/nope.pem",
		},
		{name: "consul token twice", src: decl{daemon: "consul {\n  token_file = \"token\"\n  token = \"t\" " + marker + "\n}"}.String(), summary: "Token given twice", detail: "consul sets both"},
		{name: "nomad token twice", src: decl{daemon: "nomad {\n  token = \"t\" " + marker + "\n  token_file = \"token\"\n}"}.String(), summary: "Token given twice", detail: "nomad sets both"},
		{name: "consul token_file missing", src: decl{daemon: `consul { token_file = "nope" } ` + marker}.String(), summary: "Cannot read token file"},
		{name: "nomad token_file missing", src: decl{daemon: `nomad { token_file = "nope" } ` + marker}.String(), summary: "Cannot read token file"},
		{name: "consul address empty", src: decl{daemon: `consul { address = "" } ` + marker}.String(), summary: "Empty address"},
		{name: "nomad address without scheme", src: decl{daemon: `nomad { address = "127.0.0.1:4646" } ` + marker}.String(), summary: "Invalid address"},
		{name: "nomad address other scheme", src: decl{daemon: `nomad { address = "ftp://nomad:4646" } ` + marker}.String(), summary: "Invalid address"},

		// Groups.
		{name: "group name not a DNS label", src: twoSites("group \"Store\" { " + marker + "\n  sites = [\"web\", \"api\"]\n}\n"), summary: "Invalid group name", col: 7},
		{
			name:    "group twice",
			src:     twoSites(group("store", `["web", "api"]`) + "group \"store\" { " + marker + "\n  sites = [\"api\", \"web\"]\n}\n"),
			summary: "Duplicate group", detail: `Group "store" is already declared at $DIR/slots.hcl:`, col: 7,
		},
		{name: "group without sites", src: twoSites("group \"store\" {} " + marker + "\n"), summary: "Missing required argument", detail: `"sites"`},
		{name: "group sites not a list", src: twoSites("group \"store\" {\n  sites = { web = 1 } " + marker + "\n}\n"), summary: "Unsuitable value type"},
		{name: "group sites empty", src: twoSites(group("store", "[] "+marker)), summary: "Too few group sites", detail: `Group "store" lists 0 site(s); list at least two`, col: 3},
		{name: "group of one site", src: twoSites(group("store", `["web"] `+marker)), summary: "Too few group sites", detail: "lists 1 site(s)"},
		{
			name:    "group site listed twice",
			src:     twoSites(group("store", `["web", "api", "web"] `+marker)),
			summary: "Duplicate group site", detail: `Group "store" lists site "web" twice (first at $DIR/slots.hcl:`, col: 26,
		},
		{
			name:    "group site not declared",
			src:     twoSites(group("store", `["web", "shop"] `+marker)),
			summary: "Unknown group site", detail: `Group "store" lists site "shop", which is not declared; name one of: api, web.`, col: 19,
		},
		{
			name:    "group of too many sites",
			src:     manySites(MaxGroupSites+1) + group("big", `[`+quoted(siteNames(MaxGroupSites+1))+`] `+marker),
			summary: "Too many group sites", detail: "lists 9 sites; list at most 8",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assertOneProblem(t, tc.src, tc.summary, tc.detail, tc.col)
		})
	}
}

// assertOneProblem loads src (next to caseFiles) and asserts exactly one problem, on the
// marked line (and at col, unless 0), with summary and a detail that holds detail ($DIR is
// the case's folder).
func assertOneProblem(t *testing.T, src, summary, detail string, col int) {
	t.Helper()
	clearTokenEnv(t)
	dir := writeDir(t, withCaseFiles(src))
	path := filepath.Join(dir, "slots.hcl")

	_, err := Load(path)
	diags := requireDiagnostics(t, err)
	require.Len(t, diags, 1, "want one problem, got:\n%v", err)
	d := diags[0]
	assert.Equal(t, summary, d.Summary, err.Error())
	if detail != "" {
		assert.Contains(t, d.Detail, strings.ReplaceAll(detail, "$DIR", dir))
	}
	assert.Equal(t, path, d.Subject.Filename)
	assert.Equal(t, markedLine(t, src), d.Subject.Start.Line, err.Error())
	if col != 0 {
		assert.Equal(t, col, d.Subject.Start.Column, err.Error())
	}
}

// TestValidEdges checks values at the edges of the rules: they must pass.
func TestValidEdges(t *testing.T) {
	cases := []struct {
		name string
		src  string
	}{
		{name: "auto_swap chain without cycle", src: decl{
			site:    `  slot "qa" { auto_swap = "staging" }`,
			staging: `    auto_swap = "production"`,
		}.String()},
		{name: "63-character slot name", src: decl{site: `  slot "` + strings.Repeat("a", 63) + `" {}`}.String()},
		{name: "slot names of digits and dashes", src: decl{site: "  slot \"1\" {}\n  slot \"blue-green-2\" {}"}.String()},
		{name: "statuses at the edges", src: decl{site: "  warmup {\n    statuses = [100, 599]\n  }"}.String()},
		{name: "threshold one, attempts one", src: decl{site: "  warmup {\n    attempts = 1\n  }\n  monitor {\n    threshold = 1\n  }"}.String()},
		{name: "settings names", src: decl{prod: `    settings = { _A = "", a1 = "x", SLOTD = "y", MY_SLOTD_X = "z" }`}.String()},
		{name: "http listens on every interface with a token", src: decl{daemon: "http {\n  address = \":4680\"\n  token_file = \"token\"\n}"}.String()},
		{name: "http on every interface behind its own auth", src: decl{daemon: "http {\n  address = \"0.0.0.0:4680\"\n  insecure_no_token = true\n}"}.String()},
		{name: "http on localhost without a token", src: decl{daemon: `http { address = "localhost:4680" }`}.String()},
		{name: "http on 127.0.0.2 without a token", src: decl{daemon: `http { address = "127.0.0.2:4680" }`}.String()},
		{name: "http on IPv6 and a free port", src: decl{daemon: `http { address = "[::1]:0" }`}.String()},
		{name: "nomad over a unix socket", src: decl{daemon: `nomad { address = "unix:///var/run/nomad.sock" }`}.String()},
		{name: "nomad over https", src: decl{daemon: `nomad { address = "https://nomad.example.com:4646" }`}.String()},
		{name: "tls with both files", src: decl{daemon: "http {\n  tls_cert_file = \"cert.pem\"\n  tls_key_file = \"key.pem\"\n}"}.String()},
		{name: "read_requires_token with a token", src: decl{daemon: "http {\n  token_file = \"token\"\n  read_requires_token = true\n}"}.String()},
		{name: "read_requires_token false without a token", src: decl{daemon: "http { read_requires_token = false }"}.String()},
		{name: "sensitive_vars", src: decl{site: `  sensitive_vars = ["db_password", "api-key", "_x"]`}.String()},
		{name: "sensitive_vars empty", src: decl{site: `  sensitive_vars = []`}.String()},
		{name: "no sites at all", src: `log_level = "warn"`},
		{name: "scale counts and live", src: decl{prod: `    scale = { app = 10, worker = 0 }`, staging: `    scale = "live"`}.String()},
		{name: "history_limit one", src: decl{daemon: `history_limit = 1`, site: `  history_limit = 1`}.String()},
		{name: "a slot's own name among its tags", src: decl{prod: `    tags = ["production", "www"]`, staging: `    tags = ["staging"]`}.String()},
		{name: "one tag in a slot's own lists", src: decl{prod: `    tags = ["www"]` + "\n" + `    previous_tags = ["www"]`}.String()},
		{name: "tags of another service in the jobspec", src: taggedJob(decl{prod: `    tags = ["api-only"]`})},
		{name: "tags the jobspec computes", src: taggedJob(decl{prod: `    tags = ["$${NOMAD_ALLOC_ID}"]`})},
		{name: "a site in two groups", src: twoSites(group("store", `["web", "api"]`) + group("all", `["api", "web"]`))},
		{name: "a group of the most sites", src: manySites(MaxGroupSites) + group("big", `[`+quoted(siteNames(MaxGroupSites))+`]`)},
		{name: "a jobspec that does not parse", src: strings.Replace(decl{prod: `    tags = ["edge"]`}.String(), `job     = "job.nomad.hcl"`, `job     = "token"`, 1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			dir := writeDir(t, withCaseFiles(tc.src))
			_, err := Load(filepath.Join(dir, "slots.hcl"))
			assert.NoError(t, err)
		})
	}
}

// TestScale checks what a declared scale decodes to.
func TestScale(t *testing.T) {
	clearTokenEnv(t)
	src := decl{prod: `    scale = { app = 3, worker = 0 }`, staging: `    scale = "live"`, site: `  slot "qa" {}`}.String()
	dir := writeDir(t, withCaseFiles(src))
	cfg, err := Load(filepath.Join(dir, "slots.hcl"))
	require.NoError(t, err)
	site := cfg.Site("web")
	prod, staging, qa := site.Slot("production"), site.Slot("staging"), site.Slot("qa")
	assert.Equal(t, map[string]int{"app": 3, "worker": 0}, prod.Scale)
	assert.False(t, prod.ScaleLive)
	assert.True(t, prod.ScaleDeclared())
	assert.Nil(t, staging.Scale)
	assert.True(t, staging.ScaleLive)
	assert.True(t, staging.ScaleDeclared())
	assert.False(t, qa.ScaleDeclared())
}

// twoSites declares sites web and api, then groups.
func twoSites(groups string) string {
	return decl{}.String() + strings.Replace(minimalSite, `site "web"`, `site "api"`, 1) + groups
}

// group declares a group whose sites attribute is written as sites, on the group's second line.
func group(name, sites string) string {
	return "group " + strconv.Quote(name) + " {\n  sites = " + sites + "\n}\n"
}

// siteNames are n site names: s1, s2, …
func siteNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = "s" + strconv.Itoa(i+1)
	}
	return names
}

// manySites declares the sites siteNames(n).
func manySites(n int) string {
	var src strings.Builder
	for _, name := range siteNames(n) {
		src.WriteString(strings.Replace(minimalSite, `site "web"`, "site "+strconv.Quote(name), 1))
	}
	return src.String()
}

// quoted writes names as the items of an HCL list.
func quoted(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

// withCaseFiles is the files of a case: its declarations as slots.hcl, next to caseFiles.
func withCaseFiles(src string) map[string]string {
	files := map[string]string{"slots.hcl": src}
	maps.Copy(files, caseFiles)
	return files
}

// TestReadsNeedToken: with a token, reads need it unless read_requires_token = false is
// written; without one, nothing needs a token.
func TestReadsNeedToken(t *testing.T) {
	cases := []struct {
		name string
		http string
		want bool
	}{
		{name: "no http block", want: false},
		{name: "no token", http: `http { address = "127.0.0.1:4680" }`, want: false},
		{name: "no token, read_requires_token = false", http: `http { read_requires_token = false }`, want: false},
		{name: "token", http: `http { token_file = "token" }`, want: true},
		{name: "token, read_requires_token = true", http: "http {\n  token_file = \"token\"\n  read_requires_token = true\n}", want: true},
		{name: "token, read_requires_token = false", http: "http {\n  token_file = \"token\"\n  read_requires_token = false\n}", want: false},
		{name: "token, read_requires_token = null", http: "http {\n  token_file = \"token\"\n  read_requires_token = null\n}", want: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			dir := writeDir(t, withCaseFiles(decl{daemon: tc.http}.String()))
			cfg, err := Load(filepath.Join(dir, "slots.hcl"))
			require.NoError(t, err)
			assert.Equal(t, tc.want, cfg.HTTP.ReadsNeedToken())
		})
	}
}
