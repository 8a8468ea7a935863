package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/slotd/slotd/internal/testcert"
)

// tlsFiles writes a CA, a client certificate and its key, a server certificate, a file that is
// not PEM and folders of CA certificates into a new folder with the declarations src as
// slots.hcl; it returns the folder.
func tlsFiles(t *testing.T, src string) string {
	t.Helper()
	pki := testcert.WritePKI(t, "127.0.0.1")
	read := func(path string) string {
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		return string(b)
	}
	ca := read(pki.CAFile)
	return writeDir(t, map[string]string{
		"slots.hcl":         src + "\n" + minimalSite,
		"tls/ca.pem":        ca,
		"tls/client.pem":    read(pki.Client.CertFile),
		"tls/client.key":    read(pki.Client.KeyFile),
		"tls/server.pem":    read(pki.Server.CertFile),
		"tls/garbage.pem":   "not a certificate\n",
		"cas/one.pem":       ca,
		"cas/more/two.pem":  ca,
		"badcas/one.pem":    ca,
		"badcas/notes.txt":  "not a certificate\n",
		"emptycas/.keep":    "",
		"tls/big.pem":       strings.Repeat("x", maxPEMSize+1),
		"tls/sub/keep.here": "",
	})
}

// TestClientTLSSettings: each TLS setting of the consul and nomad blocks is its attribute made
// absolute, else its environment variable; a written one wins over the variable, even empty.
func TestClientTLSSettings(t *testing.T) {
	type want struct{ caFile, caPath, certFile, keyFile, sni string }
	cases := []struct {
		name          string
		src           string
		env           map[string]string
		consul, nomad want
	}{
		{name: "none"},
		{
			name: "written, relative to the file",
			src: "consul {\n  address = \"https://127.0.0.1:8501\"\n  ca_file = \"tls/ca.pem\"\n  cert_file = \"tls/client.pem\"\n  key_file = \"tls/client.key\"\n  tls_server_name = \"consul.internal\"\n}\n" +
				"nomad {\n  address = \"https://127.0.0.1:4646\"\n  ca_path = \"cas\"\n  cert_file = \"tls/client.pem\"\n  key_file = \"tls/client.key\"\n  tls_server_name = \"server.global.nomad\"\n}",
			consul: want{caFile: "$DIR/tls/ca.pem", certFile: "$DIR/tls/client.pem", keyFile: "$DIR/tls/client.key", sni: "consul.internal"},
			nomad:  want{caPath: "$DIR/cas", certFile: "$DIR/tls/client.pem", keyFile: "$DIR/tls/client.key", sni: "server.global.nomad"},
		},
		{
			name: "from the environment",
			env: map[string]string{
				"CONSUL_CACERT": "$DIR/tls/ca.pem", "CONSUL_CAPATH": "$DIR/cas", "CONSUL_CLIENT_CERT": "$DIR/tls/client.pem",
				"CONSUL_CLIENT_KEY": "$DIR/tls/client.key", "CONSUL_TLS_SERVER_NAME": "consul.internal",
				"NOMAD_CACERT": "$DIR/tls/ca.pem", "NOMAD_CAPATH": "$DIR/cas", "NOMAD_CLIENT_CERT": "$DIR/tls/client.pem",
				"NOMAD_CLIENT_KEY": "$DIR/tls/client.key", "NOMAD_TLS_SERVER_NAME": "server.global.nomad",
			},
			consul: want{caFile: "$DIR/tls/ca.pem", caPath: "$DIR/cas", certFile: "$DIR/tls/client.pem", keyFile: "$DIR/tls/client.key", sni: "consul.internal"},
			nomad:  want{caFile: "$DIR/tls/ca.pem", caPath: "$DIR/cas", certFile: "$DIR/tls/client.pem", keyFile: "$DIR/tls/client.key", sni: "server.global.nomad"},
		},
		{
			name: "written wins over the environment, attribute by attribute",
			src:  "consul {\n  address = \"https://127.0.0.1:8501\"\n  ca_file = \"tls/ca.pem\"\n  tls_server_name = \"\"\n}\nnomad {\n  ca_file = \"\"\n}",
			env: map[string]string{
				"CONSUL_CACERT": "/nonexistent/ca.pem", "CONSUL_TLS_SERVER_NAME": "from-env", "CONSUL_CLIENT_CERT": "$DIR/tls/client.pem",
				"CONSUL_CLIENT_KEY": "$DIR/tls/client.key", "NOMAD_CACERT": "/nonexistent/ca.pem", "NOMAD_TLS_SERVER_NAME": "nomad-env",
			},
			consul: want{caFile: "$DIR/tls/ca.pem", certFile: "$DIR/tls/client.pem", keyFile: "$DIR/tls/client.key"},
			nomad:  want{sni: "nomad-env"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			dir := tlsFiles(t, tc.src)
			for k, v := range tc.env {
				t.Setenv(k, strings.ReplaceAll(v, "$DIR", dir))
			}
			cfg, err := Load(filepath.Join(dir, "slots.hcl"))
			require.NoError(t, err)
			got := func(tl clientTLS) want {
				return want{*tl.caFile.value, *tl.caPath.value, *tl.certFile.value, *tl.keyFile.value, *tl.sni.value}
			}
			expand := func(w want) want {
				r := strings.NewReplacer("$DIR", dir)
				return want{r.Replace(w.caFile), r.Replace(w.caPath), r.Replace(w.certFile), r.Replace(w.keyFile), w.sni}
			}
			assert.Equal(t, expand(tc.consul), got(consulTLS(&cfg.Consul)), "consul")
			assert.Equal(t, expand(tc.nomad), got(nomadTLS(&cfg.Nomad)), "nomad")
		})
	}
}

