package analysis

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// fakeProm is a Prometheus HTTP API that answers /api/v1/query from a script per query: each
// query gets its answers in order, the last one again once they run out.
type fakeProm struct {
	*httptest.Server
	mu      sync.Mutex
	script  map[string][]reply
	asked   []url.Values
	methods []string
}

type reply struct {
	status int
	body   string
}

func newFakeProm(t testing.TB) *fakeProm {
	t.Helper()
	f := &fakeProm{script: map[string][]reply{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

// on scripts the answers to query.
func (f *fakeProm) on(query string, replies ...reply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script[query] = replies
}

func (f *fakeProm) serve(w http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/api/v1/query") {
		http.NotFound(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.asked = append(f.asked, r.Form)
	f.methods = append(f.methods, r.Method+" "+r.URL.Path)
	q := r.Form.Get("query")
	replies := f.script[q]
	var rep reply
	switch len(replies) {
	case 0:
		rep = reply{http.StatusBadRequest, errorBody("bad_data", "no script for query "+q)}
	case 1:
		rep = replies[0]
	default:
		rep, f.script[q] = replies[0], replies[1:]
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	fmt.Fprint(w, rep.body)
}

// The answers' JSON is Prometheus' own (docs: querying/api): a vector of samples with their
// labels and [unix time, "value"], a scalar [unix time, "value"], a matrix of series with
// "values", an error with errorType and error.

func vector(values ...string) reply {
	samples := make([]string, len(values))
	for i, v := range values {
		samples[i] = fmt.Sprintf(`{"metric":{"lane":"web-b","instance":"10.0.0.%d:8080"},"value":[1764800000.123,%q]}`, i+1, v)
	}
	return reply{http.StatusOK, `{"status":"success","data":{"resultType":"vector","result":[` + strings.Join(samples, ",") + `]}}`}
}

func scalar(v string) reply {
	return reply{http.StatusOK, fmt.Sprintf(`{"status":"success","data":{"resultType":"scalar","result":[1764800000.123,%q]}}`, v)}
}

func pass(v string) reply { return vector(v) }

var (
	noDataReply = vector()
	matrixReply = reply{http.StatusOK, `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"lane":"web-b"},"values":[[1764799990,"1"],[1764800000,"2"]]}]}}`}
	stringReply = reply{http.StatusOK, `{"status":"success","data":{"resultType":"string","result":[1764800000.123,"hello"]}}`}
	histogram   = reply{http.StatusOK, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1764800000.123,{"count":"3","sum":"1.5","buckets":[[0,"0","1","3"]]}]}]}}`}
)

func errorBody(errorType, msg string) string {
	return fmt.Sprintf(`{"status":"error","errorType":%q,"error":%q}`, errorType, msg)
}
