package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Bounds and rates of the stack's Prometheus.
const (
	// PromScrapeInterval is how often Prometheus scrapes Fabio and every app instance (and
	// evaluates); a query sees a change within about two of them.
	PromScrapeInterval = time.Second
	// promReadyTimeout bounds the wait for a Prometheus to answer /-/ready and to have
	// scraped Fabio once.
	promReadyTimeout = time.Minute
	// promQueryTimeout bounds one query when the caller's context has no earlier deadline.
	promQueryTimeout = 10 * time.Second
)

// PromJobApps and PromJobFabio are the scrape jobs (the job label) of the app instances, found
// in Consul, and of Fabio.
const (
	PromJobApps  = "apps"
	PromJobFabio = "fabio"
)

// Prometheus is a Prometheus server on 127.0.0.1 that scrapes the stack's Fabio (when it runs)
// and, found through Consul, every instance of a service that slotd registered (service meta
// slotd_lane), each series labelled lane, site, service and, when the instance serves a
// slot, slot.
type Prometheus struct {
	URL  string // "http://127.0.0.1:PORT"
	Dir  string // its config, data and log
	proc *process
	// launch starts the server (again) with its config, data and address, and waits until it
	// is ready.
	launch func(ctx context.Context) (*process, error)
}

// sharedPrometheus is the stack's own Prometheus, started by the first Prometheus call.
type sharedPrometheus struct {
	mu   sync.Mutex
	prom *Prometheus
	err  error
}

// Prometheus returns the base URL of the stack's Prometheus, starting it on first use; it
// runs until the stack stops. A test that stops or breaks a Prometheus starts one of its
// own with StartPrometheus.
func (s *Stack) Prometheus(t testing.TB) string {
	t.Helper()
	s.prom.mu.Lock()
	defer s.prom.mu.Unlock()
	if s.prom.prom == nil && s.prom.err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), promReadyTimeout)
		defer cancel()
		s.prom.prom, s.prom.err = s.startPrometheus(ctx, "prometheus", s.start)
	}
	if s.prom.err != nil {
		t.Fatalf("e2e: the stack's Prometheus did not start: %v", s.prom.err)
	}
	return s.prom.prom.URL
}

// StartPrometheus starts a Prometheus of the test's own, scraping as the stack's does, and
// stops it and removes its folder when the test ends (Stop stops it earlier).
func (s *Stack) StartPrometheus(t testing.TB) *Prometheus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), promReadyTimeout)
	defer cancel()
	name := "prometheus-" + Suffix()
	p, err := s.startPrometheus(ctx, name, func(name, bin string, args ...string) (*process, error) {
		return startProcess(name, bin, args, s.Dir, s.opts.logOutput)
	})
	if err != nil {
		t.Fatalf("e2e: start a Prometheus: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("e2e: stop %s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("e2e: %s kept its log at %s", name, p.proc.logPath)
			return
		}
		_ = os.RemoveAll(p.Dir)
		_ = os.Remove(p.proc.logPath)
	})
	return p
}

// Stop stops the Prometheus (SIGTERM, then SIGKILL after the agents' grace). Queries then
// fail to connect. It is safe to call more than once.
func (p *Prometheus) Stop() error {
	return p.proc.stop(agentGrace)
}

// Restart starts a stopped Prometheus again on the same address, with its config and the data
// it had kept, and waits until it is ready: what an analysis sees of a Prometheus that comes
// back. The port may have been taken meanwhile; the error then says so.
func (p *Prometheus) Restart(ctx context.Context) error {
	if ok, _ := p.proc.exited(); !ok {
		return fmt.Errorf("restart %s: it is still running", p.proc.name)
	}
	proc, err := p.launch(ctx)
	if err != nil {
		return fmt.Errorf("restart %s on %s: %w", p.proc.name, p.URL, err)
	}
	p.proc = proc
	return nil
}

// startPrometheus writes the config of a Prometheus named name (its folder and log are
// <Dir>/<name>), starts it with start and waits until it is ready and has scraped Fabio.
func (s *Stack) startPrometheus(ctx context.Context, name string, start func(name, bin string, args ...string) (*process, error)) (*Prometheus, error) {
	bin, err := Binary("prometheus")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.Dir, name)
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	cfg, err := json.MarshalIndent(s.promConfig(), "", "  ") // JSON is YAML
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(file, cfg, 0o644); err != nil {
		return nil, fmt.Errorf("write prometheus config: %w", err)
	}
	pp := &portPicker{}
	port, err := pp.free(false)
	pp.release()
	if err != nil {
		return nil, err
	}
	p := &Prometheus{URL: "http://" + addr(port), Dir: dir}
	p.launch = func(ctx context.Context) (*process, error) {
		proc, err := start(name, bin,
			"--config.file="+file,
			"--storage.tsdb.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr(port),
			"--log.level=warn",
		)
		if err != nil {
			return nil, err
		}
		if err := s.promReady(ctx, proc, p.URL); err != nil {
			_ = proc.stop(agentGrace)
			return nil, err
		}
		return proc, nil
	}
	if p.proc, err = p.launch(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// promReady waits until the Prometheus at url answers /-/ready and, when the stack runs Fabio,
// has scraped it.
func (s *Stack) promReady(ctx context.Context, proc *process, url string) error {
	what := "prometheus to answer /-/ready"
	if s.FabioMetricsAddr != "" {
		what += " and to have scraped fabio"
	}
	return s.ready(ctx, proc, promReadyTimeout, what, func() (bool, string) {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(qctx, http.MethodGet, url+"/-/ready", nil)
		resp, err := promClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, "GET /-/ready: " + resp.Status
		}
		if s.FabioMetricsAddr == "" {
			return true, ""
		}
		up, err := PromQuery(qctx, url, `up{job="`+PromJobFabio+`"}`)
		if err != nil {
			return false, err.Error()
		}
		return len(up) == 1 && up[0].Value == 1, "up{job=fabio}: " + up.String()
	})
}

