// Package api is the HTTP contract of slotd (DESIGN.md §6): the wire types the agent serves and
// a typed Go client for them, used by the CLI, pipelines and the e2e tests.
package api

import "time"

// Operation kinds.
const (
	KindDeploy   = "deploy"
	KindSwap     = "swap"
	KindRollback = "rollback"
	// KindSettings rolls changed settings out to the lanes of a site's slots.
	KindSettings = "settings"
	// KindScale changes a slot's instance counts (PUT …/slots/{slot}/scale).
	KindScale = "scale"
)

// Operation states (DESIGN.md §6).
const (
	StatePending    = "pending"
	StateApplying   = "applying"
	StatePreviewing = "previewing"
	StateWarming    = "warming"
	StateSwitching  = "switching"
	StateSettling   = "settling"
	StateMonitoring = "monitoring"
	// StateHolding: a swap's monitor window is over, and the former target lane is still held
	// warm with the target's settings for an instant rollback (DESIGN.md §3, step 4).
	StateHolding   = "holding"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCancelled = "cancelled"

	// StateDeploying is the state of a deploy operation while Nomad rolls the new version out.
	StateDeploying = "deploying"
)

// Terminal reports whether an operation in state s has finished.
func Terminal(s string) bool {
	return s == StateSucceeded || s == StateFailed || s == StateCancelled
}

// Phase states.
const (
	PhasePending   = "pending"
	PhaseRunning   = "running"
	PhaseSucceeded = "succeeded"
	PhaseFailed    = "failed"
	PhaseSkipped   = "skipped"
	PhaseCancelled = "cancelled"
)

// Phase names of a swap (DESIGN.md §3) and of a deploy.
const (
	// PhasePreflight plans the candidate at the target's scale before anything moves.
	PhasePreflight = "preflight"
	PhaseApply     = "apply"
	PhaseWarm      = "warm"
	PhaseSwitch    = "switch"
	PhaseSettle    = "settle"
	// PhaseSettleHeld is the first phase of an operation that starts while a swap holds its
	// former target lane and does not move that lane itself: it settles the lane the swap
	// left held. It has a name of its own, so a swap that settles a held lane first still
	// settles (and holds) its own former target lane in its own settle phase.
	PhaseSettleHeld = "settle-held"
	PhaseMonitor    = "monitor"
	PhaseDeploy     = "deploy"
	PhaseRollout    = "rollout"
)

