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
	// HTTPClient replaces the default client. Its Timeout must be zero or longer than the
	// server's blocking wait (about 5 minutes); CACert is ignored when it is set.
	HTTPClient *http.Client
}

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
	base  string // scheme://host[:port][/prefix], no trailing slash
	token string
	hc    *http.Client
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
	return &Client{
		base:  strings.TrimRight(u.String(), "/"),
		token: c.Token,
		hc:    hc,
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

// HistoryPage picks a page of a site's history; the zero value asks for the newest page of the
// server's default size (50).
type HistoryPage struct {
	// Limit is how many operations to answer at most (0: the server's default); the server
	// answers no more than the site keeps (its history_limit).
	Limit int
	// Before asks for the operations older than this Seq (0: the newest): the Seq of a page's
	// last operation asks for the next page.
	Before uint64
}

// History lists a page of a site's finished operations, newest first.
func (c *Client) History(ctx context.Context, site string, page HistoryPage) ([]Operation, error) {
	q := url.Values{}
	if page.Limit != 0 {
		q.Set("limit", strconv.Itoa(page.Limit))
	}
	if page.Before != 0 {
		q.Set("before", strconv.FormatUint(page.Before, 10))
	}
	var out []Operation
	if err := c.do(ctx, http.MethodGet, q, nil, &out, "sites", site, "history"); err != nil {
		return nil, err
	}
	return out, nil
}

// Health reports whether the agent is alive and whether it leads.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var out Health
	if err := c.do(ctx, http.MethodGet, nil, nil, &out, "health"); err != nil {
		return nil, err
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

// do sends one request to /v1/<segments…> and decodes a 2xx answer into out (when not nil).
func (c *Client) do(ctx context.Context, method string, query url.Values, in, out any, segments ...string) error {
	path, err := escapePath(segments)
	if err != nil {
		return err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}

	timeout := requestTimeout
	if query.Has("index") {
		timeout = blockingTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "slotd-client")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}

	resp, err := c.hc.Do(req)
	if err != nil {
		return err // *url.Error names the method and URL
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return statusError(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	se := &StatusError{Code: resp.StatusCode}
	var er ErrorResponse
	if json.Unmarshal(b, &er) == nil && er.Error != "" {
		se.Message = er.Error
		se.LeaderAddress = er.LeaderAddress
	} else if text := strings.TrimSpace(string(b)); text != "" {
		se.Message = text
	} else {
		se.Message = strings.ToLower(http.StatusText(resp.StatusCode))
	}
	return se
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
