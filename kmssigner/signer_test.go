package kmssigner

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/flowdog/flowdog/internal/localkms"
)

// countingAPI wraps a real KMS client, counts calls and records the last
// Sign request.
type countingAPI struct {
	API
	gets, signs atomic.Int32
	mu          sync.Mutex
	lastSign    kms.SignInput
	lastSig     []byte
}

func (c *countingAPI) GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, optFns ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error) {
	c.gets.Add(1)
	return c.API.GetPublicKey(ctx, in, optFns...)
}

func (c *countingAPI) Sign(ctx context.Context, in *kms.SignInput, optFns ...func(*kms.Options)) (*kms.SignOutput, error) {
	c.signs.Add(1)
	out, err := c.API.Sign(ctx, in, optFns...)
	c.mu.Lock()
	c.lastSign = *in
	if err == nil {
		c.lastSig = out.Signature
	}
	c.mu.Unlock()
	return out, err
}

func selfSigned(t *testing.T, s crypto.Signer, alg x509.SignatureAlgorithm) ([]byte, error) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "flowdog kmssigner test root", Organization: []string{"flowdog"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SignatureAlgorithm:    alg,
	}
	return x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.Public(), s)
}

// verifySelfSigned checks der with crypto/x509: its signature and a chain
// to a pool that holds it.
func verifySelfSigned(t *testing.T, der []byte, alg x509.SignatureAlgorithm) {
	t.Helper()
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ParseCertificate: %v", err)
	}
	if cert.SignatureAlgorithm != alg {
		t.Errorf("certificate signed with %v, want %v", cert.SignatureAlgorithm, alg)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Fatalf("CheckSignatureFrom: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

// TestSigner runs each key spec that kmssigner supports against local-kms:
// New, Public, the accessors, x509 certificates with every signature
// algorithm that fits the key, and a direct Sign per KMS algorithm.
func TestSigner(t *testing.T) {
	srv := localkms.Start(t)
	client := srv.Client(t)
	tests := []struct {
		spec   types.KeySpec
		x509   []x509.SignatureAlgorithm // self-signed certificates to make
		pssX   []x509.SignatureAlgorithm // the same with RSA-PSS
		hashes []crypto.Hash             // direct Sign calls
	}{
		{spec: types.KeySpecEccNistP256, x509: []x509.SignatureAlgorithm{x509.ECDSAWithSHA256}, hashes: []crypto.Hash{crypto.SHA256}},
		{spec: types.KeySpecEccNistP384, x509: []x509.SignatureAlgorithm{x509.ECDSAWithSHA384}, hashes: []crypto.Hash{crypto.SHA384}},
		{
			spec:   types.KeySpecRsa2048,
			x509:   []x509.SignatureAlgorithm{x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA},
			pssX:   []x509.SignatureAlgorithm{x509.SHA256WithRSAPSS, x509.SHA384WithRSAPSS, x509.SHA512WithRSAPSS},
			hashes: []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512},
		},
		{spec: types.KeySpecRsa3072, x509: []x509.SignatureAlgorithm{x509.SHA256WithRSA}, pssX: []x509.SignatureAlgorithm{x509.SHA384WithRSAPSS}, hashes: []crypto.Hash{crypto.SHA384}},
		{spec: types.KeySpecRsa4096, x509: []x509.SignatureAlgorithm{x509.SHA512WithRSA}, pssX: []x509.SignatureAlgorithm{x509.SHA256WithRSAPSS}, hashes: []crypto.Hash{crypto.SHA512}},
	}
	for _, tt := range tests {
		t.Run(string(tt.spec), func(t *testing.T) {
			keyID := srv.CreateKey(t, tt.spec)
			api := &countingAPI{API: client}
			s, err := New(context.Background(), api, keyID, Options{})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if n := api.gets.Load(); n != 1 {
				t.Errorf("New made %d GetPublicKey calls, want 1", n)
			}
			if s.KeyID() != keyID || s.KeySpec() != string(tt.spec) || s.Region() != srv.Region ||
				!strings.HasPrefix(s.KeyARN(), "arn:aws:kms:"+srv.Region+":") || !strings.HasSuffix(s.KeyARN(), keyID) {
				t.Errorf("KeyID %q, KeySpec %q, Region %q, KeyARN %q", s.KeyID(), s.KeySpec(), s.Region(), s.KeyARN())
			}

			// Public is the key GetPublicKey reports.
			out, err := client.GetPublicKey(context.Background(), &kms.GetPublicKeyInput{KeyId: &keyID})
			if err != nil {
				t.Fatalf("GetPublicKey: %v", err)
			}
			der, err := x509.MarshalPKIXPublicKey(s.Public())
			if err != nil {
				t.Fatalf("MarshalPKIXPublicKey: %v", err)
			}
			if !bytes.Equal(der, out.PublicKey) {
				t.Errorf("Public() differs from GetPublicKey's key")
			}

			for _, alg := range tt.x509 {
				t.Run(alg.String(), func(t *testing.T) {
					cert, err := selfSigned(t, s, alg)
					if err != nil {
						t.Fatalf("CreateCertificate: %v", err)
					}
					verifySelfSigned(t, cert, alg)
				})
			}
			for _, alg := range tt.pssX {
				t.Run(alg.String(), func(t *testing.T) { testPSSCertificate(t, s, api, alg) })
			}

			// Direct signatures, checked with the standard library.
			for _, h := range tt.hashes {
				msg := []byte("flowdog " + h.String())
				hh := h.New()
				hh.Write(msg)
				digest := hh.Sum(nil)
				if _, ok := s.Public().(*ecdsa.PublicKey); ok {
					sig, err := s.Sign(rand.Reader, digest, h)
					if err != nil {
						t.Fatalf("Sign %v: %v", h, err)
					}
					if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest, sig) {
						t.Errorf("ECDSA %v signature (DER) does not verify", h)
					}
					continue
				}
				pub := s.Public().(*rsa.PublicKey)
				sig, err := s.Sign(rand.Reader, digest, h)
				if err != nil {
					t.Fatalf("Sign PKCS#1 v1.5 %v: %v", h, err)
				}
				if err := rsa.VerifyPKCS1v15(pub, h, digest, sig); err != nil {
					t.Errorf("PKCS#1 v1.5 %v: %v", h, err)
				}
				sig, err = s.Sign(rand.Reader, digest, &rsa.PSSOptions{Hash: h, SaltLength: rsa.PSSSaltLengthEqualsHash})
				if err != nil {
					t.Fatalf("Sign PSS %v: %v", h, err)
				}
				if err := rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}); err != nil {
					t.Errorf("PSS %v: %v", h, err)
				}
			}
		})
	}
}

