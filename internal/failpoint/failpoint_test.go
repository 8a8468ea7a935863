package failpoint

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAndInject(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		point   string
		wantErr string // from Inject; "" for none
		parse   string // error from Parse
	}{
		{name: "inert", spec: "", point: "apply.start"},
		{name: "error", spec: "apply.start=error", point: "apply.start", wantErr: "failpoint apply.start"},
		{name: "other point inert", spec: "apply.start=error", point: "warm.start"},
		{name: "two points", spec: "a=sleep(1ms); switch.after-make=error", point: "switch.after-make", wantErr: "failpoint switch.after-make"},
		{name: "sleep", spec: "warm.end=sleep(5ms)", point: "warm.end"},
		{name: "hang ends with the context", spec: "settle.start=hang", point: "settle.start", wantErr: "deadline exceeded"},
		{name: "bad action", spec: "x=explode", parse: `unknown action "explode"`},
		{name: "no action", spec: "x", parse: "want name=action"},
		{name: "bad sleep", spec: "x=sleep(soon)", parse: "invalid duration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { points = map[string]string{} })
			err := Parse(tc.spec)
			if tc.parse != "" {
				require.ErrorContains(t, err, tc.parse)
				return
			}
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			err = Inject(ctx, tc.point)
			if tc.wantErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.wantErr)
			}
		})
	}
}

func TestPanicPoint(t *testing.T) {
	t.Cleanup(func() { points = map[string]string{} })
	require.NoError(t, Enable("switch.before-exchange", "panic"))
	assert.PanicsWithValue(t, "failpoint switch.before-exchange", func() { _ = Inject(context.Background(), "switch.before-exchange") })
	Disable("switch.before-exchange")
	assert.NoError(t, Inject(context.Background(), "switch.before-exchange"))
}
