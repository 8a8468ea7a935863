package lanes

import (
	"slices"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/config"
)

// Routed reports whether tags carry a public route of the site: a slot's name (its Consul DNS
// name) or one of its tags. Preview and previous tags reach testers only, never a slot's users.
func Routed(cfg *config.Site, tags []string) bool {
	for _, s := range cfg.Slots {
		for _, t := range tags {
			if t == s.Name || slices.Contains(s.Tags, t) {
				return true
			}
		}
	}
	return false
}

// OneBatch makes the group that registers service roll out all its instances in one batch
// (max_parallel = its count) for a lane that carries no public route: no user waits on it, so
// replacing it a few instances at a time only makes a swap's time grow with the site's size.
// The rest of the group's update rules stay: Nomad's health checks still gate the rollout
// (health_check, min_healthy_time, healthy_deadline, auto_revert) and canaries stay as the
// jobspec has them. A group whose updates Nomad does not stagger (max_parallel = 0) or with
// no instance is left alone. g.Update is the group's rules merged with the job's: Render's job
// comes canonicalized from the Nomad server.
func OneBatch(g *nomadapi.TaskGroup, service string) {
	if g.Update == nil || g.Update.MaxParallel == nil || *g.Update.MaxParallel <= 0 {
		return
	}
	if !slices.ContainsFunc(serviceBlocks(g), func(s *nomadapi.Service) bool { return s.Name == service }) {
		return
	}
	count := 1
	if g.Count != nil {
		count = *g.Count
	}
	if count > *g.Update.MaxParallel {
		g.Update.MaxParallel = &count
	}
}
