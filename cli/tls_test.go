package cli

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/api"
	"github.com/slotd/slotd/internal/testcert"
)

// TestCACert: over https the CLI trusts the CA of -ca-cert, else of SLOTD_CACERT; the flag wins
// over the variable; with neither, or the wrong CA, the command fails on the agent's certificate.
func TestCACert(t *testing.T) {
	agent, other := testcert.Write(t), testcert.Write(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/sites":
			writeJSON(w, 200, []api.Site{{Name: "web"}})
		case "/v1/groups":
			writeJSON(w, 200, []api.Group{})
		default:
			http.NotFound(w, r)
		}
	}))
	cert, err := tls.LoadX509KeyPair(agent.CertFile, agent.KeyFile)
	require.NoError(t, err)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some cases test
	srv.StartTLS()
	t.Cleanup(srv.Close)

	cases := []struct {
		name    string
		args    []string
		env     string // SLOTD_CACERT
		wantErr string
	}{
		{name: "-ca-cert", args: []string{"-ca-cert", agent.CertFile}},
		{name: "SLOTD_CACERT", env: agent.CertFile},
		{name: "-ca-cert wins over SLOTD_CACERT", args: []string{"-ca-cert", agent.CertFile}, env: other.CertFile},
		{name: "no CA", wantErr: "certificate signed by unknown authority"},
		{name: "another CA", env: other.CertFile, wantErr: "certificate signed by unknown authority"},
		{name: "-ca-cert not a certificate", args: []string{"-ca-cert", agent.KeyFile}, wantErr: "no PEM certificate found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, stdout, stderr := testEnv(srv.URL, map[string]string{api.EnvCACert: tc.env})
			code := e.run(append([]string{"status"}, tc.args...))
			if tc.wantErr != "" {
				assert.Equal(t, 1, code)
				assert.Contains(t, stderr.String(), tc.wantErr)
				return
			}
			assert.Equal(t, 0, code, stderr.String())
			assert.Contains(t, stdout.String(), "web")
		})
	}
}
