package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/slotd/slotd/api"
)

var (
	// dnsLabel is an RFC 1123 label: site and slot names become parts of Nomad job IDs, Consul
	// tags and DNS names.
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// envName is what a shell and Nomad accept as an environment variable name.
	envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// reservedPrefix starts the names of the variables slotd sets itself (SLOTD_SITE, SLOTD_SLOT,
// SLOTD_LANE); a setting must not shadow them.
const reservedPrefix = "SLOTD_"

var logLevels = []string{"trace", "debug", "info", "warn", "error"}

const historyLimitRule = "history_limit is %d; a site keeps at least its newest finished operation (history_limit = 1 or more, default %d)."

const labelRule = "use 1–63 lowercase letters, digits or '-', starting and ending with a letter or digit"

// validate checks the completed config and records every problem.
func (b *builder) validate() {
	b.validateDaemon()
	seen := map[string]*Site{}
	for _, s := range b.cfg.Sites {
		b.validateSite(s)
		if first, ok := seen[s.Name]; ok {
			b.errorf(b.src.labelRange(s.Range), "Duplicate site",
				"Site %q is already declared at %s; rename or remove one of them.", s.Name, position(first.Range))
			continue
		}
		seen[s.Name] = s
	}
	b.validateGroups()
	b.validateNotify()
}

func (b *builder) validateDaemon() {
	c := b.cfg
	if !slices.Contains(logLevels, c.LogLevel) {
		b.errorf(b.declared["log_level"], "Invalid log_level",
			"log_level %q is not one of %s.", c.LogLevel, strings.Join(logLevels, ", "))
	}
	switch p := c.KVPrefix; {
	case p == "":
		b.errorf(b.declared["kv_prefix"], "Empty kv_prefix",
			"kv_prefix is empty; name the Consul KV folder for slotd's state, such as %q.", DefaultKVPrefix)
	case strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/"):
		b.errorf(b.declared["kv_prefix"], "Invalid kv_prefix",
			"kv_prefix %q must not start or end with '/'; write %q.", p, strings.Trim(p, "/"))
	}

	if c.HistoryLimit < 1 {
		b.errorf(b.declared["history_limit"], "Invalid history_limit", historyLimitRule, c.HistoryLimit, DefaultHistoryLimit)
	}

	h := c.HTTP
	if _, port, err := net.SplitHostPort(h.Address); err != nil || !validPort(port) {
		b.errorf(b.src.attrRange(h.Range, "address"), "Invalid address",
			"http address %q is not host:port; write it like %q.", h.Address, DefaultHTTPAddress)
	}
	b.tlsPair(h, "tls_cert_file", "tls_key_file", h.TLSCertFile)
	b.tlsPair(h, "tls_key_file", "tls_cert_file", h.TLSKeyFile)
	b.openAPI(h)
	if h.ReadRequiresToken != nil && *h.ReadRequiresToken && !b.src.set(h.Range, "token_file") {
		b.errorf(b.src.attrRange(h.Range, "read_requires_token"), "No token to require",
			"read_requires_token is true but http sets no token_file; set token_file, or remove read_requires_token.")
	}

	if strings.TrimSpace(c.Consul.Address) == "" {
		b.errorf(b.src.attrRange(c.Consul.Range, "address"), "Empty address",
			"consul address is empty; write the Consul agent's HTTP address, such as %q.", DefaultConsulAddress)
	}
	if u, err := url.Parse(c.Nomad.Address); err != nil || !validNomadURL(u) {
		b.errorf(b.src.attrRange(c.Nomad.Range, "address"), "Invalid address",
			"nomad address %q is not a URL of the Nomad API; write it like %q.", c.Nomad.Address, DefaultNomadAddress)
	}
	b.checkTLS(consulTLS(&c.Consul))
	b.checkTLS(nomadTLS(&c.Nomad))
}

func validPort(port string) bool {
	_, err := strconv.ParseUint(port, 10, 16)
	return err == nil
}

func validNomadURL(u *url.URL) bool {
	switch u.Scheme {
	case "http", "https":
		return u.Host != ""
	case "unix":
		return u.Path != ""
	default:
		return false
	}
}

// openAPI refuses an API that others can reach without a token, unless insecure_no_token says
// something in front of it authenticates; and insecure_no_token with a token, which says two
// things at once.
func (b *builder) openAPI(h HTTP) {
	tokenSet := b.src.set(h.Range, "token_file")
	switch {
	case h.InsecureNoToken && tokenSet:
		b.errorf(b.src.attrRange(h.Range, "insecure_no_token"), "Token and no token",
			"insecure_no_token is true but http sets token_file; remove insecure_no_token to require the token.")
	case !tokenSet && !h.InsecureNoToken && !LoopbackAddress(h.Address):
		if _, _, err := net.SplitHostPort(h.Address); err != nil {
			return // reported as an invalid address
		}
		b.errorf(b.src.attrRange(h.Range, "address"), "API open to the network",
			"http address %q is reachable from other machines and http sets no token_file, so anyone who reaches it could reveal sticky values, swap and deploy; "+
				"set token_file to a file holding the bearer token, or listen on loopback (such as %q), "+
				"or, when a proxy in front of slotd authenticates every request, set insecure_no_token = true.",
			h.Address, DefaultHTTPAddress)
	}
}

// LoopbackAddress reports whether a host:port listens on loopback only: localhost or a loopback
// IP. An empty host, a wildcard or any other name may be reached from other machines.
func LoopbackAddress(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	return err == nil && api.LoopbackHost(host)
}

// tlsPair checks one of the two TLS files of the API: the other must be set with it, and the
// file must exist.
func (b *builder) tlsPair(h HTTP, name, other, path string) {
	if !b.src.set(h.Range, name) {
		return
	}
	at := b.src.attrRange(h.Range, name)
	if !b.src.set(h.Range, other) {
		b.errorf(at, "Incomplete TLS settings", "%s is set without %s; set both to serve HTTPS, or neither.", name, other)
	}
	b.regularFile(at, name, path)
}

// regularFile checks that path, written at at for the setting name, is a file that exists.
func (b *builder) regularFile(at hcl.Range, name, path string) {
	if path == "" {
		b.errorf(at, "Empty path", "%s is empty; name a file (a relative path starts at the folder of this file).", name)
		return
	}
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b.errorf(at, "File not found",
			"%s %q does not exist; fix the path (a relative path starts at the folder of this file).", name, path)
	case err != nil:
		b.errorf(at, "Cannot read file", "%s: %v.", name, err)
	case !info.Mode().IsRegular():
		b.errorf(at, "Not a file", "%s %q is %s; name a file.", name, path, errNotRegular)
	}
}

