// Package kmssigner is a crypto.Signer whose private key never leaves AWS
// KMS. flowdog uses it for the root of its TLS-intercepting CA (package ca):
// the root key signs only intermediates, once at start-up and once per
// rotation, so one KMS Sign call is made per rotation, never per connection.
//
// New fetches the key's public key once (GetPublicKey), checks that the
// key's usage is SIGN_VERIFY and that its key spec is one of ECC_NIST_P256,
// ECC_NIST_P384, RSA_2048, RSA_3072 or RSA_4096, and pins the key by the ARN
// that GetPublicKey returns: later Sign calls name that ARN, so an alias that
// is repointed afterwards cannot make Sign use a key whose public key differs
// from Public(). NewFromEnv builds the client from the AWS SDK's default
// configuration: the default credential chain, the region from AWS_REGION,
// AWS_DEFAULT_REGION or the shared config (else the key ARN, else EC2
// instance metadata), and endpoint overrides through AWS_ENDPOINT_URL or
// AWS_ENDPOINT_URL_KMS, so that tests and operators can point it at an
// emulator or a VPC endpoint without code.
//
// Sign sends the digest (MessageType DIGEST) with the KMS signing algorithm
// that matches the key and the crypto.SignerOpts:
//
//	key spec               opts                               KMS algorithm
//	ECC_NIST_P256          crypto.SHA256                      ECDSA_SHA_256
//	ECC_NIST_P384          crypto.SHA384                      ECDSA_SHA_384
//	RSA_2048/3072/4096     crypto.SHA256/384/512              RSASSA_PKCS1_V1_5_SHA_256/384/512
//	RSA_2048/3072/4096     *rsa.PSSOptions, SHA256/384/512    RSASSA_PSS_SHA_256/384/512
//
// KMS offers exactly one ECDSA algorithm per curve, so any other hash on an
// ECC key (SHA-512 on P-256, say) is refused, as are SHA-1, SHA-224, MD5,
// SHA-3 and unhashed input (crypto.Hash(0)) on any key. KMS's PSS salt is
// always as long as the hash: *rsa.PSSOptions with PSSSaltLengthEqualsHash
// (what crypto/x509 and crypto/tls pass) or an explicit salt length equal to
// the hash size is accepted, and so is PSSSaltLengthAuto, because a verifier
// in "auto" mode accepts any salt length; any other explicit salt length is
// refused. Refusals happen before any KMS call and wrap
// ErrUnsupportedAlgorithm, naming the key spec and the hash. ECDSA
// signatures come back from KMS ASN.1 DER encoded, which is what
// crypto.Signer callers expect.
//
// crypto.Signer.Sign has no context, so every KMS call (Sign and
// GetPublicKey) runs under its own timeout, Options.Timeout (10 s by
// default). Errors name the key (as given, and its ARN once known) and are
// wrapped, so that errors.Is and errors.As see the SDK's errors.
package kmssigner
