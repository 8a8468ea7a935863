package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Environment variables read by DefaultConfig.
const (
	EnvAddress = "SLOTD_ADDR"
	EnvToken   = "SLOTD_TOKEN"
	EnvCACert  = "SLOTD_CACERT"
)

const (
	// DefaultAddress is where a local agent listens unless told otherwise.
	DefaultAddress = "http://127.0.0.1:4680"

	// requestTimeout bounds a request that does not block on the server, so a hung agent
	// cannot hang a pipeline.
	requestTimeout = time.Minute
	// blockWait is how long a blocking read asks the server to hold it when nothing changes
	// (?wait=, the server's default too); blockingTimeout bounds the read on the client, which
	// must not give up first.
	blockWait       = 5 * time.Minute
	blockingTimeout = blockWait + time.Minute

	// waitRetries is how many failed reads in a row Wait tolerates (agent restarting, leader
	// moving) before it gives up; waitBackoff and waitMaxBackoff shape the pauses between them.
	waitRetries    = 6
	waitBackoff    = 500 * time.Millisecond
	waitMaxBackoff = 8 * time.Second

	// minWaitRead is the least time between two reads of an operation while following: a server
	// that answers a blocking read at once without a change (or an operation without an index)
	// must not turn Wait into a tight loop.
	minWaitRead = time.Second

	// maxErrorBody is how much of an error answer is read for its message.
	maxErrorBody = 64 << 10
)

// Config configures a Client.
type Config struct {
	// Address is the agent's base URL; a bare host:port means http.
	Address string
	// Token is sent as "Authorization: Bearer <token>" when set.
	Token string
	// CACert is a PEM file of the CA that signed the agent's TLS certificate.
	CACert string
	// Reveal asks for sticky values in clear (?reveal=true on every request) instead of
	// Hidden; the agent answers 401 when it has a token and Token is not it.
	Reveal bool
	// HTTPClient replaces the default client. Its Timeout must be zero or longer than the
	// server's blocking wait (about 5 minutes); CACert is ignored when it is set.
	HTTPClient *http.Client
	// Wait is how long a request refused with 503 and Retry-After is sent again before the
	// refusal is returned: the agent says so while a site is starting or no leader is known
	// yet, and nothing was done, so a write is safe to repeat. Zero returns the refusal at
	// once; the CLI's -wait is DefaultWait.
	Wait time.Duration
	// OnWait, when set, is called when a request starts waiting, with the refusal and Wait.
	OnWait func(refusal *StatusError, wait time.Duration)
}

// DefaultWait is how long the CLI waits for an agent that is starting (its -wait).
const DefaultWait = 2 * time.Minute

// DefaultConfig is the configuration from SLOTD_ADDR, SLOTD_TOKEN and SLOTD_CACERT.
func DefaultConfig() Config {
	c := Config{
		Address: os.Getenv(EnvAddress),
		Token:   os.Getenv(EnvToken),
		CACert:  os.Getenv(EnvCACert),
	}
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	return c
}

// Client calls one slotd agent's HTTP API. It is safe for concurrent use.
type Client struct {
	base   string // scheme://host[:port][/prefix], no trailing slash
	token  string
	reveal bool
	hc     *http.Client
	wait   time.Duration
	onWait func(*StatusError, time.Duration)
}

// NewClient checks the configuration and builds a client; it does not contact the agent.
func NewClient(c Config) (*Client, error) {
	addr := strings.TrimSpace(c.Address)
	if addr == "" {
		addr = DefaultAddress
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("parse address %q: %w", c.Address, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("address %q: scheme must be http or https", c.Address)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("address %q: no host", c.Address)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("address %q: no query or fragment allowed", c.Address)
	}

	hc := c.HTTPClient
	if hc == nil {
		tr, err := transport(c.CACert)
		if err != nil {
			return nil, err
		}
		hc = &http.Client{Transport: tr}
	}
	if c.Wait < 0 {
		return nil, fmt.Errorf("wait %s: must not be negative", c.Wait)
	}
	return &Client{
		base:   strings.TrimRight(u.String(), "/"),
		token:  c.Token,
		reveal: c.Reveal,
		hc:     hc,
		wait:   c.Wait,
		onWait: c.OnWait,
	}, nil
}

func transport(caCert string) (*http.Transport, error) {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
		ExpectContinueTimeout: time.Second,
	}
	if caCert == "" {
		return tr, nil
	}
	pem, err := os.ReadFile(caCert)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("read CA certificate %s: no PEM certificate found", caCert)
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr, nil
}

