package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// notify declares a notify block named name with body, on the lines after its header.
func notify(name, body string) string {
	return "notify \"" + name + "\" {\n" + body + "\n}\n"
}

const opsWebhook = `  webhook = "https://hooks.example.com/slotd"`

// gate declares a site "web" with a gate block named name with body.
func gate(name, body string) string {
	return decl{site: "  gate \"" + name + "\" {\n" + body + "\n  }"}.String()
}

const gateWebhook = `    webhook = "http://127.0.0.1:9000/confirm"`

// TestNotifyRules has one case per rule of notify and gate blocks: exactly one problem, on the
// marked line, saying what to fix.
func TestNotifyRules(t *testing.T) {
	cases := []struct {
		name    string
		src     string
		summary string
		detail  string
		col     int
	}{
		// notify.
		{name: "notify without webhook", src: decl{}.String() + "notify \"ops\" {} " + marker + "\n", summary: "Missing required argument", detail: `"webhook"`},
		{name: "notify webhook empty", src: decl{}.String() + notify("ops", `  webhook = "" `+marker), summary: "Invalid webhook", detail: "notify webhook is empty", col: 3},
		{name: "notify webhook relative", src: decl{}.String() + notify("ops", `  webhook = "/hooks/slotd" `+marker), summary: "Invalid webhook", detail: "does not start with http:// or https://"},
		{name: "notify webhook other scheme", src: decl{}.String() + notify("ops", `  webhook = "ftp://hooks.example.com/x" `+marker), summary: "Invalid webhook", detail: "does not start with http:// or https://"},
		{name: "notify webhook without host", src: decl{}.String() + notify("ops", `  webhook = "https:///slotd" `+marker), summary: "Invalid webhook", detail: "names no host"},
		{name: "notify webhook not a URL", src: decl{}.String() + notify("ops", `  webhook = "http://[::1" `+marker), summary: "Invalid webhook", detail: "is not a URL"},
		{
			name:    "notify webhook not repeated in the message",
			src:     decl{}.String() + notify("ops", `  webhook = "hooks.slack.com/services/T0/B0/SECRETTOKEN" `+marker),
			summary: "Invalid webhook", detail: "The notify webhook does not start with http:// or https://; write an absolute URL",
		},
		{name: "notify name not a DNS label", src: decl{}.String() + "notify \"Ops\" { " + marker + "\n" + opsWebhook + "\n}\n", summary: "Invalid notify name", col: 8},
		{
			name:    "notify twice",
			src:     decl{}.String() + notify("ops", opsWebhook) + "notify \"ops\" { " + marker + "\n" + opsWebhook + "\n}\n",
			summary: "Duplicate notify", detail: `Notify "ops" is already declared at $DIR/slots.hcl:`, col: 8,
		},
		{name: "format unknown", src: decl{}.String() + notify("ops", opsWebhook+"\n  format = \"xml\" "+marker), summary: "Invalid format", detail: `format "xml" is not one of json, slack`},
		{name: "events empty", src: decl{}.String() + notify("ops", opsWebhook+"\n  events = [] "+marker), summary: "No events", detail: "leave events out for all of them"},
		{
			name:    "event of an unknown kind",
			src:     decl{}.String() + notify("ops", opsWebhook+"\n  events = [\"swap.failed\", \"release.failed\"] "+marker),
			summary: "Invalid event", detail: `events lists "release.failed": "release" is not a kind of operation`, col: 28,
		},
		{
			name:    "event of an unknown what",
			src:     decl{}.String() + notify("ops", opsWebhook+"\n  events = [\"swap.done\"] "+marker),
			summary: "Invalid event", detail: `"done" is not an event of an operation. An event is <kind>.<what>, kind one of swap, rollback, deploy, scale, settings, what one of started, phase_ended`,
		},
		{name: "event without a dot", src: decl{}.String() + notify("ops", opsWebhook+"\n  events = [\"failed\"] "+marker), summary: "Invalid event", detail: "it has no '.'"},
		{name: "event glob inside a word", src: decl{}.String() + notify("ops", opsWebhook+"\n  events = [\"swap.fail*\"] "+marker), summary: "Invalid event"},
		{name: "event empty", src: decl{}.String() + notify("ops", opsWebhook+"\n  events = [\"\"] "+marker), summary: "Invalid event"},
		{
			name:    "event twice",
			src:     decl{}.String() + notify("ops", opsWebhook+"\n  events = [\"swap.*\", \"*.failed\", \"swap.*\"] "+marker),
			summary: "Duplicate event", detail: `events lists "swap.*" twice (first at $DIR/slots.hcl:15:13)`, col: 35,
		},
		{name: "notify secret_file missing", src: decl{}.String() + notify("ops", opsWebhook+"\n  secret_file = \"nope\" "+marker), summary: "Cannot read secret file", detail: "$DIR/nope"},
		{name: "notify secret_file empty name", src: decl{}.String() + notify("ops", opsWebhook+"\n  secret_file = \"\" "+marker), summary: "Empty secret_file"},
		{
			name:    "notify secret_file holds nothing",
			src:     decl{}.String() + notify("ops", opsWebhook+"\n  secret_file = \"empty.token\" "+marker),
			summary: "Empty secret file", detail: `Secret file "$DIR/empty.token" is empty`,
		},
		{name: "notify secret_file is a folder", src: decl{}.String() + notify("ops", opsWebhook+"\n  secret_file = \"jobs\" "+marker), summary: "Cannot read secret file", detail: "not a regular file"},

		// gate.
		{
			name:    "gate unknown",
			src:     decl{site: "  gate \"after-switch\" { " + marker + "\n" + gateWebhook + "\n  }"}.String(),
			summary: "Unknown gate", detail: `Site "web" declares gate "after-switch"; the gates are: before-switch.`, col: 8,
		},
		{
			name:    "gate twice",
			src:     decl{site: "  gate \"before-switch\" {\n" + gateWebhook + "\n  }\n  gate \"before-switch\" { " + marker + "\n" + gateWebhook + "\n  }"}.String(),
			summary: "Duplicate gate", detail: `Site "web" declares gate "before-switch" twice (first at $DIR/slots.hcl:`, col: 8,
		},
		{name: "gate without webhook", src: decl{site: `  gate "before-switch" {} ` + marker}.String(), summary: "Missing required argument", detail: `"webhook"`},
		{name: "gate webhook relative", src: gate("before-switch", `    webhook = "confirm" `+marker), summary: "Invalid webhook", detail: "The gate webhook does not start with http:// or https://"},
		{name: "gate timeout zero", src: gate("before-switch", gateWebhook+"\n    timeout = \"0s\" "+marker), summary: "Invalid duration", detail: "it must be longer than 0s"},
		{name: "gate timeout not a duration", src: gate("before-switch", gateWebhook+"\n    timeout = \"ten minutes\" "+marker), summary: "Invalid duration"},
		{name: "gate secret_file missing", src: gate("before-switch", gateWebhook+"\n    secret_file = \"nope\" "+marker), summary: "Cannot read secret file", detail: "$DIR/nope"},
		{name: "gate secret_file holds nothing", src: gate("before-switch", gateWebhook+"\n    secret_file = \"empty.token\" "+marker), summary: "Empty secret file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			requireOneProblem(t, tc.src, tc.summary, tc.detail, tc.col)
		})
	}
}

