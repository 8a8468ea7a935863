// Package query holds the blocking-query rules of STYLE.md, written once: every watch and
// every wait of slotd asks Consul or Nomad through Follow.
package query

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Follower follows blocking queries, counting failures by backend in Errors (nil: uncounted).
type Follower struct {
	Errors *prometheus.CounterVec
}

// The blocking-query rules of STYLE.md, written once: every watch and every wait of slotd asks
// Consul or Nomad through follow.
const (
	// IdleWait is how long an idle blocking query waits: the most often an idle agent asks.
	IdleWait = 5 * time.Minute
	// BlockingWait is how long one blocking query waits while an operation watches.
	BlockingWait = 5 * time.Second
	// Grace is how much longer than its wait a blocking query may take before slotd gives
	// up on it: a server that hangs (not down) must not block an operation past its deadline.
	Grace = 15 * time.Second
	// CallTimeout bounds one Consul or Nomad call that does not block on purpose: a server
	// that hangs must not hold an operation past its deadline.
	CallTimeout = 30 * time.Second
	// Gap is the least time between two queries of a site's watchers, so a busy cluster
	// whose index moves all the time does not turn a watch into a tight loop.
	Gap = 250 * time.Millisecond
)

// Func asks once, blocking until index changes or wait passes; it returns the new index.
type Func func(ctx context.Context, index uint64, wait time.Duration) (uint64, error)

// Opts say how to follow one query.
type Opts struct {
	Backend string        // "consul" or "nomad", the label of the error metric
	Wait    time.Duration // how long one query blocks
	Gap     time.Duration // the least time between two queries
	// OnError sees each failure (for logs and "last seen" messages); nil: ignore.
	OnError func(error)
	// Count, if set, is called before each query (the per-site request metric).
	Count func()
	// Always calls changed after every answer, even one with the same index (a wait that
	// also watches the clock).
	Always bool
}

// Follow runs q as a blocking query until ctx ends or changed returns true. changed is called
// with each new index, including the first answer. Same index: no change. A lower index: the
// server's state was reset, so the next query starts over from 0. Failures back off with
// jitter. Follow returns nil when changed said done, else ctx's error.
func (f *Follower) Follow(ctx context.Context, o Opts, q Func, changed func(index uint64) (done bool)) error {
	var index uint64
	failures := 0
	var last time.Time
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if wait := o.Gap - time.Since(last); o.Gap > 0 && wait > 0 {
			if err := Sleep(ctx, wait); err != nil {
				return err
			}
		}
		last = time.Now()
		if o.Count != nil {
			o.Count()
		}
		qctx, cancel := context.WithTimeout(ctx, o.Wait+Grace)
		idx, err := q(qctx, index, o.Wait)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			if f.Errors != nil {
				f.Errors.WithLabelValues(o.Backend).Inc()
			}
			if o.OnError != nil {
				o.OnError(err)
			}
			if err := Sleep(ctx, Backoff(failures)); err != nil {
				return err
			}
			continue
		}
		failures = 0
		first := index == 0
		if idx == index && !first && !o.Always {
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

// ErrDone is what a Follow callback's caller returns when it ended a wait on purpose.
var ErrDone = errors.New("done")

// Backoff is the pause before retry n of a failed query: growing, capped, with jitter.
func Backoff(n int) time.Duration {
	d := 250 * time.Millisecond << min(n, 6)
	return d/2 + rand.N(d/2)
}

// Sleep waits d, or until ctx ends (its error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
