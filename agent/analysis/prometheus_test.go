package analysis

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestQueryShapes(t *testing.T) {
	cases := []struct {
		name   string
		reply  reply
		value  float64 // when reason is empty
		reason string  // part of the reason the answer is inconclusive
	}{
		{name: "vector of one sample", reply: vector("0.002"), value: 0.002},
		{name: "scalar", reply: scalar("42"), value: 42},
		{name: "negative scalar", reply: scalar("-1.5e-3"), value: -0.0015},
		{name: "empty vector", reply: noDataReply, reason: "the query returned no data"},
		{name: "several series", reply: vector("1", "2", "3"), reason: "the query returned 3 series, not one; aggregate them, such as with sum(…) or max(…)"},
		{name: "range vector", reply: matrixReply, reason: "the query returned a range vector"},
		{name: "string", reply: stringReply, reason: "the query returned a string, not a number"},
		{name: "NaN", reply: vector("NaN"), reason: "the query returned NaN (such as 0/0: no requests in the range)"},
		{name: "+Inf", reply: scalar("+Inf"), reason: "the query returned +Inf"},
		{name: "-Inf", reply: vector("-Inf"), reason: "the query returned -Inf"},
		{name: "native histogram", reply: histogram, reason: "returned a histogram, not a number"},
		{name: "not a number", reply: vector("many"), reason: `prometheus answered "many", not a number`},
		{
			name:   "bad query",
			reply:  reply{http.StatusBadRequest, errorBody("bad_data", `invalid parameter "query": 1:5: parse error: unexpected end of input`)},
			reason: `prometheus answered 400 Bad Request: bad_data: invalid parameter "query": 1:5: parse error`,
		},
		{
			name:   "execution error",
			reply:  reply{http.StatusUnprocessableEntity, errorBody("execution", "query processing would load too many samples into memory")},
			reason: "prometheus answered 422 Unprocessable Entity: execution: query processing would load too many samples",
		},
		{name: "timeout in prometheus", reply: reply{http.StatusServiceUnavailable, errorBody("timeout", "query timed out in expression evaluation")}, reason: "503 Service Unavailable: timeout"},
		{name: "a proxy's error page", reply: reply{http.StatusBadGateway, "<html>bad gateway</html>"}, reason: "prometheus answered 502 Bad Gateway, not a query result"},
		{name: "JSON that is not an answer", reply: reply{http.StatusOK, `{"hello":"world"}`}, reason: "prometheus answered 200 OK, not a query result"},
		{name: "answer too large", reply: reply{http.StatusOK, `{"status":"success","data":{"resultType":"string","result":[0,"` + strings.Repeat("x", maxAnswer) + `"]}}`}, reason: "over 1048576 bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeProm(t)
			f.on("q", tc.reply)
			v, reason := NewPrometheus(nil).Query(context.Background(), f.URL, "q", time.Now())
			if tc.reason != "" {
				assert.Nil(t, v)
				assert.Contains(t, reason, tc.reason)
				return
			}
			assert.Empty(t, reason)
			require.NotNil(t, v)
			assert.Equal(t, tc.value, *v)
		})
	}
}

// TestQueryRequest: the query and its time go as Prometheus reads them, under the path of the
// server's URL.
func TestQueryRequest(t *testing.T) {
	f := newFakeProm(t)
	query := `sum(rate(app_requests_total{lane="web-b",code=~"5.."}[1m])) / sum(rate(app_requests_total{lane="web-b"}[1m]))`
	f.on(query, scalar("0"))
	at := time.Unix(1764800000, 250_000_000)
	v, reason := NewPrometheus(nil).Query(context.Background(), f.URL+"/prometheus/", query, at)
	require.Empty(t, reason)
	require.NotNil(t, v)
	require.Len(t, f.asked, 1)
	assert.Equal(t, "POST /prometheus/api/v1/query", f.methods[0])
	assert.Equal(t, query, f.asked[0].Get("query"))
	assert.Equal(t, "1764800000.250", f.asked[0].Get("time"))
}

func TestQueryUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	v, reason := NewPrometheus(nil).Query(context.Background(), "http://"+addr, "up", time.Now())
	assert.Nil(t, v)
	assert.Contains(t, reason, "prometheus unreachable: ")
	assert.Contains(t, reason, "connection refused")
}

func TestQueryTimeout(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	v, reason := NewPrometheus(nil).Query(ctx, hang.URL, "up", time.Now())
	assert.Nil(t, v)
	assert.Equal(t, "prometheus at "+hang.URL+" did not answer in time", reason)
}
