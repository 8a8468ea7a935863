package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
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
