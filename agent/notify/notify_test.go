package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// request is what a receiver got.
type request struct {
	path   string
	header http.Header
	body   []byte
}

func (r request) event(t testing.TB) api.Event {
	t.Helper()
	var ev api.Event
	require.NoError(t, json.Unmarshal(r.body, &ev), string(r.body))
	return ev
}

// receiver is a webhook in the test; answer decides what its n-th request (from 1) gets.
type receiver struct {
	*httptest.Server
	answer func(n int, w http.ResponseWriter, r *http.Request)

	mu  sync.Mutex
	got []request
	in  chan int // the number of each request as it arrives
}

func newReceiver(t testing.TB, answer func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{answer: answer, in: make(chan int, 100)}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body bytes.Buffer
		_, _ = body.ReadFrom(r.Body)
		rc.mu.Lock()
		rc.got = append(rc.got, request{path: r.URL.Path, header: r.Header.Clone(), body: body.Bytes()})
		n := len(rc.got)
		rc.mu.Unlock()
		select {
		case rc.in <- n:
		default:
		}
		if rc.answer != nil {
			rc.answer(n, w, r)
		}
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.got...)
}

// events are the names of the events received, in order.
func (rc *receiver) events() []string {
	var names []string
	for _, r := range rc.requests() {
		names = append(names, r.header.Get(HeaderEvent))
	}
	return names
}

// hangs answers nothing until the test ends.
func hangs(t testing.TB) func(int, http.ResponseWriter, *http.Request) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	return func(_ int, _ http.ResponseWriter, r *http.Request) {
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	}
}

// logs is a logger's output, safe to read while workers write.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testOptions retry fast: a test need not wait 15 s for five attempts.
var testOptions = options{queueSize: QueueSize, backoff: []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond, time.Millisecond}, requestTimeout: 200 * time.Millisecond}

// start is a notifier of hooks with opts, closed (and drained) when the test ends, and its logs.
func start(t testing.TB, opts options, hooks ...*config.Notify) (*Notifier, *logs) {
	t.Helper()
	out := &logs{}
	n := newNotifier(hooks, hclog.New(&hclog.LoggerOptions{Output: out, Level: hclog.Debug}), opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = n.Close(ctx)
	})
	return n, out
}

// hookTo is a notify block posting every event to rc.
func hookTo(rc *receiver, name string) *config.Notify {
	return &config.Notify{Name: name, Webhook: rc.URL + "/hook", Events: []string{"*"}, Format: config.NotifyFormatJSON}
}

// closeNow delivers what is queued, failing the test when that takes more than a few seconds.
func closeNow(t testing.TB, n *Notifier) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, n.Close(ctx))
}

func swapEvent(what string) api.Event {
	return api.Event{
		Event: "swap." + what,
		Site:  "web",
		Operation: &api.Operation{
			ID: "op1", Site: "web", Kind: api.KindSwap, State: api.StateSwitching,
			Source: "staging", Target: "production",
		},
	}
}

// TestOrder: a webhook gets the events in the order they were sent, as JSON with the headers,
// Delivery and At filled in.
func TestOrder(t *testing.T) {
	rc := newReceiver(t, nil)
	n, _ := start(t, testOptions, hookTo(rc, "ops"))
	whats := []string{"started", "phase_ended", "phase_ended", "switched", "phase_ended", "succeeded"}
	before := time.Now()
	for i, what := range whats {
		ev := swapEvent(what)
		if what == "phase_ended" {
			ev.Phase = &api.Phase{Name: []string{"", "apply", "warm", "", "settle"}[i], State: api.PhaseSucceeded}
		}
		n.Send(ev)
	}
	closeNow(t, n)

	got := rc.requests()
	require.Len(t, got, len(whats))
	deliveries := map[string]bool{}
	for i, r := range got {
		ev := r.event(t)
		assert.Equal(t, "swap."+whats[i], ev.Event)
		assert.Equal(t, ev.Event, r.header.Get(HeaderEvent))
		assert.Equal(t, "application/json", r.header.Get("Content-Type"))
		assert.NotEmpty(t, ev.Delivery)
		assert.Equal(t, ev.Delivery, r.header.Get(HeaderDelivery))
		assert.False(t, deliveries[ev.Delivery], "delivery %s used twice", ev.Delivery)
		deliveries[ev.Delivery] = true
		assert.False(t, ev.At.Before(before.Add(-time.Second)), "at %s", ev.At)
		assert.Empty(t, r.header.Get(HeaderSignature), "no secret, no signature")
		require.NotNil(t, ev.Operation)
		assert.Equal(t, "op1", ev.Operation.ID)
	}
	assert.Equal(t, "warm", got[2].event(t).Phase.Name)
}