// testPSSCertificate makes a self-signed certificate with RSA-PSS. crypto/x509
// asks the signer for PSSSaltLengthEqualsHash and checks the signature it
// gets with that salt length; AWS KMS signs with salt = hash length, but
// local-kms uses the longest salt, so against local-kms CreateCertificate
// rejects the signature. Then this checks what can be checked: that KMS was
// asked for the right RSASSA_PSS_* algorithm over a DIGEST, and that the
// signature is a valid PSS signature with local-kms's salt length.
func testPSSCertificate(t *testing.T, s *Signer, api *countingAPI, alg x509.SignatureAlgorithm) {
	var wantAlg types.SigningAlgorithmSpec
	var h crypto.Hash
	switch alg {
	case x509.SHA256WithRSAPSS:
		wantAlg, h = types.SigningAlgorithmSpecRsassaPssSha256, crypto.SHA256
	case x509.SHA384WithRSAPSS:
		wantAlg, h = types.SigningAlgorithmSpecRsassaPssSha384, crypto.SHA384
	case x509.SHA512WithRSAPSS:
		wantAlg, h = types.SigningAlgorithmSpecRsassaPssSha512, crypto.SHA512
	}
	der, err := selfSigned(t, s, alg)
	api.mu.Lock()
	in, sig := api.lastSign, api.lastSig
	api.mu.Unlock()
	if in.SigningAlgorithm != wantAlg || in.MessageType != types.MessageTypeDigest || aws.ToString(in.KeyId) != s.KeyARN() {
		t.Fatalf("KMS Sign got algorithm %q, message type %q, key %q; want %q, DIGEST, %q",
			in.SigningAlgorithm, in.MessageType, aws.ToString(in.KeyId), wantAlg, s.KeyARN())
	}
	if err == nil { // an emulator (or AWS) with salt = hash length
		verifySelfSigned(t, der, alg)
		return
	}
	if !strings.Contains(err.Error(), "signature") {
		t.Fatalf("CreateCertificate: %v", err)
	}
	pub := s.Public().(*rsa.PublicKey)
	salt := localkms.PSSSaltLength(pub.N.BitLen(), h.Size())
	if err := rsa.VerifyPSS(pub, h, in.Message, sig, &rsa.PSSOptions{SaltLength: salt}); err != nil {
		t.Fatalf("CreateCertificate: %v; and the signature is not PSS with local-kms's %d-byte salt either: %v", err, salt, err)
	}
	t.Logf("local-kms signs RSA-PSS with a %d-byte salt where AWS KMS uses %d, so crypto/x509 rejects the certificate; KMS was asked for %s over the certificate's digest and the signature is valid PSS",
		salt, h.Size(), wantAlg)
}

