// Package notify tells webhooks what operations do (notify blocks) and asks a site's gate
// webhook before a swap moves routes; a slow or failing receiver never holds an operation up.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

// Headers of every posting.
const (
	HeaderEvent     = "X-Slotd-Event"
	HeaderDelivery  = "X-Slotd-Delivery"
	HeaderSignature = "X-Slotd-Signature"
	// HeaderGate names the gate a gate request asks (such as before-switch).
	HeaderGate = "X-Slotd-Gate"
)

const (
	// QueueSize bounds the events waiting for one webhook: a receiver that is down for long
	// loses the oldest, not the daemon's memory.
	QueueSize = 1000
	// RequestTimeout bounds one posting of an event.
	RequestTimeout = 10 * time.Second
	// maxBodyLogged is how much of a receiver's answer is kept for a log line or an error.
	maxBodyLogged = 512
)

// Backoff are the pauses before the second, third, … attempt of a posting: five attempts in
// about 15 s, long enough to ride out a receiver's restart.
var Backoff = []time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}

// Notifier posts operation events to the notify webhooks, each webhook's in the order they
// were sent, from one worker per webhook.
type Notifier struct {
	logger hclog.Logger
	client *http.Client
	opts   options

	ctx    context.Context // ends when Close gives up: in-flight postings and backoffs stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the workers, retiring ones included

	mu     sync.Mutex
	hooks  []*hook
	closed bool
}

// options are what tests shorten.
type options struct {
	queueSize      int
	backoff        []time.Duration
	requestTimeout time.Duration
}

// New starts a worker for each of hooks; a nil logger logs nothing.
func New(hooks []*config.Notify, logger hclog.Logger) *Notifier {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return newNotifier(hooks, logger, options{queueSize: QueueSize, backoff: Backoff, requestTimeout: RequestTimeout})
}

func newNotifier(hooks []*config.Notify, logger hclog.Logger, opts options) *Notifier {
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{
		logger: logger,
		client: &http.Client{
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			// A redirect of a POST would become a GET; the receiver's answer is what counts.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		opts:   opts,
		ctx:    ctx,
		cancel: cancel,
	}
	n.Reload(hooks)
	return n
}

// hook is one webhook: its settings and the events waiting for its worker.
type hook struct {
	name string
	wake chan struct{} // a token when the queue may have grown or the hook retires

	mu       sync.Mutex
	cfg      *config.Notify
	queue    []item
	retiring bool // no more events: the worker ends once the queue is empty
}

// item is one event as it is posted: its body in both formats, made when it was sent, so that
// what the engine changes afterwards does not change what is posted.
type item struct {
	event, delivery string
	json, slack     []byte
}

// Reload makes hooks the webhooks: a webhook of a name already known keeps its queue and its
// order and takes the new settings; the queues of webhooks no longer declared are delivered
// and their workers end.
func (n *Notifier) Reload(hooks []*config.Notify) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	old := map[string]*hook{}
	for _, h := range n.hooks {
		old[h.name] = h
	}
	next := make([]*hook, 0, len(hooks))
	for _, cfg := range hooks {
		if h, ok := old[cfg.Name]; ok {
			delete(old, cfg.Name)
			h.mu.Lock()
			h.cfg = cfg
			h.mu.Unlock()
			next = append(next, h)
			continue
		}
		h := &hook{name: cfg.Name, cfg: cfg, wake: make(chan struct{}, 1)}
		n.wg.Add(1)
		go n.run(h)
		next = append(next, h)
	}
	for _, h := range old {
		h.retire()
	}
	n.hooks = next
}