// TestSendKeepsDeliveryAndAt: an event that names its delivery and time is posted with them.
func TestSendKeepsDeliveryAndAt(t *testing.T) {
	rc := newReceiver(t, nil)
	n, _ := start(t, testOptions, hookTo(rc, "ops"))
	ev := swapEvent("started")
	ev.Delivery = "d-1"
	ev.At = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n.Send(ev)
	closeNow(t, n)
	require.Len(t, rc.requests(), 1)
	got := rc.requests()[0].event(t)
	assert.Equal(t, "d-1", got.Delivery)
	assert.True(t, ev.At.Equal(got.At))
}

// TestSignature: with a secret, X-Slotd-Signature is the HMAC of the body as received, which
// Verify accepts, and refuses with another secret or another body.
func TestSignature(t *testing.T) {
	rc := newReceiver(t, nil)
	h := hookTo(rc, "ops")
	h.Secret = "s3cret"
	n, _ := start(t, testOptions, h)
	n.Send(swapEvent("failed"))
	closeNow(t, n)

	require.Len(t, rc.requests(), 1)
	r := rc.requests()[0]
	sig := r.header.Get(HeaderSignature)
	require.True(t, strings.HasPrefix(sig, "sha256="), sig)
	assert.True(t, Verify("s3cret", r.body, sig))
	assert.False(t, Verify("other", r.body, sig))
	assert.False(t, Verify("s3cret", append([]byte(" "), r.body...), sig))
	assert.False(t, Verify("s3cret", r.body, ""))
}

// TestSignKnownValue pins Sign to HMAC-SHA256 as receivers compute it (RFC 4231 test case 2).
func TestSignKnownValue(t *testing.T) {
	assert.Equal(t, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
		Sign("Jefe", []byte("what do ya want for nothing?")))
}

// TestRetries: network errors, timeouts, 429 and 5xx are tried again, up to five attempts,
// with the same delivery; other answers are not.
func TestRetries(t *testing.T) {
	cases := []struct {
		name    string
		answers []string // per attempt: a status, "hang" (past the request timeout) or "drop" (connection closed)
		want    int      // attempts made
		log     string
	}{
		{name: "success at once", answers: []string{"204"}, want: 1, log: "event posted"},
		{name: "5xx then success", answers: []string{"503", "500", "200"}, want: 3, log: "event posted"},
		{name: "429 then success", answers: []string{"429", "202"}, want: 2, log: "event posted"},
		{name: "timeout then success", answers: []string{"hang", "200"}, want: 2, log: "event posted"},
		{name: "connection dropped then success", answers: []string{"drop", "drop", "200"}, want: 3, log: "event posted"},
		{name: "5xx five times gives up", answers: []string{"502", "502", "502", "502", "502", "200"}, want: 5, log: "giving up"},
		{name: "4xx is not tried again", answers: []string{"404", "200"}, want: 1, log: "not posted again"},
		{name: "400 is not tried again", answers: []string{"400", "200"}, want: 1, log: "not posted again"},
		{name: "redirect is not followed", answers: []string{"302", "200"}, want: 1, log: "not posted again"},
		{name: "5xx then 4xx stops", answers: []string{"500", "403", "200"}, want: 2, log: "403 Forbidden"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
				switch answer := tc.answers[min(n, len(tc.answers))-1]; answer {
				case "hang":
					<-r.Context().Done()
				case "drop":
					conn, _, err := w.(http.Hijacker).Hijack()
					if err == nil {
						conn.Close()
					}
				default:
					code, err := strconv.Atoi(answer)
					require.NoError(t, err)
					if code == http.StatusFound {
						w.Header().Set("Location", "/elsewhere")
					}
					w.WriteHeader(code)
				}
			})
			n, out := start(t, testOptions, hookTo(rc, "ops"))
			n.Send(swapEvent("failed"))
			closeNow(t, n)

			got := rc.requests()
			require.Len(t, got, tc.want, out.String())
			for _, r := range got {
				assert.Equal(t, "/hook", r.path)
				assert.Equal(t, got[0].header.Get(HeaderDelivery), r.header.Get(HeaderDelivery), "a retry keeps the delivery")
			}
			assert.Contains(t, out.String(), tc.log)
		})
	}
}