func (b *builder) validateSite(s *Site) {
	if !dnsLabel.MatchString(s.Name) {
		b.errorf(b.src.labelRange(s.Range), "Invalid site name",
			"Site name %q is not a DNS label: %s. It becomes part of Nomad job IDs (<site>-<lane>) and Consul names.",
			s.Name, labelRule)
	}
	// job and service are required: HCL reports them left out, these report them empty or null.
	if b.src.attr(s.Range, "job") != nil {
		b.regularFile(b.src.attrRange(s.Range, "job"), "job file", s.Job)
	}
	if b.src.attr(s.Range, "service") != nil && strings.TrimSpace(s.Service) == "" {
		b.errorf(b.src.attrRange(s.Range, "service"), "Empty service",
			"service is empty; name the Consul service the job registers.")
	}
	b.duplicateKeys(s.Range, "vars")
	b.validateSensitiveVars(s)
	if len(s.Slots) < 2 {
		b.errorf(b.src.labelRange(s.Range), "Too few slots",
			"Site %q declares %d slot(s); declare at least two, such as production and staging: a swap needs a source and a target.",
			s.Name, len(s.Slots))
	}
	if b.src.set(s.Range, "history_limit") && s.HistoryLimit < 1 {
		b.errorf(b.src.attrRange(s.Range, "history_limit"), "Invalid history_limit", historyLimitRule, s.HistoryLimit, DefaultHistoryLimit)
	}
	b.validateWarmup(s.Warmup)
	b.validateMonitor(s.Monitor)
	b.validateAnalyses(s)
	b.validateGates(s)

	seen := map[string]*Slot{}
	for _, sl := range s.Slots {
		b.validateSlot(sl)
		if first, ok := seen[sl.Name]; ok {
			b.errorf(b.src.labelRange(sl.Range), "Duplicate slot",
				"Slot %q is already declared in site %q at %s; rename or remove one of them.",
				sl.Name, s.Name, position(first.Range))
			continue
		}
		seen[sl.Name] = sl
	}
	b.validateAutoSwap(s)
	b.validateRouteTags(s)
}