// Address is the agent's base URL the client talks to.
func (c *Client) Address() string { return c.base }

// StatusError is an answer of the agent outside 2xx.
type StatusError struct {
	Code    int
	Message string
	// LeaderAddress is where the leader is, on a 503 from a daemon that is not the leader.
	LeaderAddress string
	// RetryAfter is the answer's Retry-After: on a 503, the refusal passes by itself (a site
	// starting, a leader being elected) and the request may be sent again after it.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("slotd: %d: %s", e.Code, e.Message)
}

// Sites lists every site with its slots.
func (c *Client) Sites(ctx context.Context) ([]Site, error) {
	var out []Site
	if err := c.do(ctx, http.MethodGet, nil, nil, &out, "sites"); err != nil {
		return nil, err
	}
	return out, nil
}

// Site reads one site with its slots, instances, settings and running operation.
func (c *Client) Site(ctx context.Context, site string) (*Site, error) {
	var out Site
	if err := c.do(ctx, http.MethodGet, nil, nil, &out, "sites", site); err != nil {
		return nil, err
	}
	return &out, nil
}

// Deploy starts a deploy of a new version into a slot, with the given job variables.
func (c *Client) Deploy(ctx context.Context, site, slot string, vars map[string]string) (*Operation, error) {
	if vars == nil {
		vars = map[string]string{}
	}
	var out Operation
	err := c.do(ctx, http.MethodPost, nil, DeployRequest{Vars: vars}, &out, "sites", site, "slots", slot, "deploy")
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Scale changes the instance counts of task groups of a slot (groups left out keep theirs)
// and starts the operation that rolls them out.
func (c *Client) Scale(ctx context.Context, site, slot string, counts map[string]int) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPut, nil, counts, &out, "sites", site, "slots", slot, "scale"); err != nil {
		return nil, err
	}
	return &out, nil
}

// Settings reads a slot's swappable and sticky settings.
func (c *Client) Settings(ctx context.Context, site, slot string) (*Settings, error) {
	var out Settings
	if err := c.do(ctx, http.MethodGet, nil, nil, &out, "sites", site, "slots", slot, "settings"); err != nil {
		return nil, err
	}
	return &out, nil
}

// SetSetting sets a swappable (or, with sticky, a sticky) setting of a slot.
func (c *Client) SetSetting(ctx context.Context, site, slot, key, value string, sticky bool) error {
	body := SettingRequest{Value: value, Sticky: sticky}
	return c.do(ctx, http.MethodPut, nil, body, nil, "sites", site, "slots", slot, "settings", key)
}

// DeleteSetting removes a setting from a slot.
func (c *Client) DeleteSetting(ctx context.Context, site, slot, key string) error {
	return c.do(ctx, http.MethodDelete, nil, nil, nil, "sites", site, "slots", slot, "settings", key)
}

// Swap starts a swap of req.Source into req.Target.
func (c *Client) Swap(ctx context.Context, site string, req SwapRequest) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPost, nil, req, &out, "sites", site, "swap"); err != nil {
		return nil, err
	}
	return &out, nil
}

// Rollback starts a swap back of the site's last completed swap.
func (c *Client) Rollback(ctx context.Context, site string) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPost, nil, nil, &out, "sites", site, "rollback"); err != nil {
		return nil, err
	}
	return &out, nil
}

// Groups lists the declared swap groups with their running and last group operations.
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	var out []Group
	if err := c.do(ctx, http.MethodGet, nil, nil, &out, "groups"); err != nil {
		return nil, err
	}
	return out, nil
}