// promConfig is the Prometheus configuration: every PromScrapeInterval, Fabio's metrics and
// the instances slotd registered in the stack's Consul.
func (s *Stack) promConfig() map[string]any {
	interval := PromScrapeInterval.String()
	meta := "__meta_consul_service_metadata_"
	apps := map[string]any{
		"job_name": PromJobApps,
		"consul_sd_configs": []any{map[string]any{
			"server": s.ConsulAddr,
			// Changes come by blocking query; this paces the retries after an error.
			"refresh_interval": interval,
		}},
		"relabel_configs": []any{
			// Only what slotd registered: a lane's instances carry its meta (agent/lanes).
			map[string]any{"source_labels": []string{meta + "slotd_lane"}, "regex": ".+", "action": "keep"},
			map[string]any{"source_labels": []string{meta + "slotd_lane"}, "target_label": "lane"},
			map[string]any{"source_labels": []string{meta + "slotd_site"}, "target_label": "site"},
			map[string]any{"source_labels": []string{"__meta_consul_service"}, "target_label": "service"},
			// A lane's tags are the jobspec's (the test app's "app") followed by the tags of
			// the slot it serves, the slot's name first (an RFC 1123 label); a lane that
			// serves no slot has only "app", or "app" and its preview tags, and no slot label
			// unless a preview tag is a bare name too.
			map[string]any{
				"source_labels": []string{"__meta_consul_tags"},
				"regex":         ",app,([a-z0-9][a-z0-9-]*),.*",
				"target_label":  "slot",
			},
		},
	}
	scrapes := []any{apps}
	if s.FabioMetricsAddr != "" {
		scrapes = append(scrapes, map[string]any{
			"job_name":       PromJobFabio,
			"static_configs": []any{map[string]any{"targets": []string{s.FabioMetricsAddr}}},
		})
	}
	return map[string]any{
		"global": map[string]any{
			"scrape_interval":     interval,
			"scrape_timeout":      interval,
			"evaluation_interval": interval,
		},
		"scrape_configs": scrapes,
	}
}

// promClient keeps no idle connection, so none outlives the Prometheus it talked to.
var promClient = &http.Client{
	Timeout:   promQueryTimeout,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// PromSample is one series of an instant query's answer.
type PromSample struct {
	Labels map[string]string
	Value  float64
}

// PromVector is an instant query's answer; a scalar answer is one sample without labels.
type PromVector []PromSample

// String shows the samples as `{a="x", b="y"} 0.05`, one after the other, sorted.
func (v PromVector) String() string {
	if len(v) == 0 {
		return "no samples"
	}
	out := make([]string, 0, len(v))
	for _, smp := range v {
		keys := make([]string, 0, len(smp.Labels))
		for k := range smp.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		pairs := make([]string, 0, len(keys))
		for _, k := range keys {
			pairs = append(pairs, fmt.Sprintf("%s=%q", k, smp.Labels[k]))
		}
		out = append(out, "{"+strings.Join(pairs, ", ")+"} "+strconv.FormatFloat(smp.Value, 'g', 6, 64))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// PromQuery runs an instant query (now) against the Prometheus at baseURL.
func PromQuery(ctx context.Context, baseURL, query string) (PromVector, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		baseURL+"/api/v1/query?"+url.Values{"query": {query}}.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := promClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", query, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("query %q: read the answer: %w", query, err)
	}
	return decodePromAnswer(query, resp.StatusCode, body)
}

// decodePromAnswer reads the body of /api/v1/query: a vector, or a scalar as one sample.
func decodePromAnswer(query string, status int, body []byte) (PromVector, error) {
	var ans struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("query %q: HTTP %d, not a Prometheus answer: %.200s", query, status, body)
	}
	if ans.Status != "success" {
		return nil, fmt.Errorf("query %q: HTTP %d, %s: %s", query, status, ans.ErrorType, ans.Error)
	}
	switch ans.Data.ResultType {
	case "vector":
		var series []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(ans.Data.Result, &series); err != nil {
			return nil, fmt.Errorf("query %q: decode the vector: %w", query, err)
		}
		out := make(PromVector, 0, len(series))
		for _, se := range series {
			v, err := promValue(se.Value)
			if err != nil {
				return nil, fmt.Errorf("query %q: %w", query, err)
			}
			out = append(out, PromSample{Labels: se.Metric, Value: v})
		}
		return out, nil
	case "scalar":
		var pair [2]any
		if err := json.Unmarshal(ans.Data.Result, &pair); err != nil {
			return nil, fmt.Errorf("query %q: decode the scalar: %w", query, err)
		}
		v, err := promValue(pair)
		if err != nil {
			return nil, fmt.Errorf("query %q: %w", query, err)
		}
		return PromVector{{Labels: map[string]string{}, Value: v}}, nil
	default:
		return nil, fmt.Errorf("query %q: a %s answer; want an instant vector or a scalar", query, ans.Data.ResultType)
	}
}

// promValue reads a [time, "value"] pair; the value is a string ("NaN", "+Inf" included).
func promValue(pair [2]any) (float64, error) {
	str, ok := pair[1].(string)
	if !ok {
		return 0, errors.New("a sample value that is not a string")
	}
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return 0, fmt.Errorf("sample value %q: %w", str, err)
	}
	return v, nil
}
