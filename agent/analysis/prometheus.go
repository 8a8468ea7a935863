package analysis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxQueryTimeout bounds one query; a query also ends after its analysis' interval, so that
// evaluations never pile up.
const MaxQueryTimeout = 5 * time.Second

// maxAnswer bounds what is read of an answer: one number is a few hundred bytes, and a query
// that returns thousands of series is wrong however it ends.
const maxAnswer = 1 << 20

// Prometheus asks a Prometheus server instant queries over its HTTP API (/api/v1/query).
type Prometheus struct {
	client *http.Client
}

// NewPrometheus asks through client; nil is a client of its own.
func NewPrometheus(client *http.Client) *Prometheus {
	if client == nil {
		client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	return &Prometheus{client: client}
}

// Query evaluates query at the server base (such as http://127.0.0.1:9090) at time at. It
// returns the value when the answer is one number (a scalar, or a vector of one sample), or
// no value and the reason why the answer is inconclusive: Prometheus unreachable or answering
// an error, no series, several series, a range vector, NaN or an infinity.
func (p *Prometheus) Query(ctx context.Context, base, query string, at time.Time) (*float64, string) {
	form := url.Values{
		"query": {query},
		"time":  {strconv.FormatFloat(float64(at.UnixNano())/1e9, 'f', 3, 64)},
	}
	endpoint := strings.TrimSuffix(base, "/") + "/api/v1/query"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Sprintf("cannot ask prometheus: %v", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Sprintf("prometheus at %s did not answer in time", base)
		}
		return nil, fmt.Sprintf("prometheus unreachable: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	switch {
	case err != nil:
		return nil, fmt.Sprintf("reading prometheus' answer: %v", err)
	case len(body) > maxAnswer:
		return nil, fmt.Sprintf("prometheus' answer is over %d bytes; aggregate the query into one series", maxAnswer)
	}
	var ans answer
	if err := json.Unmarshal(body, &ans); err != nil || ans.Status == "" {
		return nil, fmt.Sprintf("prometheus answered %s, not a query result", resp.Status)
	}
	if ans.Status != "success" {
		return nil, fmt.Sprintf("prometheus answered %s: %s: %s", resp.Status, ans.ErrorType, ans.Error)
	}
	return ans.Data.value()
}

// answer is the envelope of every Prometheus API answer.
type answer struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      result `json:"data"`
}

type result struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

// sample is one series of a vector: its labels and [unix time, "value"]; a native histogram
// has "histogram" instead of "value".
type sample struct {
	Metric    map[string]string `json:"metric"`
	Value     []json.RawMessage `json:"value"`
	Histogram json.RawMessage   `json:"histogram"`
}

func (r result) value() (*float64, string) {
	switch r.ResultType {
	case "scalar":
		var pair []json.RawMessage
		if err := json.Unmarshal(r.Result, &pair); err != nil {
			return nil, fmt.Sprintf("prometheus answered a scalar that does not read: %v", err)
		}
		return sampleValue(pair)
	case "vector":
		var samples []sample
		if err := json.Unmarshal(r.Result, &samples); err != nil {
			return nil, fmt.Sprintf("prometheus answered a vector that does not read: %v", err)
		}
		switch len(samples) {
		case 0:
			return nil, noData
		case 1:
			if samples[0].Value == nil {
				return nil, "the query returned a histogram, not a number; take a quantile or a rate of it"
			}
			return sampleValue(samples[0].Value)
		default:
			return nil, fmt.Sprintf("the query returned %d series, not one; aggregate them, such as with sum(…) or max(…)", len(samples))
		}
	case "matrix":
		return nil, "the query returned a range vector; make it an instant one, such as with rate(…[1m])"
	default:
		return nil, fmt.Sprintf("the query returned a %s, not a number", r.ResultType)
	}
}

// sampleValue reads a [unix time, "value"] pair; NaN (such as 0/0, a rate of nothing) and the
// infinities measure nothing a bound can judge.
func sampleValue(pair []json.RawMessage) (*float64, string) {
	var s string
	if len(pair) != 2 || json.Unmarshal(pair[1], &s) != nil {
		return nil, "prometheus answered a sample that does not read"
	}
	v, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil:
		return nil, fmt.Sprintf("prometheus answered %q, not a number", s)
	case math.IsNaN(v):
		return nil, "the query returned NaN (such as 0/0: no requests in the range)"
	case math.IsInf(v, 0):
		return nil, fmt.Sprintf("the query returned %s (such as a division by 0)", s)
	}
	return &v, ""
}
