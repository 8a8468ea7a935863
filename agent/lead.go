package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
)

// lead runs the sites under one leadership (agent/leader) until it ends or the daemon stops
// (ctx). While it leads, every KV transaction checks its session (store.Fence); on a stop,
// running phases finish under the leadership before it ends.
func (a *Agent) lead(ctx, lead context.Context, session string) {
	a.logger.Info("leading", "session", session)
	a.store.Fence(session)
	// When the leadership ends, not when this returns: a late write of its runs must fail its
	// check even while the session still holds the lock (a lease that ran out).
	context.AfterFunc(lead, func() { a.store.Unfence(session) })
	a.engine.Lead(lead)
	a.roleChanged()
	select {
	case <-lead.Done():
	case <-ctx.Done():
		// Stopping: running phases finish (still fenced by the session), then the lock goes.
		a.engine.Drain()
	}
	a.roleChanged()
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

// advertise is the leader key's value: the API's URL, which a standby's 503 names and clients
// follow with the token, then the machine's name for people.
func (a *Agent) advertise() string {
	host, _ := os.Hostname()
	return advertisement(a.Addr(), a.config().HTTP.TLSCertFile != "", host)
}

// advertisement is the URL of an API at addr, in the scheme it serves (https with a TLS
// certificate, so a client never sends the token in clear text to a TLS listener), then host.
func advertisement(addr string, tls bool, host string) string {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	return fmt.Sprintf("%s://%s (%s)", scheme, addr, host)
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
