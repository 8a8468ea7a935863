package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/slotd/slotd/agent/query"
)

const (
	// leaderSessionTTL bounds how long a killed leader keeps the lock: Consul's least TTL
	// (it may take twice that to invalidate the session).
	leaderSessionTTL = "10s"
	// relockPause is how long a daemon that lost the lock waits before it contends again:
	// longer than the 5 s a standby's lock library waits after a lock-delay, so it wins.
	relockPause = 7 * time.Second
	// leaderLockDelay is the session's lock-delay: the least Consul takes (0 means its default).
	leaderLockDelay = time.Millisecond
)

// onDeposed hears from the store of a write refused because session no longer holds the lock.
func (a *Agent) onDeposed(session string) {
	if a.store.FencedBy() != session {
		return
	}
	// At once, not when the lead loop gets to it: no run of this leadership may start
	// another write, to Consul or to Nomad.
	if cancel, ok := a.leadCancel.Load().(context.CancelFunc); ok {
		cancel()
	}
	select {
	case a.deposed <- struct{}{}:
	default:
	}
}

// leadLoop holds the leader lock in Consul and runs the sites while it does. The lock is held
// with a session of the daemon's own, kept in its data_dir: a restarted daemon destroys the
// session it held before instead of waiting for its TTL, and leads again within seconds.
// While it leads, every KV transaction checks that session (store.fence).
func (a *Agent) leadLoop(ctx context.Context) {
	a.dropPreviousSession()
	failures := 0
	for ctx.Err() == nil {
		session, err := a.newSession()
		if err != nil {
			failures++
			a.metrics.QueryErrors.WithLabelValues("consul").Inc()
			a.logger.Warn("cannot create the leader session", "error", err)
			_ = query.Sleep(ctx, query.Backoff(failures))
			continue
		}
		renewDone := make(chan struct{})
		go func() { _ = a.ctlConsul.Session().RenewPeriodic(leaderSessionTTL, session, nil, renewDone) }()
		lock, err := a.ctlConsul.LockOpts(&consulapi.LockOptions{
			Key:            a.store.LeaderKey(),
			Value:          []byte(a.advertise()),
			Session:        session,
			MonitorRetries: 5,
		})
		if err != nil {
			close(renewDone)
			a.logger.Error("leader lock", "error", err)
			return
		}
		lost, err := lock.Lock(ctx.Done())
		if err != nil || lost == nil {
			close(renewDone) // destroys the session
			if lost == nil && err == nil {
				return // stopping
			}
			failures++
			a.metrics.QueryErrors.WithLabelValues("consul").Inc()
			a.logger.Warn("cannot take the leader lock", "error", err)
			_ = query.Sleep(ctx, query.Backoff(failures))
			continue
		}
		failures = 0
		select {
		case <-a.deposed: // from an earlier leadership
		default:
		}
		a.logger.Info("leading", "session", session)
		a.store.Fence(session)
		// Not a child of ctx: on a graceful stop, running phases finish under the leadership
		// before it ends.
		leadCtx, cancel := context.WithCancel(context.Background())
		a.leadCancel.Store(cancel)
		a.engine.Lead(leadCtx)
		a.roleChanged()
		select {
		case <-lost:
			a.logger.Warn("lost the leader lock: writing nothing more")
		case <-a.deposed:
			a.logger.Warn("lost the leader lock (a write was refused): writing nothing more")
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			// Stopping: running phases finish (still fenced by the session), then the lock goes.
			a.engine.Drain()
		}
		cancel()
		a.roleChanged()
		a.store.Fence(lostSession)
		_ = lock.Unlock()
		close(renewDone)
		if ctx.Err() == nil {
			// Deposed: let another daemon take over before contending again, and the runs
			// of this leadership wind down meanwhile.
			_ = query.Sleep(ctx, relockPause)
		}
	}
}

// lostSession fences a daemon that does not lead: no session holds the lock under that name,
// so every transaction fails its check.
const lostSession = "00000000-0000-0000-0000-000000000000"

// newSession creates the session the leader lock is held with and remembers it in data_dir.
func (a *Agent) newSession() (string, error) {
	id, _, err := a.ctlConsul.Session().Create(&consulapi.SessionEntry{
		Name: "slotd leader",
		TTL:  leaderSessionTTL,
		// Every write of a leader checks its session, so Consul's lock-delay (which the
		// client library waits out in steps of 5 s) adds nothing but a slower failover.
		LockDelay: leaderLockDelay,
		Behavior:  consulapi.SessionBehaviorRelease,
	}, nil)
	if err != nil {
		return "", err
	}
	if path := a.sessionFile(); path != "" {
		err := os.MkdirAll(filepath.Dir(path), 0o700)
		if err == nil {
			err = os.WriteFile(path, []byte(id+"\n"), 0o600)
		}
		if err != nil {
			a.logger.Warn("cannot keep the leader session in data_dir; a restart waits for its TTL", "error", err)
		}
	}
	return id, nil
}

// dropPreviousSession destroys the session this daemon held before it restarted, which still
// holds the lock until its TTL runs out when the daemon was killed.
func (a *Agent) dropPreviousSession() {
	path := a.sessionFile()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return
	}
	if _, err := a.ctlConsul.Session().Destroy(id, nil); err != nil {
		a.logger.Warn("cannot destroy the previous leader session", "session", id, "error", err)
		return
	}
	a.logger.Info("destroyed the leader session this daemon held before it restarted", "session", id)
}

// sessionFile is where the daemon keeps its leader session: one file per KV prefix and API
// address, so several daemons on one machine keep theirs apart.
func (a *Agent) sessionFile() string {
	dir := a.config().DataDir
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(cache, "slotd")
	}
	sum := sha256.Sum256([]byte(a.store.Prefix + "\x00" + a.Addr()))
	return filepath.Join(dir, "leader-session-"+hex.EncodeToString(sum[:6]))
}

func (a *Agent) advertise() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("http://%s (%s)", a.Addr(), host)
}

// leaderAddress reads who holds the leader lock, for 503 answers and /v1/health: "" when no
// one does or Consul does not tell within probeTimeout (an answer must not wait on a Consul
// that hangs).
func (a *Agent) leaderAddress() string {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	p, _, err := a.ctlConsul.KV().Get(a.store.LeaderKey(), (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil || p == nil || p.Session == "" {
		return ""
	}
	return strings.SplitN(string(p.Value), " ", 2)[0]
}
