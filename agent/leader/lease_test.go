package leader

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLeaseExpiry(t *testing.T) {
	created := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return created.Add(d) }
	cases := []struct {
		name     string
		renewals []time.Duration // send times of answered renewals, after the create
		want     time.Duration   // the expiry, after the create
	}{
		{name: "created only", want: 8 * time.Second},
		{name: "renewed", renewals: []time.Duration{3 * time.Second}, want: 11 * time.Second},
		{name: "renewed twice", renewals: []time.Duration{3 * time.Second, 6 * time.Second}, want: 14 * time.Second},
		{name: "an older answer does not move it back", renewals: []time.Duration{6 * time.Second, 3 * time.Second}, want: 14 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ls := &lease{ttl: 10 * time.Second, margin: 2 * time.Second, sent: created}
			for _, d := range tc.renewals {
				ls.renewed(at(d))
			}
			assert.Equal(t, at(tc.want), ls.expiry())
		})
	}
}

// outcome is what one fake renewal does.
type outcome int

const (
	answered outcome = iota // Consul renewed the session
	refused                 // the call failed at once
	hangs                   // no answer until the call's deadline
	stuck                   // no answer for longer than the lease, whatever the deadline
	gone                    // Consul no longer knows the session
)

// fakeSession answers renewals from a script, its last outcome repeated, and notes when the
// last answered renewal was sent.
type fakeSession struct {
	script []outcome

	mu       sync.Mutex
	calls    int
	answered time.Time
}

func (f *fakeSession) renew(ctx context.Context) (bool, error) {
	sent := time.Now()
	f.mu.Lock()
	o := f.script[min(f.calls, len(f.script)-1)]
	f.calls++
	f.mu.Unlock()
	switch o {
	case refused:
		return false, errors.New("connection refused")
	case hangs:
		<-ctx.Done()
		return false, ctx.Err()
	case stuck:
		time.Sleep(2 * time.Second)
		return false, errors.New("too late")
	case gone:
		return true, nil
	}
	f.mu.Lock()
	f.answered = sent
	f.mu.Unlock()
	return false, nil
}

func (f *fakeSession) lastAnswered() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.answered
}

// TestKeeper: the lead ends when no renewal has been answered for TTL less the margin, however
// the renewals fail, and never before; and at once when Consul says the session is gone.
func TestKeeper(t *testing.T) {
	const (
		ttl    = 1200 * time.Millisecond
		margin = 400 * time.Millisecond
		every  = 200 * time.Millisecond
	)
	cases := []struct {
		name   string
		script []outcome
		want   error // the cause the lead ends with; nil: it does not end
	}{
		{name: "answered renewals keep the lease", script: []outcome{answered}},
		{name: "a failure between answers is forgiven", script: []outcome{answered, refused, hangs, answered}},
		{name: "failed renewals extend nothing", script: []outcome{answered, answered, refused}, want: errLeaseLapsed},
		{name: "unanswered renewals extend nothing", script: []outcome{answered, hangs}, want: errLeaseLapsed},
		{name: "a renewal stuck past the lease does not hold the lead", script: []outcome{answered, stuck}, want: errLeaseLapsed},
		{name: "no renewal answered after the create", script: []outcome{refused}, want: errLeaseLapsed},
		{name: "the session is gone", script: []outcome{answered, gone}, want: errSessionGone},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeSession{script: tc.script}
			k := &keeper{ttl: ttl, margin: margin, every: every, retry: 50 * time.Millisecond, renew: f.renew, failed: func(error) {}}
			ctx, cancel := context.WithCancel(context.Background())
			type lapse struct {
				at    time.Time
				cause error
			}
			lapsed := make(chan lapse, 2)
			created := time.Now()
			done := make(chan struct{})
			go func() {
				defer close(done)
				k.run(ctx, created, func(cause error) { lapsed <- lapse{time.Now(), cause} })
			}()
			t.Cleanup(func() {
				cancel()
				<-done
			})

			select {
			case got := <-lapsed:
				require.NotNil(t, tc.want, "the lead ended (%v) though renewals were answered", got.cause)
				assert.ErrorIs(t, got.cause, tc.want)
				from := f.lastAnswered()
				if from.IsZero() {
					from = created
				}
				if errors.Is(tc.want, errLeaseLapsed) {
					assert.Less(t, got.at.Sub(from), ttl, "the lead ends before Consul may expire the session")
					assert.GreaterOrEqual(t, got.at.Sub(from), ttl-margin-every/4, "the lead lasts as long as the lease")
				}
			case <-time.After(3 * ttl):
				assert.Nil(t, tc.want, "the lead did not end within %s", 3*ttl)
			}
		})
	}
}
