// Package leader holds slotd's leader lock in Consul: its session, renewals and lease clock,
// the lock and its monitor, and the context a leadership's work runs under.
package leader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/slotd/slotd/agent/query"
)

const (
	// DefaultTTL is the session's TTL: Consul's least, so a killed leader holds the lock the
	// shortest time (Consul may take up to twice that to invalidate the session).
	DefaultTTL = 10 * time.Second
	// DefaultLockDelay is the session's lock-delay, the least Consul takes (0 means its default
	// of 15 s): every write of a leader checks its session, so a lock-delay would add nothing
	// but a slower failover.
	DefaultLockDelay = time.Millisecond
	// DefaultRelockPause is how long a daemon whose leadership ended waits before it contends
	// again: longer than a standby takes to take the freed lock (its blocking read answers at
	// once; a lock-delay costs it lockRetry), so another daemon leads, not the deposed one.
	DefaultRelockPause = 7 * time.Second
)

const (
	// callTimeout bounds one Consul call of the leadership that does not block on purpose
	// (create, destroy, acquire, release): a Consul that hangs must not hold the lock loop.
	callTimeout = 5 * time.Second
	// lockWait is how long one blocking read of the lock key waits. A change answers at once,
	// so the wait only bounds how late a read on a hung connection fails; a leader's lease
	// runs out sooner.
	lockWait = 30 * time.Second
	// lockRetry is the pause after Consul refused a free lock: the lock is in the lock-delay
	// of the session that held it last (1 ms for slotd's own).
	lockRetry = time.Second
	// sessionName names the session in Consul's UI.
	sessionName = "slotd leader"
)

// Why a leadership ended: context.Cause of the lead context.
var (
	errLockLost    = errors.New("the lock key is no longer held by this daemon's session")
	errSessionGone = errors.New("consul no longer knows the leader session")
	errLeaseLapsed = errors.New("the leader session may have expired")
	errDeposed     = errors.New("a write fenced with the leader session was refused")
	errSteppedDown = errors.New("this daemon stepped down")
)

// Config says which lock to hold and how.
type Config struct {
	// Consul is the client of the leadership's calls: one whose connections operations do not
	// use, so a busy pool never delays a renewal.
	Consul *consulapi.Client
	// Key is the lock's KV key.
	Key string
	// Value is what the key holds while this daemon leads: its advertised address first.
	Value string
	// SessionFile, if set, keeps the ID of the session: a restarted daemon destroys the
	// session it held before instead of waiting for its TTL, and leads again within seconds.
	SessionFile string
	// TTL is the session's TTL (0: DefaultTTL). The lead ends when no renewal has been
	// answered for TTL less leaseMargin.
	TTL time.Duration
	// LockDelay is the session's lock-delay (0: DefaultLockDelay).
	LockDelay time.Duration
	// RelockPause is the pause after a leadership before contending again (0: DefaultRelockPause).
	RelockPause time.Duration
	// Logger, if set, hears of leading, losing the lock and failed calls.
	Logger hclog.Logger
	// OnError, if set, hears of each failed Consul call (the query-error metric).
	OnError func()
}

// Leader contends for the leader lock and runs a leadership while it holds it (Run).
type Leader struct {
	cfg    Config
	logger hclog.Logger

	mu   sync.Mutex
	held *leadership // the leadership under way, nil while this daemon does not lead
}

// leadership is one turn at the lock, from the session's creation until its destruction.
type leadership struct {
	session string
	lead    context.Context
	cancel  context.CancelCauseFunc
	logger  hclog.Logger
	// leading is set once the lock is taken: a turn that never led lost no lock to log.
	leading atomic.Bool
	once    sync.Once
}

// end ends the lead for cause, once.
func (h *leadership) end(cause error) {
	h.once.Do(func() {
		if h.leading.Load() && !errors.Is(cause, errSteppedDown) {
			h.logger.Warn("lost the leader lock: writing nothing more", "session", h.session, "reason", cause)
		}
		h.cancel(cause)
	})
}

