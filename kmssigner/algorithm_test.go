package kmssigner

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

func TestSigningAlgorithm(t *testing.T) {
	pss := func(h crypto.Hash, salt int) *rsa.PSSOptions { return &rsa.PSSOptions{Hash: h, SaltLength: salt} }
	tests := []struct {
		spec types.KeySpec
		opts crypto.SignerOpts
		want types.SigningAlgorithmSpec // "" means refused
		msg  []string                   // the refusal names these
	}{
		// ECDSA: one hash per curve.
		{spec: types.KeySpecEccNistP256, opts: crypto.SHA256, want: types.SigningAlgorithmSpecEcdsaSha256},
		{spec: types.KeySpecEccNistP384, opts: crypto.SHA384, want: types.SigningAlgorithmSpecEcdsaSha384},
		{spec: types.KeySpecEccNistP256, opts: crypto.SHA512, msg: []string{"ECC_NIST_P256", "SHA-512", "ECDSA_SHA_256"}},
		{spec: types.KeySpecEccNistP256, opts: crypto.SHA384, msg: []string{"ECC_NIST_P256", "SHA-384"}},
		{spec: types.KeySpecEccNistP384, opts: crypto.SHA256, msg: []string{"ECC_NIST_P384", "SHA-256", "ECDSA_SHA_384"}},
		{spec: types.KeySpecEccNistP256, opts: crypto.SHA1, msg: []string{"ECC_NIST_P256", "SHA-1"}},
		{spec: types.KeySpecEccNistP256, opts: crypto.Hash(0), msg: []string{"ECC_NIST_P256", "no hash"}},
		{spec: types.KeySpecEccNistP256, opts: pss(crypto.SHA256, rsa.PSSSaltLengthEqualsHash), msg: []string{"ECC_NIST_P256", "PSS"}},

		// RSA PKCS#1 v1.5.
		{spec: types.KeySpecRsa2048, opts: crypto.SHA256, want: types.SigningAlgorithmSpecRsassaPkcs1V15Sha256},
		{spec: types.KeySpecRsa3072, opts: crypto.SHA384, want: types.SigningAlgorithmSpecRsassaPkcs1V15Sha384},
		{spec: types.KeySpecRsa4096, opts: crypto.SHA512, want: types.SigningAlgorithmSpecRsassaPkcs1V15Sha512},
		{spec: types.KeySpecRsa2048, opts: crypto.SHA1, msg: []string{"RSA_2048", "SHA-1", "PKCS#1 v1.5"}},
		{spec: types.KeySpecRsa2048, opts: crypto.SHA224, msg: []string{"RSA_2048", "SHA-224"}},
		{spec: types.KeySpecRsa2048, opts: crypto.MD5SHA1, msg: []string{"RSA_2048", "MD5+SHA1"}},
		{spec: types.KeySpecRsa2048, opts: crypto.SHA3_256, msg: []string{"RSA_2048", "SHA3-256"}},
		{spec: types.KeySpecRsa2048, opts: crypto.Hash(0), msg: []string{"RSA_2048", "no hash"}},

		// RSA PSS: KMS's salt is as long as the hash.
		{spec: types.KeySpecRsa2048, opts: pss(crypto.SHA256, rsa.PSSSaltLengthEqualsHash), want: types.SigningAlgorithmSpecRsassaPssSha256},
		{spec: types.KeySpecRsa2048, opts: pss(crypto.SHA256, rsa.PSSSaltLengthAuto), want: types.SigningAlgorithmSpecRsassaPssSha256},
		{spec: types.KeySpecRsa3072, opts: pss(crypto.SHA384, 48), want: types.SigningAlgorithmSpecRsassaPssSha384},
		{spec: types.KeySpecRsa4096, opts: pss(crypto.SHA512, rsa.PSSSaltLengthEqualsHash), want: types.SigningAlgorithmSpecRsassaPssSha512},
		{spec: types.KeySpecRsa2048, opts: pss(crypto.SHA256, 20), msg: []string{"RSA_2048", "SHA-256", "20-byte salt"}},
		{spec: types.KeySpecRsa2048, opts: pss(crypto.SHA1, rsa.PSSSaltLengthEqualsHash), msg: []string{"RSA_2048", "SHA-1", "PSS"}},

		// Key specs New refuses.
		{spec: types.KeySpecEccNistP521, opts: crypto.SHA512, msg: []string{"ECC_NIST_P521"}},
		{spec: types.KeySpecSymmetricDefault, opts: crypto.SHA256, msg: []string{"SYMMETRIC_DEFAULT"}},
	}
	for _, tt := range tests {
		name := string(tt.spec) + "/" + hashName(tt.opts.HashFunc())
		if p, ok := tt.opts.(*rsa.PSSOptions); ok {
			name += "/PSS"
			if p.SaltLength > 0 {
				name += "-salt"
			}
		}
		t.Run(name, func(t *testing.T) {
			got, err := SigningAlgorithm(tt.spec, tt.opts)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("SigningAlgorithm = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("SigningAlgorithm = %q; want a refusal", got)
			}
			if !errors.Is(err, ErrUnsupportedAlgorithm) && !errors.Is(err, ErrUnsupportedKeySpec) {
				t.Errorf("error %q wraps neither ErrUnsupportedAlgorithm nor ErrUnsupportedKeySpec", err)
			}
			for _, m := range tt.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
	if _, err := SigningAlgorithm(types.KeySpecRsa2048, nil); !errors.Is(err, ErrUnsupportedAlgorithm) {
		t.Errorf("nil opts: %v; want ErrUnsupportedAlgorithm", err)
	}
}

func TestARNRegion(t *testing.T) {
	for in, want := range map[string]string{
		"arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab": "eu-west-1",
		"arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/flowdog-root":            "us-gov-west-1",
		"alias/flowdog-root":                   "",
		"1234abcd-12ab-34cd-56ef-1234567890ab": "",
		"arn:aws:s3:::bucket":                  "",
	} {
		if got := arnRegion(in); got != want {
			t.Errorf("arnRegion(%q) = %q, want %q", in, got, want)
		}
	}
}