// validateSensitiveVars checks that sensitive_vars lists job variable names, each once.
func (b *builder) validateSensitiveVars(s *Site) {
	seen := map[string]hcl.Range{}
	for i, name := range s.SensitiveVars {
		at := b.src.itemRange(s.Range, "sensitive_vars", i)
		if !hclsyntax.ValidIdentifier(name) {
			b.errorf(at, "Invalid variable name",
				"sensitive_vars lists %q, which is not a job variable name: use letters, digits, '_' and '-', starting with a letter or '_'.", name)
			continue
		}
		if first, ok := seen[name]; ok {
			b.errorf(at, "Duplicate sensitive variable",
				"sensitive_vars lists %q twice (first at %s); keep one.", name, position(first))
			continue
		}
		seen[name] = at
	}
}

func (b *builder) validateWarmup(w *Warmup) {
	if len(w.Paths) == 0 {
		b.errorf(b.src.attrRange(w.Range, "paths"), "No warm-up paths",
			"paths is empty; list at least one path, such as \"/\", or leave paths out.")
	}
	for i, p := range w.Paths {
		if !strings.HasPrefix(p, "/") {
			b.errorf(b.src.itemRange(w.Range, "paths", i), "Invalid warm-up path",
				"Warm-up path %q must start with '/'.", p)
		}
	}
	if len(w.Statuses) == 0 {
		b.errorf(b.src.attrRange(w.Range, "statuses"), "No warm-up statuses",
			"statuses is empty; list the accepted statuses, or leave statuses out to accept 200–399.")
	}
	for i, code := range w.Statuses {
		if code < 100 || code > 599 {
			b.errorf(b.src.itemRange(w.Range, "statuses", i), "Invalid status",
				"Status %d is not an HTTP status; use codes from 100 to 599.", code)
		}
	}
	if w.Attempts < 1 {
		b.errorf(b.src.attrRange(w.Range, "attempts"), "Invalid attempts",
			"attempts is %d; each warm-up request must be tried at least once (attempts = 1 or more).", w.Attempts)
	}
}

func (b *builder) validateMonitor(m *Monitor) {
	// Written so that NaN fails too.
	if !(m.Threshold > 0 && m.Threshold <= 1) {
		b.errorf(b.src.attrRange(m.Range, "threshold"), "Invalid threshold",
			"threshold %g is outside (0, 1]: it is the fraction of the target's instances that must stay passing, such as 0.5 or 1.",
			m.Threshold)
	}
}

func (b *builder) validateSlot(sl *Slot) {
	if !dnsLabel.MatchString(sl.Name) {
		b.errorf(b.src.labelRange(sl.Range), "Invalid slot name",
			"Slot name %q is not a DNS label: %s. It becomes a Consul tag and DNS name.", sl.Name, labelRule)
	}
	for _, attr := range sl.RouteTagLists() {
		for i, tag := range attr.Tags {
			if strings.TrimSpace(tag) == "" {
				b.errorf(b.src.itemRange(sl.Range, attr.Attr, i), "Empty tag",
					"%s holds an empty tag; remove it.", attr.Attr)
			}
		}
	}
	b.settingNames(sl, "settings", sl.Settings)
	b.settingNames(sl, "sticky", sl.Sticky)
	b.settingValues(sl, "settings", sl.Settings)
	b.settingValues(sl, "sticky", sl.Sticky)
	b.validateScale(sl)
	for _, key := range sortedKeys(sl.Sticky) {
		if _, ok := sl.Settings[key]; ok {
			b.errorf(b.src.keyRange(sl.Range, "sticky", key), "Setting both swappable and sticky",
				"Setting %q of slot %q is in both settings and sticky; keep it in one: sticky stays with the slot, settings move with the app on a swap.",
				key, sl.Name)
		}
	}
}