// New returns a Leader for cfg, its zero durations set to their defaults.
func New(cfg Config) *Leader {
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.LockDelay == 0 {
		cfg.LockDelay = DefaultLockDelay
	}
	if cfg.RelockPause == 0 {
		cfg.RelockPause = DefaultRelockPause
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Leader{cfg: cfg, logger: logger}
}

// Run contends for the lock until ctx ends. Each time it takes the lock it calls onLead with
// the leadership's context and session, and waits for onLead to return. lead is not a child of
// ctx: on a graceful stop, onLead lets running work finish under the leadership, then returns.
// lead ends, context.Cause saying why, when the lock key is no longer held by the session, when
// the session may have expired (no renewal answered for TTL less leaseMargin), or when Deposed
// is called with the session; onLead must then return soon. After onLead, Run releases the
// lock, destroys the session and, unless ctx has ended, pauses RelockPause before contending
// again.
func (l *Leader) Run(ctx context.Context, onLead func(lead context.Context, session string)) {
	l.dropPreviousSession(ctx)
	failures := 0
	for ctx.Err() == nil {
		led, err := l.term(ctx, onLead)
		switch {
		case err != nil && ctx.Err() == nil:
			failures++
			l.failed()
			l.logger.Warn("cannot take the leader lock", "error", err)
			_ = query.Sleep(ctx, query.Backoff(failures))
		case led:
			failures = 0
			_ = query.Sleep(ctx, l.cfg.RelockPause)
		}
	}
}

// Leading reports whether this daemon leads: it holds the lock and the leadership has not ended.
func (l *Leader) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held != nil && l.held.lead.Err() == nil
}

// Deposed ends the leadership of session at once: a write fenced with it was refused, so the
// lock is gone whatever the monitor has seen so far. The session of a leadership that has
// ended already is ignored.
func (l *Leader) Deposed(session string) {
	l.mu.Lock()
	h := l.held
	l.mu.Unlock()
	if h != nil && h.session == session {
		h.end(errDeposed)
	}
}

// term is one turn at the lock: a new session, renewed while it waits for the lock and while
// onLead runs, then the lock released and the session destroyed. led says onLead ran.
func (l *Leader) term(ctx context.Context, onLead func(lead context.Context, session string)) (led bool, err error) {
	created := time.Now()
	session, err := l.create(ctx)
	if err != nil {
		return false, err
	}
	defer l.destroy(session)
	l.keepSessionFile(session)

	lead, cancel := context.WithCancelCause(context.Background())
	h := &leadership{session: session, lead: lead, cancel: cancel, logger: l.logger}
	keepCtx, stopKeeping := context.WithCancel(context.Background())
	kept := make(chan struct{})
	// Three renewals per TTL: after one that hangs until its deadline (a third of the TTL),
	// another is still tried before the lease runs out.
	k := &keeper{
		ttl: l.cfg.TTL, margin: leaseMargin, every: l.cfg.TTL / 3, retry: renewRetry,
		renew: l.renewer(session),
		failed: func(err error) {
			l.failed()
			l.logger.Warn("cannot renew the leader session", "error", err)
		},
	}
	go func() {
		defer close(kept)
		k.run(keepCtx, created, h.end)
	}()
	defer func() {
		stopKeeping()
		<-kept
	}()
	defer h.end(errSteppedDown)

	// Waiting for the lock ends with the lease too: a session that may have expired is of
	// no use, and the next turn creates another.
	actx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	unhook := context.AfterFunc(lead, stopWaiting)
	defer unhook()
	if err := l.acquire(actx, session); err != nil {
		if lead.Err() != nil {
			return false, fmt.Errorf("wait for the leader lock: %w", context.Cause(lead))
		}
		return false, err
	}
	defer l.release(session)
	h.leading.Store(true)
	if lead.Err() != nil {
		return false, fmt.Errorf("take the leader lock: %w", context.Cause(lead))
	}
	l.mu.Lock()
	l.held = h
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.held = nil
		l.mu.Unlock()
	}()
	l.logger.Info("leading", "session", session)
	monitored := make(chan struct{})
	go func() {
		defer close(monitored)
		l.monitor(h)
	}()
	defer func() {
		h.end(errSteppedDown)
		<-monitored
	}()
	onLead(lead, session)
	return true, nil
}

// create creates a session for the lock.
func (l *Leader) create(ctx context.Context) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	id, _, err := l.cfg.Consul.Session().Create(&consulapi.SessionEntry{
		Name:      sessionName,
		TTL:       l.cfg.TTL.String(),
		LockDelay: l.cfg.LockDelay,
		Behavior:  consulapi.SessionBehaviorRelease,
	}, (&consulapi.WriteOptions{}).WithContext(cctx))
	if err != nil {
		return "", fmt.Errorf("create the leader session: %w", err)
	}
	return id, nil
}

