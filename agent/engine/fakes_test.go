package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/agent/analysis"
	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/metrics"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/agent/store/storetest"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// fakeLanes records every lane move an operation asks for and answers as Nomad and Consul
// would when it goes well; fail picks the moves that fail instead.
type fakeLanes struct {
	mu       sync.Mutex
	calls    []string
	versions map[string]uint64
	fail     func(call string) bool
	// keep: every lane already runs what is asked, so none gets a new version.
	keep bool
	// instance is where every instance of every lane answers warm-up requests; "" for none.
	instance string
	// counts and serves are what each lane's job runs in Nomad: counts per group, as which slot.
	counts map[string]map[string]int
	serves map[string]string
	// scales records the scale of every move, "<lane> as <slot> <scale>", and of every plan,
	// "plan <lane> as <slot> <scale>"; planErr fails the plans.
	scales  []string
	planErr error
	// last is the state each lane was last moved to, for plans, by "<site>/<lane>".
	last map[string]lanes.State
	// sick marks the lanes whose instances fail their checks; differ the lanes that Differs
	// says run something else than KV asks (after differWait).
	sick       map[string]bool
	differ     map[string]bool
	differWait time.Duration
	// kv is where Running looks for what a lane never moved in the test runs.
	kv *storetest.KV
}

func scaleText(want lanes.State) string {
	if want.Scale == nil {
		return "jobspec"
	}
	s := lanes.FormatScale(want.Scale)
	if want.Live {
		s += " live"
	}
	return s
}

func (f *fakeLanes) Counts(_ context.Context, _ *config.Site, lane string) (map[string]int, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.counts[lane]), f.serves[lane], nil
}

func (f *fakeLanes) Plan(_ context.Context, cfg *config.Site, lane string, _ lanes.Source, want lanes.State) (jobspec.Change, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scales = append(f.scales, fmt.Sprintf("plan %s as %s %s", lane, want.Slot, scaleText(want)))
	cur, ok := f.last[cfg.Name+"/"+lane]
	if ok && cur.Slot == want.Slot && maps.Equal(cur.Env, want.Env) && maps.Equal(cur.Scale, want.Scale) {
		return jobspec.TagsOnly, f.planErr
	}
	return jobspec.Restart, f.planErr
}

func gateName(g lanes.Gate) string {
	return map[lanes.Gate]string{lanes.GateHealthy: "healthy", lanes.GateTags: "tags", lanes.GateNone: "none"}[g]
}

func (f *fakeLanes) Ensure(_ context.Context, cfg *config.Site, lane string, _ lanes.Source, want lanes.State, g lanes.Gate) (lanes.Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := fmt.Sprintf("%s as %s [%s] DB=%s FEATURE=%s %s", lane, want.Slot, strings.Join(want.Tags, " "), want.Env["DB"], want.Env["FEATURE"], gateName(g))
	f.calls = append(f.calls, call)
	f.scales = append(f.scales, fmt.Sprintf("%s as %s %s", lane, want.Slot, scaleText(want)))
	if f.fail != nil && f.fail(call) {
		return lanes.Rollout{}, errors.New("nomad says no")
	}
	if want.InPlace {
		cur, err := f.running(cfg, lane)
		if err != nil || cur.Slot != want.Slot || !maps.Equal(cur.Env, want.Env) || !maps.Equal(cur.Scale, want.Scale) {
			return lanes.Rollout{}, lanes.ErrWouldRestart
		}
	}
	if !f.keep {
		f.versions[lane]++
	}
	if f.last == nil {
		f.last = map[string]lanes.State{}
	}
	f.last[cfg.Name+"/"+lane] = want
	delete(f.differ, lane) // it runs what was asked now
	if f.counts != nil && want.Scale != nil {
		f.counts[lane], f.serves[lane] = maps.Clone(want.Scale), want.Slot
	}
	return lanes.Rollout{Version: f.versions[lane]}, nil
}

func (f *fakeLanes) Submission(context.Context, *config.Site, string, uint64, bool) (lanes.Source, error) {
	return lanes.Source{Jobspec: "job {}"}, nil
}

func (f *fakeLanes) Entries(_ context.Context, _ *config.Site, lane string, _ uint64, _ time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	if f.instance == "" {
		return nil, 1, nil
	}
	host, port, _ := net.SplitHostPort(f.instance)
	p, _ := strconv.Atoi(port)
	f.mu.Lock()
	status := consulapi.HealthPassing
	if f.sick[lane] {
		status = consulapi.HealthCritical
	}
	f.mu.Unlock()
	return []*consulapi.ServiceEntry{{
		Node:    &consulapi.Node{Address: host},
		Service: &consulapi.AgentService{ID: "_nomad-task-" + lane, Address: host, Port: p, Meta: map[string]string{lanes.MetaLane: lane}},
		Checks:  consulapi.HealthChecks{{Status: status}},
	}}, 1, nil
}

