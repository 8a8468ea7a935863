package config

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

const (
	// DefaultNotifyFormat is the body a notify webhook receives: the api.Event as JSON.
	DefaultNotifyFormat = NotifyFormatJSON
	// DefaultGateTimeout is how long a gate waits for its webhook's answer: long enough for a
	// person to look, short enough that a forgotten swap does not preview for a day.
	DefaultGateTimeout = 10 * time.Minute
)

// Notify formats.
const (
	NotifyFormatJSON  = "json"
	NotifyFormatSlack = "slack"
)

// GateBeforeSwitch is asked after the warm-up, before any route moves.
const GateBeforeSwitch = "before-switch"

// gateNames are the points of a swap a gate may be declared at.
var gateNames = []string{GateBeforeSwitch}

var notifyFormats = []string{NotifyFormatJSON, NotifyFormatSlack}

// EventKinds and EventWhats are the two parts of an event's name, <kind>.<what>, such as
// swap.switched: the kind of the operation and what happened to it.
var (
	EventKinds = []string{"swap", "rollback", "deploy", "scale", "settings"}
	EventWhats = []string{"started", "phase_ended", "switched", "analysis_failed", "rolled_back", "succeeded", "failed", "cancelled"}
)

// Wants reports whether the webhook is told of event (<kind>.<what>): whether one of Events
// names it, or matches it with "*" for its kind, its what, or the whole name.
func (n *Notify) Wants(event string) bool {
	kind, what, _ := strings.Cut(event, ".")
	for _, pattern := range n.Events {
		if pattern == "*" {
			return true
		}
		pk, pw, _ := strings.Cut(pattern, ".")
		if (pk == "*" || pk == kind) && (pw == "*" || pw == what) {
			return true
		}
	}
	return false
}

// Gate is the site's gate of the given name (such as GateBeforeSwitch), or nil when the site
// declares none.
func (s *Site) Gate(name string) *Gate {
	for _, g := range s.Gates {
		if g.Name == name {
			return g
		}
	}
	return nil
}

func (b *builder) completeNotify(n *Notify) {
	if !b.src.set(n.Range, "format") {
		n.Format = DefaultNotifyFormat
	}
	if !b.src.set(n.Range, "events") {
		n.Events = []string{"*"}
	}
	n.SecretFile, n.Secret = b.secretFile(n.Range, n.SecretFile)
}

func (b *builder) completeGates(s *Site) {
	for _, g := range s.Gates {
		g.Timeout = b.duration(g.Range, "timeout", g.TimeoutRaw, DefaultGateTimeout, true)
		g.SecretFile, g.Secret = b.secretFile(g.Range, g.SecretFile)
	}
}

// secretFile reads the secret_file of the block, when it is set: it returns the path made
// absolute and the secret. The secret never appears in a message.
func (b *builder) secretFile(block hcl.Range, path string) (string, string) {
	if !b.src.set(block, "secret_file") {
		return path, ""
	}
	at := b.src.attrRange(block, "secret_file")
	if path == "" {
		b.errorf(at, "Empty secret_file", "secret_file is empty; name the file that holds the secret, or remove secret_file.")
		return path, ""
	}
	path = b.path(block, path)
	secret, err := readSecret(path)
	switch {
	case err != nil:
		b.errorf(at, "Cannot read secret file", "%v; fix secret_file (a relative path starts at the folder of this file).", err)
	case secret == "":
		b.errorf(at, "Empty secret file", "Secret file %q is empty; write the secret into it, or remove secret_file.", path)
	}
	return path, secret
}

