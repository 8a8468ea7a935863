package engine

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/query"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// watchShared follows, for every site while this daemon leads, all that its lanes depend on:
// its slots in KV, its lane jobs in Nomad and its service's health checks in Consul (they
// carry the instances' tags). It is one blocking query for each of the three, whatever the
// number of sites, and a site is poked only when its own part changed. Each blocking query
// holds a connection, and Consul and Nomad limit the connections of one client address
// (http_max_conns_per_client, 200 and 100 by default): what slotd holds open while idle does
// not grow with its sites.
func (e *Engine) watchShared(ctx context.Context) {
	opts := func(backend, w string) query.Opts {
		return query.Opts{
			Backend: backend, Wait: query.IdleWait, Gap: query.Gap,
			Count:   e.metrics.WatchRequests.WithLabelValues(allSites, w).Inc,
			OnError: func(err error) { e.logger.Warn("watch failed", "watch", w, "error", err) },
		}
	}
	never := func(uint64) bool { return false }
	slots, jobs, checks := lastSums{}, lastSums{}, lastSums{}
	// KV: the keys of the sites folder, one level deep, answer when anything below it changed;
	// then the slots of every site are read in a transaction or a few, and compared.
	go e.follow.Follow(ctx, opts("consul", "kv"), func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		_, meta, err := e.store.KV.Keys(e.store.SitesPrefix(), "/", q)
		if err != nil {
			return 0, fmt.Errorf("watch consul kv %s: %w", e.store.SitesPrefix(), err)
		}
		sites := e.siteList()
		sums, err := e.store.SlotSums(ctx, siteNames(sites))
		if err != nil {
			return 0, err
		}
		slots.poke(sites, sums)
		return meta.LastIndex, nil
	}, never)
	go e.follow.Follow(ctx, opts("nomad", "jobs"), func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		q := (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		stubs, meta, err := e.nomad.Jobs().List(q)
		if err != nil {
			return 0, err
		}
		sites := e.siteList()
		jobs.poke(sites, jobSums(siteNames(sites), stubs))
		return meta.LastIndex, nil
	}, never)
	var filter string
	go e.follow.Follow(ctx, opts("consul", "checks"), func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		sites := e.siteList()
		services := map[string][]string{} // service name → sites
		for _, s := range sites {
			svc := s.config().Service
			services[svc] = append(services[svc], s.name)
		}
		if f := servicesFilter(services); f != filter {
			filter, index = f, 0 // other services: the answer to wait on is a new one
		}
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait, Filter: filter}).WithContext(ctx)
		hcs, meta, err := e.consul.Health().State(consulapi.HealthAny, q)
		if err != nil {
			return 0, fmt.Errorf("read consul health checks: %w", err)
		}
		for _, s := range checks.poke(sites, checkSums(services, hcs)) {
			e.refreshInstances(ctx, s.config())
		}
		return meta.LastIndex, nil
	}, never)
}

// allSites is the site label of the shared watches' request metric.
const allSites = "*"

// lastSums remembers, per site, the digest of its part of a shared watch's last answer.
type lastSums map[string]string

// poke pokes the sites whose digest differs from the last one seen (each site once at first),
// and returns them.
func (l lastSums) poke(sites []*site, sums map[string]string) []*site {
	var changed []*site
	for _, s := range sites {
		sum := sums[s.name]
		if last, seen := l[s.name]; seen && last == sum {
			continue
		}
		l[s.name] = sum
		s.poke()
		changed = append(changed, s)
	}
	return changed
}

func siteNames(sites []*site) []string {
	names := make([]string, len(sites))
	for i, s := range sites {
		names[i] = s.name
	}
	return names
}

// jobSums is the digest of each site's lane jobs in a job list: which exist, in which
// version and status. A site's lane jobs are named after it (site-a, site-b).
func jobSums(sites []string, stubs []*nomadapi.JobListStub) map[string]string {
	sums := make(map[string]string, len(sites))
	for _, name := range sites {
		var b strings.Builder
		for _, j := range stubs {
			if strings.HasPrefix(j.ID, jobspec.JobID(name, "")) {
				fmt.Fprintf(&b, "%s/%d/%s/%t;", j.ID, j.JobModifyIndex, j.Status, j.Stop)
			}
		}
		sums[name] = b.String()
	}
	return sums
}

// checkSums is the digest of each site's instances in a list of health checks: which exist,
// with which tags and status. Sites that share a service share its digest.
func checkSums(services map[string][]string, hcs consulapi.HealthChecks) map[string]string {
	lines := map[string][]string{}
	for _, hc := range hcs {
		if hc.ServiceID == "" {
			continue // a node check
		}
		lines[hc.ServiceName] = append(lines[hc.ServiceName], fmt.Sprintf("%s/%s/%s/%s/%s;",
			hc.Node, hc.ServiceID, hc.CheckID, hc.Status, strings.Join(hc.ServiceTags, ",")))
	}
	sums := map[string]string{}
	for svc, sites := range services {
		l := lines[svc]
		slices.Sort(l)
		for _, name := range sites {
			sums[name] = strings.Join(l, "")
		}
	}
	return sums
}

// servicesFilter is the Consul filter that keeps the health checks of these services.
func servicesFilter(services map[string][]string) string {
	names := make([]string, 0, len(services))
	for svc := range services {
		names = append(names, "ServiceName == "+strconv.Quote(svc))
	}
	slices.Sort(names)
	return strings.Join(names, " or ")
}

// refreshInstances updates the per-slot instance gauges of a site from Consul: passing or not,
// per slot, by the lane KV binds it to.
func (e *Engine) refreshInstances(ctx context.Context, cfg *config.Site) {
	entries, _, err := e.lanes.SiteEntries(ctx, cfg, 0, 0)
	if err != nil {
		return
	}
	st, err := e.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return
	}
	for _, slot := range cfg.Slots {
		lane := st.Slot(slot.Name).Lane.Value
		pass, fail := 0, 0
		for _, en := range entries {
			if en.Service.Meta[lanes.MetaLane] != lane {
				continue
			}
			if en.Checks.AggregatedStatus() == consulapi.HealthPassing {
				pass++
			} else {
				fail++
			}
		}
		e.metrics.Instances.WithLabelValues(cfg.Name, slot.Name, "passing").Set(float64(pass))
		e.metrics.Instances.WithLabelValues(cfg.Name, slot.Name, "failing").Set(float64(fail))
	}
}
