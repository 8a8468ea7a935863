package leader

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Bounds of the waits in these tests: generous, a failure says what it waited for.
const (
	// leadTimeout bounds the wait for a Leader to lead: a free lock is taken within a second.
	leadTimeout = 30 * time.Second
	// endTimeout bounds the wait for a lead to end after its lock was lost from outside: the
	// lock monitor's blocking read answers at once.
	endTimeout = 5 * time.Second
	// testRelockPause keeps the tests short; the default is 7 s.
	testRelockPause = time.Second
)

// term is one leadership seen by a runner's onLead.
type term struct {
	session string
	lead    context.Context
}

// runner is a Leader running in a test. onLead sends each leadership on terms and returns
// when its lead or the runner's context ends.
type runner struct {
	l     *Leader
	terms chan term
	log   *testLogger
	stop  context.CancelFunc
	done  chan struct{}
}

// runLeader runs a Leader of cfg, its logger and relock pause set, until the test ends. active,
// if set, counts the Leaders of the test that run an onLead; most keeps the highest count.
func runLeader(t *testing.T, cfg Config, active, most *atomic.Int32) *runner {
	t.Helper()
	logger, log := newTestLogger(t, cfg.Value)
	cfg.Logger, cfg.RelockPause = logger, testRelockPause
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{l: New(cfg), terms: make(chan term, 8), log: log, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.l.Run(ctx, func(lead context.Context, session string) {
			if active != nil {
				n := active.Add(1)
				defer active.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
			}
			r.terms <- term{session: session, lead: lead}
			select {
			case <-lead.Done():
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// waitTerm waits for r's next leadership.
func (r *runner) waitTerm(t *testing.T) term {
	t.Helper()
	select {
	case tm := <-r.terms:
		return tm
	case <-time.After(leadTimeout):
		t.Fatalf("%s did not lead within %s; its log:\n%s", r.l.cfg.Value, leadTimeout, r.log)
		return term{}
	}
}

// TestOneLeaderAtATime: of two Leaders on one key, one leads and the other waits; when the
// leader's daemon stops, it releases the lock and destroys its session, and the other leads.
func TestOneLeaderAtATime(t *testing.T) {
	addr := startConsul(t)
	direct := consulClient(t, addr, nil)
	const key = "slotd-test/leader"
	var active, most atomic.Int32
	a := runLeader(t, Config{Consul: consulClient(t, addr, nil), Key: key, Value: "a"}, &active, &most)
	b := runLeader(t, Config{Consul: consulClient(t, addr, nil), Key: key, Value: "b"}, &active, &most)

	var first, second *runner
	var tm term
	select {
	case tm = <-a.terms:
		first, second = a, b
	case tm = <-b.terms:
		first, second = b, a
	case <-time.After(leadTimeout):
		t.Fatalf("neither Leader led within %s", leadTimeout)
	}
	select {
	case other := <-second.terms:
		t.Fatalf("%s leads with session %s while %s leads with %s", second.l.cfg.Value, other.session, first.l.cfg.Value, tm.session)
	case <-time.After(3 * time.Second):
	}
	assert.True(t, first.l.Leading(), "the first leads")
	assert.False(t, second.l.Leading(), "the other waits")
	pair, _, err := direct.KV().Get(key, nil)
	require.NoError(t, err, "read %s", key)
	require.NotNil(t, pair, "%s is absent", key)
	assert.Equal(t, tm.session, pair.Session, "the leader's session holds %s", key)
	assert.Equal(t, first.l.cfg.Value, string(pair.Value), "%s names the leader", key)

	stopped := time.Now()
	first.stop()
	next := second.waitTerm(t)
	t.Logf("%s leads %s after %s stopped", second.l.cfg.Value, time.Since(stopped).Round(time.Millisecond), first.l.cfg.Value)
	select {
	case <-first.done:
	case <-time.After(leadTimeout):
		t.Fatalf("%s's Run did not return within %s of its stop", first.l.cfg.Value, leadTimeout)
	}
	assert.False(t, first.l.Leading(), "the stopped Leader does not lead")
	assert.ErrorIs(t, context.Cause(tm.lead), errSteppedDown, "the stopped leadership's cause")
	entry, _, err := direct.Session().Info(tm.session, nil)
	require.NoError(t, err, "read session %s", tm.session)
	assert.Nil(t, entry, "the stopped Leader destroyed its session")
	pair, _, err = direct.KV().Get(key, nil)
	require.NoError(t, err, "read %s", key)
	require.NotNil(t, pair, "%s is absent", key)
	assert.Equal(t, next.session, pair.Session, "the new leader's session holds %s", key)
	assert.Equal(t, int32(1), most.Load(), "Leaders leading at once, at most")
}

// TestLeadEnds: a leadership ends within seconds when its lock is lost from outside or a
// fenced write was refused, and the Leader leads again later with a new session.
func TestLeadEnds(t *testing.T) {
	addr := startConsul(t)
	direct := consulClient(t, addr, nil)
	cases := []struct {
		name string
		end  func(t *testing.T, r *runner, key, session string)
		want []error // the cause is one of these
	}{
		{
			name: "the session is destroyed",
			end: func(t *testing.T, _ *runner, _, session string) {
				_, err := direct.Session().Destroy(session, nil)
				require.NoError(t, err, "destroy session %s", session)
			},
			// The lock monitor or a renewal, whichever hears first.
			want: []error{errLockLost, errSessionGone},
		},
		{
			name: "the key is deleted",
			end: func(t *testing.T, _ *runner, key, _ string) {
				_, err := direct.KV().Delete(key, nil)
				require.NoError(t, err, "delete %s", key)
			},
			want: []error{errLockLost},
		},
		{
			name: "a write fenced with the session was refused",
			end: func(t *testing.T, r *runner, _, session string) {
				r.l.Deposed("an-earlier-session")
				require.True(t, r.l.Leading(), "the refusal of an earlier session's write ends nothing")
				r.l.Deposed(session)
			},
			want: []error{errDeposed},
		},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := "slotd-test/" + string(rune('a'+i)) + "/leader"
			r := runLeader(t, Config{Consul: consulClient(t, addr, nil), Key: key, Value: "leader"}, nil, nil)
			tm := r.waitTerm(t)
			require.True(t, r.l.Leading())

			tc.end(t, r, key, tm.session)
			ended := time.Now()
			select {
			case <-tm.lead.Done():
			case <-time.After(endTimeout):
				t.Fatalf("the lead did not end within %s; the log:\n%s", endTimeout, r.log)
			}
			t.Logf("the lead ended %s later: %v", time.Since(ended).Round(time.Millisecond), context.Cause(tm.lead))
			cause := context.Cause(tm.lead)
			assert.True(t, slices.ContainsFunc(tc.want, func(want error) bool { return errors.Is(cause, want) }), "cause %v, want one of %v", cause, tc.want)
			assert.False(t, r.l.Leading(), "Leading after the lead ended")
			assert.Contains(t, r.log.String(), "lost the leader lock: writing nothing more")

			next := r.waitTerm(t)
			assert.NotEqual(t, tm.session, next.session, "the next leadership's session")
		})
	}
}

// TestRestartDestroysPreviousSession: a Leader destroys the session its session file names,
// which a killed daemon held before it restarted, instead of waiting for that session's TTL
// (here a day), and keeps its own session in the file.
func TestRestartDestroysPreviousSession(t *testing.T) {
	addr := startConsul(t)
	direct := consulClient(t, addr, nil)
	const key = "slotd-test/leader"
	previous, _, err := direct.Session().Create(&consulapi.SessionEntry{TTL: "24h", LockDelay: DefaultLockDelay, Behavior: consulapi.SessionBehaviorRelease}, nil)
	require.NoError(t, err, "create the previous session")
	held, _, err := direct.KV().Acquire(&consulapi.KVPair{Key: key, Session: previous, Flags: consulapi.LockFlagValue}, nil)
	require.NoError(t, err, "take %s with the previous session", key)
	require.True(t, held, "take %s with the previous session", key)
	file := filepath.Join(t.TempDir(), "data", "leader-session")
	require.NoError(t, os.MkdirAll(filepath.Dir(file), 0o700))
	require.NoError(t, os.WriteFile(file, []byte(previous+"\n"), 0o600))

	r := runLeader(t, Config{Consul: consulClient(t, addr, nil), Key: key, Value: "leader", SessionFile: file}, nil, nil)
	tm := r.waitTerm(t)
	assert.Contains(t, r.log.String(), "destroyed the leader session this daemon held before it restarted")
	entry, _, err := direct.Session().Info(previous, nil)
	require.NoError(t, err, "read the previous session")
	assert.Nil(t, entry, "the previous session is destroyed")
	b, err := os.ReadFile(file)
	require.NoError(t, err, "read the session file")
	assert.Equal(t, tm.session, strings.TrimSpace(string(b)), "the session file names the session that leads")
}

// TestLeaseEndsLeadBeforeSessionExpires: a leader whose Consul stops answering (a black hole:
// connections accepted, never answered) ends its lead before its session's TTL has passed since
// the last renewal Consul answered, while Consul still holds the session valid and its lock
// held: no write of this leader can land after another daemon could lead.
func TestLeaseEndsLeadBeforeSessionExpires(t *testing.T) {
	addr := startConsul(t)
	direct := consulClient(t, addr, nil)
	proxy := newBlackhole(t, addr)
	rec := &renewals{next: http.DefaultTransport.(*http.Transport).Clone()}
	const key = "slotd-test/leader"
	r := runLeader(t, Config{Consul: consulClient(t, proxy.addr(), rec), Key: key, Value: "leader"}, nil, nil)
	tm := r.waitTerm(t)
	deadline := time.Now().Add(DefaultTTL)
	for rec.lastAnswered().IsZero() {
		require.True(t, time.Now().Before(deadline), "no renewal answered within %s", DefaultTTL)
		time.Sleep(100 * time.Millisecond)
	}

	proxy.swallow()
	swallowed := time.Now()
	select {
	case <-tm.lead.Done():
	case <-time.After(2 * DefaultTTL):
		t.Fatalf("the lead did not end within %s of the black hole; the log:\n%s", 2*DefaultTTL, r.log)
	}
	ended := time.Now()
	entry, _, err := direct.Session().Info(tm.session, nil)
	require.NoError(t, err, "read session %s", tm.session)
	pair, _, err := direct.KV().Get(key, nil)
	require.NoError(t, err, "read %s", key)
	renewed := rec.lastAnswered()
	t.Logf("the lead ended %s after the black hole, %s after the last answered renewal was sent (TTL %s, margin %s): %v",
		ended.Sub(swallowed).Round(time.Millisecond), ended.Sub(renewed).Round(time.Millisecond), DefaultTTL, leaseMargin, context.Cause(tm.lead))

	assert.ErrorIs(t, context.Cause(tm.lead), errLeaseLapsed)
	assert.Less(t, ended.Sub(renewed), DefaultTTL, "the lead ends before Consul may expire the session")
	assert.Greater(t, ended.Sub(renewed), DefaultTTL-leaseMargin-time.Second, "the lead lasts as long as its lease")
	assert.NotNil(t, entry, "Consul still holds the session valid when the lead ended")
	if assert.NotNil(t, pair, "%s is absent", key) {
		assert.Equal(t, tm.session, pair.Session, "the session still holds the lock when the lead ended")
	}
	assert.False(t, r.l.Leading(), "Leading after the lease ran out")
	assert.Contains(t, r.log.String(), "the leader session may have expired")
}
