package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/slotd/slotd/api"
)

// TestHideVars: the operation a deploy journals holds the sensitive variables' names with
// api.Hidden, and every other variable as given.
func TestHideVars(t *testing.T) {
	given := map[string]string{"db_password": "pw", "image": "web:2"}
	got := HideVars(given, []string{"db_password", "api_key"})
	assert.Equal(t, map[string]string{"db_password": api.Hidden, "image": "web:2"}, got)
	assert.Equal(t, "pw", given["db_password"], "the deploy itself still gets the value")
	assert.Nil(t, HideVars(nil, []string{"db_password"}))
}