// TestSendDoesNotWait: with a receiver that never answers, Send still returns at once, and
// Close gives up when its context ends, saying what was not posted.
func TestSendDoesNotWait(t *testing.T) {
	rc := newReceiver(t, hangs(t))
	opts := testOptions
	opts.requestTimeout = time.Minute
	n, _ := start(t, opts, hookTo(rc, "ops"))

	const sends = 200
	began := time.Now()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for range sends {
			n.Send(swapEvent("phase_ended"))
		}
	}()
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("Send waits for a receiver that hangs")
	}
	perSend := time.Since(began) / sends
	assert.Less(t, perSend, time.Millisecond, "Send took %s each with a receiver that hangs", perSend)

	select {
	case <-rc.in:
	case <-time.After(5 * time.Second):
		t.Fatal("the receiver got no request")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began = time.Now()
	err := n.Close(ctx)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "199 queued event(s) not posted")
	assert.Less(t, time.Since(began), 5*time.Second, "Close must end soon after its context")
	assert.Len(t, rc.requests(), 1, "one posting was under way")
}

// TestQueueOverflow: when a webhook's queue is full the oldest waiting event is dropped, with
// a warning; the newest are posted, in order.
func TestQueueOverflow(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			<-release
		}
	})
	opts := testOptions
	opts.queueSize = 3
	opts.requestTimeout = time.Minute
	n, out := start(t, opts, hookTo(rc, "ops"))

	n.Send(swapEvent("started"))
	select {
	case <-rc.in: // the first is under way, out of the queue
	case <-time.After(5 * time.Second):
		t.Fatal("the receiver got no request")
	}
	for _, what := range []string{"phase_ended", "switched", "analysis_failed", "rolled_back", "failed"} {
		n.Send(swapEvent(what))
	}
	close(release)
	closeNow(t, n)

	assert.Equal(t, []string{"swap.started", "swap.analysis_failed", "swap.rolled_back", "swap.failed"}, rc.events())
	assert.Equal(t, 2, strings.Count(out.String(), "notify queue full, oldest event dropped"), out.String())
	assert.Contains(t, out.String(), "dropped=swap.phase_ended")
	assert.Contains(t, out.String(), "dropped=swap.switched")
}

// TestSlackBody: format "slack" posts {"text": one line}.
func TestSlackBody(t *testing.T) {
	rc := newReceiver(t, nil)
	h := hookTo(rc, "chat")
	h.Format = config.NotifyFormatSlack
	h.Secret = "k"
	n, _ := start(t, testOptions, h)
	ev := swapEvent("failed")
	ev.Phase = &api.Phase{Name: api.PhaseWarm, State: api.PhaseFailed}
	ev.Operation.State = api.StateFailed
	ev.Operation.Error = "warm-up of web-b:\n GET / answered 500"
	n.Send(ev)
	closeNow(t, n)

	require.Len(t, rc.requests(), 1)
	r := rc.requests()[0]
	var body map[string]string
	require.NoError(t, json.Unmarshal(r.body, &body))
	assert.Equal(t, map[string]string{
		"text": "slotd: site web: swap.failed (phase warm failed), swap op1 failed (staging → production): warm-up of web-b: GET / answered 500",
	}, body)
	assert.Equal(t, "swap.failed", r.header.Get(HeaderEvent))
	assert.True(t, Verify("k", r.body, r.header.Get(HeaderSignature)))
}