func TestNewRefusesEncryptDecryptKey(t *testing.T) {
	srv := localkms.Start(t)
	keyID := srv.CreateKeyWithUsage(t, types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt)
	_, err := New(context.Background(), srv.Client(t), keyID, Options{})
	if !errors.Is(err, ErrKeyUsage) {
		t.Fatalf("New: %v; want ErrKeyUsage", err)
	}
	for _, want := range []string{keyID, "ENCRYPT_DECRYPT", "SIGN_VERIFY", srv.Region} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestNewRefusesUnsupportedKeySpec(t *testing.T) {
	srv := localkms.Start(t)
	keyID := srv.CreateKey(t, types.KeySpecEccNistP521)
	_, err := New(context.Background(), srv.Client(t), keyID, Options{})
	if !errors.Is(err, ErrUnsupportedKeySpec) || !strings.Contains(err.Error(), "ECC_NIST_P521") || !strings.Contains(err.Error(), keyID) {
		t.Fatalf("New: %v; want ErrUnsupportedKeySpec naming ECC_NIST_P521 and the key", err)
	}
}

func TestNewMissingKey(t *testing.T) {
	srv := localkms.Start(t)
	for _, keyID := range []string{"alias/flowdog-no-such-key", "11111111-2222-3333-4444-555555555555"} {
		_, err := New(context.Background(), srv.Client(t), keyID, Options{})
		if err == nil {
			t.Fatalf("New(%s) succeeded", keyID)
		}
		var nf *types.NotFoundException
		if !errors.As(err, &nf) {
			t.Errorf("New(%s): %v; want a wrapped NotFoundException", keyID, err)
		}
		for _, want := range []string{keyID, "GetPublicKey", srv.Region} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
	}
}

// TestAlias: a signer made from an alias keeps the alias as KeyID and signs
// with the key's ARN, so repointing the alias cannot change the key.
func TestAlias(t *testing.T) {
	srv := localkms.Start(t)
	keyID := srv.CreateKey(t, types.KeySpecEccNistP256)
	srv.CreateAlias(t, "alias/flowdog-root", keyID)
	api := &countingAPI{API: srv.Client(t)}
	s, err := New(context.Background(), api, "alias/flowdog-root", Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if s.KeyID() != "alias/flowdog-root" || !strings.HasSuffix(s.KeyARN(), "key/"+keyID) {
		t.Errorf("KeyID %q, KeyARN %q", s.KeyID(), s.KeyARN())
	}
	// The wrapper hides the client's options: the region comes from the ARN.
	if s.Region() != srv.Region {
		t.Errorf("Region %q, want %q", s.Region(), srv.Region)
	}
	der, err := selfSigned(t, s, x509.ECDSAWithSHA256)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	verifySelfSigned(t, der, x509.ECDSAWithSHA256)
	if got := aws.ToString(api.lastSign.KeyId); got != s.KeyARN() {
		t.Errorf("Sign named the key %q, want its ARN %q", got, s.KeyARN())
	}
}

// TestSignRefusesBeforeCallingKMS: combinations KMS cannot sign are refused
// without a KMS call.
func TestSignRefusesBeforeCallingKMS(t *testing.T) {
	srv := localkms.Start(t)
	client := srv.Client(t)
	ec := &countingAPI{API: client}
	ecSigner, err := New(context.Background(), ec, srv.CreateKey(t, types.KeySpecEccNistP256), Options{})
	if err != nil {
		t.Fatalf("New P-256: %v", err)
	}
	rs := &countingAPI{API: client}
	rsaSigner, err := New(context.Background(), rs, srv.CreateKey(t, types.KeySpecRsa2048), Options{})
	if err != nil {
		t.Fatalf("New RSA: %v", err)
	}
	sum512 := sha512.Sum512([]byte("x"))
	sum256 := sha256.Sum256([]byte("x"))
	sha1Digest := make([]byte, 20)
	tests := []struct {
		name   string
		s      *Signer
		api    *countingAPI
		digest []byte
		opts   crypto.SignerOpts
		want   []string
	}{
		{"P-256 SHA-512", ecSigner, ec, sum512[:], crypto.SHA512, []string{"ECC_NIST_P256", "SHA-512"}},
		{"P-256 SHA-1", ecSigner, ec, sha1Digest, crypto.SHA1, []string{"ECC_NIST_P256", "SHA-1"}},
		{"P-256 PSS", ecSigner, ec, sum256[:], &rsa.PSSOptions{Hash: crypto.SHA256}, []string{"ECC_NIST_P256", "PSS"}},
		{"RSA SHA-1", rsaSigner, rs, sha1Digest, crypto.SHA1, []string{"RSA_2048", "SHA-1"}},
		{"RSA PSS SHA-1", rsaSigner, rs, sha1Digest, &rsa.PSSOptions{Hash: crypto.SHA1}, []string{"RSA_2048", "SHA-1"}},
		{"RSA PSS salt 20", rsaSigner, rs, sum256[:], &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: 20}, []string{"RSA_2048", "salt"}},
		{"RSA unhashed", rsaSigner, rs, sum256[:], crypto.Hash(0), []string{"RSA_2048", "no hash"}},
		{"RSA short digest", rsaSigner, rs, sum256[:31], crypto.SHA256, []string{"31 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.s.Sign(rand.Reader, tt.digest, tt.opts)
			if err == nil {
				t.Fatal("Sign succeeded")
			}
			for _, want := range append(tt.want, tt.s.KeyID()) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
	if n := ec.signs.Load() + rs.signs.Load(); n != 0 {
		t.Errorf("%d KMS Sign calls for refused combinations, want 0", n)
	}
}

// TestSignAfterServerStopped: KMS going away fails Sign within the timeout,
// with an error naming the key.
func TestSignAfterServerStopped(t *testing.T) {
	srv := localkms.Start(t)
	keyID := srv.CreateKey(t, types.KeySpecEccNistP256)
	const timeout = 3 * time.Second
	s, err := New(context.Background(), srv.Client(t), keyID, Options{Timeout: timeout})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv.Stop()
	digest := sha256.Sum256([]byte("x"))
	start := time.Now()
	_, err = s.Sign(rand.Reader, digest[:], crypto.SHA256)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Sign succeeded with the server stopped")
	}
	if elapsed > timeout+time.Second {
		t.Errorf("Sign took %v, timeout %v", elapsed, timeout)
	}
	if !strings.Contains(err.Error(), keyID) || !strings.Contains(err.Error(), "Sign") {
		t.Errorf("error %q does not name the key and the call", err)
	}
	t.Logf("after %v: %v", elapsed.Round(time.Millisecond), err)
}

// TestSignTimeout: a KMS endpoint that accepts connections and never answers
// fails Sign after Options.Timeout.
func TestSignTimeout(t *testing.T) {
	srv := localkms.Start(t)
	keyID := srv.CreateKey(t, types.KeySpecEccNistP256)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	silent := kms.New(kms.Options{
		Region:       srv.Region,
		BaseEndpoint: aws.String("http://" + ln.Addr().String()),
		Credentials:  credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
	})
	// GetPublicKey from the real emulator, Sign from the silent one.
	const timeout = time.Second
	s, err := New(context.Background(), splitAPI{get: srv.Client(t), sign: silent}, keyID, Options{Timeout: timeout})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	digest := sha256.Sum256([]byte("x"))
	start := time.Now()
	_, err = s.Sign(rand.Reader, digest[:], crypto.SHA256)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Sign succeeded against a silent endpoint")
	}
	if elapsed < timeout-100*time.Millisecond || elapsed > timeout+time.Second {
		t.Errorf("Sign took %v, timeout %v", elapsed, timeout)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), keyID) || !strings.Contains(err.Error(), "1s") {
		t.Errorf("error %q: want a wrapped deadline error naming the key and the timeout", err)
	}
}

// splitAPI sends GetPublicKey and Sign to different clients.
type splitAPI struct{ get, sign API }

func (a splitAPI) GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, optFns ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error) {
	return a.get.GetPublicKey(ctx, in, optFns...)
}

func (a splitAPI) Sign(ctx context.Context, in *kms.SignInput, optFns ...func(*kms.Options)) (*kms.SignOutput, error) {
	return a.sign.Sign(ctx, in, optFns...)
}

// TestConcurrentSign: the signer is safe for concurrent use.
func TestConcurrentSign(t *testing.T) {
	srv := localkms.Start(t)
	s, err := New(context.Background(), srv.Client(t), srv.CreateKey(t, types.KeySpecEccNistP256), Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			d := sha256.Sum256([]byte{byte(i)})
			sig, err := s.Sign(nil, d[:], crypto.SHA256)
			if err == nil && !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
				err = errors.New("signature does not verify")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
