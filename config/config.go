// Package config owns slotd's HCL site declarations (DESIGN.md §5): it decodes slots.hcl files,
// fills defaults, and validates everything at once with file:line:col positions.
package config

import (
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Defaults. Each is what an operator gets when the declaration leaves the field out.
const (
	// DefaultLogLevel is the go-hclog level of the daemon's logs.
	DefaultLogLevel = "info"
	// DefaultKVPrefix is the Consul KV folder that holds all of slotd's state.
	DefaultKVPrefix = "slotd"
	// DefaultHTTPAddress is where the daemon's API listens: loopback only unless told otherwise.
	DefaultHTTPAddress = "127.0.0.1:4680"
	// DefaultConsulAddress is the local Consul agent's HTTP API.
	DefaultConsulAddress = "127.0.0.1:8500"
	// DefaultNomadAddress is the local Nomad agent's HTTP API.
	DefaultNomadAddress = "http://127.0.0.1:4646"
	// DefaultWarmupTimeout bounds one warm-up request.
	DefaultWarmupTimeout = 10 * time.Second
	// DefaultWarmupAttempts is how often a warm-up request is tried before the instance fails.
	DefaultWarmupAttempts = 5
	// DefaultWarmupInterval is the pause between two attempts of one warm-up request.
	DefaultWarmupInterval = 1 * time.Second
	// DefaultMonitorWindow is how long the health of a new production is watched after a swap.
	DefaultMonitorWindow = 2 * time.Minute
	// DefaultMonitorThreshold is the fraction of the target's instances that must stay passing.
	DefaultMonitorThreshold = 1.0
	// DefaultMonitorGrace is how long health must stay below the threshold before it counts:
	// one failed check run is not a degraded site.
	DefaultMonitorGrace = 10 * time.Second
	// DefaultDeployTimeout bounds a rollout of one lane (deploy, settings change, swap phase).
	DefaultDeployTimeout = 10 * time.Minute
	// DefaultHistoryLimit is how many finished operations a site keeps in its history; the
	// oldest go when a new one is added.
	DefaultHistoryLimit = 200
)

// DefaultWarmupStatuses are the statuses a warm-up request may answer with when the declaration
// names none: 200–399. Unlike Azure, slotd never counts a 4xx or 5xx answer as warm.
func DefaultWarmupStatuses() []int {
	s := make([]int, 0, 200)
	for c := 200; c < 400; c++ {
		s = append(s, c)
	}
	return s
}

// Config is a whole set of declarations: the daemon's own settings and every site. It is merged
// from one or more files (see file in load.go), so it carries no hcl tags of its own.
type Config struct {
	LogLevel string
	LogJSON  bool
	KVPrefix string
	// DataDir is where the daemon keeps its own small state (its leader session, so a restart
	// takes the lock back at once); empty: slotd under the user's cache folder.
	DataDir string
	// HistoryLimit is what every site that sets no history_limit of its own keeps.
	HistoryLimit int

	HTTP   HTTP
	Consul Consul
	Nomad  Nomad

	// Sites in name order.
	Sites []*Site
	// Groups in name order: sites swapped as one (group "storefront" { sites = [...] }).
	Groups []*Group
	// Notify are the webhooks told of every operation's events, in name order.
	Notify []*Notify

	// Files are the files the declarations were read from, as named to Load or Parse.
	Files []string
}

// HTTP configures the daemon's API listener.
type HTTP struct {
	Address string `hcl:"address,optional"`
	// TokenFile holds the bearer token that writes, and reads unless ReadRequiresToken is
	// false, need.
	TokenFile string `hcl:"token_file,optional"`
	// ReadRequiresToken is nil when left out: reads then need the token whenever there is one
	// (see ReadsNeedToken). Only a written false opens reads of a daemon that has a token.
	ReadRequiresToken *bool  `hcl:"read_requires_token,optional"`
	TLSCertFile       string `hcl:"tls_cert_file,optional"`
	TLSKeyFile        string `hcl:"tls_key_file,optional"`
	// InsecureNoToken lets an address other than loopback serve without token_file, for an
	// API that something in front of it authenticates; without it such a daemon refuses to
	// start, since anyone who reaches it could reveal sticky values, swap and deploy.
	InsecureNoToken bool `hcl:"insecure_no_token,optional"`

	// Token is read from TokenFile after decoding; empty means the API is open.
	Token string `json:"-"`

	// Range is where the block is declared, for messages; zero when it was left out.
	Range hcl.Range `hcl:",def_range"`
}

// ReadsNeedToken reports whether reads (GET requests other than /v1/health) need the bearer
// token: with a token configured, unless read_requires_token = false is written. Sticky values
// are masked in every answer either way; revealing them needs the token whenever there is one.
func (h HTTP) ReadsNeedToken() bool {
	return h.Token != "" && (h.ReadRequiresToken == nil || *h.ReadRequiresToken)
}

// Consul configures the Consul client. The token comes from token_file, token, or
// CONSUL_HTTP_TOKEN, in that order; never from more than one of the first two. TLS is on with an
// https:// address, or an address without a scheme and CONSUL_HTTP_SSL=true.
type Consul struct {
	Address   string `hcl:"address,optional"`
	Token     string `hcl:"token,optional" json:"-"`
	TokenFile string `hcl:"token_file,optional"`
	// Service names the Consul service this daemon runs as (registered by Nomad with
	// enable_tag_override): slotd keeps a "leader" or "standby" tag on its own instance.
	Service string `hcl:"service,optional"`
	// CAFile, CAPath (a folder of CA certificates), CertFile and KeyFile (a client
	// certificate and its key) and TLSServerName: each left out comes from its CONSUL_* variable (see consulTLS).
	CAFile        string `hcl:"ca_file,optional"`
	CAPath        string `hcl:"ca_path,optional"`
	CertFile      string `hcl:"cert_file,optional"`
	KeyFile       string `hcl:"key_file,optional"`
	TLSServerName string `hcl:"tls_server_name,optional"`

	// Range is where the block is declared, for messages; zero when it was left out.
	Range hcl.Range `hcl:",def_range"`
}

// Nomad configures the Nomad client. The token comes from token_file, token, or NOMAD_TOKEN.
// TLS is on with an https:// address.
type Nomad struct {
	Address   string `hcl:"address,optional"`
	Token     string `hcl:"token,optional" json:"-"`
	TokenFile string `hcl:"token_file,optional"`
	Region    string `hcl:"region,optional"`
	Namespace string `hcl:"namespace,optional"`
	// CAFile, CAPath (a folder of CA certificates), CertFile and KeyFile (a client
	// certificate and its key) and TLSServerName: each left out comes from its NOMAD_* variable (see nomadTLS).
	CAFile        string `hcl:"ca_file,optional"`
	CAPath        string `hcl:"ca_path,optional"`
	CertFile      string `hcl:"cert_file,optional"`
	KeyFile       string `hcl:"key_file,optional"`
	TLSServerName string `hcl:"tls_server_name,optional"`

	// Range is where the block is declared, for messages; zero when it was left out.
	Range hcl.Range `hcl:",def_range"`
}

// Site is one application with its slots.
type Site struct {
	Name string `hcl:"name,label"`
	// Job is the HCL2 jobspec, made absolute relative to the declaring file.
	Job     string            `hcl:"job"`
	Service string            `hcl:"service"`
	Vars    map[string]string `hcl:"vars,optional"`
	// SensitiveVars name job variables whose values slotd never shows or keeps: a deploy's
	// operation records them as api.Hidden (Nomad 1.6's jobspec variable block has no
	// sensitive attribute to say it in the jobspec).
	SensitiveVars []string `hcl:"sensitive_vars,optional"`

	DeployTimeoutRaw string `hcl:"deploy_timeout,optional"`
	DeployTimeout    time.Duration
	// HistoryLimit is how many finished operations the site keeps: its own history_limit, or
	// the top-level one, or DefaultHistoryLimit.
	HistoryLimit int `hcl:"history_limit,optional"`

	Warmup  *Warmup  `hcl:"warmup,block"`
	Monitor *Monitor `hcl:"monitor,block"`
	Gates   []*Gate  `hcl:"gate,block"`
	Slots   []*Slot  `hcl:"slot,block"`

	// Range is where the site is declared (its `site "name"` header), for messages.
	Range hcl.Range `hcl:",def_range"`
}

// Warmup is what a slot's instances must answer before traffic moves to them. Each *Raw field
// holds a duration as written; the field after it holds it parsed, or its default. Attempts
// left out gets its default, while attempts = 0 written is an error: the decoder tells them
// apart by the attribute, which keeps the field a plain int for its users.
type Warmup struct {
	Paths    []string `hcl:"paths,optional"`
	Statuses []int    `hcl:"statuses,optional"`
	Host     string   `hcl:"host,optional"`

	TimeoutRaw  string `hcl:"timeout,optional"`
	Timeout     time.Duration
	Attempts    int    `hcl:"attempts,optional"`
	IntervalRaw string `hcl:"interval,optional"`
	Interval    time.Duration

	// Range is where the block is declared, for messages; zero when it was left out.
	Range hcl.Range `hcl:",def_range"`
}

// Monitor is the watch on a new production after a swap. Durations and Threshold are filled
// like Warmup's: left out gets the default, a written 0 is checked as written.
type Monitor struct {
	WindowRaw    string `hcl:"window,optional"`
	Window       time.Duration
	AutoRollback bool    `hcl:"auto_rollback,optional"`
	Threshold    float64 `hcl:"threshold,optional"`
	GraceRaw     string  `hcl:"grace,optional"`
	Grace        time.Duration
	// RollbackWindow is how long the former target lane is held after a switch, warm with the
	// target's settings and no route, so a rollback is a switch only: rollback_window as
	// written, or Window when left out; 0 settles at once.
	RollbackWindowRaw string `hcl:"rollback_window,optional"`
	RollbackWindow    time.Duration
	// Analyses judge a swap by metrics (Prometheus queries) as well as by health checks.
	Analyses []*Analysis `hcl:"analysis,block"`

	// Range is where the block is declared, for messages; zero when it was left out.
	Range hcl.Range `hcl:",def_range"`
}

// Analysis is one metric check of a swap: a Prometheus query evaluated every Interval during
// the monitor window (and before the switch, on the candidate, with BeforeSwitch); Failures
// evaluations in a row outside [Min, Max] fail it. Query is a Go text/template (see
// analysis.Vars for what it can name).
type Analysis struct {
	Name        string   `hcl:"name,label"`
	Prometheus  string   `hcl:"prometheus"`
	Query       string   `hcl:"query"`
	Max         *float64 `hcl:"max,optional"`
	Min         *float64 `hcl:"min,optional"`
	IntervalRaw string   `hcl:"interval,optional"`
	Interval    time.Duration
	// Failures is how many failing evaluations in a row fail the analysis (default 1).
	Failures int `hcl:"failures,optional"`
	// OnInconclusive is what an evaluation that measured nothing (Prometheus unreachable, an
	// empty result) counts as: "pass", "fail", or "pause" (the default).
	OnInconclusive string `hcl:"on_inconclusive,optional"`
	// BeforeSwitch evaluates it on the candidate too, after warm-up and before any route
	// moves, for as long as BeforeSwitchFor (default: Interval × Failures).
	BeforeSwitch       bool   `hcl:"before_switch,optional"`
	BeforeSwitchForRaw string `hcl:"before_switch_for,optional"`
	BeforeSwitchFor    time.Duration

	Range hcl.Range `hcl:",def_range"`
}

// Gate is a confirmation asked of a webhook at a point of a swap (today "before-switch"):
// slotd posts the operation and waits up to Timeout for a 2xx; anything else leaves the swap
// previewing, for -complete or -cancel.
type Gate struct {
	Name       string `hcl:"name,label"`
	Webhook    string `hcl:"webhook"`
	TimeoutRaw string `hcl:"timeout,optional"`
	Timeout    time.Duration
	SecretFile string `hcl:"secret_file,optional"`
	// Secret is read from SecretFile after decoding: the request is signed with it.
	Secret string `json:"-"`

	Range hcl.Range `hcl:",def_range"`
}

// Notify is a webhook that every operation event (or those Events name) is posted to, signed
// with the secret of SecretFile; Format "slack" posts a Slack-compatible body.
type Notify struct {
	Name       string   `hcl:"name,label"`
	Webhook    string   `hcl:"webhook"`
	Events     []string `hcl:"events,optional"`
	SecretFile string   `hcl:"secret_file,optional"`
	Format     string   `hcl:"format,optional"`
	Secret     string   `json:"-"`

	Range hcl.Range `hcl:",def_range"`
}

// Slot is one named environment of a site.
type Slot struct {
	Name        string   `hcl:"name,label"`
	Tags        []string `hcl:"tags,optional"`
	PreviewTags []string `hcl:"preview_tags,optional"`
	// PreviousTags route to the lane that served this slot before a swap, while it is held
	// (monitor.rollback_window): where testers still reach the previous version.
	PreviousTags []string          `hcl:"previous_tags,optional"`
	Settings     map[string]string `hcl:"settings,optional"`
	Sticky       map[string]string `hcl:"sticky,optional"`
	AutoSwap     string            `hcl:"auto_swap,optional"`

	// ScaleRaw is scale as written: an object of task group counts, or "live". Scale and
	// ScaleLive hold it checked; neither is set when the slot declares no scale.
	ScaleRaw cty.Value `hcl:"scale,optional" json:"-"`
	// Scale is the declared instance count of each task group of the site's job.
	Scale map[string]int
	// ScaleLive is scale = "live": the slot keeps the counts its lane runs in Nomad.
	ScaleLive bool

	// Range is where the slot is declared (its `slot "name"` header), for messages.
	Range hcl.Range `hcl:",def_range"`
}

// TagList is one of a slot's lists of route tags: Attr names it as slots.hcl writes it.
type TagList struct {
	Attr string
	Tags []string
}

// RouteTagLists are the lists of route tags the slot declares: tags, preview_tags and
// previous_tags.
func (sl *Slot) RouteTagLists() []TagList {
	return []TagList{{"tags", sl.Tags}, {"preview_tags", sl.PreviewTags}, {"previous_tags", sl.PreviousTags}}
}

// ScaleDeclared reports whether the slot's scale is declared in HCL (counts or "live"): such a
// scale is changed in the declarations, not through the API.
func (sl *Slot) ScaleDeclared() bool { return sl.Scale != nil || sl.ScaleLive }

// MaxScale bounds one task group's declared count.
const MaxScale = 10000

// MaxGroupSites bounds a group's members: the switch exchanges every member's bindings and
// swappable settings in one Consul transaction, which holds at most 64 operations, 8 a member.
const MaxGroupSites = 8

// Group is a swap group: declared sites swapped as one operation. A site can belong to
// several groups.
type Group struct {
	Name  string   `hcl:"name,label"`
	Sites []string `hcl:"sites"`

	// Range is where the block is declared, for messages.
	Range hcl.Range `hcl:",def_range"`
}

// Group is the declared group of that name, or nil.
func (c *Config) Group(name string) *Group {
	for _, g := range c.Groups {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// Site returns the site with the given name, or nil.
func (c *Config) Site(name string) *Site {
	for _, s := range c.Sites {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Slot returns the slot with the given name, or nil.
func (s *Site) Slot(name string) *Slot {
	for _, sl := range s.Slots {
		if sl.Name == name {
			return sl
		}
	}
	return nil
}

// SlotNames returns the site's slot names in declaration order.
func (s *Site) SlotNames() []string {
	names := make([]string, len(s.Slots))
	for i, sl := range s.Slots {
		names[i] = sl.Name
	}
	return names
}