// renewer renews session once, within the deadline of its context.
func (l *Leader) renewer(session string) func(ctx context.Context) (gone bool, err error) {
	return func(ctx context.Context) (bool, error) {
		entry, _, err := l.cfg.Consul.Session().Renew(session, (&consulapi.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return false, fmt.Errorf("renew the leader session %s: %w", session, err)
		}
		return entry == nil, nil
	}
}

// destroy destroys session, even when the daemon stops: a standby takes the lock at once
// instead of after the session's TTL.
func (l *Leader) destroy(session string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := l.cfg.Consul.Session().Destroy(session, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
		l.failed()
		l.logger.Warn("cannot destroy the leader session; it lapses after its TTL", "session", session, "error", err)
	}
}

// acquire waits until the lock key is free, then takes it with session.
func (l *Leader) acquire(ctx context.Context, session string) error {
	var index uint64
	for {
		pair, meta, err := l.read(ctx, index)
		if err != nil {
			return err
		}
		index = nextIndex(index, meta.LastIndex)
		if pair != nil && pair.Session != "" {
			continue // held: wait for a change
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		ok, _, err := l.cfg.Consul.KV().Acquire(l.pair(session), (&consulapi.WriteOptions{}).WithContext(cctx))
		cancel()
		if err != nil {
			return fmt.Errorf("acquire %s: %w", l.cfg.Key, err)
		}
		if ok {
			return nil
		}
		if err := query.Sleep(ctx, lockRetry); err != nil {
			return err
		}
		index = 0 // the key may not change again: read it at once
	}
}

// release releases the lock held with session, even when the daemon stops.
func (l *Leader) release(session string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, _, err := l.cfg.Consul.KV().Release(l.pair(session), (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
		l.failed()
		l.logger.Warn("cannot release the leader lock; destroying the session frees it", "error", err)
	}
}

// pair is the lock key held with session. Its flags are those of consulapi.Lock, whose
// holders (slotd before 0.5) see any other value as a conflict instead of waiting.
func (l *Leader) pair(session string) *consulapi.KVPair {
	return &consulapi.KVPair{Key: l.cfg.Key, Value: []byte(l.cfg.Value), Session: session, Flags: consulapi.LockFlagValue}
}

// monitor ends the lead when the lock key is no longer held by its session. A failed read is
// retried with backoff and extends nothing: when no read nor renewal is answered, the lease
// ends the lead.
func (l *Leader) monitor(h *leadership) {
	var index uint64
	failures := 0
	for h.lead.Err() == nil {
		pair, meta, err := l.read(h.lead, index)
		if err != nil {
			if h.lead.Err() != nil {
				return
			}
			failures++
			l.failed()
			l.logger.Warn("cannot read the leader lock", "error", err)
			_ = query.Sleep(h.lead, query.Backoff(failures))
			continue
		}
		failures = 0
		if pair == nil || pair.Session != h.session {
			h.end(errLockLost)
			return
		}
		index = nextIndex(index, meta.LastIndex)
	}
}

// read reads the lock key, blocking until its index passes index or lockWait passes. Its
// deadline allows for the jitter Consul adds to a wait (up to a sixteenth) and one call.
func (l *Leader) read(ctx context.Context, index uint64) (*consulapi.KVPair, *consulapi.QueryMeta, error) {
	qctx, cancel := context.WithTimeout(ctx, lockWait+lockWait/16+callTimeout)
	defer cancel()
	q := &consulapi.QueryOptions{WaitIndex: index, WaitTime: lockWait}
	pair, meta, err := l.cfg.Consul.KV().Get(l.cfg.Key, q.WithContext(qctx))
	if err != nil {
		return nil, nil, fmt.Errorf("read the leader lock %s: %w", l.cfg.Key, err)
	}
	return pair, meta, nil
}

// nextIndex is the wait index of the read after one answered with got: a lower index than
// before means Consul's state was reset, so the next read starts over.
func nextIndex(prev, got uint64) uint64 {
	if got < prev {
		return 0
	}
	return got
}

// keepSessionFile writes session to the session file, for dropPreviousSession after a restart.
func (l *Leader) keepSessionFile(session string) {
	path := l.cfg.SessionFile
	if path == "" {
		return
	}
	err := os.MkdirAll(filepath.Dir(path), 0o700)
	if err == nil {
		err = os.WriteFile(path, []byte(session+"\n"), 0o600)
	}
	if err != nil {
		l.logger.Warn("cannot keep the leader session in a file; a restart waits for its TTL", "path", path, "error", err)
	}
}

// dropPreviousSession destroys the session of the session file, which a killed daemon held
// before it restarted: it holds the lock until its TTL runs out.
func (l *Leader) dropPreviousSession(ctx context.Context) {
	if l.cfg.SessionFile == "" {
		return
	}
	b, err := os.ReadFile(l.cfg.SessionFile)
	if err != nil {
		return
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := l.cfg.Consul.Session().Destroy(id, (&consulapi.WriteOptions{}).WithContext(cctx)); err != nil {
		l.failed()
		l.logger.Warn("cannot destroy the previous leader session", "session", id, "error", err)
		return
	}
	l.logger.Info("destroyed the leader session this daemon held before it restarted", "session", id)
}

func (l *Leader) failed() {
	if l.cfg.OnError != nil {
		l.cfg.OnError()
	}
}
