package main

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCAInitLocalAndShow(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "root.pem"), filepath.Join(dir, "root-key.pem")
	code, out, errOut := runMain("ca", "init", "--local", "--out", cert, "--key-out", key, "--subject", "CN=Example Root,O=Example", "--validity", "8760h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "sha256:") || !strings.Contains(out, "CN=Example Root,O=Example") {
		t.Errorf("output %q", out)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v %v, want 0600", fi.Mode(), err)
	}
	c := readCert(t, cert)
	if !c.IsCA || c.MaxPathLen != 1 || c.KeyUsage&x509.KeyUsageCertSign == 0 || c.Subject.CommonName != "Example Root" {
		t.Errorf("root: CA %v, path %d, usage %v, subject %v", c.IsCA, c.MaxPathLen, c.KeyUsage, c.Subject)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if d := c.NotAfter.Sub(c.NotBefore).Hours(); d < 8760 || d > 8762 {
		t.Errorf("validity %v hours", d)
	}
	// Refuses to overwrite without --force.
	if code, _, errOut := runMain("ca", "init", "--local", "--out", cert, "--key-out", key); code == 0 || !strings.Contains(errOut, "exists") {
		t.Errorf("overwrote without --force: %d %q", code, errOut)
	}
	code, out, _ = runMain("ca", "show", cert)
	if code != 0 || !strings.Contains(out, "key:         ECDSA P-256") || !strings.Contains(out, "CA:          yes, path length 1") {
		t.Errorf("show: %d %q", code, out)
	}
	// The files work as flowdog's configured root.
	cfg := testConfig(t)
	cfg.CA.CertFile, cfg.CA.KeyFile = cert, key
	d, _, _, _ := startDaemon(t, cfg)
	if !d.in.ca.Root().Equal(c) {
		t.Error("flowdog did not load the configured root")
	}
}

func TestCAInitUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"ca", "init"},
		{"ca", "init", "--local"},
		{"ca", "init", "--local", "--kms-key-id", "alias/x", "--key-out", "k"},
		{"ca", "init", "--kms-key-id", "alias/x", "--key-out", "k"},
		{"ca", "init", "--local", "--key-out", "k", "--subject", "O=no common name"},
		{"ca", "frob"},
	} {
		if code, _, _ := runMain(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