// Send queues ev for every webhook whose events name it and returns at once: it never waits
// for a receiver. It fills ev's Delivery and At when they are empty.
func (n *Notifier) Send(ev api.Event) {
	n.mu.Lock()
	var wanted []*hook
	closed := n.closed
	for _, h := range n.hooks {
		if h.wants(ev.Event) {
			wanted = append(wanted, h)
		}
	}
	n.mu.Unlock()
	if closed {
		n.logger.Debug("notifier closed, event not posted", "event", ev.Event)
		return
	}
	if len(wanted) == 0 {
		return
	}
	if ev.Delivery == "" {
		ev.Delivery = rand.Text()
	}
	if ev.At.IsZero() {
		ev.At = time.Now().UTC()
	}
	body, err := json.Marshal(ev)
	if err != nil { // an api.Event always encodes; the engine must hear of it if not
		n.logger.Error("encode event", "event", ev.Event, "error", err)
		return
	}
	slack, _ := json.Marshal(map[string]string{"text": SlackText(ev)})
	it := item{event: ev.Event, delivery: ev.Delivery, json: body, slack: slack}
	for _, h := range wanted {
		if dropped, ok := h.enqueue(it, n.opts.queueSize); ok {
			n.logger.Warn("notify queue full, oldest event dropped",
				"notify", h.name, "dropped", dropped.event, "delivery", dropped.delivery)
		}
	}
}

func (h *hook) wants(event string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cfg.Wants(event)
}

// enqueue adds it, dropping (and returning) the oldest when the queue holds size items.
func (h *hook) enqueue(it item, size int) (dropped item, full bool) {
	h.mu.Lock()
	if len(h.queue) >= size {
		dropped, full = h.queue[0], true
		h.queue = h.queue[1:]
	}
	h.queue = append(h.queue, it)
	h.mu.Unlock()
	h.poke()
	return dropped, full
}

func (h *hook) retire() {
	h.mu.Lock()
	h.retiring = true
	h.mu.Unlock()
	h.poke()
}

func (h *hook) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// next waits for the next item; it reports false when the hook retired and its queue is
// empty, or the notifier stops.
func (h *hook) next(ctx context.Context) (item, *config.Notify, bool) {
	for {
		h.mu.Lock()
		if len(h.queue) > 0 {
			it := h.queue[0]
			h.queue = h.queue[1:]
			cfg := h.cfg
			h.mu.Unlock()
			return it, cfg, true
		}
		retiring := h.retiring
		h.mu.Unlock()
		if retiring {
			return item{}, nil, false
		}
		select {
		case <-h.wake:
		case <-ctx.Done():
			return item{}, nil, false
		}
	}
}

// left is how many items wait.
func (h *hook) left() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.queue)
}

// run is a hook's worker: one posting at a time keeps the events in order.
func (n *Notifier) run(h *hook) {
	defer n.wg.Done()
	for {
		it, cfg, ok := h.next(n.ctx)
		if !ok {
			return
		}
		n.deliver(cfg, it)
	}
}

// deliver posts one event, trying again after network errors, timeouts, 429 and 5xx.
func (n *Notifier) deliver(cfg *config.Notify, it item) {
	body := it.json
	if cfg.Format == config.NotifyFormatSlack {
		body = it.slack
	}
	log := n.logger.With("notify", cfg.Name, "event", it.event, "delivery", it.delivery)
	attempts := len(n.opts.backoff) + 1
	for attempt := 1; ; attempt++ {
		err := n.post(cfg, it, body)
		if err == nil {
			log.Debug("event posted", "attempt", attempt)
			return
		}
		var refused *refusedError
		switch {
		case errors.As(err, &refused) && !refused.retry:
			log.Error("event refused, not posted again", "attempt", attempt, "error", err)
			return
		case attempt == attempts:
			log.Error("event not posted, giving up", "attempts", attempt, "error", err)
			return
		}
		pause := n.opts.backoff[attempt-1]
		log.Warn("event not posted, trying again", "attempt", attempt, "in", pause, "error", err)
		select {
		case <-time.After(pause):
		case <-n.ctx.Done():
			log.Warn("notifier closed, event not posted", "attempt", attempt)
			return
		}
	}
}

// refusedError is an answer other than 2xx; retry says whether another attempt may succeed.
type refusedError struct {
	status string
	body   string
	retry  bool
}

