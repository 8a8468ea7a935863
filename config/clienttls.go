package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// maxPEMSize bounds what is read from a certificate or key file: a chain of certificates is a
// few kilobytes, and a path to something else (a log, a device) must not make the daemon read
// without end.
const maxPEMSize = 1 << 20

// envConsulSSL, when true, makes a Consul address without a scheme an https one, as for the
// consul CLI.
const envConsulSSL = "CONSUL_HTTP_SSL"

// tlsSetting is one TLS attribute of the consul or nomad block, and the environment variable
// that stands in for it when the block leaves it out (the variables Consul's and Nomad's own
// CLIs read).
type tlsSetting struct {
	attr, env string
	value     *string
}

// clientTLS is the TLS settings of one client: Consul's or Nomad's.
type clientTLS struct {
	client                                 string // the block: "consul" or "nomad"
	block                                  hcl.Range
	address                                string
	caFile, caPath, certFile, keyFile, sni tlsSetting
}

func consulTLS(c *Consul) clientTLS {
	return clientTLS{client: "consul", block: c.Range, address: c.Address,
		caFile:   tlsSetting{"ca_file", "CONSUL_CACERT", &c.CAFile},
		caPath:   tlsSetting{"ca_path", "CONSUL_CAPATH", &c.CAPath},
		certFile: tlsSetting{"cert_file", "CONSUL_CLIENT_CERT", &c.CertFile},
		keyFile:  tlsSetting{"key_file", "CONSUL_CLIENT_KEY", &c.KeyFile},
		sni:      tlsSetting{"tls_server_name", "CONSUL_TLS_SERVER_NAME", &c.TLSServerName},
	}
}

func nomadTLS(n *Nomad) clientTLS {
	return clientTLS{client: "nomad", block: n.Range, address: n.Address,
		caFile:   tlsSetting{"ca_file", "NOMAD_CACERT", &n.CAFile},
		caPath:   tlsSetting{"ca_path", "NOMAD_CAPATH", &n.CAPath},
		certFile: tlsSetting{"cert_file", "NOMAD_CLIENT_CERT", &n.CertFile},
		keyFile:  tlsSetting{"key_file", "NOMAD_CLIENT_KEY", &n.KeyFile},
		sni:      tlsSetting{"tls_server_name", "NOMAD_TLS_SERVER_NAME", &n.TLSServerName},
	}
}

// files are the settings that name a file or folder.
func (t clientTLS) files() []tlsSetting {
	return []tlsSetting{t.caFile, t.caPath, t.certFile, t.keyFile}
}

// completeTLS fills each setting the block leaves out from its environment variable (a written
// one wins, even written empty: that turns the variable off) and makes written paths absolute.
func (b *builder) completeTLS(t clientTLS) {
	for _, s := range append(t.files(), t.sni) {
		if !b.src.set(t.block, s.attr) {
			*s.value = os.Getenv(s.env)
		}
	}
	for _, s := range t.files() {
		if b.src.set(t.block, s.attr) {
			*s.value = b.path(t.block, *s.value)
		}
	}
}

// consulScheme makes an address without a scheme an https one when CONSUL_HTTP_SSL is true.
func (b *builder) consulScheme(c *Consul) {
	v := os.Getenv(envConsulSSL)
	if v == "" || strings.Contains(c.Address, "://") {
		return
	}
	ssl, err := strconv.ParseBool(v)
	if err != nil {
		b.errorf(c.Range, "Invalid "+envConsulSSL,
			"%s=%q is not true or false; fix the variable, or write the scheme in the consul address (https://…).", envConsulSSL, v)
		return
	}
	if ssl {
		c.Address = "https://" + c.Address
	}
}

// checkTLS reads the files of a client's TLS settings, so that a wrong path, a certificate
// without its key or a file that is not PEM fails the load rather than the first call.
func (b *builder) checkTLS(t clientTLS) {
	b.checkTLSAddress(t)
	if *t.caFile.value != "" {
		if pem, ok := b.readPEM(t, t.caFile); ok && !x509.NewCertPool().AppendCertsFromPEM(pem) {
			b.tlsErrorf(t, t.caFile, "Invalid CA file",
				"%s %q holds no PEM certificate; name the PEM file of the CA that signed the server's certificate.", *t.caFile.value)
		}
	}
	if *t.caPath.value != "" {
		b.checkCAPath(t)
	}

	cert, key := *t.certFile.value, *t.keyFile.value
	switch {
	case cert != "" && key == "":
		b.tlsErrorf(t, t.certFile, "Incomplete TLS settings",
			"%s %q is set without key_file; set both to present a client certificate, or neither.", cert)
	case cert == "" && key != "":
		b.tlsErrorf(t, t.keyFile, "Incomplete TLS settings",
			"%s %q is set without cert_file; set both to present a client certificate, or neither.", key)
	case cert != "":
		certPEM, certOK := b.readPEM(t, t.certFile)
		keyPEM, keyOK := b.readPEM(t, t.keyFile)
		if !certOK || !keyOK {
			return
		}
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			b.tlsErrorf(t, t.certFile, "Invalid client certificate",
				"%s %q and key_file %q are not a PEM certificate and its key: %v.", cert, key, err)
		}
	}
}

