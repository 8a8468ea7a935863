package agent

import (
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
)

func TestOwnInstance(t *testing.T) {
	const alloc = "0b1c2d3e-aaaa-bbbb-cccc-000000000001"
	entries := []*consulapi.CatalogService{
		{ServiceID: "_nomad-task-5f6a7b8c-aaaa-bbbb-cccc-000000000002-group-slotd-slotd-http", Address: "10.0.0.2", ServicePort: 4680},
		{ServiceID: "_nomad-task-" + alloc + "-group-slotd-slotd-http", Address: "10.0.0.1", ServicePort: 25001},
		{ServiceID: "slotd-by-hand", Address: "10.0.0.3", ServiceAddress: "127.0.0.1", ServicePort: 4680},
	}
	cases := []struct {
		name, alloc, listen, want string
	}{
		{"by allocation under Nomad", alloc, "10.0.0.1:25001", entries[1].ServiceID},
		{"by allocation, whatever the address", alloc, "127.0.0.1:4680", entries[1].ServiceID},
		{"another allocation's instance is never ours", "9d8e7f6a-aaaa-bbbb-cccc-000000000003", "10.0.0.2:4680", ""},
		{"by the service address outside Nomad", "", "127.0.0.1:4680", "slotd-by-hand"},
		{"by the node address when the service has none", "", "10.0.0.2:4680", entries[0].ServiceID},
		{"no instance at a wildcard listen address", "", "0.0.0.0:4680", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := ownInstance(entries, tc.alloc, tc.listen)
			if tc.want == "" {
				assert.Nil(t, got)
				return
			}
			if assert.NotNil(t, got) {
				assert.Equal(t, tc.want, got.ServiceID)
			}
		})
	}
}
