package engine

import (
	"context"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/slotd/slotd/agent/lanes"
	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/jobspec"
)

// laneOps is what operations need of Nomad and Consul to move lanes: the seam where unit
// tests of the swap, its resume and its restore paths, and of convergence, put a fake.
type laneOps interface {
	Ensure(ctx context.Context, cfg *config.Site, lane string, src lanes.Source, want lanes.State, g lanes.Gate) (lanes.Rollout, error)
	Submission(ctx context.Context, cfg *config.Site, lane string, version uint64, bound bool) (lanes.Source, error)
	Entries(ctx context.Context, cfg *config.Site, lane string, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error)
	SiteEntries(ctx context.Context, cfg *config.Site, index uint64, wait time.Duration) ([]*consulapi.ServiceEntry, uint64, error)
	// Counts is the count of each task group the lane's job runs in Nomad (nil: no job)
	// and the slot it runs as.
	Counts(ctx context.Context, cfg *config.Site, lane string) (map[string]int, string, error)
	// Plan says whether lane in state want would place, touching nothing (pre-flight), and
	// what registering it would do to the lane's running allocations.
	Plan(ctx context.Context, cfg *config.Site, lane string, src lanes.Source, want lanes.State) (jobspec.Change, error)
	// Differs says whether the lane runs something else than src in state want (convergence).
	Differs(ctx context.Context, cfg *config.Site, lane string, src lanes.Source, want lanes.State) (bool, error)
	// Running is the state the lane's job runs now, without routes (lanes.Running).
	Running(ctx context.Context, cfg *config.Site, lane string, src lanes.Source) (lanes.State, error)
	// Job is the lane's job as Nomad runs it (nil: none, or stopped); JobVersion one version of it.
	Job(ctx context.Context, cfg *config.Site, lane string) (*nomadapi.Job, error)
	JobVersion(ctx context.Context, id string, version uint64) (*nomadapi.Job, error)
	// Render is the job slotd registers for lane in state want.
	Render(cfg *config.Site, lane string, src lanes.Source, want lanes.State) (*nomadapi.Job, error)
	// Check says whether src can run as a lane of the site, touching nothing.
	Check(cfg *config.Site, src lanes.Source) error
}

var _ laneOps = (*lanes.Lanes)(nil)
