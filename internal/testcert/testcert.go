// Package testcert makes self-signed TLS certificates for tests: a listener on loopback serves
// one, and a client trusts it by its PEM file, as an operator's CA.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Files are a certificate and its key as PEM files. The certificate is its own CA: give
// CertFile to a client as the CA to trust.
type Files struct {
	CertFile, KeyFile string
}

// Write makes a self-signed certificate for localhost, 127.0.0.1 and ::1, valid for a day, and
// writes it and its key into a temporary folder of t.
func Write(t testing.TB) Files {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate a key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "slotd test"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create a certificate: %v", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("encode the key: %v", err)
	}
	dir := t.TempDir()
	f := Files{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	write(t, f.CertFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	write(t, f.KeyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return f
}

func write(t testing.TB, path string, b *pem.Block) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// PKI is a CA and two certificates it signed, as PEM files: one a server presents, one a client
// presents to a server that requires it (tls.RequireAndVerifyClientCert).
type PKI struct {
	CAFile         string
	Server, Client Files
}

// WritePKI makes a CA, a server certificate for names (DNS names or IP addresses) and a client
// certificate, valid for a day, into a temporary folder of t.
func WritePKI(t testing.TB, names ...string) PKI {
	t.Helper()
	dir := t.TempDir()
	caKey, caDER := sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "slotd test CA"},
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, nil)
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatalf("parse the CA certificate: %v", err)
	}
	pki := PKI{CAFile: filepath.Join(dir, "ca.pem")}
	write(t, pki.CAFile, &pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "slotd test server"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			server.IPAddresses = append(server.IPAddresses, ip)
		} else {
			server.DNSNames = append(server.DNSNames, n)
		}
	}
	pki.Server = writeLeaf(t, dir, "server", server, ca, caKey)
	pki.Client = writeLeaf(t, dir, "client", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "slotd test client"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	return pki
}

// sign fills tmpl's key, serial and validity and signs it with parent's key (itself when parent
// is nil); it returns the new key and the certificate in DER.
func sign(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate a key: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("make a serial number: %v", err)
	}
	now := time.Now()
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, now.Add(-time.Hour), now.Add(24*time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatalf("create a certificate: %v", err)
	}
	return key, der
}

// writeLeaf signs tmpl with the CA and writes it and its key as name.pem and name-key.pem.
func writeLeaf(t testing.TB, dir, name string, tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey) Files {
	t.Helper()
	key, der := sign(t, tmpl, ca, caKey)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("encode the key: %v", err)
	}
	f := Files{CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+"-key.pem")}
	write(t, f.CertFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	write(t, f.KeyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	return f
}