func testSite() *config.Site {
	return &config.Site{
		Name: "web", Service: "web", DeployTimeout: time.Minute,
		Warmup: &config.Warmup{Paths: []string{"/"}, Attempts: 1, Timeout: time.Second},
		Slots: []*config.Slot{
			{Name: "production", Tags: []string{"urlprefix-www/"}, PreviewTags: []string{"urlprefix-preview/"}},
			{Name: "staging", Tags: []string{"urlprefix-staging/"}},
		},
	}
}

// kvSlots writes production on lane a and staging on lane b, or the other way round.
func kvSlots(kv *storetest.KV, exchanged bool) { kvSite(kv, "web", exchanged) }

// kvSite is kvSlots of any site.
func kvSite(kv *storetest.KV, site string, exchanged bool) {
	prodLane, stagingLane := site+"-a", site+"-b"
	prodFeature, stagingFeature := "prod-feature", "staging-feature"
	if exchanged {
		prodLane, stagingLane = stagingLane, prodLane
		prodFeature, stagingFeature = stagingFeature, prodFeature
	}
	kv.Put("slotd/sites/"+site+"/slots/production/lane", prodLane)
	kv.Put("slotd/sites/"+site+"/slots/production/version", "3")
	kv.Put("slotd/sites/"+site+"/slots/production/settings", `{"FEATURE": "`+prodFeature+`"}`)
	kv.Put("slotd/sites/"+site+"/slots/production/sticky", `{"DB": "prod-db"}`)
	kv.Put("slotd/sites/"+site+"/slots/staging/lane", stagingLane)
	kv.Put("slotd/sites/"+site+"/slots/staging/version", "5")
	kv.Put("slotd/sites/"+site+"/slots/staging/settings", `{"FEATURE": "`+stagingFeature+`"}`)
	kv.Put("slotd/sites/"+site+"/slots/staging/sticky", `{"DB": "staging-db"}`)
}

func testEngine(kv *storetest.KV, lanes laneOps) *Engine {
	if f, ok := lanes.(*fakeLanes); ok && f.kv == nil {
		f.kv = kv
	}
	e := &Engine{
		logger: hclog.NewNullLogger(), store: &store.Store{KV: kv, Prefix: "slotd"}, lanes: lanes,
		metrics: metrics.New(), ops: newOpRegistry(), index: newOpIndex(), httpClient: http.DefaultClient,
		daemon: context.Background(), runs: map[string]*run{}, analysis: analysis.NewRunner(nil, nil),
	}
	e.leader.Store(true)
	return e
}

func (f *fakeLanes) SiteEntries(context.Context, *config.Site, uint64, time.Duration) ([]*consulapi.ServiceEntry, uint64, error) {
	return nil, 1, nil
}

// Differs says what differ says of the lane, after differWait (a slow Nomad).
func (f *fakeLanes) Differs(ctx context.Context, _ *config.Site, lane string, _ lanes.Source, _ lanes.State) (bool, error) {
	if err := query.Sleep(ctx, f.differWait); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.differ[lane], nil
}

func (f *fakeLanes) Job(context.Context, *config.Site, string) (*nomadapi.Job, error) {
	return nil, nil
}

func (f *fakeLanes) JobVersion(_ context.Context, id string, version uint64) (*nomadapi.Job, error) {
	return nil, fmt.Errorf("job %s has no version %d", id, version)
}

func (f *fakeLanes) Render(*config.Site, string, lanes.Source, lanes.State) (*nomadapi.Job, error) {
	return &nomadapi.Job{}, nil
}

func (f *fakeLanes) Check(*config.Site, lanes.Source) error { return nil }

var _ laneOps = (*fakeLanes)(nil)

// Running is the state the lane was last moved to, without its routes. A lane never moved in
// this test runs what KV says for the slot bound to it (with the counts it runs, if known).
func (f *fakeLanes) Running(_ context.Context, cfg *config.Site, lane string, _ lanes.Source) (lanes.State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running(cfg, lane)
}

func (f *fakeLanes) running(cfg *config.Site, lane string) (lanes.State, error) {
	if st, ok := f.last[cfg.Name+"/"+lane]; ok {
		st.Tags, st.InPlace = nil, false
		return st, nil
	}
	if f.kv == nil {
		return lanes.State{}, fmt.Errorf("fake: lane %s runs nothing known", lane)
	}
	prefix := "slotd/sites/" + cfg.Name + "/slots/"
	for _, key := range f.kv.AllKeys() {
		slot, ok := strings.CutSuffix(strings.TrimPrefix(key, prefix), "/lane")
		if !strings.HasPrefix(key, prefix) || !ok || f.kv.Value(key) != jobspec.JobID(cfg.Name, lane) {
			continue
		}
		var set, sticky map[string]string
		_ = json.Unmarshal([]byte(f.kv.Value(prefix+slot+"/settings")), &set)
		_ = json.Unmarshal([]byte(f.kv.Value(prefix+slot+"/sticky")), &sticky)
		st := lanes.State{Slot: slot, Env: effectiveEnv(set, sticky), Scale: maps.Clone(f.counts[lane])}
		if s := cfg.Slot(slot); s != nil {
			st.Live = s.ScaleLive
		}
		return st, nil
	}
	return lanes.State{}, fmt.Errorf("fake: lane %s runs nothing known", lane)
}