// validateNotify checks the notify blocks of every file: names unique, a webhook, known
// events and format.
func (b *builder) validateNotify() {
	seen := map[string]*Notify{}
	for _, n := range b.cfg.Notify {
		if !dnsLabel.MatchString(n.Name) {
			b.errorf(b.src.labelRange(n.Range), "Invalid notify name",
				"Notify name %q is not a DNS label: %s. It names the webhook in logs.", n.Name, labelRule)
		}
		if first, ok := seen[n.Name]; ok {
			b.errorf(b.src.labelRange(n.Range), "Duplicate notify",
				"Notify %q is already declared at %s; rename or remove one of them.", n.Name, position(first.Range))
		} else {
			seen[n.Name] = n
		}
		b.webhook(n.Range, "notify", n.Webhook)
		if !slices.Contains(notifyFormats, n.Format) {
			b.errorf(b.src.attrRange(n.Range, "format"), "Invalid format",
				"format %q is not one of %s: %q posts the event as JSON, %q a Slack-compatible {\"text\": …}.",
				n.Format, strings.Join(notifyFormats, ", "), NotifyFormatJSON, NotifyFormatSlack)
		}
		b.validateEvents(n)
	}
}

// validateEvents checks that each of events names an event or matches some with "*".
func (b *builder) validateEvents(n *Notify) {
	if len(n.Events) == 0 {
		b.errorf(b.src.attrRange(n.Range, "events"), "No events",
			"events is empty, so nothing would be posted; list events such as \"swap.failed\", or leave events out for all of them.")
		return
	}
	seen := map[string]hcl.Range{}
	for i, pattern := range n.Events {
		at := b.src.itemRange(n.Range, "events", i)
		if problem := eventProblem(pattern); problem != "" {
			b.errorf(at, "Invalid event",
				"events lists %q: %s. An event is <kind>.<what>, kind one of %s, what one of %s; \"*\" stands for any kind or what (\"swap.*\", \"*.failed\"), or alone for every event.",
				pattern, problem, strings.Join(EventKinds, ", "), strings.Join(EventWhats, ", "))
			continue
		}
		if first, ok := seen[pattern]; ok {
			b.errorf(at, "Duplicate event", "events lists %q twice (first at %s); keep one.", pattern, position(first))
			continue
		}
		seen[pattern] = at
	}
}

// eventProblem says what is wrong with an events pattern, or "" when it is right.
func eventProblem(pattern string) string {
	if pattern == "*" {
		return ""
	}
	kind, what, ok := strings.Cut(pattern, ".")
	switch {
	case !ok:
		return "it has no '.'"
	case kind != "*" && !slices.Contains(EventKinds, kind):
		return fmt.Sprintf("%q is not a kind of operation", kind)
	case what != "*" && !slices.Contains(EventWhats, what):
		return fmt.Sprintf("%q is not an event of an operation", what)
	}
	return ""
}

// validateGates checks a site's gates: known names, each once, a webhook.
func (b *builder) validateGates(s *Site) {
	seen := map[string]*Gate{}
	for _, g := range s.Gates {
		b.webhook(g.Range, "gate", g.Webhook)
		if !slices.Contains(gateNames, g.Name) {
			b.errorf(b.src.labelRange(g.Range), "Unknown gate",
				"Site %q declares gate %q; the gates are: %s.", s.Name, g.Name, strings.Join(gateNames, ", "))
			continue
		}
		if first, ok := seen[g.Name]; ok {
			b.errorf(b.src.labelRange(g.Range), "Duplicate gate",
				"Site %q declares gate %q twice (first at %s); keep one.", s.Name, g.Name, position(first.Range))
			continue
		}
		seen[g.Name] = g
	}
}

// webhook checks the webhook attribute of a notify or gate block: an absolute http or https
// URL. The URL is not repeated in the message: a Slack webhook URL is a secret.
func (b *builder) webhook(block hcl.Range, blockType, raw string) {
	if b.src.attr(block, "webhook") == nil {
		return // required: HCL reports it left out
	}
	at := b.src.attrRange(block, "webhook")
	u, err := url.Parse(raw)
	var problem string
	switch {
	case strings.TrimSpace(raw) == "":
		problem = "is empty"
	case err != nil:
		problem = "is not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		problem = "does not start with http:// or https://"
	case u.Host == "":
		problem = "names no host"
	}
	if problem != "" {
		b.errorf(at, "Invalid webhook",
			"The %s webhook %s; write an absolute URL such as \"https://hooks.example.com/slotd\".", blockType, problem)
	}
}
