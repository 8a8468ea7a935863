package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestSettingLimits: a value that an environment cannot carry, or a document that a swap's
// exchange could not write in one Consul transaction, is refused with what to fix; values at
// the limits pass.
func TestSettingLimits(t *testing.T) {
	// many values whose document is just over or under the document limit.
	many := func(n, size int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("K%02d", i)] = strings.Repeat("v", size)
		}
		return m
	}
	cases := []struct {
		name   string
		values map[string]string
		want   string // part of the error; "" for none
	}{
		{name: "empty", values: map[string]string{}},
		{name: "a value at the limit", values: map[string]string{"BIG": strings.Repeat("x", MaxSettingValue)}},
		{name: "text with every kind of character", values: map[string]string{"A": "${NOMAD_ALLOC_ID} %{x} \"q\" \\ \n\t é 日本"}},
		{name: "a value over the limit", values: map[string]string{"BIG": strings.Repeat("x", MaxSettingValue+1)},
			want: `the value of setting "BIG" is 65537 bytes, over the limit of 65536 bytes (64 KiB)`},
		{name: "a NUL byte", values: map[string]string{"A": "ok", "B": "x\x00y"}, want: `the value of setting "B" holds a NUL byte`},
		{name: "not UTF-8", values: map[string]string{"A": "\xff"}, want: `the value of setting "A" is not valid UTF-8`},
		{name: "a value with ${…} that fits a line of Nomad's env file", values: map[string]string{"K": "${A}" + strings.Repeat("x", 10917)}},
		{name: "a value with ${…} over a line of Nomad's env file", values: map[string]string{"K": "${A}" + strings.Repeat("x", 10918)},
			want: `the value of setting "K" holds ${…}, which Nomad would replace in a task's env, so it reaches the task through a template's env file, whose lines Nomad reads up to 64 KiB; keep such a value under 10922 bytes`},
		{name: "a value as long without ${…}", values: map[string]string{"K": "$A" + strings.Repeat("x", 20000)}},
		{name: "a document under the limit", values: many(2, MaxSettingValue-100)},
		{name: "a document over the limit", values: many(3, 50000),
			want: "the sticky document of 3 settings is 150041 bytes, over the limit of 131072 bytes (128 KiB) for one slot's sticky"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSettings("sticky", tc.values)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tc.want)
			for _, v := range tc.values {
				if len(v) < 100 {
					assert.NotContains(t, err.Error(), v, "a value is never part of a message")
				}
			}
		})
	}
}
