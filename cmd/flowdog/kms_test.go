package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/flowdog/flowdog/gwlbsim"
	"github.com/flowdog/flowdog/internal/config"
	"github.com/flowdog/flowdog/internal/localkms"
)

// kmsEnv points the AWS SDK of this process at the emulator.
func kmsEnv(t *testing.T, s *localkms.Server) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// kmsRoot creates a root certificate for a new KMS key with `flowdog ca init`.
func kmsRoot(t *testing.T, s *localkms.Server, spec types.KeySpec) (keyID, certFile string) {
	t.Helper()
	keyID = s.CreateKey(t, spec)
	certFile = filepath.Join(t.TempDir(), "root.pem")
	code, out, errOut := runMain("ca", "init", "--kms-key-id", keyID, "--out", certFile, "--subject", "CN=KMS Root,O=flowdog tests")
	if code != 0 {
		t.Fatalf("ca init: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "CN=KMS Root") {
		t.Errorf("ca init output %q", out)
	}
	return keyID, certFile
}

func TestCAInitWithKMSKeys(t *testing.T) {
	s := localkms.Start(t)
	kmsEnv(t, s)
	for _, c := range []struct {
		spec types.KeySpec
		key  string
	}{{types.KeySpecEccNistP256, "ECDSA P-256"}, {types.KeySpecRsa2048, "RSA 2048"}} {
		t.Run(string(c.spec), func(t *testing.T) {
			_, certFile := kmsRoot(t, s, c.spec)
			cert := readCert(t, certFile)
			if err := cert.CheckSignatureFrom(cert); err != nil {
				t.Fatalf("KMS-signed root does not verify: %v", err)
			}
			if !cert.IsCA || cert.MaxPathLen != 1 || cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("CA %v, path %d, usage %v", cert.IsCA, cert.MaxPathLen, cert.KeyUsage)
			}
			if y := cert.NotAfter.Sub(cert.NotBefore).Hours() / 24 / 365; y < 9.9 || y > 10.1 {
				t.Errorf("validity %.1f years, want 10", y)
			}
			_, out, _ := runMain("ca", "show", certFile)
			if !strings.Contains(out, "key:         "+c.key) {
				t.Errorf("ca show: %q", out)
			}
		})
	}
}

// kmsLab runs flowdog with its root key in the emulator, behind the simulator.
func kmsLab(t *testing.T, s *localkms.Server, keyID, certFile string) (*interceptLab, *gwlbsim.Host) {
	t.Helper()
	l := newInterceptLab(t, func(c *config.Config) {
		c.CA.KMSKeyID, c.CA.CertFile = keyID, certFile
		c.CA.KMSTimeout = config.Duration(time.Second)
	})
	client, server := hosts(t, l.sim.AddTenant(0x0123456789abcdef, 0x42))
	startWeb(t, server, l.pki.cert, true, nil)
	return l, client
}

func TestKMSRootSignsIntermediateAndLeavesVerify(t *testing.T) {
	s := localkms.Start(t)
	kmsEnv(t, s)
	keyID, certFile := kmsRoot(t, s, types.KeySpecEccNistP256)
	l, client := kmsLab(t, s, keyID, certFile)
	root := readCert(t, certFile)
	if !l.d.in.ca.Root().Equal(root) {
		t.Fatal("flowdog does not use the KMS root")
	}
	// An intercepted HTTPS connection through the simulator.
	c, err := client.DialTCP(context.Background(), netip.AddrPortFrom(serverV4, 443))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: serverName})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("client trusting only the KMS root: %v", err)
	}
	chain := tc.ConnectionState().PeerCertificates
	tc.Close()
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: serverName}); err != nil {
		t.Fatalf("leaf does not verify to the KMS root: %v", err)
	}
	if err := chain[1].CheckSignatureFrom(root); err != nil {
		t.Errorf("intermediate not signed by the KMS key: %v", err)
	}
	// And with openssl, where available.
	if openssl, err := exec.LookPath("openssl"); err == nil {
		dir := t.TempDir()
		write := func(name string, certs ...*x509.Certificate) string {
			var b []byte
			for _, c := range certs {
				b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
			}
			p := filepath.Join(dir, name)
			os.WriteFile(p, b, 0o644)
			return p
		}
		out, err := exec.Command(openssl, "verify", "-CAfile", write("root.pem", root),
			"-untrusted", write("inter.pem", chain[1:]...), write("leaf.pem", chain[0])).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl verify: %v\n%s", err, out)
		}
	} else {
		t.Log("openssl not installed: verified with crypto/x509 only")
	}
	l.noViolations(t)
}

func TestKMSRootMismatchNamesBoth(t *testing.T) {
	s := localkms.Start(t)
	kmsEnv(t, s)
	_, certFile := kmsRoot(t, s, types.KeySpecEccNistP256)
	other := s.CreateKey(t, types.KeySpecEccNistP256)
	cfg := testConfig(t)
	cfg.CA.KMSKeyID, cfg.CA.CertFile = other, certFile
	err := run(context.Background(), cfg, newLogger(cfg.Log, os.Stderr), nil)
	if err == nil {
		t.Fatal("flowdog started with a root certificate of another key")
	}
	for _, want := range []string{certFile, other, "public keys differ"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestKMSUnreachableAtStartNamesKeyAndRegion(t *testing.T) {
	s := localkms.Start(t)
	kmsEnv(t, s)
	keyID, certFile := kmsRoot(t, s, types.KeySpecEccNistP256)
	s.Stop()
	cfg := testConfig(t)
	cfg.CA.KMSKeyID, cfg.CA.CertFile = keyID, certFile
	cfg.CA.KMSTimeout = config.Duration(time.Second)
	err := run(context.Background(), cfg, newLogger(cfg.Log, os.Stderr), nil)
	if err == nil || !strings.Contains(err.Error(), keyID) || !strings.Contains(err.Error(), localkms.Region) {
		t.Fatalf("error %v, want one naming the key and the region", err)
	}
}

func TestKMSGoneAfterStartKeepsServing(t *testing.T) {
	s := localkms.Start(t)
	kmsEnv(t, s)
	keyID, certFile := kmsRoot(t, s, types.KeySpecEccNistP256)
	l, client := kmsLab(t, s, keyID, certFile)
	s.Stop() // KMS goes away: the intermediate in memory keeps signing leaves
	cl := l.httpsClient(client, true, false)
	for _, path := range []string{"/a", "/b"} {
		resp, body := mustGet(t, cl, "https://"+serverName+path)
		if resp.StatusCode != 200 || body != "served "+path {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
	// A new name needs a new leaf: minted by the intermediate, no KMS call.
	c, err := client.DialTCP(context.Background(), netip.AddrPortFrom(serverV4, 443))
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{RootCAs: l.root, ServerName: serverV4.String()})
	if err := tc.Handshake(); err != nil {
		t.Errorf("new leaf after KMS went away: %v", err)
	}
	tc.Close()
	if code := healthCode(t, l.d); code != 200 {
		t.Errorf("health %d while the intermediate is valid", code)
	}
}
