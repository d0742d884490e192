// Package localkms runs github.com/nsmithuk/local-kms, an AWS KMS emulator,
// for tests: Start launches the local-kms binary on a free loopback port with
// a throw-away data directory and stops it when the test ends.
//
// The binary is found as local-kms on PATH or in $(go env GOPATH)/bin (CI
// installs it with go install github.com/nsmithuk/local-kms@<version>). When
// it is missing, Start skips the test with a message saying how to install it,
// except in CI (the CI environment variable is set), where a missing emulator
// fails the test instead of silently skipping it.
//
// local-kms implements asymmetric keys (ECC_NIST_P256, ECC_NIST_P384,
// ECC_NIST_P521, ECC_SECG_P256K1, RSA_2048/3072/4096) with Sign in RAW and
// DIGEST modes. One difference from AWS matters to signers: its RSASSA_PSS_*
// signatures use the longest possible salt, while AWS KMS uses a salt as long
// as the hash (see PSSSaltLength).
package localkms
