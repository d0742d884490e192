package kmssigner

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// DefaultTimeout bounds each KMS call when Options.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// API is the part of the KMS client that the signer uses. *kms.Client
// implements it; tests wrap it to count calls.
type API interface {
	GetPublicKey(ctx context.Context, in *kms.GetPublicKeyInput, optFns ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error)
	Sign(ctx context.Context, in *kms.SignInput, optFns ...func(*kms.Options)) (*kms.SignOutput, error)
}

// Options tune a Signer.
type Options struct {
	// Timeout bounds each KMS call (GetPublicKey in New, each Sign), retries
	// included. Zero means DefaultTimeout.
	Timeout time.Duration
}

// Signer is a crypto.Signer whose private key never leaves AWS KMS. It is
// safe for concurrent use.
type Signer struct {
	client  API
	keyID   string // as given to New
	arn     string // from GetPublicKey; Sign names the key by it
	spec    types.KeySpec
	region  string
	pub     crypto.PublicKey
	algs    []types.SigningAlgorithmSpec // the key's algorithms, per GetPublicKey
	timeout time.Duration
}

// regionOf returns the region of a client that exposes its options (as
// *kms.Client does), or "".
func regionOf(client API) string {
	if c, ok := client.(interface{ Options() kms.Options }); ok {
		return c.Options().Region
	}
	return ""
}

// arnRegion returns the region field of a KMS ARN
// (arn:PARTITION:kms:REGION:ACCOUNT:key/ID or alias/NAME), or "".
func arnRegion(s string) string {
	f := strings.SplitN(s, ":", 6)
	if len(f) == 6 && f[0] == "arn" && f[2] == "kms" {
		return f[3]
	}
	return ""
}

// keyName is how errors name a key before New has its ARN.
func keyName(keyID, region string) string {
	if region == "" {
		return "key " + keyID
	}
	return "key " + keyID + " in region " + region
}

// New fetches the public key of keyID (a key ID, key ARN, alias/NAME or
// alias ARN) once with GetPublicKey, checks that its usage is SIGN_VERIFY,
// that its key spec is supported (SupportedKeySpecs) and that the public key
// matches the spec, and returns the signer. ctx bounds the call together
// with opts.Timeout.
func New(ctx context.Context, client API, keyID string, opts Options) (*Signer, error) {
	if client == nil {
		return nil, errors.New("kms: nil client")
	}
	if keyID == "" {
		return nil, errors.New("kms: empty key ID")
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	region := regionOf(client)
	if region == "" {
		region = arnRegion(keyID)
	}
	name := keyName(keyID, region)

	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := client.GetPublicKey(cctx, &kms.GetPublicKeyInput{KeyId: &keyID})
	if err != nil {
		return nil, fmt.Errorf("kms: %s: GetPublicKey: %w", name, withDeadline(cctx, err, timeout))
	}
	if out.KeyId == nil || *out.KeyId == "" {
		return nil, fmt.Errorf("kms: %s: GetPublicKey returned no key ARN", name)
	}
	s := &Signer{
		client:  client,
		keyID:   keyID,
		arn:     *out.KeyId,
		spec:    out.KeySpec,
		region:  region,
		algs:    out.SigningAlgorithms,
		timeout: timeout,
	}
	if s.region == "" {
		s.region = arnRegion(s.arn)
		name = keyName(keyID, s.region)
	}
	if s.spec == "" {
		s.spec = types.KeySpec(out.CustomerMasterKeySpec) // older responses
	}
	if out.KeyUsage != types.KeyUsageTypeSignVerify {
		return nil, fmt.Errorf("kms: %s (%s): key usage is %s, want SIGN_VERIFY (create the key with KeyUsage SIGN_VERIFY): %w",
			name, s.arn, out.KeyUsage, ErrKeyUsage)
	}
	if !supportedKeySpec(s.spec) {
		return nil, fmt.Errorf("kms: %s (%s): key spec %q, want one of %v: %w", name, s.arn, s.spec, SupportedKeySpecs, ErrUnsupportedKeySpec)
	}
	pub, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("kms: %s (%s): parsing the public key: %w", name, s.arn, err)
	}
	if err := checkPublicKey(s.spec, pub); err != nil {
		return nil, fmt.Errorf("kms: %s (%s): %w", name, s.arn, err)
	}
	s.pub = pub
	return s, nil
}

