package httpapi

import (
	"context"
	"fmt"
	"maps"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/engine"
	"github.com/slotd/slotd/agent/metrics"
	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Secrets that the fake backend keeps where the API can read them: production's and staging's
// sticky DB values, and a sensitive job variable of a finished and of a running deploy.
const (
	historyPassword = "pw-in-history"
	runningPassword = "pw-running"
)

// fakeBackend serves site web (production and staging, db_password sensitive) and group
// storefront of web and blog (production, staging and qa), from memory: what the engine would
// answer once it checked what it was asked.
type fakeBackend struct {
	cfg      *config.Config
	leading  bool
	ready    bool
	starting map[string]bool // sites not ready while ready is true
	ops      map[string]*api.Operation
	// started counts the writes that got past every check; last is the newest they started.
	started int
	last    *api.Operation
	// history is the page the last history request asked for.
	history struct {
		limit  int
		before uint64
	}
}

var _ Backend = (*fakeBackend)(nil)

func newFakeBackend(token string, readRequiresToken *bool) *fakeBackend {
	cfg := config.Default()
	cfg.HTTP.Address = "127.0.0.1:0"
	cfg.HTTP.Token = token
	cfg.HTTP.ReadRequiresToken = readRequiresToken
	cfg.Sites = []*config.Site{{
		Name: "web", Service: "web", Job: "/nonexistent.nomad.hcl", SensitiveVars: []string{"db_password"},
		Slots: []*config.Slot{{Name: "production", Tags: []string{"urlprefix-www/"}}, {Name: "staging"}},
	}, {
		Name: "blog", Service: "blog", Job: "/nonexistent.nomad.hcl",
		Slots: []*config.Slot{{Name: "production"}, {Name: "staging"}, {Name: "qa"}},
	}}
	cfg.Groups = []*config.Group{{Name: "storefront", Sites: []string{"web", "blog"}}}
	deploy := func(id, state, password string) *api.Operation {
		return &api.Operation{ID: id, Site: "web", Kind: api.KindDeploy, State: state, Slot: "staging",
			Vars: map[string]string{"db_password": password, "app_version": "v2"}}
	}
	return &fakeBackend{cfg: cfg, ops: map[string]*api.Operation{
		"op-old": deploy("op-old", api.StateSucceeded, historyPassword),
		"op-now": deploy("op-now", api.StateDeploying, runningPassword),
	}}
}

// server is the API over b, its listener closed when the test ends.
func (b *fakeBackend) server(t testing.TB) *Server {
	t.Helper()
	s, err := New(b.cfg.HTTP.Address, b, metrics.New().Registry, hclog.NewNullLogger())
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func (b *fakeBackend) Leading() bool          { return b.leading }
func (b *fakeBackend) LeaderAddress() string  { return "" }
func (b *fakeBackend) Config() *config.Config { return b.cfg }
func (b *fakeBackend) Site(name string) *config.Site {
	return b.cfg.Site(name)
}
func (b *fakeBackend) SiteNames() []string { return []string{"web"} }
func (b *fakeBackend) Ready(site string) bool {
	return b.ready && b.cfg.Site(site) != nil && !b.starting[site]
}

func (b *fakeBackend) Health() (api.Health, bool) {
	return api.Health{Status: api.HealthOK, Leader: b.leading, Sites: map[string]string{"web": api.SiteStandby}}, true
}

func (b *fakeBackend) settings(slot string) api.Settings {
	db := map[string]string{"production": "prod-db", "staging": "staging-db"}[slot]
	feature := map[string]string{"production": "prod-feature", "staging": "staging-feature"}[slot]
	return api.Settings{Settings: map[string]string{"FEATURE": feature}, Sticky: map[string]string{"DB": db}}
}

func (b *fakeBackend) Status(_ context.Context, site string, detail bool) (*api.Site, error) {
	v := &api.Site{Name: site, Service: site, Operation: b.ops["op-now"], LastOperation: b.ops["op-old"]}
	for _, slot := range b.cfg.Site(site).SlotNames() {
		sl := api.Slot{Name: slot}
		if detail {
			set := b.settings(slot)
			sl.Settings = &set
		}
		v.Slots = append(v.Slots, sl)
	}
	return v, nil
}

func (b *fakeBackend) Settings(_, slot string) (api.Settings, error) { return b.settings(slot), nil }

func (b *fakeBackend) SetSetting(_, slot, key, value string, sticky bool) (api.Settings, error) {
	b.started++
	set := b.settings(slot)
	if sticky {
		set.Sticky[key] = value
	} else {
		set.Settings[key] = value
	}
	return set, nil
}

func (b *fakeBackend) DeleteSetting(_, slot, _ string) (api.Settings, error) {
	b.started++
	return b.settings(slot), nil
}

func (b *fakeBackend) History(_ string, limit int, before uint64) ([]api.Operation, error) {
	b.history.limit, b.history.before = limit, before
	return []api.Operation{*b.ops["op-old"]}, nil
}

func (b *fakeBackend) start(op *api.Operation) (*api.Operation, error) {
	b.started++
	op.ID, op.State = fmt.Sprintf("op-%d", b.started), api.StatePending
	if op.Group == "" {
		op.Site = "web"
	}
	b.last = op
	return op, nil
}

func (b *fakeBackend) Deploy(_, slot string, vars map[string]string) (*api.Operation, error) {
	return b.start(&api.Operation{Kind: api.KindDeploy, Slot: slot, Vars: engine.HideVars(vars, b.cfg.Sites[0].SensitiveVars)})
}

func (b *fakeBackend) Scale(_, slot string, counts map[string]int) (*api.Operation, error) {
	return b.start(&api.Operation{Kind: api.KindScale, Slot: slot, Scale: maps.Clone(counts)})
}

func (b *fakeBackend) Swap(_, source, target string, preview bool) (*api.Operation, error) {
	return b.start(&api.Operation{Kind: api.KindSwap, Source: source, Target: target, Preview: preview})
}

func (b *fakeBackend) Rollback(string) (*api.Operation, error) {
	return b.start(&api.Operation{Kind: api.KindRollback})
}

func (b *fakeBackend) Settle(context.Context, string) (*api.Operation, error) {
	return b.start(&api.Operation{Kind: api.KindSwap})
}

func (b *fakeBackend) Operation(_ context.Context, id string, _ uint64) (*api.Operation, error) {
	if op, ok := b.ops[id]; ok {
		return op, nil
	}
	return nil, fmt.Errorf("%w: no operation %q", engine.ErrNotFound, id)
}

func (b *fakeBackend) Complete(ctx context.Context, id string) (*api.Operation, error) {
	return b.Operation(ctx, id, 0)
}

func (b *fakeBackend) Cancel(ctx context.Context, id string) (*api.Operation, error) {
	return b.Operation(ctx, id, 0)
}

func (b *fakeBackend) Group(name string) *config.Group { return b.cfg.Group(name) }

func (b *fakeBackend) GroupNames() []string {
	var names []string
	for _, g := range b.cfg.Groups {
		names = append(names, g.Name)
	}
	return names
}

func (b *fakeBackend) GroupStatus(_ context.Context, name string) (*api.Group, error) {
	g := b.cfg.Group(name)
	return &api.Group{Name: g.Name, Sites: g.Sites, Operation: b.ops["op-group"]}, nil
}

// startGroup starts a group operation with a pending part on every member.
func (b *fakeBackend) startGroup(op *api.Operation) (*api.Operation, error) {
	for _, site := range b.cfg.Group(op.Group).Sites {
		op.Members = append(op.Members, api.GroupMember{Site: site, State: api.StatePending})
	}
	return b.start(op)
}

func (b *fakeBackend) GroupSwap(group, source, target string, preview bool) (*api.Operation, error) {
	return b.startGroup(&api.Operation{Kind: api.KindSwap, Group: group, Source: source, Target: target, Preview: preview})
}

func (b *fakeBackend) GroupRollback(group string) (*api.Operation, error) {
	return b.startGroup(&api.Operation{Kind: api.KindRollback, Group: group})
}

func (b *fakeBackend) GroupHistory(group string, limit int, before uint64) ([]api.Operation, error) {
	b.history.limit, b.history.before = limit, before
	return []api.Operation{{ID: "op-g1", Group: group, Kind: api.KindSwap, State: api.StateSucceeded, Seq: 7}}, nil
}
