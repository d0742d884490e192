package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ca")
	root, created, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("created = false on first call")
	}
	fi, err := os.Stat(filepath.Join(dir, "root-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("key mode = %#o, want 0600", got)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := di.Mode().Perm(); got != 0o700 {
		t.Errorf("dir mode = %#o, want 0700", got)
	}
	if got, want := RootCertPath(dir), filepath.Join(dir, "root.pem"); got != want {
		t.Errorf("RootCertPath = %q, want %q", got, want)
	}

	c := root.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 1 {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v MaxPathLen=%d, want CA with path length 1", c.IsCA, c.BasicConstraintsValid, c.MaxPathLen)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %v", c.KeyUsage)
	}
	if !strings.HasPrefix(c.Subject.CommonName, "flowdog root CA ") || len(c.Subject.CommonName) <= len("flowdog root CA ") {
		t.Errorf("CN = %q", c.Subject.CommonName)
	}
	if len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "flowdog" {
		t.Errorf("O = %q", c.Subject.Organization)
	}
	if life := c.NotAfter.Sub(time.Now()); life < 9*365*24*time.Hour || life > 11*365*24*time.Hour {
		t.Errorf("validity left %v, want about 10 years", life)
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}

	again, created, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("created = true on second call")
	}
	if !again.Cert.Equal(root.Cert) {
		t.Error("second call returned a different certificate")
	}
	if !again.Signer.Public().(*ecdsa.PublicKey).Equal(root.Signer.Public()) {
		t.Error("second call returned a different key")
	}
	if _, err := New(again, Options{Logger: discardLogger()}); err != nil {
		t.Errorf("New with the loaded root: %v", err)
	}
}

func TestLoadOrCreateRefusesReadableKey(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		dir := t.TempDir()
		if _, _, err := LoadOrCreate(dir); err != nil {
			t.Fatal(err)
		}
		key := filepath.Join(dir, "root-key.pem")
		if err := os.Chmod(key, mode); err != nil {
			t.Fatal(err)
		}
		_, _, err := LoadOrCreate(dir)
		if !errors.Is(err, ErrInsecureKeyFile) {
			t.Errorf("mode %#o: err = %v, want ErrInsecureKeyFile", mode, err)
		} else if !strings.Contains(err.Error(), key) {
			t.Errorf("mode %#o: error %q does not name the file", mode, err)
		}
	}
}

func TestLoadOrCreateOneFileMissing(t *testing.T) {
	for _, missing := range []string{"root.pem", "root-key.pem"} {
		t.Run(missing, func(t *testing.T) {
			dir := t.TempDir()
			if _, _, err := LoadOrCreate(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, missing)); err != nil {
				t.Fatal(err)
			}
			_, created, err := LoadOrCreate(dir)
			if err == nil || created {
				t.Fatalf("err = %v, created = %v; want an error", err, created)
			}
			if !strings.Contains(err.Error(), missing) {
				t.Errorf("error %q does not name %s", err, missing)
			}
			if _, err := os.Stat(filepath.Join(dir, missing)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s was recreated", missing)
			}
		})
	}
}

