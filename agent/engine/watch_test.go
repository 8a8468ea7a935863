package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/agent/store"
	"github.com/slotd/slotd/agent/store/storetest"
)

func TestJobSums(t *testing.T) {
	stubs := []*nomadapi.JobListStub{
		{ID: "web-a", JobModifyIndex: 7, Status: "running"},
		{ID: "web-b", JobModifyIndex: 9, Status: "running"},
		{ID: "shop-a", JobModifyIndex: 3, Status: "dead", Stop: true},
		{ID: "other", JobModifyIndex: 1, Status: "running"},
	}
	sums := jobSums([]string{"web", "shop", "idle"}, stubs)
	assert.Equal(t, "web-a/7/running/false;web-b/9/running/false;", sums["web"])
	assert.Equal(t, "shop-a/3/dead/true;", sums["shop"])
	assert.Equal(t, "", sums["idle"], "a site without lane jobs")

	moved := append([]*nomadapi.JobListStub(nil), stubs...)
	moved[1] = &nomadapi.JobListStub{ID: "web-b", JobModifyIndex: 10, Status: "running"}
	next := jobSums([]string{"web", "shop"}, moved)
	assert.NotEqual(t, sums["web"], next["web"], "a new version of one lane changes its site's sum")
	assert.Equal(t, sums["shop"], next["shop"], "and no other site's")
}

func TestCheckSums(t *testing.T) {
	check := func(svc, id, status string, tags ...string) *consulapi.HealthCheck {
		return &consulapi.HealthCheck{Node: "n1", ServiceName: svc, ServiceID: id, CheckID: id + "-c", Status: status, ServiceTags: tags}
	}
	services := map[string][]string{"web": {"web", "web2"}, "shop": {"shop"}}
	base := consulapi.HealthChecks{
		{Node: "n1", CheckID: "serfHealth", Status: "passing"},
		check("web", "w1", "passing", "production"),
		check("web", "w2", "passing", "staging"),
		check("shop", "s1", "passing", "production"),
	}
	sums := checkSums(services, base)
	assert.Equal(t, sums["web"], sums["web2"], "sites that share a service share its sum")
	assert.NotEmpty(t, sums["shop"])

	reordered := consulapi.HealthChecks{base[3], base[2], base[1], base[0]}
	assert.Equal(t, sums, checkSums(services, reordered), "the order of the answer does not matter")

	for name, changed := range map[string]*consulapi.HealthCheck{
		"tags":   check("web", "w1", "passing"),
		"status": check("web", "w1", "critical", "production"),
	} {
		next := checkSums(services, consulapi.HealthChecks{base[0], changed, base[2], base[3]})
		assert.NotEqual(t, sums["web"], next["web"], "a change of %s of one instance", name)
		assert.Equal(t, sums["shop"], next["shop"], "a change of %s in another service", name)
	}
	gone := checkSums(services, consulapi.HealthChecks{base[0], base[1], base[3]})
	assert.NotEqual(t, sums["web"], gone["web"], "an instance gone")
}

func TestServicesFilter(t *testing.T) {
	assert.Equal(t, `ServiceName == "shop" or ServiceName == "web"`,
		servicesFilter(map[string][]string{"web": {"web", "web2"}, "shop": {"shop"}}))
}

func TestLastSumsPokeOnlyChanged(t *testing.T) {
	newSite := func(name string) *site { return &site{name: name, changed: make(chan struct{}, 1)} }
	web, shop := newSite("web"), newSite("shop")
	poked := func(s *site) bool {
		select {
		case <-s.changed:
			return true
		default:
			return false
		}
	}
	l := lastSums{}
	assert.Len(t, l.poke([]*site{web, shop}, map[string]string{"web": "1"}), 2, "every site at first, with lanes or none")
	assert.True(t, poked(web))
	assert.True(t, poked(shop))

	changed := l.poke([]*site{web, shop}, map[string]string{"web": "2"})
	assert.Equal(t, []*site{web}, changed)
	assert.True(t, poked(web))
	assert.False(t, poked(shop), "a site whose part did not change is not poked")

	assert.Empty(t, l.poke([]*site{web, shop}, map[string]string{"web": "2"}))
	assert.False(t, poked(web))
}

func TestSlotSums(t *testing.T) {
	kv := storetest.New()
	st := &store.Store{KV: kv, Prefix: "slotd"}
	var sites []string
	for i := range store.MaxTxnOps + 6 { // more sites than one transaction reads
		site := fmt.Sprintf("s%03d", i)
		sites = append(sites, site)
		kv.Put(st.SlotKey(site, "production", "lane"), site+"-a")
		kv.Put(st.SlotKey(site, "production", "settings"), `{"FEATURE":"x"}`)
	}
	sites = append(sites, "empty")
	sums, err := st.SlotSums(context.Background(), sites)
	require.NoError(t, err)
	require.Len(t, sums, len(sites))
	assert.Equal(t, "", sums["empty"], "a site without slots in KV")
	for _, site := range sites[:len(sites)-1] {
		assert.Contains(t, sums[site], st.SlotKey(site, "production", "lane")+"@", "site %s", site)
		assert.Equal(t, 2, strings.Count(sums[site], "/sites/"+site+"/slots/"), "the site's own two keys in %s's sum: %s", site, sums[site])
		assert.Equal(t, 2, strings.Count(sums[site], ";"), "and no other: %s", sums[site])
	}

	changed := func(what string, fn func()) {
		t.Helper()
		fn()
		next, err := st.SlotSums(context.Background(), sites)
		require.NoError(t, err)
		for _, site := range sites {
			if site == "s070" {
				assert.NotEqual(t, sums[site], next[site], "%s changes the sum of s070", what)
			} else {
				assert.Equal(t, sums[site], next[site], "%s leaves the sum of %s", what, site)
			}
		}
		sums = next
	}
	changed("a setting written", func() { kv.Put(st.SlotKey("s070", "production", "settings"), `{"FEATURE":"y"}`) })
	changed("a slot key deleted", func() {
		_, _, _, _ = kv.Txn(consulapi.KVTxnOps{{Verb: consulapi.KVDelete, Key: st.SlotKey("s070", "production", "settings")}}, nil)
	})
	kv.Put(st.SiteKey("s070", "operation"), `{"id":"op-1"}`)
	kv.Put(st.SiteKey("s070", "history", "0001"), `{"id":"op-0"}`)
	next, err := st.SlotSums(context.Background(), sites)
	require.NoError(t, err)
	assert.Equal(t, sums, next, "the journal and the history are not the slots")

	kv.Fail = func(consulapi.KVTxnOps) error { return errors.New("consul is away") }
	_, err = st.SlotSums(context.Background(), sites)
	assert.ErrorContains(t, err, "consul is away")
}
