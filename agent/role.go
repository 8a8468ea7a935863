package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/agent/query"
)

// The tags this daemon keeps on its own instance of the Consul service named by consul.service,
// so that the Consul UI (and a pipeline's `service "leader.slotd"`) tells who is in charge.
const (
	tagLeader  = "leader"
	tagStandby = "standby"
	// roleRecheck is how often the tag is checked again with nothing seen changing.
	roleRecheck = time.Minute
	// roleRetry is how soon a failed or premature attempt is tried again (Nomad registers the
	// service shortly after the task starts).
	roleRetry = 2 * time.Second
)

// roleChanged tells the role loop that this daemon began or stopped leading.
func (a *Agent) roleChanged() {
	select {
	case a.role <- struct{}{}:
	default:
	}
}

// roleLoop keeps the leader or standby tag of this daemon's instance current until ctx ends.
// The instance is the one Nomad registered for this allocation ($NOMAD_ALLOC_ID in its ID), or
// else the one at the API's address. It follows the service in Consul, so a registration that
// puts the old tags back is corrected at once: Nomad re-registers every service of a client
// with the jobspec's tags whenever it registers another one, whatever enable_tag_override says
// (which only holds off its periodic sync and Consul's anti-entropy).
func (a *Agent) roleLoop(ctx context.Context, service string) {
	kick := make(chan struct{}, 1)
	go func() {
		_ = a.follow.Follow(ctx, query.Opts{Backend: "consul", Wait: query.IdleWait, Gap: time.Second},
			func(ctx context.Context, index uint64, wait time.Duration) (uint64, error) {
				q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
				_, meta, err := a.ctlConsul.Catalog().Service(service, "", q)
				if err != nil {
					return 0, err
				}
				return meta.LastIndex, nil
			},
			func(uint64) bool {
				select {
				case kick <- struct{}{}:
				default:
				}
				return false
			})
	}()
	warned := false
	for {
		wait := roleRecheck
		done, err := a.tagRole(ctx, service, &warned)
		if err != nil {
			a.metrics.QueryErrors.WithLabelValues("consul").Inc()
			a.logger.Warn("cannot tag this daemon's service instance", "service", service, "error", err)
		}
		if err != nil || !done {
			wait = roleRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-a.role:
		case <-kick:
		case <-time.After(wait):
		}
	}
}

// tagRole sets the tag once. done is true when the tag was right already: after a change, or
// while the instance is not registered yet, it looks again soon (a Consul agent that has not
// synced Nomad's registration yet can still overwrite the change once).
func (a *Agent) tagRole(ctx context.Context, service string, warned *bool) (done bool, err error) {
	want, other := tagStandby, tagLeader
	if a.engine.Leading() {
		want, other = tagLeader, tagStandby
	}
	ctx, cancel := context.WithTimeout(ctx, query.CallTimeout)
	defer cancel()
	entries, _, err := a.ctlConsul.Catalog().Service(service, "", (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, err
	}
	e := ownInstance(entries, os.Getenv("NOMAD_ALLOC_ID"), a.Addr())
	if e == nil {
		return false, nil
	}
	if !e.ServiceEnableTagOverride && !*warned {
		*warned = true
		a.logger.Warn("the service instance has no enable_tag_override: Consul will put its old tags back", "service", service, "id", e.ServiceID)
	}
	if slices.Contains(e.ServiceTags, want) && !slices.Contains(e.ServiceTags, other) {
		return true, nil
	}
	tags := slices.DeleteFunc(slices.Clone(e.ServiceTags), func(t string) bool { return t == want || t == other })
	if err := a.retag(ctx, e, append(tags, want)); err != nil {
		return false, err
	}
	a.logger.Info("tagged this daemon's service instance", "service", service, "id", e.ServiceID, "tag", want)
	return false, nil
}

// retag changes the tags of a service instance. Through the Consul agent that holds it when that
// is the agent slotd talks to (the usual deployment: the node's own agent): the agent's local
// state is what it syncs to the catalog, and its checks stay as they are. Else in the catalog,
// which enable_tag_override keeps from being overwritten.
func (a *Agent) retag(ctx context.Context, e *consulapi.CatalogService, tags []string) error {
	svc, _, err := a.ctlConsul.Agent().Service(e.ServiceID, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err == nil {
		reg := &consulapi.AgentServiceRegistration{
			ID: svc.ID, Name: svc.Service, Tags: tags, Port: svc.Port, Address: svc.Address, Meta: svc.Meta,
			TaggedAddresses: svc.TaggedAddresses, EnableTagOverride: svc.EnableTagOverride, Weights: &svc.Weights,
			Namespace: svc.Namespace, Partition: svc.Partition,
		}
		return a.ctlConsul.Agent().ServiceRegisterOpts(reg, consulapi.ServiceRegisterOpts{}.WithContext(ctx))
	}
	var status consulapi.StatusError
	if !errors.As(err, &status) || status.Code != http.StatusNotFound {
		return err
	}
	_, err = a.ctlConsul.Catalog().Register(&consulapi.CatalogRegistration{
		ID: e.ID, Node: e.Node, Address: e.Address, Datacenter: e.Datacenter,
		TaggedAddresses: e.TaggedAddresses, NodeMeta: e.NodeMeta, SkipNodeUpdate: true,
		Service: &consulapi.AgentService{
			ID: e.ServiceID, Service: e.ServiceName, Tags: tags, Port: e.ServicePort, Address: e.ServiceAddress,
			Meta: e.ServiceMeta, TaggedAddresses: e.ServiceTaggedAddresses, Weights: consulapi.AgentWeights(e.ServiceWeights),
			EnableTagOverride: e.ServiceEnableTagOverride, Namespace: e.Namespace, Partition: e.Partition,
		},
	}, (&consulapi.WriteOptions{}).WithContext(ctx))
	return err
}

// ownInstance picks this daemon's instance: by allocation when it runs under Nomad, else by the
// address and port it listens on.
func ownInstance(entries []*consulapi.CatalogService, allocID, listen string) *consulapi.CatalogService {
	host, port, _ := net.SplitHostPort(listen)
	for _, e := range entries {
		if allocID != "" {
			if lanes.AllocOf(e.ServiceID) == allocID {
				return e
			}
			continue
		}
		addr := e.ServiceAddress
		if addr == "" {
			addr = e.Address
		}
		if addr == host && strconv.Itoa(e.ServicePort) == port {
			return e
		}
	}
	return nil
}