// validateRouteTags checks that every route tag leads to one slot. A lane carries its slot's
// name and tags as Consul tags, and every lane carries the tags of the jobspec's service: a tag
// that two slots declare, that names another slot, or that the jobspec gives every lane routes
// one slot's traffic to another's lane (staging declaring production's host serves staging's
// secrets under production's name).
func (b *builder) validateRouteTags(s *Site) {
	byName := map[string]*Slot{}
	for _, sl := range s.Slots {
		if _, ok := byName[sl.Name]; !ok {
			byName[sl.Name] = sl
		}
	}
	jobTags := jobServiceTags(s)
	type declared struct {
		slot *Slot
		at   hcl.Range
	}
	first := map[string]declared{}
	for _, sl := range s.Slots {
		if byName[sl.Name] != sl {
			continue // a duplicate slot, reported as such
		}
		if jt, ok := jobTags[sl.Name]; ok {
			b.errorf(b.src.labelRange(sl.Range), "Slot name in the jobspec's tags",
				"The job file tags service %q with %q at %s, the name of slot %q: every lane would carry it and serve that slot's route; remove the tag from the job file.",
				s.Service, sl.Name, position(jt), sl.Name)
		}
		for _, list := range sl.RouteTagLists() {
			for i, tag := range list.Tags {
				if strings.TrimSpace(tag) == "" {
					continue
				}
				at := b.src.itemRange(sl.Range, list.Attr, i)
				other, named := byName[tag]
				prev, taken := first[tag]
				jt, inJob := jobTags[tag]
				switch {
				case named && other != sl:
					b.errorf(at, "Route tag names another slot",
						"%s of slot %q holds %q, the name of slot %q: its lane would serve that slot's route; remove the tag.",
						list.Attr, sl.Name, tag, tag)
				case taken && prev.slot != sl:
					b.errorf(at, "Shared route tag",
						"%s of slot %q holds %q, which slot %q declares too (at %s): a route tag leads to one slot; remove it from one of them.",
						list.Attr, sl.Name, tag, prev.slot.Name, position(prev.at))
				case inJob:
					b.errorf(at, "Route tag in the jobspec's tags",
						"%s of slot %q holds %q, which the job file gives service %q at %s: every lane carries it, so it would route to all of them; remove it from one of them.",
						list.Attr, sl.Name, tag, s.Service, position(jt))
				}
				if !taken {
					first[tag] = declared{sl, at}
				}
			}
		}
	}
}

// scaleRule is what scale may be, for messages.
const scaleRule = `write an object of task group counts such as scale = { app = 3 }, or scale = "live" to keep the counts Nomad runs`

// validateScale checks a slot's scale and fills Scale or ScaleLive from it. The task groups
// are checked against the site's job when a lane is rendered: the jobspec is Nomad's to parse.
func (b *builder) validateScale(sl *Slot) {
	v := sl.ScaleRaw
	if v == cty.NilVal || v.IsNull() || !b.src.set(sl.Range, "scale") {
		return
	}
	at := b.src.attrRange(sl.Range, "scale")
	if !v.IsWhollyKnown() {
		return // an expression that failed, reported where it is written
	}
	t := v.Type()
	switch {
	case t == cty.String:
		if v.AsString() != "live" {
			b.errorf(at, "Invalid scale", "scale is %q; %s.", v.AsString(), scaleRule)
			return
		}
		sl.ScaleLive = true
		return
	case !t.IsObjectType() && !t.IsMapType():
		b.errorf(at, "Invalid scale", "scale is a %s; %s.", t.FriendlyName(), scaleRule)
		return
	}
	b.duplicateKeys(sl.Range, "scale")
	if v.LengthInt() == 0 {
		b.errorf(at, "Invalid scale", "scale names no task group; %s, or leave scale out.", scaleRule)
		return
	}
	counts := map[string]int{}
	for it := v.ElementIterator(); it.Next(); {
		k, c := it.Element()
		group := k.AsString()
		kat := b.src.keyRange(sl.Range, "scale", group)
		n, ok := wholeCount(c)
		if !ok {
			b.errorf(kat, "Invalid scale count",
				"scale of task group %q must be a whole number from 0 to %d (instances of the group), such as %s = 3.", group, MaxScale, group)
			continue
		}
		counts[group] = n
	}
	sl.Scale = counts
}

// wholeCount reads a count: a number (not a string) that is whole, from 0 to MaxScale.
func wholeCount(v cty.Value) (int, bool) {
	if v.IsNull() || !v.IsKnown() || v.Type() != cty.Number {
		return 0, false
	}
	bf := v.AsBigFloat()
	if !bf.IsInt() {
		return 0, false
	}
	n, acc := bf.Int64()
	if acc != big.Exact || n < 0 || n > MaxScale {
		return 0, false
	}
	return int(n), true
}

// settingNames checks the names of one settings map (attr is settings or sticky). Values are
// never part of a message: sticky ones are secrets.
func (b *builder) settingNames(sl *Slot, attr string, settings map[string]string) {
	b.duplicateKeys(sl.Range, attr)
	for _, key := range sortedKeys(settings) {
		at := b.src.keyRange(sl.Range, attr, key)
		switch {
		case !envName.MatchString(key):
			b.errorf(at, "Invalid setting name",
				"Setting name %q in %s is not an environment variable name; use letters, digits and '_', not starting with a digit.",
				key, attr)
		case strings.HasPrefix(key, reservedPrefix):
			b.errorf(at, "Reserved setting name",
				"Setting name %q in %s starts with %s, which slotd reserves for SLOTD_SITE, SLOTD_SLOT and SLOTD_LANE; rename it.",
				key, attr, reservedPrefix)
		}
	}
}