// TestNotifyAndGateValues checks what notify and gate blocks decode to: defaults, the secret
// read from its file, notify blocks of several files in name order.
func TestNotifyAndGateValues(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, withCaseFiles(gate("before-switch", gateWebhook+"\n    secret_file = \"token\"")+
		notify("ops", opsWebhook+"\n  events = [\"swap.*\", \"*.failed\"]\n  format = \"slack\"\n  secret_file = \"token\"")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "more.hcl"), []byte(notify("audit", `  webhook = "http://127.0.0.1:9001/"`)), 0o644))

	cfg, err := Load(dir)
	require.NoError(t, err)

	require.Len(t, cfg.Notify, 2)
	audit, ops := cfg.Notify[0], cfg.Notify[1]
	assert.Equal(t, "audit", audit.Name)
	assert.Equal(t, []string{"*"}, audit.Events)
	assert.Equal(t, NotifyFormatJSON, audit.Format)
	assert.Empty(t, audit.Secret)

	assert.Equal(t, "ops", ops.Name)
	assert.Equal(t, "https://hooks.example.com/slotd", ops.Webhook)
	assert.Equal(t, []string{"swap.*", "*.failed"}, ops.Events)
	assert.Equal(t, NotifyFormatSlack, ops.Format)
	assert.Equal(t, "tok", ops.Secret)
	assert.Equal(t, filepath.Join(dir, "token"), ops.SecretFile)

	site := cfg.Site("web")
	g := site.Gate(GateBeforeSwitch)
	require.NotNil(t, g)
	assert.Equal(t, DefaultGateTimeout, g.Timeout)
	assert.Equal(t, "tok", g.Secret)
	assert.Equal(t, "http://127.0.0.1:9000/confirm", g.Webhook)

	cfg, err = Load(writeDir(t, withCaseFiles(gate("before-switch", gateWebhook+"\n    timeout = \"90s\""))))
	require.NoError(t, err)
	assert.Equal(t, 90*time.Second, cfg.Site("web").Gate(GateBeforeSwitch).Timeout)
	assert.Empty(t, cfg.Site("web").Gate(GateBeforeSwitch).Secret)

	cfg, err = Load(writeDir(t, withCaseFiles(decl{}.String())))
	require.NoError(t, err)
	assert.Nil(t, cfg.Site("web").Gate(GateBeforeSwitch), "a site without gate blocks has no gate")
	assert.Empty(t, cfg.Notify)
}