// Operation is one deploy, swap or rollback of a site, journaled in Consul KV.
type Operation struct {
	ID      string `json:"id"`
	Site    string `json:"site"`
	Kind    string `json:"kind"`
	State   string `json:"state"`
	Trigger string `json:"trigger,omitempty"` // api, auto_swap, monitor

	// Deploy: the slot deployed into and the job variables given, those the site declares
	// sensitive with the value Hidden.
	Slot string            `json:"slot,omitempty"`
	Vars map[string]string `json:"vars,omitempty"`
	// Scale is the counts a scale operation sets, by task group.
	Scale map[string]int `json:"scale,omitempty"`

	// Swap and rollback: source and target slots.
	Source  string `json:"source,omitempty"`
	Target  string `json:"target,omitempty"`
	Preview bool   `json:"preview,omitempty"`
	// Switched is set in the same KV transaction that exchanges the two slots' bindings: from
	// then on the swap is done as far as routing goes, and a restarted daemon settles it.
	Switched bool `json:"switched,omitempty"`
	// TargetSick is journaled with the exchange: the target's lane was failing its checks as
	// it left the target's routes (a rollback away from a degraded production). A daemon that
	// takes the swap over then neither holds that lane nor waits for its health as it settles.
	TargetSick bool `json:"target_sick,omitempty"`
	// HandedOff is set when a daemon stopped gracefully between two phases and left the
	// operation to the next leader, which goes on from there; an operation interrupted any
	// other way is finished only past its warm-up, and undone before.
	HandedOff bool `json:"handed_off,omitempty"`
	// Instant is set on a swap (a rollback, mostly) whose source lane was held warm with the
	// target's settings since the swap before: it went straight to the switch, with no
	// restart and no warm-up.
	Instant bool `json:"instant,omitempty"`
	// RollbackOf names the swap that a rollback reverses.
	RollbackOf string `json:"rollback_of,omitempty"`
	// Next is the operation this one asks for once it has ended: the monitor's rollback of a
	// degraded swap, or the swap a deploy into an auto_swap slot starts. It is journaled with
	// the decision, so when the daemon stops before starting it the next leader does.
	Next *FollowUp `json:"next,omitempty"`
	// Group names the swap group of a group operation (its Site is empty) and of each member
	// site's part of one; GroupOperation is, on a member's part, the group operation's ID.
	// Members are a group operation's parts, one per member site.
	Group          string        `json:"group,omitempty"`
	GroupOperation string        `json:"group_operation,omitempty"`
	Members        []GroupMember `json:"members,omitempty"`
	// Waiting says why an operation waits previewing for -complete or -cancel although it was
	// not asked to preview: a gate refused, or an analysis before the switch was inconclusive.
	Waiting string `json:"waiting,omitempty"`
	// Measurements are the evaluations of the site's analyses (monitor { analysis … }) during
	// the operation, oldest first (at most MaxMeasurements, the newest kept).
	Measurements []Measurement `json:"measurements,omitempty"`
	// Unchanged is set on a settings rollout that found every lane already running what KV
	// says: it changed nothing, so when it succeeds it is not kept in the history.
	Unchanged bool `json:"unchanged,omitempty"`

	Phases []Phase `json:"phases"`
	Error  string  `json:"error,omitempty"`

	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`

	// Index changes whenever the operation changes; pass it back as ?index= to block.
	Index uint64 `json:"index"`
	// Seq orders a site's operations; finished ones are kept at history/<seq>.
	Seq uint64 `json:"seq"`
}

// FollowUp is an operation that another one asks for once it has ended (Operation.Next).
type FollowUp struct {
	Kind       string `json:"kind"`    // swap or rollback
	Trigger    string `json:"trigger"` // monitor, auto_swap
	Source     string `json:"source"`
	Target     string `json:"target"`
	RollbackOf string `json:"rollback_of,omitempty"`
}

// MaxMeasurements bounds an operation's Measurements.
const MaxMeasurements = 100

// Verdicts of an analysis' evaluation.
const (
	VerdictPass         = "pass"
	VerdictFail         = "fail"
	VerdictInconclusive = "inconclusive"
)

// Measurement is one evaluation of an analysis: what its query measured and what that means.
type Measurement struct {
	Analysis string `json:"analysis"`
	// Site is the member site measured, in a group operation's measurements.
	Site  string    `json:"site,omitempty"`
	Phase string    `json:"phase"` // warm (before the switch, on the candidate) or monitor
	At    time.Time `json:"at"`
	// Value is what the query returned; absent when it returned nothing.
	Value   *float64 `json:"value,omitempty"`
	Verdict string   `json:"verdict"`
	// Message says why a verdict is fail or inconclusive, or what the bounds are.
	Message string `json:"message,omitempty"`
}

// Event is what a notify webhook receives (DESIGN: notifications): one event of an operation.
type Event struct {
	// Event is "<kind>.<what>": swap.started, swap.phase_ended, swap.switched,
	// swap.analysis_failed, swap.rolled_back, swap.succeeded, swap.failed, swap.cancelled (and
	// the same of deploy, rollback, scale, settings).
	Event string `json:"event"`
	// Delivery identifies this posting (the same on every retry).
	Delivery  string     `json:"delivery"`
	At        time.Time  `json:"at"`
	Site      string     `json:"site,omitempty"`
	Group     string     `json:"group,omitempty"`
	Phase     *Phase     `json:"phase,omitempty"`
	Operation *Operation `json:"operation"`
}

// GroupMember is one member site's part of a group operation: the site's own operation (its
// ID, and its state as the group operation last wrote it).
type GroupMember struct {
	Site      string `json:"site"`
	Operation string `json:"operation"`
	State     string `json:"state"`
	Error     string `json:"error,omitempty"`
}

// Group is a swap group as GET /v1/groups shows it: its member sites, the running group
// operation (absent when idle) and the newest finished one.
type Group struct {
	Name          string     `json:"name"`
	Sites         []string   `json:"sites"`
	Operation     *Operation `json:"operation,omitempty"`
	LastOperation *Operation `json:"last_operation,omitempty"`
}

// Phase is one step of an operation.
type Phase struct {
	Name      string     `json:"name"`
	State     string     `json:"state"`
	Message   string     `json:"message,omitempty"`
	StartedAt *time.Time `json:"started_at,omitempty"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
}

// Duration is how long the phase ran, or has run so far when it has not ended.
func (p Phase) Duration() time.Duration {
	if p.StartedAt == nil {
		return 0
	}
	if p.EndedAt == nil {
		return time.Since(*p.StartedAt)
	}
	return p.EndedAt.Sub(*p.StartedAt)
}

// Phase returns the phase with the given name, or nil.
func (o *Operation) Phase(name string) *Phase {
	for i := range o.Phases {
		if o.Phases[i].Name == name {
			return &o.Phases[i]
		}
	}
	return nil
}

// Site is a site with its slots, as GET /v1/sites and GET /v1/sites/{site} show it.
type Site struct {
	Name    string `json:"name"`
	Service string `json:"service"`
	// Ready is false while the leader brings the site to its declared shape, and on a daemon
	// that does not lead: operations start only on a ready site.
	Ready bool   `json:"ready"`
	Slots []Slot `json:"slots"`
	// Operation is the running operation, absent when idle.
	Operation *Operation `json:"operation,omitempty"`
	// LastOperation is the newest finished operation, absent when there is none.
	LastOperation *Operation `json:"last_operation,omitempty"`
}

