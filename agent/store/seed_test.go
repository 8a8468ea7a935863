package store

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSeedOnce: a declared setting is seeded into its slot once. What the slot's documents
// become, and what its seed record lists, for each state KV can be in.
func TestSeedOnce(t *testing.T) {
	type kinds = map[string][]string
	cases := []struct {
		name     string
		settings map[string]string // the swappable document in KV (nil: none)
		record   kinds             // the seed record in KV (nil: none)
		declared map[string]string // declared swappable settings
		want     map[string]string // the document after seeding; nil: not written
		record2  kinds             // the record after seeding; nil: not written
	}{
		{
			name:     "a new slot is seeded and recorded",
			declared: map[string]string{"A": "1", "B": "2"},
			want:     map[string]string{"A": "1", "B": "2"},
			record2:  kinds{"settings": {"A", "B"}, "sticky": {}},
		},
		{
			name:     "an unset declared key stays unset",
			settings: map[string]string{"B": "2"},
			record:   kinds{"settings": {"A", "B"}, "sticky": {}},
			declared: map[string]string{"A": "1", "B": "2"},
		},
		{
			name:     "a key newly declared is seeded, an unset one is not",
			settings: map[string]string{"B": "2"},
			record:   kinds{"settings": {"A", "B"}, "sticky": {}},
			declared: map[string]string{"A": "1", "B": "2", "C": "3"},
			want:     map[string]string{"B": "2", "C": "3"},
			record2:  kinds{"settings": {"A", "B", "C"}, "sticky": {}},
		},
		{
			name:     "a value set in KV is kept",
			settings: map[string]string{"A": "edited"},
			record:   kinds{"settings": {"A"}, "sticky": {}},
			declared: map[string]string{"A": "1"},
		},
		{
			name:     "a slot seeded before records is seeded where absent once, and recorded",
			settings: map[string]string{"A": "edited"},
			declared: map[string]string{"A": "1", "B": "2"},
			want:     map[string]string{"A": "edited", "B": "2"},
			record2:  kinds{"settings": {"A", "B"}, "sticky": {}},
		},
		{
			name:     "a key no longer declared leaves the record; the document keeps it",
			settings: map[string]string{"A": "1", "B": "2"},
			record:   kinds{"settings": {"A", "B"}, "sticky": {}},
			declared: map[string]string{"A": "1"},
			record2:  kinds{"settings": {"A"}, "sticky": {}},
		},
		{
			name:     "a key declared again after it was left out is seeded",
			settings: map[string]string{},
			record:   kinds{"settings": {}, "sticky": {}},
			declared: map[string]string{"A": "1"},
			want:     map[string]string{"A": "1"},
			record2:  kinds{"settings": {"A"}, "sticky": {}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Store{Prefix: "slotd"}
			ss := NewSlotState()
			if tc.settings != nil {
				ss.Settings = SettingsDoc{Values: tc.settings, Index: 7}
			}
			ss.Sticky = SettingsDoc{Values: map[string]string{}, Index: 8}
			if tc.record != nil {
				ss.Seeded = SeedRecord{Keys: tc.record, Index: 9}
			}
			ops, err := s.SeedOps("web", "production", ss, SlotSettings{Settings: tc.declared})
			require.NoError(t, err)
			written := map[string]string{}
			for _, op := range ops {
				written[strings.TrimPrefix(op.Key, "slotd/sites/web/slots/production/")] = string(op.Value)
			}
			if tc.want == nil {
				assert.NotContains(t, written, KindSwappable)
			} else {
				require.Contains(t, written, KindSwappable)
				var got map[string]string
				require.NoError(t, json.Unmarshal([]byte(written[KindSwappable]), &got))
				assert.Equal(t, tc.want, got)
			}
			if tc.record2 == nil {
				assert.NotContains(t, written, KeySeeded)
			} else {
				require.Contains(t, written, KeySeeded, "the record is written in the same transaction")
				got, err := decodeSeeded([]byte(written[KeySeeded]))
				require.NoError(t, err)
				assert.Equal(t, tc.record2, got)
			}
			assert.NotContains(t, written, KindSticky, "an unchanged document is not written")
		})
	}
}

// TestSeedRefusesTooLarge: seeding that would make a document larger than a swap can exchange
// writes nothing and says which slot and limit.
func TestSeedRefusesTooLarge(t *testing.T) {
	ss := NewSlotState()
	ss.Sticky.Values = map[string]string{"A": strings.Repeat("a", 60000), "B": strings.Repeat("b", 60000)}
	ops, err := (&Store{Prefix: "slotd"}).SeedOps("web", "production", ss, SlotSettings{Sticky: map[string]string{"C": strings.Repeat("c", 60000)}})
	assert.Nil(t, ops)
	assert.ErrorContains(t, err, "seed sticky of slot production: the sticky document of 3 settings is")
	assert.ErrorContains(t, err, "over the limit of 131072 bytes")
}
