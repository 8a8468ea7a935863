package notify

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// TestAsk: a gate passes on a 2xx only; a refusal, no answer in time or no webhook is an error
// that says which, asked once.
func TestAsk(t *testing.T) {
	cases := []struct {
		name    string
		answer  func(int, http.ResponseWriter, *http.Request)
		timeout time.Duration
		want    string // the error; "" passes
	}{
		{name: "200 passes", answer: func(int, http.ResponseWriter, *http.Request) {}},
		{name: "204 passes", answer: func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }},
		{
			name: "403 refuses with the answer",
			answer: func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusForbidden)
				_, _ = w.Write([]byte("change freeze until 18:00\n"))
			},
			want: "gate before-switch refused: 403 Forbidden: change freeze until 18:00",
		},
		{
			name:   "500 refuses, not asked again",
			answer: func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) },
			want:   "gate before-switch refused: 500 Internal Server Error",
		},
		{
			name: "a long answer is cut at 512 bytes",
			answer: func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusConflict)
				_, _ = w.Write([]byte(strings.Repeat("x", 2000)))
			},
			want: "gate before-switch refused: 409 Conflict: " + strings.Repeat("x", 512),
		},
		{name: "no answer in time", answer: hangs(t), timeout: 100 * time.Millisecond, want: "gate before-switch: no answer within 100ms: context deadline exceeded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := newReceiver(t, tc.answer)
			n, _ := start(t, testOptions)
			gate := &config.Gate{Name: config.GateBeforeSwitch, Webhook: rc.URL + "/confirm", Timeout: time.Minute, Secret: "g"}
			if tc.timeout != 0 {
				gate.Timeout = tc.timeout
			}
			op := &api.Operation{ID: "op1", Site: "web", Kind: api.KindSwap, State: api.StatePreviewing, Source: "staging", Target: "production"}

			began := time.Now()
			err := n.Ask(context.Background(), gate, op)
			if tc.want == "" {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.Equal(t, tc.want, err.Error())
			}
			if tc.timeout != 0 {
				assert.ErrorIs(t, err, context.DeadlineExceeded)
				assert.Less(t, time.Since(began), 5*time.Second)
			}

			got := rc.requests()
			require.Len(t, got, 1, "a gate is asked once")
			r := got[0]
			assert.Equal(t, "/confirm", r.path)
			assert.Equal(t, "swap.gate", r.header.Get(HeaderEvent))
			assert.Equal(t, "before-switch", r.header.Get(HeaderGate))
			assert.True(t, Verify("g", r.body, r.header.Get(HeaderSignature)))
			ev := r.event(t)
			assert.Equal(t, "swap.gate", ev.Event)
			assert.Equal(t, "web", ev.Site)
			assert.Equal(t, ev.Delivery, r.header.Get(HeaderDelivery))
			require.NotNil(t, ev.Operation)
			assert.Equal(t, "op1", ev.Operation.ID)
		})
	}
}

// TestAskUnreachable: a webhook nobody listens on is an error that says so.
func TestAskUnreachable(t *testing.T) {
	rc := newReceiver(t, nil)
	url := rc.URL
	rc.Close()
	n, _ := start(t, testOptions)
	gate := &config.Gate{Name: config.GateBeforeSwitch, Webhook: url, Timeout: time.Minute}
	err := n.Ask(context.Background(), gate, &api.Operation{ID: "op1", Site: "web", Kind: api.KindSwap})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gate before-switch: cannot reach the webhook:")
}

// TestAskCancelled: the operation's context ending (a cancel) ends the wait at once.
func TestAskCancelled(t *testing.T) {
	rc := newReceiver(t, hangs(t))
	n, _ := start(t, testOptions)
	gate := &config.Gate{Name: config.GateBeforeSwitch, Webhook: rc.URL, Timeout: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-rc.in
		cancel()
	}()
	err := n.Ask(ctx, gate, &api.Operation{ID: "op1", Site: "web", Kind: api.KindSwap})
	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, "gate before-switch: context canceled", err.Error())
}
