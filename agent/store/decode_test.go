package store

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeScale(t *testing.T) {
	counts, err := DecodeScale([]byte(`{"app": 3, "worker": 0}`))
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"app": 3, "worker": 0}, counts)
	for doc, want := range map[string]string{
		`{"app": "3"}`:    "not a JSON object of task group counts",
		`{"app": 1.5}`:    "not a JSON object of task group counts",
		`{"app": -1}`:     "outside 0 to 10000",
		`{"": 1}`:         "name is empty",
		`app=3`:           "not a JSON object",
		`{"app": 100000}`: "outside 0 to 10000",
	} {
		_, err := DecodeScale([]byte(doc))
		assert.ErrorContains(t, err, want, doc)
	}
}