// settingValues checks the values of one settings map (attr is settings or sticky) and the size
// of the document they are seeded into, as the API and KV check them; the size only once the
// names and values are right, which are the problems to fix first.
func (b *builder) settingValues(sl *Slot, attr string, settings map[string]string) {
	bad := false
	for _, key := range sortedKeys(settings) {
		bad = bad || !envName.MatchString(key)
		if err := CheckSettingValue(key, settings[key]); err != nil {
			b.errorf(b.src.keyRange(sl.Range, attr, key), "Invalid setting value", "%s of slot %q: %v.", attr, sl.Name, err)
			bad = true
		}
	}
	if !bad {
		if err := CheckSettings(attr, settings); err != nil {
			b.errorf(b.src.attrRange(sl.Range, attr), "Settings too large", "%s of slot %q: %v.", attr, sl.Name, err)
		}
	}
}

// duplicateKeys reports a key written twice in one object attribute: HCL keeps the last one
// silently, which would hide a mistake in a setting.
func (b *builder) duplicateKeys(block hcl.Range, attr string) {
	seen := map[string]hcl.Range{}
	for _, k := range b.src.keys(block, attr) {
		if first, ok := seen[k.name]; ok {
			b.errorf(k.rng, "Duplicate key", "%s sets %q twice (first at %s); keep one.", attr, k.name, position(first))
			continue
		}
		seen[k.name] = k.rng
	}
}

// validateAutoSwap checks that every auto_swap names another slot of the site, and that
// following auto_swap from slot to slot never comes back: a cycle would swap forever.
func (b *builder) validateAutoSwap(s *Site) {
	// Slots by name, the first of each name as Site.Slot finds it, and their names in order:
	// a site with thousands of slots must not take time that grows with its square.
	byName := map[string]*Slot{}
	var names []string
	for _, sl := range s.Slots {
		if _, ok := byName[sl.Name]; !ok {
			byName[sl.Name] = sl
			names = append(names, sl.Name)
		}
	}

	for _, sl := range s.Slots {
		if !b.src.set(sl.Range, "auto_swap") {
			continue
		}
		at := b.src.attrRange(sl.Range, "auto_swap")
		switch {
		case sl.AutoSwap == sl.Name:
			b.errorf(at, "Invalid auto_swap",
				"Slot %q cannot auto-swap into itself; name another slot, or remove auto_swap.", sl.Name)
		case byName[sl.AutoSwap] == nil:
			b.errorf(at, "Unknown auto_swap slot",
				"auto_swap names slot %q, which site %q does not declare; name one of: %s.",
				sl.AutoSwap, s.Name, listNames(names, sl.Name))
		}
	}

	const (
		unseen = iota
		onPath
		done
	)
	state := map[string]int{}
	for _, start := range s.Slots {
		var path []*Slot
		cur := start
		for cur != nil && state[cur.Name] == unseen {
			state[cur.Name] = onPath
			path = append(path, cur)
			if cur.AutoSwap == "" || cur.AutoSwap == cur.Name {
				cur = nil
				break
			}
			cur = byName[cur.AutoSwap]
		}
		if cur != nil && state[cur.Name] == onPath {
			i := slices.Index(path, cur)
			names := make([]string, 0, len(path)-i+1)
			for _, sl := range path[i:] {
				names = append(names, sl.Name)
			}
			names = append(names, cur.Name)
			b.errorf(b.src.attrRange(cur.Range, "auto_swap"), "Auto-swap cycle",
				"auto_swap goes round in a cycle (%s): each healthy deploy would swap again without end; remove auto_swap from one of these slots.",
				strings.Join(names, " → "))
		}
		for _, sl := range path {
			state[sl.Name] = done
		}
	}
}

// maxListed bounds the names a message lists: a site with thousands of slots would otherwise
// get thousands of messages thousands of names long.
const maxListed = 20

// listNames lists names without except, which they hold at most once, at most maxListed of
// them, saying how many more there are.
func listNames(names []string, except string) string {
	var listed []string
	for _, n := range names {
		if len(listed) == maxListed {
			break
		}
		if n != except {
			listed = append(listed, n)
		}
	}
	list := strings.Join(listed, ", ")
	others := len(names)
	if slices.Contains(names, except) {
		others--
	}
	if more := others - len(listed); more > 0 {
		list += fmt.Sprintf(" and %d more", more)
	}
	return list
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