// checkTLSAddress refuses TLS attributes written in a block whose address is not https: the
// client would talk plain HTTP and never use them. Variables are not checked, so that a shell
// set up for a TLS cluster can still run a daemon against a local agent over HTTP.
func (b *builder) checkTLSAddress(t clientTLS) {
	if strings.HasPrefix(strings.ToLower(t.address), "https://") {
		return
	}
	for _, s := range append(t.files(), t.sni) {
		if *s.value != "" && b.src.set(t.block, s.attr) {
			how := "write https:// in the address"
			if t.client == "consul" {
				how += " (or set " + envConsulSSL + "=true)"
			}
			b.errorf(b.src.attrRange(t.block, s.attr), "TLS settings without https",
				"%s sets %s but its address %q is not https, so they would not be used; %s, or remove %s.",
				t.client, s.attr, t.address, how, s.attr)
			return
		}
	}
}

// checkCAPath checks a folder of CA certificates as the clients load it: every file in it (and
// in its folders) must hold a PEM certificate.
func (b *builder) checkCAPath(t clientTLS) {
	dir := *t.caPath.value
	info, err := os.Stat(dir)
	switch {
	case err != nil:
		b.fileError(t, t.caPath, err)
		return
	case !info.IsDir():
		b.tlsErrorf(t, t.caPath, "Not a folder", "%s %q is not a folder; name a folder of PEM CA certificates, or use ca_file.", dir)
		return
	}
	found := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		pem, err := readPEMFile(path)
		if err != nil {
			return err
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s holds no PEM certificate", path)
		}
		found++
		return nil
	})
	switch {
	case err != nil:
		b.tlsErrorf(t, t.caPath, "Invalid CA folder", "%s %q: %v; every file in it must be a PEM certificate.", dir, err)
	case found == 0:
		b.tlsErrorf(t, t.caPath, "Invalid CA folder", "%s %q holds no file; put the PEM certificates of the CAs in it.", dir)
	}
}

// readPEM reads the file of s, reporting why it cannot.
func (b *builder) readPEM(t clientTLS, s tlsSetting) ([]byte, bool) {
	data, err := readPEMFile(*s.value)
	if err != nil {
		b.fileError(t, s, err)
		return nil, false
	}
	return data, true
}

func (b *builder) fileError(t clientTLS, s tlsSetting, err error) {
	if errors.Is(err, fs.ErrNotExist) {
		hint := "; fix the path (a relative path starts at the folder of the declaring file)."
		if !b.src.set(t.block, s.attr) {
			hint = "." // tlsErrorf says which variable to fix
		}
		b.tlsErrorf(t, s, "File not found", "%s %q does not exist"+hint, *s.value)
		return
	}
	b.tlsErrorf(t, s, "Cannot read file", "%s: %v.", err)
}

// readPEMFile reads a regular file of at most maxPEMSize bytes.
func readPEMFile(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w", path, errNotRegular)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPEMSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxPEMSize {
		return nil, fmt.Errorf("%s is larger than %d bytes, too large for a certificate or key", path, maxPEMSize)
	}
	return data, nil
}

// tlsErrorf reports a problem with setting s. The message starts with the setting as the
// operator gave it (the attribute, or the environment variable standing in for it), the first
// argument of format, and ends with where to fix it.
func (b *builder) tlsErrorf(t clientTLS, s tlsSetting, summary, format string, args ...any) {
	at, what, fix := b.src.attrRange(t.block, s.attr), t.client+" "+s.attr, ""
	if !b.src.set(t.block, s.attr) {
		at, what = t.block, fmt.Sprintf("%s (standing in for %s)", s.env, what)
		fix = fmt.Sprintf(" Fix %s, or write %s in the %s block, which wins over the variable.", s.env, s.attr, t.client)
	}
	b.errorf(at, summary, format+fix, append([]any{what}, args...)...)
}
