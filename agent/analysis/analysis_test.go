package analysis

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/config"
)

func ptr(v float64) *float64 { return &v }

func TestJudge(t *testing.T) {
	maxOnly := &config.Analysis{Name: "errors", Max: ptr(0.01)}
	minOnly := &config.Analysis{Name: "rps", Min: ptr(5)}
	both := &config.Analysis{Name: "latency", Min: ptr(0.001), Max: ptr(0.3)}
	cases := []struct {
		name    string
		a       *config.Analysis
		value   *float64
		reason  string
		verdict string
		message string
	}{
		{name: "under max", a: maxOnly, value: ptr(0.002), verdict: api.VerdictPass, message: "0.002 ≤ max 0.01"},
		{name: "at max", a: maxOnly, value: ptr(0.01), verdict: api.VerdictPass, message: "0.01 ≤ max 0.01"},
		{name: "over max", a: maxOnly, value: ptr(0.052), verdict: api.VerdictFail, message: "0.052 > max 0.01"},
		{name: "over max by a hair", a: maxOnly, value: ptr(0.0100001), verdict: api.VerdictFail, message: "0.0100001 > max 0.01"},
		{name: "long value rounded", a: maxOnly, value: ptr(0.04918032786885246), verdict: api.VerdictFail, message: "0.04918 > max 0.01"},
		{name: "over min", a: minOnly, value: ptr(12), verdict: api.VerdictPass, message: "12 ≥ min 5"},
		{name: "under min", a: minOnly, value: ptr(0.5), verdict: api.VerdictFail, message: "0.5 < min 5"},
		{name: "zero under min", a: minOnly, value: ptr(0), verdict: api.VerdictFail, message: "0 < min 5"},
		{name: "between", a: both, value: ptr(0.12), verdict: api.VerdictPass, message: "min 0.001 ≤ 0.12 ≤ max 0.3"},
		{name: "above both", a: both, value: ptr(0.45), verdict: api.VerdictFail, message: "0.45 > max 0.3"},
		{name: "below both", a: both, value: ptr(0), verdict: api.VerdictFail, message: "0 < min 0.001"},
		{name: "nothing measured", a: maxOnly, verdict: api.VerdictInconclusive, message: "the query returned no data"},
		{name: "nothing measured, with the reason", a: maxOnly, reason: "prometheus unreachable: connection refused", verdict: api.VerdictInconclusive, message: "prometheus unreachable: connection refused"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			verdict, message := Judge(tc.a, tc.value, tc.reason)
			assert.Equal(t, tc.verdict, verdict)
			assert.Equal(t, tc.message, message)
		})
	}
}

func TestRender(t *testing.T) {
	a := &config.Analysis{Name: "compare", Query: `rate(x{lane="{{.Lane}}",v="{{.Version}}"}[1m]) / rate(x{lane="{{.OtherLane}}",v="{{.OtherVersion}}"}[1m])`}
	q, err := Render(a, Vars{Lane: "web-b", Version: "4", OtherLane: "web-a", OtherVersion: "3"})
	require.NoError(t, err)
	assert.Equal(t, `rate(x{lane="web-b",v="4"}[1m]) / rate(x{lane="web-a",v="3"}[1m])`, q)

	_, err = Render(&config.Analysis{Name: "bad", Query: "{{.Nope}}"}, Vars{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `render the query of analysis "bad": `)
}

func TestFailedError(t *testing.T) {
	f := &Failed{Analysis: "errors", Measurements: []api.Measurement{
		{Value: ptr(0.052), Message: "0.052 > max 0.01"},
		{Value: ptr(0.049), Message: "0.049 > max 0.01"},
	}}
	assert.Equal(t, `analysis "errors" failed 2 times in a row: 0.052 > max 0.01, 0.049 > max 0.01`, f.Error())
	assert.Equal(t, []*float64{ptr(0.052), ptr(0.049)}, f.Values())
	one := &Failed{Analysis: "errors", Measurements: f.Measurements[:1]}
	assert.Equal(t, `analysis "errors" failed: 0.052 > max 0.01`, one.Error())
}