// Group is one swap group, with its running group operation (nil when idle) and its newest
// finished one.
func (c *Client) Group(ctx context.Context, group string) (*Group, error) {
	var out Group
	if err := c.do(ctx, http.MethodGet, nil, nil, &out, "groups", group); err != nil {
		return nil, err
	}
	return &out, nil
}

// SwapGroup starts a swap of source into target on every member site of a group, as one
// operation (POST /v1/groups/{group}/swap).
func (c *Client) SwapGroup(ctx context.Context, group string, req SwapRequest) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPost, nil, req, &out, "groups", group, "swap"); err != nil {
		return nil, err
	}
	return &out, nil
}

// RollbackGroup swaps back the group's last group swap on every member, as one operation.
func (c *Client) RollbackGroup(ctx context.Context, group string) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPost, nil, nil, &out, "groups", group, "rollback"); err != nil {
		return nil, err
	}
	return &out, nil
}

// Settle ends the hold of the site's last swap now: the held lane takes its own slot's
// settings and routes. It answers the swap, whose settle phase then runs.
func (c *Client) Settle(ctx context.Context, site string) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPost, nil, nil, &out, "sites", site, "settle"); err != nil {
		return nil, err
	}
	return &out, nil
}

// Operation reads an operation. With index > 0 the server holds the request until the
// operation's Index differs from index, or 5 minutes pass; then it answers the operation as it is.
func (c *Client) Operation(ctx context.Context, id string, index uint64) (*Operation, error) {
	var q url.Values
	if index > 0 {
		q = url.Values{"index": {strconv.FormatUint(index, 10)}, "wait": {blockWait.String()}}
	}
	var out Operation
	if err := c.do(ctx, http.MethodGet, q, nil, &out, "operations", id); err != nil {
		return nil, err
	}
	return &out, nil
}

// Complete finishes a previewing swap.
func (c *Client) Complete(ctx context.Context, id string) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPost, nil, nil, &out, "operations", id, "complete"); err != nil {
		return nil, err
	}
	return &out, nil
}

// Cancel cancels a previewing or running operation.
func (c *Client) Cancel(ctx context.Context, id string) (*Operation, error) {
	var out Operation
	if err := c.do(ctx, http.MethodPost, nil, nil, &out, "operations", id, "cancel"); err != nil {
		return nil, err
	}
	return &out, nil
}

// HistoryPage picks a page of a site's or a group's history; the zero value asks for the newest page of the
// server's default size (50).
type HistoryPage struct {
	// Limit is how many operations to answer at most (0: the server's default); the server
	// answers no more than the site keeps (its history_limit).
	Limit int
	// Before asks for the operations older than this Seq (0: the newest): the Seq of a page's
	// last operation asks for the next page.
	Before uint64
}

// query is the page as the history routes read it.
func (p HistoryPage) query() url.Values {
	q := url.Values{}
	if p.Limit != 0 {
		q.Set("limit", strconv.Itoa(p.Limit))
	}
	if p.Before != 0 {
		q.Set("before", strconv.FormatUint(p.Before, 10))
	}
	return q
}

// History lists a page of a site's finished operations, newest first.
func (c *Client) History(ctx context.Context, site string, page HistoryPage) ([]Operation, error) {
	var out []Operation
	if err := c.do(ctx, http.MethodGet, page.query(), nil, &out, "sites", site, "history"); err != nil {
		return nil, err
	}
	return out, nil
}

// GroupHistory lists a page of a group's finished group operations, newest first; a group
// keeps as many as the daemon's top-level history_limit.
func (c *Client) GroupHistory(ctx context.Context, group string, page HistoryPage) ([]Operation, error) {
	var out []Operation
	if err := c.do(ctx, http.MethodGet, page.query(), nil, &out, "groups", group, "history"); err != nil {
		return nil, err
	}
	return out, nil
}

