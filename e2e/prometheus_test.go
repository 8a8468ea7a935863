package e2e

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodePromAnswer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   PromVector
		err    string
	}{
		{
			name: "vector", status: 200,
			body: `{"status":"success","data":{"resultType":"vector","result":[` +
				`{"metric":{"lane":"s1-a"},"value":[1700000000.1,"0.05"]},` +
				`{"metric":{"lane":"s1-b"},"value":[1700000000.1,"0"]}]}}`,
			want: PromVector{{Labels: map[string]string{"lane": "s1-a"}, Value: 0.05}, {Labels: map[string]string{"lane": "s1-b"}, Value: 0}},
		},
		{
			name: "empty vector", status: 200,
			body: `{"status":"success","data":{"resultType":"vector","result":[]}}`,
			want: PromVector{},
		},
		{
			name: "scalar", status: 200,
			body: `{"status":"success","data":{"resultType":"scalar","result":[1700000000,"2"]}}`,
			want: PromVector{{Labels: map[string]string{}, Value: 2}},
		},
		{
			name: "bad query", status: 400,
			body: `{"status":"error","errorType":"bad_data","error":"parse error: unexpected end of input"}`,
			err:  `HTTP 400, bad_data: parse error: unexpected end of input`,
		},
		{
			name: "range vector", status: 200,
			body: `{"status":"success","data":{"resultType":"matrix","result":[]}}`,
			err:  "a matrix answer; want an instant vector or a scalar",
		},
		{
			name: "not prometheus", status: 502, body: `<html>bad gateway</html>`,
			err: "HTTP 502, not a Prometheus answer: <html>bad gateway</html>",
		},
		{
			name: "bad value", status: 200,
			body: `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"lots"]}]}}`,
			err:  `sample value "lots"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodePromAnswer("q", tc.status, []byte(tc.body))
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.Contains(t, err.Error(), `query "q"`, "the error names the query")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestDecodePromAnswerSpecialValues(t *testing.T) {
	got, err := decodePromAnswer("q", 200, []byte(`{"status":"success","data":{"resultType":"vector","result":[`+
		`{"metric":{"a":"1"},"value":[1,"NaN"]},{"metric":{"a":"2"},"value":[1,"+Inf"]}]}}`))
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.True(t, math.IsNaN(got[0].Value))
	assert.True(t, math.IsInf(got[1].Value, 1))
}

func TestPromVectorString(t *testing.T) {
	v := PromVector{
		{Labels: map[string]string{"lane": "b", "code": "500"}, Value: 0.05},
		{Labels: map[string]string{"lane": "a"}, Value: 1},
	}
	assert.Equal(t, `{code="500", lane="b"} 0.05; {lane="a"} 1`, v.String())
	assert.Equal(t, "no samples", PromVector(nil).String())
}