// TestConsulHTTPSSL: CONSUL_HTTP_SSL=true makes an address without a scheme https; a scheme
// written in the address wins.
func TestConsulHTTPSSL(t *testing.T) {
	cases := []struct {
		name, src, ssl, want string
	}{
		{name: "default address", ssl: "true", want: "https://" + DefaultConsulAddress},
		{name: "default address, false", ssl: "false", want: DefaultConsulAddress},
		{name: "address without a scheme", src: `consul { address = "consul.internal:8501" }`, ssl: "1", want: "https://consul.internal:8501"},
		{name: "http written", src: `consul { address = "http://127.0.0.1:8500" }`, ssl: "true", want: "http://127.0.0.1:8500"},
		{name: "https written", src: `consul { address = "https://127.0.0.1:8501" }`, want: "https://127.0.0.1:8501"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			t.Setenv(envConsulSSL, tc.ssl)
			dir := writeDir(t, map[string]string{"slots.hcl": tc.src + "\n" + minimalSite})
			cfg, err := Load(filepath.Join(dir, "slots.hcl"))
			require.NoError(t, err)
			assert.Equal(t, tc.want, cfg.Consul.Address)
		})
	}
}

// https is a block of client with an https address and lines, the first of them marked as
// the line of the problem.
func https(client string, lines ...string) string {
	lines[0] += " " + marker
	return client + " {\n  address = \"https://127.0.0.1:8501\"\n  " + strings.Join(lines, "\n  ") + "\n}"
}