// Health reports whether the agent is alive, whether it leads, the state of its sites and
// whether it reaches Consul and Nomad. The agent's 503 when it does not reach one of them is
// answered as its Health (Status HealthFailing), not as an error: the agent did answer.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	ans, err := c.send(ctx, c.base, http.MethodGet, "/v1/health", nil, nil)
	if err != nil {
		return nil, err
	}
	var out Health
	switch {
	case ans.ok():
		if err := json.Unmarshal(ans.body, &out); err != nil {
			return nil, fmt.Errorf("GET /v1/health: decode answer: %w", err)
		}
	case ans.code == http.StatusServiceUnavailable && json.Unmarshal(ans.body, &out) == nil && out.Status != "":
	default:
		return nil, ans.statusError()
	}
	return &out, nil
}

// Stopped reports whether op needs nothing more from the daemon: it has finished, or it is a
// preview swap waiting for complete or cancel.
func Stopped(op *Operation) bool {
	return Terminal(op.State) || op.State == StatePreviewing
}

// Wait follows operation id with blocking reads until it stops (see Stopped), calling onChange
// (when not nil) with the first version read and with every newer one. It returns the last
// version; on error it returns the last version seen, if any, with the error.
func (c *Client) Wait(ctx context.Context, id string, onChange func(*Operation)) (*Operation, error) {
	op, err := c.Operation(ctx, id, 0)
	if err != nil {
		return nil, err
	}
	return c.Follow(ctx, op, Stopped, onChange)
}

// Follow is Wait from a version already read (the answer of Deploy, Swap, Complete, …) until
// done reports true. onChange sees op first, then every newer version. Transient failures
// (network, 5xx, 429, a timed-out read) are retried with backoff a few times in a row; any
// other 4xx is returned at once.
func (c *Client) Follow(ctx context.Context, op *Operation, done func(*Operation) bool, onChange func(*Operation)) (*Operation, error) {
	if onChange == nil {
		onChange = func(*Operation) {}
	}
	onChange(op)
	failures := 0
	for !done(op) {
		began := time.Now()
		next, err := c.Operation(ctx, op.ID, op.Index)
		if err != nil {
			if ctx.Err() != nil {
				return op, ctx.Err()
			}
			var se *StatusError
			if errors.As(err, &se) && se.Code < 500 && se.Code != http.StatusTooManyRequests {
				return op, fmt.Errorf("follow operation %s: %w", op.ID, err)
			}
			failures++
			if failures >= waitRetries {
				return op, fmt.Errorf("follow operation %s: %w", op.ID, err)
			}
			if err := sleep(ctx, backoff(failures)); err != nil {
				return op, err
			}
			continue
		}
		failures = 0
		// The same index means the server's wait ran out with no change. Any other index,
		// lower ones included (the operation was re-journaled), is a new version.
		if next.Index == op.Index && next.State == op.State {
			if err := sleep(ctx, minWaitRead-time.Since(began)); err != nil {
				return op, err
			}
			continue
		}
		op = next
		onChange(op)
	}
	return op, nil
}

