package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/config"
	"github.com/slotd/slotd/internal/testcert"
)

// mtlsServer serves, over TLS that requires a client certificate signed by pki's CA, a Consul KV
// GET of slotd/probe (value "reached") and Nomad's /v1/status/leader. Each request takes pause;
// busy is the most requests it served at once.
type mtlsServer struct {
	URL   string
	pause time.Duration

	mu         sync.Mutex
	now, busy  int
	handshakes int
}

func newMTLSServer(t *testing.T, pki testcert.PKI, pause time.Duration) *mtlsServer {
	t.Helper()
	s := &mtlsServer{pause: pause}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	cert, err := tls.LoadX509KeyPair(pki.Server.CertFile, pki.Server.KeyFile)
	require.NoError(t, err)
	caPEM, err := os.ReadFile(pki.CAFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(caPEM))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		VerifyConnection: func(tls.ConnectionState) error {
			s.mu.Lock()
			s.handshakes++
			s.mu.Unlock()
			return nil
		},
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what some cases test
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

func (s *mtlsServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.now++
	s.busy = max(s.busy, s.now)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.now--
		s.mu.Unlock()
	}()
	time.Sleep(s.pause)
	switch r.URL.Path {
	case "/v1/kv/slotd/probe":
		w.Header().Set("X-Consul-Index", "7")
		_ = json.NewEncoder(w).Encode([]map[string]any{{
			"Key": "slotd/probe", "Value": base64.StdEncoding.EncodeToString([]byte("reached")), "ModifyIndex": 7,
		}})
	case "/v1/status/leader":
		_, _ = w.Write([]byte(`"127.0.0.1:4647"`))
	default:
		http.NotFound(w, r)
	}
}

func (s *mtlsServer) stats() (busy, handshakes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.busy, s.handshakes
}

// tlsClients loads declarations whose consul and nomad blocks are block (with %[1]s for the
// server's URL and %[2]s for the folder of the PKI's files) and builds their clients.
func tlsClients(t *testing.T, block, url string, pki testcert.PKI, conns int) (*consulapi.Client, *nomadapi.Client) {
	t.Helper()
	dir := t.TempDir()
	src := fmt.Sprintf(block, url, filepath.Dir(pki.CAFile))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "slotd.hcl"), []byte(src), 0o600))
	cfg, err := config.Load(filepath.Join(dir, "slotd.hcl"))
	require.NoError(t, err)
	consul, nomad, err := newClients(cfg, conns)
	require.NoError(t, err)
	return consul, nomad
}

// clearClientEnv keeps the CONSUL_* and NOMAD_* variables of the shell that runs the tests out
// of the clients.
func clearClientEnv(t *testing.T) {
	t.Helper()
	for _, v := range []string{"CONSUL_HTTP_SSL", "CONSUL_CACERT", "CONSUL_CAPATH", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY",
		"CONSUL_TLS_SERVER_NAME", "CONSUL_HTTP_TOKEN", "NOMAD_CACERT", "NOMAD_CAPATH", "NOMAD_CLIENT_CERT", "NOMAD_CLIENT_KEY",
		"NOMAD_TLS_SERVER_NAME", "NOMAD_TOKEN"} {
		t.Setenv(v, "")
	}
}

// TestClientsTLS: the Consul and Nomad clients built from the declarations reach a server that
// requires a client certificate, with the CA, the client certificate and the server name of
// the consul and nomad blocks; without one of them the call fails with an error about the
// certificate.
func TestClientsTLS(t *testing.T) {
	const both = `
consul {
  address = "%[1]s"
%[3]s}
nomad {
  address = "%[1]s"
%[3]s}
`
	const (
		ca     = "  ca_file = \"%[2]s/ca.pem\"\n"
		client = "  cert_file = \"%[2]s/client.pem\"\n  key_file = \"%[2]s/client-key.pem\"\n"
		sni    = "  tls_server_name = \"server.slotd.test\"\n"
	)
	cases := []struct {
		name    string
		names   []string // of the server's certificate
		attrs   string
		wantErr string
	}{
		{name: "CA and client certificate", names: []string{"127.0.0.1"}, attrs: ca + client},
		{name: "CA folder", names: []string{"127.0.0.1"}, attrs: "  ca_path = \"%[2]s/cas\"\n" + client},
		{name: "server name", names: []string{"server.slotd.test"}, attrs: ca + client + sni},
		{name: "no CA", names: []string{"127.0.0.1"}, attrs: client, wantErr: "certificate signed by unknown authority"},
		{name: "no client certificate", names: []string{"127.0.0.1"}, attrs: ca, wantErr: "certificate required"},
		{name: "another server name", names: []string{"server.slotd.test"}, attrs: ca + client, wantErr: "cannot validate certificate for 127.0.0.1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearClientEnv(t)
			pki := testcert.WritePKI(t, tc.names...)
			cas := filepath.Join(filepath.Dir(pki.CAFile), "cas")
			require.NoError(t, os.Mkdir(cas, 0o700))
			require.NoError(t, os.Link(pki.CAFile, filepath.Join(cas, "ca.pem")))
			srv := newMTLSServer(t, pki, 0)
			block := fmt.Sprintf(both, "%[1]s", "%[2]s", tc.attrs)
			consul, nomad := tlsClients(t, block, srv.URL, pki, maxConns)

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pair, _, cerr := consul.KV().Get("slotd/probe", (&consulapi.QueryOptions{}).WithContext(ctx))
			leader, nerr := nomad.Status().Leader()
			if tc.wantErr != "" {
				require.Error(t, cerr, "consul")
				assert.Contains(t, cerr.Error(), tc.wantErr, "consul")
				require.Error(t, nerr, "nomad")
				assert.Contains(t, nerr.Error(), tc.wantErr, "nomad")
				return
			}
			require.NoError(t, cerr, "consul")
			require.NotNil(t, pair)
			assert.Equal(t, "reached", string(pair.Value))
			require.NoError(t, nerr, "nomad")
			assert.Equal(t, "127.0.0.1:4647", leader)
		})
	}
}

// TestClientsTLSKeepConnLimit: with TLS on, each client still opens at most conns connections
// to its server at once, the limit that keeps slotd from flooding Consul and Nomad.
func TestClientsTLSKeepConnLimit(t *testing.T) {
	clearClientEnv(t)
	const conns, calls = 2, 6
	pki := testcert.WritePKI(t, "127.0.0.1")
	block := "consul {\n  address = \"%[1]s\"\n  ca_file = \"%[2]s/ca.pem\"\n  cert_file = \"%[2]s/client.pem\"\n  key_file = \"%[2]s/client-key.pem\"\n}\n"
	block += "nomad {\n  address = \"%[1]s\"\n  ca_file = \"%[2]s/ca.pem\"\n  cert_file = \"%[2]s/client.pem\"\n  key_file = \"%[2]s/client-key.pem\"\n}\n"
	for _, which := range []string{"consul", "nomad"} {
		t.Run(which, func(t *testing.T) {
			srv := newMTLSServer(t, pki, 100*time.Millisecond)
			consul, nomad := tlsClients(t, block, srv.URL, pki, conns)
			var wg sync.WaitGroup
			errs := make(chan error, calls)
			for range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					if which == "consul" {
						_, _, err = consul.KV().Get("slotd/probe", nil)
					} else {
						_, err = nomad.Status().Leader()
					}
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			busy, handshakes := srv.stats()
			assert.Equal(t, conns, busy, "requests served at once")
			assert.LessOrEqual(t, handshakes, conns, "TLS connections opened")
		})
	}
}