// writePEM writes blocks to a file in dir and returns its path.
func writePEM(t *testing.T, dir, name string, blocks ...*pem.Block) string {
	t.Helper()
	var b []byte
	for _, bl := range blocks {
		b = append(b, pem.EncodeToMemory(bl)...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func certBlock(c *x509.Certificate) *pem.Block { return &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw} }

func pkcs8Block(t *testing.T, k crypto.Signer) *pem.Block {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "PRIVATE KEY", Bytes: der}
}

func TestLoadPEM(t *testing.T) {
	dir := t.TempDir()
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecCert, err := NewRoot(ecKey, pkix.Name{CommonName: "ec root"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaCert, err := NewRoot(rsaKey, pkix.Name{CommonName: "rsa root"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(ecKey)

	// A leaf-like certificate: not a CA.
	notCA := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	}
	notCADER, err := x509.CreateCertificate(rand.Reader, notCA, notCA, ecKey.Public(), ecKey)
	if err != nil {
		t.Fatal(err)
	}
	notCACert, _ := x509.ParseCertificate(notCADER)

	ecCertFile := writePEM(t, dir, "ec.pem", certBlock(ecCert))
	tests := []struct {
		name      string
		cert, key string
		wantErr   error // nil: success; errAny: some error
	}{
		{"pkcs8 EC", ecCertFile, writePEM(t, dir, "ec-pkcs8.pem", pkcs8Block(t, ecKey)), nil},
		{"EC PRIVATE KEY after EC PARAMETERS", ecCertFile,
			writePEM(t, dir, "ec-sec1.pem", &pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}},
				&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}), nil},
		{"PKCS#1 RSA", writePEM(t, dir, "rsa.pem", certBlock(rsaCert)),
			writePEM(t, dir, "rsa-key.pem", &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), nil},
		{"pkcs8 RSA", writePEM(t, dir, "rsa2.pem", certBlock(rsaCert)), writePEM(t, dir, "rsa-pkcs8.pem", pkcs8Block(t, rsaKey)), nil},
		{"mismatched key", ecCertFile, writePEM(t, dir, "other.pem", pkcs8Block(t, otherKey)), ErrKeyMismatch},
		{"RSA key for EC cert", ecCertFile, writePEM(t, dir, "rsa-key2.pem", pkcs8Block(t, rsaKey)), ErrKeyMismatch},
		{"not a CA", writePEM(t, dir, "server.pem", certBlock(notCACert)), writePEM(t, dir, "server-key.pem", pkcs8Block(t, ecKey)), ErrNotCA},
		{"no key block", ecCertFile, writePEM(t, dir, "junk.pem", &pem.Block{Type: "CERTIFICATE", Bytes: ecCert.Raw}), errAny},
		{"no cert block", writePEM(t, dir, "nocert.pem", pkcs8Block(t, ecKey)), writePEM(t, dir, "k.pem", pkcs8Block(t, ecKey)), errAny},
		{"missing file", filepath.Join(dir, "absent.pem"), writePEM(t, dir, "k2.pem", pkcs8Block(t, ecKey)), errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, err := LoadPEM(tt.cert, tt.key)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("LoadPEM: %v", err)
			case tt.wantErr == nil:
				if !root.Signer.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(root.Cert.PublicKey) {
					t.Error("signer does not match certificate")
				}
			case err == nil:
				t.Fatalf("LoadPEM succeeded, want %v", tt.wantErr)
			case tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}

	// An RSA root signs an ECDSA intermediate whose leaves verify.
	root, err := LoadPEM(filepath.Join(dir, "rsa.pem"), filepath.Join(dir, "rsa-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(root, Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Leaf(SpecFromUpstream(nil, "rsa.example", netip.Addr{}))
	if err != nil {
		t.Fatal(err)
	}
	verifyLeaf(t, c.Certificate, root.Cert, "rsa.example", time.Now())
}

var errAny = errors.New("any error")

func TestNewRoot(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	subj := pkix.Name{CommonName: "kms root", Organization: []string{"acme"}}
	c, err := NewRoot(key, subj, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "kms root" || c.Subject.Organization[0] != "acme" {
		t.Errorf("subject = %v", c.Subject)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d != 49*time.Hour {
		t.Errorf("NotAfter-NotBefore = %v, want 49h (48h + 1h skew)", d)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 || c.SerialNumber.BitLen() < 100 {
		t.Errorf("serial %v is not a random 128-bit number", c.SerialNumber)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Error("no SubjectKeyId")
	}
	if _, err := NewRoot(key, subj, 0); err == nil {
		t.Error("validity 0 accepted")
	}
	if _, err := NewRoot(nil, subj, time.Hour); err == nil {
		t.Error("nil signer accepted")
	}
}