func (e *refusedError) Error() string {
	if e.body == "" {
		return e.status
	}
	return e.status + ": " + e.body
}

func (n *Notifier) post(cfg *config.Notify, it item, body []byte) error {
	ctx, cancel := context.WithTimeout(n.ctx, n.opts.requestTimeout)
	defer cancel()
	req, err := newRequest(ctx, cfg.Webhook, cfg.Secret, it.event, it.delivery, body)
	if err != nil {
		return err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return fmt.Errorf("post: %w", err)
	}
	defer resp.Body.Close()
	answer := readAnswer(resp.Body)
	if resp.StatusCode/100 == 2 {
		return nil
	}
	return &refusedError{
		status: resp.Status,
		body:   answer,
		retry:  resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500,
	}
}

// newRequest is a posting of body, signed with secret when there is one. The webhook's URL is
// in no error: a Slack webhook URL is a secret.
func newRequest(ctx context.Context, webhook, secret, event, delivery string, body []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, webhook, bytes.NewReader(body))
	if err != nil {
		return nil, errors.New("the webhook is not a URL")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "slotd")
	req.Header.Set(HeaderEvent, event)
	req.Header.Set(HeaderDelivery, delivery)
	if secret != "" {
		req.Header.Set(HeaderSignature, Sign(secret, body))
	}
	return req, nil
}

// readAnswer reads the start of an answer, on one line, and drains the rest so that the
// connection is used again.
func readAnswer(r io.Reader) string {
	data, _ := io.ReadAll(io.LimitReader(r, maxBodyLogged))
	_, _ = io.Copy(io.Discard, io.LimitReader(r, 1<<20))
	return strings.Join(strings.Fields(string(data)), " ")
}

// Close stops taking events and delivers those queued until ctx ends; then it stops the
// postings under way and says how many events were not posted.
func (n *Notifier) Close(ctx context.Context) error {
	n.mu.Lock()
	n.closed = true
	hooks := n.hooks
	for _, h := range hooks {
		h.retire()
	}
	n.mu.Unlock()

	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		n.cancel()
		return nil
	case <-ctx.Done():
	}
	left := 0
	for _, h := range hooks {
		left += h.left()
	}
	n.cancel()
	<-done
	return fmt.Errorf("close notifier: %d queued event(s) not posted: %w", left, ctx.Err())
}

// Sign is the X-Slotd-Signature of body: "sha256=" and the hex HMAC-SHA256 of body with the
// secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify reports whether signature (an X-Slotd-Signature header) signs body with secret; a
// receiver checks every request with it before trusting the body.
func Verify(secret string, body []byte, signature string) bool {
	return hmac.Equal([]byte(signature), []byte(Sign(secret, body)))
}

// SlackText is the one line a Slack-format webhook receives: who, what, the state and the
// error, such as "slotd: site web: swap.failed (phase warm failed), swap 01J… failed
// (staging → production): warm-up of web-b: GET / answered 500".
func SlackText(ev api.Event) string {
	var b strings.Builder
	b.WriteString("slotd: ")
	switch {
	case ev.Site != "" && ev.Group != "":
		fmt.Fprintf(&b, "site %s (group %s)", ev.Site, ev.Group)
	case ev.Group != "":
		fmt.Fprintf(&b, "group %s", ev.Group)
	default:
		fmt.Fprintf(&b, "site %s", ev.Site)
	}
	b.WriteString(": " + ev.Event)
	if ev.Phase != nil {
		fmt.Fprintf(&b, " (phase %s %s)", ev.Phase.Name, ev.Phase.State)
	}
	if op := ev.Operation; op != nil {
		fmt.Fprintf(&b, ", %s %s %s", op.Kind, op.ID, op.State)
		if op.Source != "" && op.Target != "" {
			fmt.Fprintf(&b, " (%s → %s)", op.Source, op.Target)
		}
		if op.Error != "" {
			b.WriteString(": " + op.Error)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}
