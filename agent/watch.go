package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
)

// The blocking-query rules of STYLE.md, written once: every watch and every wait of slotd asks
// Consul or Nomad through follow.
const (
	// idleWait is how long an idle blocking query waits: the most often an idle agent asks.
	idleWait = 5 * time.Minute
	// blockingWait is how long one blocking query waits while an operation watches.
	blockingWait = 5 * time.Second
	// queryGrace is how much longer than its wait a blocking query may take before slotd gives
	// up on it: a server that hangs (not down) must not block an operation past its deadline.
	queryGrace = 15 * time.Second
	// watchGap is the least time between two queries of a site's watchers, so a busy cluster
	// whose index moves all the time does not turn a watch into a tight loop.
	watchGap = 250 * time.Millisecond
)

// query asks once, blocking until index changes or wait passes; it returns the new index.
type query func(ctx context.Context, index uint64, wait time.Duration) (uint64, error)

// followOpts say how to follow one query.
type followOpts struct {
	backend string        // "consul" or "nomad", the label of the error metric
	wait    time.Duration // how long one query blocks
	gap     time.Duration // the least time between two queries
	// onError sees each failure (for logs and "last seen" messages); nil: ignore.
	onError func(error)
	// count, if set, is called before each query (the per-site request metric).
	count func()
	// always calls changed after every answer, even one with the same index (a wait that
	// also watches the clock).
	always bool
}

// follow runs q as a blocking query until ctx ends or changed returns true. changed is called
// with each new index, including the first answer. Same index: no change. A lower index: the
// server's state was reset, so the next query starts over from 0. Failures back off with
// jitter. follow returns nil when changed said done, else ctx's error.
func (a *Agent) follow(ctx context.Context, o followOpts, q query, changed func(index uint64) (done bool)) error {
	var index uint64
	failures := 0
	var last time.Time
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if wait := o.gap - time.Since(last); o.gap > 0 && wait > 0 {
			if err := sleepCtx(ctx, wait); err != nil {
				return err
			}
		}
		last = time.Now()
		if o.count != nil {
			o.count()
		}
		qctx, cancel := context.WithTimeout(ctx, o.wait+queryGrace)
		idx, err := q(qctx, index, o.wait)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			a.metrics.queryErrors.WithLabelValues(o.backend).Inc()
			if o.onError != nil {
				o.onError(err)
			}
			if err := sleepCtx(ctx, backoff(failures)); err != nil {
				return err
			}
			continue
		}
		failures = 0
		first := index == 0
		if idx == index && !first && !o.always {
			continue
		}
		if idx < index {
			index = 0
		} else {
			index = idx
		}
		if changed(index) {
			return nil
		}
	}
}

// errDone is what a follow callback's caller returns when it ended a wait on purpose.
var errDone = errors.New("done")

// backoff is the pause before retry n of a failed query: growing, capped, with jitter.
func backoff(n int) time.Duration {
	d := 250 * time.Millisecond << min(n, 6)
	return d/2 + rand.N(d/2)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// watchShared follows, for every site while this daemon leads, all that its lanes depend on:
// its slots in KV, its lane jobs in Nomad and its service's health checks in Consul (they
// carry the instances' tags). It is one blocking query for each of the three, whatever the
// number of sites, and a site is poked only when its own part changed. Each blocking query
// holds a connection, and Consul and Nomad limit the connections of one client address
// (http_max_conns_per_client, 200 and 100 by default): what slotd holds open while idle does
// not grow with its sites.
func (a *Agent) watchShared(ctx context.Context) {
	opts := func(backend, w string) followOpts {
		return followOpts{
			backend: backend, wait: idleWait, gap: watchGap,
			count:   a.metrics.watchRequests.WithLabelValues(allSites, w).Inc,
			onError: func(err error) { a.logger.Warn("watch failed", "watch", w, "error", err) },
		}
	}
	never := func(uint64) bool { return false }
	slots, jobs, checks := lastSums{}, lastSums{}, lastSums{}
	// KV: the keys of the sites folder, one level deep, answer when anything below it changed;
	// then the slots of every site are read in a transaction or a few, and compared.
	go a.follow(ctx, opts("consul", "kv"), func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		_, meta, err := a.store.KV.Keys(a.store.SitesPrefix(), "/", q)
		if err != nil {
			return 0, fmt.Errorf("watch consul kv %s: %w", a.store.SitesPrefix(), err)
		}
		sites := a.siteList()
		sums, err := a.store.SlotSums(ctx, siteNames(sites))
		if err != nil {
			return 0, err
		}
		slots.poke(sites, sums)
		return meta.LastIndex, nil
	}, never)
	go a.follow(ctx, opts("nomad", "jobs"), func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		q := (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		stubs, meta, err := a.nomad.Jobs().List(q)
		if err != nil {
			return 0, err
		}
		sites := a.siteList()
		jobs.poke(sites, jobSums(siteNames(sites), stubs))
		return meta.LastIndex, nil
	}, never)
	var filter string
	go a.follow(ctx, opts("consul", "checks"), func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
		sites := a.siteList()
		services := map[string][]string{} // service name → sites
		for _, s := range sites {
			svc := s.config().Service
			services[svc] = append(services[svc], s.name)
		}
		if f := servicesFilter(services); f != filter {
			filter, index = f, 0 // other services: the answer to wait on is a new one
		}
		q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait, Filter: filter}).WithContext(ctx)
		hcs, meta, err := a.consul.Health().State(consulapi.HealthAny, q)
		if err != nil {
			return 0, fmt.Errorf("read consul health checks: %w", err)
		}
		for _, s := range checks.poke(sites, checkSums(services, hcs)) {
			a.refreshInstances(ctx, s.config())
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
			if strings.HasPrefix(j.ID, jobID(name, "")) {
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
func (a *Agent) refreshInstances(ctx context.Context, cfg *config.Site) {
	entries, _, err := a.siteEntries(ctx, cfg, 0, 0)
	if err != nil {
		return
	}
	st, err := a.store.LoadSlots(cfg.Name, nil)
	if err != nil {
		return
	}
	for _, slot := range cfg.Slots {
		lane := st.Slot(slot.Name).Lane.Value
		pass, fail := 0, 0
		for _, e := range entries {
			if e.Service.Meta[metaLane] != lane {
				continue
			}
			if e.Checks.AggregatedStatus() == consulapi.HealthPassing {
				pass++
			} else {
				fail++
			}
		}
		a.metrics.instances.WithLabelValues(cfg.Name, slot.Name, "passing").Set(float64(pass))
		a.metrics.instances.WithLabelValues(cfg.Name, slot.Name, "failing").Set(float64(fail))
	}
}
