package agent

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestAdvertisement: the leader key names the API in the scheme it serves; leaderAddress and so
// every standby's 503 take the URL before the space.
func TestAdvertisement(t *testing.T) {
	cases := []struct {
		name, addr string
		tls        bool
		want       string
	}{
		{"plain http", "127.0.0.1:4680", false, "http://127.0.0.1:4680 (node-1)"},
		{"tls", "10.0.0.7:25123", true, "https://10.0.0.7:25123 (node-1)"},
		{"tls on IPv6", "[::1]:4680", true, "https://[::1]:4680 (node-1)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := advertisement(tc.addr, tc.tls, "node-1")
			assert.Equal(t, tc.want, got)
			url, _, _ := strings.Cut(got, " ")
			assert.True(t, strings.HasSuffix(url, "://"+tc.addr), url)
		})
	}
}