// checkPublicKey checks that pub is a key of the given spec.
func checkPublicKey(spec types.KeySpec, pub crypto.PublicKey) error {
	switch spec {
	case types.KeySpecEccNistP256, types.KeySpecEccNistP384:
		curve := elliptic.P256()
		if spec == types.KeySpecEccNistP384 {
			curve = elliptic.P384()
		}
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok || k.Curve != curve {
			return fmt.Errorf("public key is %T, not an ECDSA %s key as its key spec %s says", pub, curve.Params().Name, spec)
		}
	default:
		bits := map[types.KeySpec]int{types.KeySpecRsa2048: 2048, types.KeySpecRsa3072: 3072, types.KeySpecRsa4096: 4096}[spec]
		k, ok := pub.(*rsa.PublicKey)
		if !ok || k.N.BitLen() != bits {
			return fmt.Errorf("public key is %T, not a %d-bit RSA key as its key spec %s says", pub, bits, spec)
		}
	}
	return nil
}

// withDeadline adds the timeout to err when ctx's deadline ran out, so that
// "context deadline exceeded" says which limit it was.
func withDeadline(ctx context.Context, err error, timeout time.Duration) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %v: %w", timeout, err)
	}
	return err
}

// Public returns the key's public key, as fetched by New: *ecdsa.PublicKey
// or *rsa.PublicKey.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs digest, the hash of a message under opts.HashFunc(), with the
// KMS key (MessageType DIGEST); rand is ignored (KMS has its own). opts picks
// the algorithm as the package documentation describes; combinations that
// KMS does not support are refused before any KMS call with an error
// wrapping ErrUnsupportedAlgorithm. The call is bounded by Options.Timeout.
// ECDSA signatures are ASN.1 DER, RSA signatures are as long as the modulus.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	alg, err := SigningAlgorithm(s.spec, opts)
	if err != nil {
		return nil, fmt.Errorf("kms: Sign with %s: %w", s.name(), err)
	}
	if h := opts.HashFunc(); len(digest) != h.Size() {
		return nil, fmt.Errorf("kms: Sign with %s: digest is %d bytes, a %s digest is %d", s.name(), len(digest), h, h.Size())
	}
	if !s.offers(alg) {
		return nil, fmt.Errorf("kms: Sign with %s: the key offers %v, not %s: %w", s.name(), s.algs, alg, ErrUnsupportedAlgorithm)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	out, err := s.client.Sign(ctx, &kms.SignInput{
		KeyId:            &s.arn,
		Message:          digest,
		MessageType:      types.MessageTypeDigest,
		SigningAlgorithm: alg,
	})
	if err != nil {
		return nil, fmt.Errorf("kms: Sign with %s (%s): %w", s.name(), alg, withDeadline(ctx, err, s.timeout))
	}
	if len(out.Signature) == 0 {
		return nil, fmt.Errorf("kms: Sign with %s (%s): empty signature", s.name(), alg)
	}
	return out.Signature, nil
}

// offers reports whether GetPublicKey listed alg for the key (an empty list
// is taken as "any": KMS always lists them, some emulators may not).
func (s *Signer) offers(alg types.SigningAlgorithmSpec) bool {
	if len(s.algs) == 0 {
		return true
	}
	for _, a := range s.algs {
		if a == alg {
			return true
		}
	}
	return false
}

// name is how errors name the key: as given, with the ARN when it differs.
func (s *Signer) name() string {
	if s.arn == "" || s.arn == s.keyID {
		return s.keyID
	}
	return s.keyID + " (" + s.arn + ")"
}

// KeyID returns the key as given to New (an ID, ARN or alias).
func (s *Signer) KeyID() string { return s.keyID }

// KeyARN returns the key's ARN, as GetPublicKey returned it.
func (s *Signer) KeyARN() string { return s.arn }

// KeySpec returns the key's spec, such as "ECC_NIST_P256" or "RSA_3072".
func (s *Signer) KeySpec() string { return string(s.spec) }

// Region returns the key's region: the client's, else the one in the key's
// ARN.
func (s *Signer) Region() string { return s.region }

var _ crypto.Signer = (*Signer)(nil)