// TestClientTLSProblems: a TLS file that is missing, unreadable or not PEM, a certificate
// without its key, and TLS attributes written for an address that is not https fail the load with the setting, the path and the position of the attribute
// (or of the block, or the file's start, when an environment variable gave the value).
func TestClientTLSProblems(t *testing.T) {
	cases := []struct {
		name    string
		src     string // the line of the problem ends in marker
		env     map[string]string
		summary string
		detail  string
		col     int
	}{
		{name: "consul ca_file missing", src: https("consul", `ca_file = "tls/nope.pem"`), summary: "File not found",
			detail: `consul ca_file "$DIR/tls/nope.pem" does not exist`, col: 3},
		{name: "nomad ca_file not PEM", src: https("nomad", `ca_file = "tls/garbage.pem"`), summary: "Invalid CA file",
			detail: `nomad ca_file "$DIR/tls/garbage.pem" holds no PEM certificate`, col: 3},
		{name: "ca_file a folder", src: https("consul", `ca_file = "tls"`), summary: "Cannot read file", detail: "consul ca_file: $DIR/tls: not a regular file"},
		{name: "ca_file too large", src: https("nomad", `ca_file = "tls/big.pem"`), summary: "Cannot read file", detail: "too large for a certificate"},
		{name: "cert without key", src: https("consul", `cert_file = "tls/client.pem"`), summary: "Incomplete TLS settings",
			detail: `consul cert_file "$DIR/tls/client.pem" is set without key_file`},
		{name: "key without cert", src: https("nomad", `key_file = "tls/client.key"`), summary: "Incomplete TLS settings",
			detail: `nomad key_file "$DIR/tls/client.key" is set without cert_file`},
		{name: "cert and a key of another", src: https("consul", `cert_file = "tls/server.pem"`, `key_file = "tls/client.key"`),
			summary: "Invalid client certificate", detail: "private key does not match public key"},
		{name: "key not PEM", src: https("nomad", `cert_file = "tls/client.pem"`, `key_file = "tls/garbage.pem"`),
			summary: "Invalid client certificate", detail: `nomad cert_file "$DIR/tls/client.pem" and key_file "$DIR/tls/garbage.pem" are not a PEM certificate and its key`},
		{name: "key missing", src: https("consul", `key_file = "tls/nope.key"`, `cert_file = "tls/client.pem"`),
			summary: "File not found", detail: `consul key_file "$DIR/tls/nope.key" does not exist`},
		{name: "ca_path missing", src: https("nomad", `ca_path = "nope"`), summary: "File not found", detail: `nomad ca_path "$DIR/nope" does not exist`},
		{name: "ca_path a file", src: https("consul", `ca_path = "tls/ca.pem"`), summary: "Not a folder", detail: `consul ca_path "$DIR/tls/ca.pem" is not a folder`},
		{name: "ca_path with a file not PEM", src: https("consul", `ca_path = "badcas"`), summary: "Invalid CA folder", detail: "$DIR/badcas/notes.txt holds no PEM certificate"},
		{name: "ca_path without a certificate", src: https("nomad", `ca_path = "emptycas"`), summary: "Invalid CA folder", detail: "$DIR/emptycas/.keep holds no PEM certificate"},
		{name: "consul TLS on an address without a scheme", src: "consul {\n  ca_file = \"tls/ca.pem\" " + marker + "\n  address = \"127.0.0.1:8501\"\n}",
			summary: "TLS settings without https", detail: `consul sets ca_file but its address "127.0.0.1:8501" is not https, so they would not be used; write https:// in the address (or set CONSUL_HTTP_SSL=true), or remove ca_file.`, col: 3},
		{name: "nomad TLS on the default address", src: `nomad { tls_server_name = "server.global.nomad" } ` + marker,
			summary: "TLS settings without https", detail: `nomad sets tls_server_name but its address "http://127.0.0.1:4646" is not https`, col: 9},
		{name: "CONSUL_HTTP_SSL=false", src: "consul {\n  cert_file = \"tls/client.pem\" " + marker + "\n  key_file = \"tls/client.key\"\n}",
			env: map[string]string{envConsulSSL: "false"}, summary: "TLS settings without https", detail: "consul sets cert_file"},
		{name: "CONSUL_CACERT missing, no consul block", src: "# no consul block " + marker,
			env:     map[string]string{"CONSUL_CACERT": "$DIR/nope.pem"},
			summary: "File not found", detail: `CONSUL_CACERT (standing in for consul ca_file) "$DIR/nope.pem" does not exist`, col: 1},
		{name: "NOMAD_CLIENT_KEY without a cert", src: "nomad { " + marker + "\n  address = \"https://127.0.0.1:4646\"\n}",
			env:     map[string]string{"NOMAD_CLIENT_KEY": "$DIR/tls/client.key"},
			summary: "Incomplete TLS settings", detail: "NOMAD_CLIENT_KEY (standing in for nomad key_file)", col: 1},
		{name: "CONSUL_HTTP_SSL not a boolean", src: "consul { " + marker + "\n}", env: map[string]string{envConsulSSL: "yes please"},
			summary: "Invalid CONSUL_HTTP_SSL", detail: `CONSUL_HTTP_SSL="yes please" is not true or false`, col: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			dir := tlsFiles(t, tc.src)
			for k, v := range tc.env {
				t.Setenv(k, strings.ReplaceAll(v, "$DIR", dir))
			}
			path := filepath.Join(dir, "slots.hcl")
			_, err := Load(path)
			diags := requireDiagnostics(t, err)
			require.Len(t, diags, 1, "want one problem, got:\n%v", err)
			d := diags[0]
			assert.Equal(t, tc.summary, d.Summary, err.Error())
			assert.Contains(t, d.Detail, strings.ReplaceAll(tc.detail, "$DIR", dir))
			assert.Equal(t, path, d.Subject.Filename)
			assert.Equal(t, markedLine(t, tc.src+"\n"), d.Subject.Start.Line, err.Error())
			if tc.col != 0 {
				assert.Equal(t, tc.col, d.Subject.Start.Column, err.Error())
			}
		})
	}
}
