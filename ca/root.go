package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// File names of the generated root in the state directory.
const (
	rootCertFile = "root.pem"
	rootKeyFile  = "root-key.pem"
)

// rootValidity is the lifetime of a root created by LoadOrCreate.
const rootValidity = 10 * 365 * 24 * time.Hour

// clockSkew is how far NotBefore is backdated on every certificate, so that
// clients whose clocks run behind accept them.
const clockSkew = time.Hour

// Errors returned when loading a root.
var (
	// ErrInsecureKeyFile: the generated root key file is readable by group
	// or others.
	ErrInsecureKeyFile = errors.New("root key file is readable by group or others")
	// ErrKeyMismatch: the private key is not the certificate's.
	ErrKeyMismatch = errors.New("private key does not match the certificate")
	// ErrNotCA: the certificate may not sign certificates.
	ErrNotCA = errors.New("certificate is not a CA")
)

// Root is the trust anchor: its certificate and a signer for its key (a file
// key now, KMS later). The signer is used once per intermediate: at New and
// at each rotation, never per connection. Sign is called without a context,
// so a remote signer (KMS) must bound each call with its own timeout: a hung
// call holds up rotation (the current intermediate keeps serving).
type Root struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
}

// RootCertPath is the path of the root certificate LoadOrCreate keeps in dir:
// the file to install in clients' trust stores.
func RootCertPath(dir string) string { return filepath.Join(dir, rootCertFile) }

// rootKeyPath is the path of the root key LoadOrCreate keeps in dir.
func rootKeyPath(dir string) string { return filepath.Join(dir, rootKeyFile) }

// LoadOrCreate loads dir/root.pem and dir/root-key.pem, or creates them when
// both are absent: an ECDSA P-256 key and a self-signed CA certificate
// (KeyUsageCertSign|CRLSign, MaxPathLen 1, 10 years, subject CN "flowdog root
// CA <short random id>", O "flowdog"). dir is created 0700 and the key file
// is written 0600. An existing key file that is readable by group or others
// is refused (ErrInsecureKeyFile), and one file present without the other is
// an error. created reports whether the files were made by this call; the
// caller logs RootCertPath(dir) so that operators know what to install.
func LoadOrCreate(dir string) (root *Root, created bool, err error) {
	certPath, keyPath := RootCertPath(dir), rootKeyPath(dir)
	certOK, err := exists(certPath)
	if err != nil {
		return nil, false, fmt.Errorf("ca: root certificate: %w", err)
	}
	keyOK, err := exists(keyPath)
	if err != nil {
		return nil, false, fmt.Errorf("ca: root key: %w", err)
	}
	switch {
	case certOK && keyOK:
		fi, err := os.Stat(keyPath)
		if err != nil {
			return nil, false, fmt.Errorf("ca: root key: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, false, fmt.Errorf("ca: %s has mode %#o: %w (run chmod 600 %s)", keyPath, perm, ErrInsecureKeyFile, keyPath)
		}
		root, err := LoadPEM(certPath, keyPath)
		return root, false, err
	case certOK:
		return nil, false, fmt.Errorf("ca: %s exists but %s does not: restore the key or remove both to create a new root", certPath, keyPath)
	case keyOK:
		return nil, false, fmt.Errorf("ca: %s exists but %s does not: restore the certificate or remove both to create a new root", keyPath, certPath)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("ca: generating root key: %w", err)
	}
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, false, fmt.Errorf("ca: generating root id: %w", err)
	}
	subject := pkix.Name{CommonName: "flowdog root CA " + hex.EncodeToString(id[:]), Organization: []string{"flowdog"}}
	cert, err := NewRoot(key, subject, rootValidity)
	if err != nil {
		return nil, false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, fmt.Errorf("ca: encoding root key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("ca: creating state directory: %w", err)
	}
	// The key goes first: a crash in between leaves a key without a
	// certificate, which the next start reports instead of silently
	// replacing a root that clients may already trust.
	if err := WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, false, fmt.Errorf("ca: writing root key: %w", err)
	}
	if err := WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return nil, false, fmt.Errorf("ca: writing root certificate: %w", err)
	}
	return &Root{Cert: cert, Signer: key}, true, nil
}

// exists reports whether path exists; errors other than "not found" (a
// permission problem, say) are returned.
func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// WriteFile replaces path with data atomically: a new temporary file in the
// same directory (created 0600, so a key is never readable by others, not
// even briefly, and an existing file or symlink named like it is never
// followed), given perm, synced, then renamed over path.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*") // created 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this fails harmlessly
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// LoadPEM loads a root from PEM files: the first CERTIFICATE block of
// certFile, and a private key from keyFile in PKCS#8 ("PRIVATE KEY"), EC ("EC
// PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY") form; other blocks (such as
// "EC PARAMETERS") are skipped. It checks that the key matches the
// certificate (ErrKeyMismatch) and that the certificate is a CA allowed to
// sign certificates (ErrNotCA). It does not check validity dates: New does.
func LoadPEM(certFile, keyFile string) (*Root, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("ca: root certificate: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: root certificate %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca: root key: %w", err)
	}
	signer, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: root key %s: %w", keyFile, err)
	}
	root := &Root{Cert: cert, Signer: signer}
	if err := root.check(); err != nil {
		return nil, fmt.Errorf("ca: root %s, %s: %w", certFile, keyFile, err)
	}
	return root, nil
}

// check verifies that the signer's public key is the certificate's and that
// the certificate is a CA.
func (r *Root) check() error {
	if r == nil || r.Cert == nil || r.Signer == nil {
		return errors.New("root certificate and signer are required")
	}
	if !r.Cert.BasicConstraintsValid || !r.Cert.IsCA {
		return fmt.Errorf("%w: %q has no CA basic constraint", ErrNotCA, r.Cert.Subject.CommonName)
	}
	if r.Cert.KeyUsage != 0 && r.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: %q lacks the certificate-signing key usage", ErrNotCA, r.Cert.Subject.CommonName)
	}
	if r.Cert.MaxPathLenZero {
		return fmt.Errorf("%w: %q has path length 0 and cannot sign an intermediate", ErrNotCA, r.Cert.Subject.CommonName)
	}
	pub, ok := r.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(r.Cert.PublicKey) {
		return ErrKeyMismatch
	}
	return nil
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

func parseKeyPEM(b []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY PEM block")
		}
		switch block.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("PKCS#8 key of type %T cannot sign", k)
			}
			return s, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			return x509.ParsePKCS1PrivateKey(block.Bytes)
		}
	}
}

// NewRoot creates a self-signed root certificate for signer (used by
// LoadOrCreate, and by `flowdog ca init` for local files and KMS keys
// alike): a CA with KeyUsageCertSign|CRLSign and MaxPathLen 1 (it signs
// intermediates, which sign leaves), the given subject, valid from an hour
// ago (clock skew) for validity. signer is called once.
func NewRoot(signer crypto.Signer, subject pkix.Name, validity time.Duration) (*x509.Certificate, error) {
	if signer == nil {
		return nil, errors.New("ca: new root: nil signer")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("ca: new root: validity %v is not positive", validity)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: new root: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("ca: new root: signing: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: new root: %w", err)
	}
	return cert, nil
}

// randomSerial returns a random, positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	b[0] |= 0x01 // never zero; 127 random bits remain
	return new(big.Int).SetBytes(b[:]), nil
}