// TestSlackText covers the subjects of a line: a site, a group, a member of a group.
func TestSlackText(t *testing.T) {
	cases := []struct {
		name string
		ev   api.Event
		want string
	}{
		{name: "deploy", ev: api.Event{Event: "deploy.succeeded", Site: "web", Operation: &api.Operation{ID: "d1", Kind: api.KindDeploy, State: api.StateSucceeded, Slot: "staging"}}, want: "slotd: site web: deploy.succeeded, deploy d1 succeeded"},
		{name: "group", ev: api.Event{Event: "swap.started", Group: "store", Operation: &api.Operation{ID: "g1", Kind: api.KindSwap, State: api.StatePending, Source: "staging", Target: "production"}}, want: "slotd: group store: swap.started, swap g1 pending (staging → production)"},
		{name: "member of a group", ev: api.Event{Event: "swap.switched", Site: "web", Group: "store", Operation: &api.Operation{ID: "s1", Kind: api.KindSwap, State: api.StateSettling}}, want: "slotd: site web (group store): swap.switched, swap s1 settling"},
		{name: "no operation", ev: api.Event{Event: "scale.failed", Site: "web"}, want: "slotd: site web: scale.failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, SlackText(tc.ev))
		})
	}
}

// TestEventFilters: each webhook gets the events its events name, and no other.
func TestEventFilters(t *testing.T) {
	swaps, failures, all := newReceiver(t, nil), newReceiver(t, nil), newReceiver(t, nil)
	hs, hf, ha := hookTo(swaps, "swaps"), hookTo(failures, "failures"), hookTo(all, "all")
	hs.Events = []string{"swap.*"}
	hf.Events = []string{"*.failed", "rollback.rolled_back"}
	n, _ := start(t, testOptions, hs, hf, ha)
	sent := []string{"swap.started", "deploy.failed", "rollback.rolled_back", "swap.failed", "settings.succeeded"}
	for _, name := range sent {
		n.Send(api.Event{Event: name, Site: "web"})
	}
	closeNow(t, n)
	assert.Equal(t, []string{"swap.started", "swap.failed"}, swaps.events())
	assert.Equal(t, []string{"deploy.failed", "rollback.rolled_back", "swap.failed"}, failures.events())
	assert.Equal(t, sent, all.events())
}

// TestReload: a webhook kept by name takes its new settings for what it posts next; a new one
// starts; one no longer declared is told of nothing more.
func TestReload(t *testing.T) {
	first, second, added := newReceiver(t, nil), newReceiver(t, nil), newReceiver(t, nil)
	n, _ := start(t, testOptions, hookTo(first, "ops"), hookTo(second, "audit"))
	n.Send(api.Event{Event: "swap.started", Site: "web"})

	moved := hookTo(added, "ops")
	moved.Events = []string{"*.failed"}
	n.Reload([]*config.Notify{moved})
	n.Send(api.Event{Event: "swap.succeeded", Site: "web"})
	n.Send(api.Event{Event: "deploy.failed", Site: "web"})
	closeNow(t, n)

	assert.Equal(t, []string{"swap.started"}, second.events(), "audit delivers what was queued, then nothing")
	// swap.started was queued for ops before the reload; it is posted once, to the old or the
	// new address depending on whether the worker took it before the reload. swap.succeeded is
	// not among ops' events any more.
	assert.Equal(t, "deploy.failed", added.events()[len(added.events())-1])
	assert.NotContains(t, append(first.events(), added.events()...), "swap.succeeded")
	started := append(first.events(), added.events()...)
	started = slices.DeleteFunc(started, func(e string) bool { return e == "deploy.failed" })
	assert.Equal(t, []string{"swap.started"}, started)
}

// TestSendAfterClose: events sent after Close are dropped, not posted and not blocking.
func TestSendAfterClose(t *testing.T) {
	rc := newReceiver(t, nil)
	n, out := start(t, testOptions, hookTo(rc, "ops"))
	closeNow(t, n)
	n.Send(swapEvent("started"))
	assert.Empty(t, rc.requests())
	assert.Contains(t, out.String(), "notifier closed")
}

// TestNewWithoutLogger: a notifier made with no logger posts, and logs a refusal, quietly.
func TestNewWithoutLogger(t *testing.T) {
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotFound) })
	n := New([]*config.Notify{hookTo(rc, "ops")}, nil)
	n.Send(swapEvent("started"))
	closeNow(t, n)
	assert.Len(t, rc.requests(), 1)
}
