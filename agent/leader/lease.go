package leader

import (
	"context"
	"fmt"
	"time"

	"github.com/slotd/slotd/agent/query"
)

// leaseMargin is how much sooner than the session's TTL a leader stops trusting its lease.
// Consul counts the TTL from when a renewal reaches it and the lease counts from when it was
// sent, so the lease never outlives the session on that account; the margin covers the rest: a
// write sent just before the lease ends still travels to Consul or Nomad, the timer that ends
// the lead may fire late (a busy scheduler, a GC pause), and two machines' clocks drift.
const leaseMargin = 2 * time.Second

// renewRetry is the pause after a failed renewal: short, because the lease runs out meanwhile.
const renewRetry = 500 * time.Millisecond

// lease is the local clock of a leader session: until when this daemon may be sure Consul
// still holds the session valid. Consul invalidates a session no sooner than its TTL after it
// last heard of it (its creation or a renewal), so the lease counts from when the last create
// or renewal that Consul answered was sent. A renewal that failed or was not answered counts
// for nothing: Consul may or may not have seen it.
type lease struct {
	ttl, margin time.Duration
	sent        time.Time // when the last create or renewal that Consul answered was sent
}

// renewed counts a renewal sent at sent that Consul answered. The answer to an older send
// does not move the lease back.
func (l *lease) renewed(sent time.Time) {
	if sent.After(l.sent) {
		l.sent = sent
	}
}

// expiry is when the lease runs out.
func (l *lease) expiry() time.Time { return l.sent.Add(l.ttl - l.margin) }

// keeper renews a session and ends its lead when the lease runs out.
type keeper struct {
	ttl, margin time.Duration
	// every is the time between renewals, and the deadline of each.
	every time.Duration
	// retry is the pause after a failed renewal.
	retry time.Duration
	// renew renews the session once; gone says Consul no longer knows it.
	renew func(ctx context.Context) (gone bool, err error)
	// failed hears of each failed renewal.
	failed func(error)
}

// run renews the session created at created until ctx ends. When the lease runs out it calls
// lapse with errLeaseLapsed at once, whatever renewal is under way; when Consul says the
// session is gone, with errSessionGone. It returns after either.
func (k *keeper) run(ctx context.Context, created time.Time, lapse func(cause error)) {
	ls := &lease{ttl: k.ttl, margin: k.margin, sent: created}
	// Each timer says when the renewal it was armed for was sent: the timer's function runs on
	// its own goroutine and must not read ls.
	arm := func() *time.Timer {
		sent := ls.sent
		return time.AfterFunc(time.Until(ls.expiry()), func() {
			lapse(fmt.Errorf("%w: no renewal answered since one sent %s ago (session TTL %s)",
				errLeaseLapsed, time.Since(sent).Round(time.Millisecond), k.ttl))
		})
	}
	expire := arm()
	defer func() { expire.Stop() }()
	wait := k.every
	for query.Sleep(ctx, wait) == nil {
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, k.every)
		gone, err := k.renew(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			k.failed(err)
			wait = k.retry
		case gone:
			lapse(errSessionGone)
			return
		default:
			ls.renewed(sent)
			if !expire.Stop() {
				return // the lease ran out while this renewal was under way: the lead is over
			}
			expire = arm()
			wait = k.every
		}
	}
}
