package kmssigner

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// Errors that callers may test for with errors.Is.
var (
	// ErrUnsupportedAlgorithm: KMS cannot sign with this combination of key
	// spec, hash and options.
	ErrUnsupportedAlgorithm = errors.New("signing algorithm not supported by KMS for this key")
	// ErrUnsupportedKeySpec: the key's spec is not one kmssigner supports.
	ErrUnsupportedKeySpec = errors.New("unsupported key spec")
	// ErrKeyUsage: the key is not a SIGN_VERIFY key.
	ErrKeyUsage = errors.New("key usage is not SIGN_VERIFY")
	// ErrNoRegion: NewFromEnv found no AWS region.
	ErrNoRegion = errors.New("no AWS region")
)

// SupportedKeySpecs are the key specs New accepts. ECC_NIST_P521 and
// ECC_SECG_P256K1 are left out on purpose: major TLS clients (Chrome's
// BoringSSL among them) do not accept them in certificate chains, so a root
// on such a key would not be trusted.
var SupportedKeySpecs = []types.KeySpec{
	types.KeySpecEccNistP256,
	types.KeySpecEccNistP384,
	types.KeySpecRsa2048,
	types.KeySpecRsa3072,
	types.KeySpecRsa4096,
}

func supportedKeySpec(spec types.KeySpec) bool {
	for _, s := range SupportedKeySpecs {
		if s == spec {
			return true
		}
	}
	return false
}

func isRSA(spec types.KeySpec) bool {
	switch spec {
	case types.KeySpecRsa2048, types.KeySpecRsa3072, types.KeySpecRsa4096:
		return true
	}
	return false
}

// hashName names a hash for error messages, including the zero hash.
func hashName(h crypto.Hash) string {
	if h == 0 {
		return "no hash (crypto.Hash(0), unhashed input)"
	}
	return h.String()
}

// SigningAlgorithm returns the KMS signing algorithm for a key of the given
// spec and the crypto.SignerOpts that a caller passes to Sign, or an error
// wrapping ErrUnsupportedAlgorithm that names the key spec and the hash when
// KMS has no such algorithm. It makes no KMS call.
func SigningAlgorithm(spec types.KeySpec, opts crypto.SignerOpts) (types.SigningAlgorithmSpec, error) {
	if opts == nil {
		return "", fmt.Errorf("key spec %s: nil crypto.SignerOpts: %w", spec, ErrUnsupportedAlgorithm)
	}
	h := opts.HashFunc()
	pss, isPSS := opts.(*rsa.PSSOptions)
	switch spec {
	case types.KeySpecEccNistP256, types.KeySpecEccNistP384:
		want, alg := crypto.SHA256, types.SigningAlgorithmSpecEcdsaSha256
		if spec == types.KeySpecEccNistP384 {
			want, alg = crypto.SHA384, types.SigningAlgorithmSpecEcdsaSha384
		}
		if isPSS {
			return "", fmt.Errorf("key spec %s: RSA-PSS options given for an ECC key: %w", spec, ErrUnsupportedAlgorithm)
		}
		if h != want {
			return "", fmt.Errorf("key spec %s cannot sign a %s digest: KMS offers only %s (%s) for this curve: %w",
				spec, hashName(h), alg, want, ErrUnsupportedAlgorithm)
		}
		return alg, nil

	case types.KeySpecRsa2048, types.KeySpecRsa3072, types.KeySpecRsa4096:
		var pkcs1, pssAlg types.SigningAlgorithmSpec
		switch h {
		case crypto.SHA256:
			pkcs1, pssAlg = types.SigningAlgorithmSpecRsassaPkcs1V15Sha256, types.SigningAlgorithmSpecRsassaPssSha256
		case crypto.SHA384:
			pkcs1, pssAlg = types.SigningAlgorithmSpecRsassaPkcs1V15Sha384, types.SigningAlgorithmSpecRsassaPssSha384
		case crypto.SHA512:
			pkcs1, pssAlg = types.SigningAlgorithmSpecRsassaPkcs1V15Sha512, types.SigningAlgorithmSpecRsassaPssSha512
		default:
			scheme := "PKCS#1 v1.5"
			if isPSS {
				scheme = "PSS"
			}
			return "", fmt.Errorf("key spec %s cannot sign a %s digest with RSA %s: KMS offers SHA-256, SHA-384 and SHA-512: %w",
				spec, hashName(h), scheme, ErrUnsupportedAlgorithm)
		}
		if !isPSS {
			return pkcs1, nil
		}
		switch pss.SaltLength {
		case rsa.PSSSaltLengthEqualsHash, rsa.PSSSaltLengthAuto, h.Size():
			return pssAlg, nil
		}
		return "", fmt.Errorf("key spec %s cannot sign RSA-PSS %s with a %d-byte salt: KMS's salt is as long as the hash (%d bytes): %w",
			spec, hashName(h), pss.SaltLength, h.Size(), ErrUnsupportedAlgorithm)
	}
	return "", fmt.Errorf("key spec %s: %w", spec, ErrUnsupportedKeySpec)
}