// TestNotifyWants checks which events a notify block's events match.
func TestNotifyWants(t *testing.T) {
	cases := []struct {
		events []string
		event  string
		want   bool
	}{
		{events: []string{"*"}, event: "swap.started", want: true},
		{events: []string{"*"}, event: "settings.failed", want: true},
		{events: []string{"swap.failed"}, event: "swap.failed", want: true},
		{events: []string{"swap.failed"}, event: "rollback.failed", want: false},
		{events: []string{"swap.failed"}, event: "swap.failed_again", want: false},
		{events: []string{"swap.*"}, event: "swap.phase_ended", want: true},
		{events: []string{"swap.*"}, event: "swapx.started", want: false},
		{events: []string{"swap.*"}, event: "rollback.started", want: false},
		{events: []string{"*.failed"}, event: "deploy.failed", want: true},
		{events: []string{"*.failed"}, event: "deploy.succeeded", want: false},
		{events: []string{"*.*"}, event: "scale.cancelled", want: true},
		{events: []string{"deploy.succeeded", "*.rolled_back"}, event: "swap.rolled_back", want: true},
		{events: []string{"deploy.succeeded", "*.rolled_back"}, event: "swap.switched", want: false},
		{events: nil, event: "swap.started", want: false},
	}
	for _, tc := range cases {
		n := &Notify{Events: tc.events}
		assert.Equal(t, tc.want, n.Wants(tc.event), "events %q, event %q", tc.events, tc.event)
	}
}

// TestValidNotifyEdges checks notify and gate blocks at the edges of the rules: they must pass.
func TestValidNotifyEdges(t *testing.T) {
	cases := []struct {
		name string
		src  string
	}{
		{name: "every form of event", src: decl{}.String() + notify("ops", opsWebhook+"\n  events = [\"*\", \"*.*\", \"swap.*\", \"*.analysis_failed\", \"settings.phase_ended\"]")},
		{name: "http webhook with port, path and query", src: decl{}.String() + notify("ops", `  webhook = "http://127.0.0.1:8080/hooks/slotd?team=web"`)},
		{name: "json format written", src: decl{}.String() + notify("ops", opsWebhook+"\n  format = \"json\"")},
		{name: "two notify blocks", src: decl{}.String() + notify("ops", opsWebhook) + notify("audit", opsWebhook)},
		{name: "notify without sites", src: notify("ops", opsWebhook)},
		{name: "gate with every attribute", src: gate("before-switch", gateWebhook+"\n    timeout = \"1h\"\n    secret_file = \"token\"")},
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