// Slot is one slot of a site and the lane that serves it.
type Slot struct {
	Name     string   `json:"name"`
	Lane     string   `json:"lane"` // the lane's Nomad job ID, e.g. web-a
	Version  uint64   `json:"version"`
	Tags     []string `json:"tags"`
	AutoSwap string   `json:"auto_swap,omitempty"`
	Healthy  int      `json:"healthy"`
	Total    int      `json:"total"`
	// Scale is the slot's instance count per task group (sticky: it stays with the slot in a
	// swap); ScaleSource says where it comes from: "declared" (slots.hcl), "live" (what Nomad
	// runs), or "kv" (kept from the first bind or set through the API).
	Scale       map[string]int `json:"scale,omitempty"`
	ScaleSource string         `json:"scale_source,omitempty"`
	// HeldFor is set while the slot's lane is held after a swap: the lane still runs the
	// settings of the slot named here (the one it served before the swap), with no route of
	// this slot, so that a rollback is a switch only. The slot has no lane of its own until
	// the hold ends at HeldUntil (or earlier: the next operation, or slotd settle).
	HeldFor   string     `json:"held_for,omitempty"`
	HeldUntil *time.Time `json:"held_until,omitempty"`
	// Instances and settings are filled by GET /v1/sites/{site} only.
	Instances []Instance `json:"instances,omitempty"`
	Settings  *Settings  `json:"settings,omitempty"`
}

// Instance is one allocation of a lane as Consul sees it.
type Instance struct {
	Alloc   string   `json:"alloc"`
	Node    string   `json:"node"`
	Address string   `json:"address"`
	Port    int      `json:"port"`
	Tags    []string `json:"tags"`
	Healthy bool     `json:"healthy"`
	Status  string   `json:"status"` // Consul's aggregated check status: passing, warning, critical
}

// Hidden stands in for a secret in the agent's answers: the value of every sticky setting
// unless the request asks with ?reveal=true, and the value of every job variable the site
// declares in sensitive_vars (a deploy records it as Hidden, so reveal shows it only for an
// operation recorded before the variable was declared sensitive).
const Hidden = "<hidden>"

// Settings are a slot's swappable and sticky settings.
type Settings struct {
	Settings map[string]string `json:"settings"`
	Sticky   map[string]string `json:"sticky"`
	// Masked is set when the sticky values are replaced by Hidden: read them with ?reveal=true
	// (Config.Reveal), which needs the token when the agent has one.
	Masked bool `json:"masked,omitempty"`
}

// DeployRequest is the body of POST /v1/sites/{site}/slots/{slot}/deploy.
type DeployRequest struct {
	Vars map[string]string `json:"vars"`
}

// SwapRequest is the body of POST /v1/sites/{site}/swap and POST /v1/groups/{group}/swap.
type SwapRequest struct {
	Source  string `json:"source"`
	Target  string `json:"target"`
	Preview bool   `json:"preview"`
}

// SettingRequest is the body of PUT /v1/sites/{site}/slots/{slot}/settings/{key}.
type SettingRequest struct {
	Value  string `json:"value"`
	Sticky bool   `json:"sticky"`
}

// Health is the answer of GET /v1/health: 200 while the daemon reaches Consul and Nomad, 503
// with the same body when its last probe of either failed.
type Health struct {
	Status        string `json:"status"` // HealthOK, or HealthFailing when Consul or Nomad is unreachable
	Leader        bool   `json:"leader"`
	LeaderAddress string `json:"leader_address,omitempty"`
	Version       string `json:"version"`
	// Consul and Nomad are the outcomes of the daemon's last probe of each (every 5 s).
	Consul Reach `json:"consul"`
	Nomad  Reach `json:"nomad"`
	// Sites maps every declared site to its state on this daemon: SiteReady, SiteStarting or
	// SiteStandby.
	Sites map[string]string `json:"sites"`
}

// Health statuses.
const (
	HealthOK      = "ok"
	HealthFailing = "failing"
)

// Site states in Health.Sites.
const (
	// SiteReady: this daemon leads and the site is up; operations start.
	SiteReady = "ready"
	// SiteStarting: this daemon leads and brings the site up (after a start, failover or
	// reload); writes answer 503 with Retry-After until it is ready.
	SiteStarting = "starting"
	// SiteStandby: this daemon does not lead; the leader runs the site.
	SiteStandby = "standby"
)

// Reach is the outcome of the daemon's last probe of Consul or Nomad.
type Reach struct {
	Status string `json:"status"` // Reachable, Unreachable, or ReachUnknown before the first probe
	// Error says why the last probe failed.
	Error     string     `json:"error,omitempty"`
	CheckedAt *time.Time `json:"checked_at,omitempty"`
}

// Reach statuses.
const (
	Reachable    = "reachable"
	Unreachable  = "unreachable"
	ReachUnknown = "unknown"
)

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
	// LeaderAddress is set on 503 answers from a daemon that is not the leader.
	LeaderAddress string `json:"leader_address,omitempty"`
}