// backoff is the pause after the n-th failure in a row: doubling, capped, with jitter so many
// followers of one restarting agent do not come back in step.
func backoff(n int) time.Duration {
	d := waitBackoff << (n - 1)
	if d > waitMaxBackoff || d <= 0 {
		d = waitMaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// do sends one request to /v1/<segments…> and decodes a 2xx answer into out (when not nil). A
// refusal that passes by itself (503 with Retry-After) is sent again, after the pause the agent
// asks for, until c.wait has passed.
func (c *Client) do(ctx context.Context, method string, query url.Values, in, out any, segments ...string) error {
	path, err := escapePath(segments)
	if err != nil {
		return err
	}
	var payload []byte
	if in != nil {
		if payload, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
	}
	if c.reveal {
		query = maps.Clone(query)
		if query == nil {
			query = url.Values{}
		}
		query.Set("reveal", "true")
	}
	var giveUp time.Time
	base := c.base
	var refused *StatusError // by a standby, whose leader is asked instead
	for {
		ans, err := c.send(ctx, base, method, path, query, payload)
		if err != nil {
			if refused != nil {
				return refused // the leader it named cannot be reached from here
			}
			return err
		}
		if ans.ok() {
			if out == nil || ans.code == http.StatusNoContent {
				return nil
			}
			if err := json.Unmarshal(ans.body, out); err != nil {
				return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
			}
			return nil
		}
		se := ans.statusError()
		if leader := leaderBase(se, base); leader != "" && refused == nil && method != http.MethodGet {
			// A standby refused a write: nothing was done; the leader is asked instead, once.
			if c.token != "" && clearToRemote(leader) {
				return fmt.Errorf("%s %s: %s does not lead; the leader is at %s, and the token is not sent in clear text over http to a host other than loopback: "+
					"serve the API over TLS (http { tls_cert_file, tls_key_file }), so that the leader names an https address, or send the request to the leader itself: %w",
					method, path, base, se.LeaderAddress, se)
			}
			base, refused = leader, se
			continue
		}
		if se.Code != http.StatusServiceUnavailable || se.RetryAfter <= 0 || c.wait <= 0 {
			return se
		}
		now := time.Now()
		if giveUp.IsZero() {
			giveUp = now.Add(c.wait)
			if c.onWait != nil {
				c.onWait(se, c.wait)
			}
		}
		pause := min(se.RetryAfter, giveUp.Sub(now))
		if pause <= 0 {
			return se
		}
		if err := sleep(ctx, pause); err != nil {
			return err
		}
	}
}

// leaderBase is where to send a request that a standby refused, pointing at the leader: its
// address as the standby knows it (scheme://host:port), when it is another agent than base.
func leaderBase(se *StatusError, base string) string {
	if se.Code != http.StatusServiceUnavailable || se.LeaderAddress == "" {
		return ""
	}
	u, err := url.Parse(strings.TrimRight(se.LeaderAddress, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	cur, err := url.Parse(base)
	if err != nil || cur.Host == u.Host {
		return ""
	}
	return u.Scheme + "://" + u.Host + cur.Path
}

// clearToRemote reports whether a request to base would cross the network unencrypted: http
// to a host other than localhost or a loopback IP.
func clearToRemote(base string) bool {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" {
		return err != nil
	}
	return !LoopbackHost(u.Hostname())
}

// LoopbackHost reports whether host is localhost or a loopback IP: reached from this machine
// only. An empty host, a wildcard or any other name may be reached from other machines.
func LoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// answer is a response, read whole.
type answer struct {
	code   int
	header http.Header
	body   []byte
}

func (a *answer) ok() bool { return a.code >= 200 && a.code <= 299 }

// send sends one request to path (/v1/…) and reads its answer: a 2xx whole, any other up to
// maxErrorBody.
func (c *Client) send(ctx context.Context, base, method, path string, query url.Values, payload []byte) (*answer, error) {
	timeout := requestTimeout
	if query.Has("index") {
		timeout = blockingTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	u := base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "slotd-client")
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}

	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err // *url.Error names the method and URL
	}
	defer resp.Body.Close()
	ans := &answer{code: resp.StatusCode, header: resp.Header}
	var r io.Reader = resp.Body
	if !ans.ok() {
		r = io.LimitReader(resp.Body, maxErrorBody)
	}
	if ans.body, err = io.ReadAll(r); err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	return ans, nil
}

// statusError is the error of an answer outside 2xx.
func (a *answer) statusError() *StatusError {
	se := &StatusError{Code: a.code, RetryAfter: retryAfter(a.header.Get("Retry-After"))}
	var er ErrorResponse
	if json.Unmarshal(a.body, &er) == nil && er.Error != "" {
		se.Message = er.Error
		se.LeaderAddress = er.LeaderAddress
	} else if text := strings.TrimSpace(string(a.body)); text != "" {
		se.Message = text
	} else {
		se.Message = strings.ToLower(http.StatusText(a.code))
	}
	return se
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date; 0 when absent or past.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		return max(time.Duration(n)*time.Second, 0)
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// escapePath builds /v1/<seg>/<seg>… with every segment escaped. Empty, "." and ".." names
// are refused: the server's router would clean them into another path.
func escapePath(segments []string) (string, error) {
	var b strings.Builder
	b.WriteString("/v1")
	for _, s := range segments {
		if s == "" || s == "." || s == ".." {
			return "", fmt.Errorf("invalid name %q in /v1/%s", s, strings.Join(segments, "/"))
		}
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String(), nil
}
