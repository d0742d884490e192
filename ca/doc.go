// Package ca is flowdog's TLS-intercepting certificate authority.
//
// Three tiers of certificates are involved:
//
//   - The Root is the trust anchor that clients install. It is a certificate
//     and a crypto.Signer for its key: a file key for local runs (LoadOrCreate
//     generates one with 0600 permissions in the state directory on first
//     start; LoadPEM loads a configured one) or, later, an AWS KMS key. The
//     root key is used only when an intermediate is signed: once at start-up
//     and once per rotation, never per connection.
//   - The intermediate is created in memory by New and by each rotation
//     (ECDSA P-256, path length 0, 72 h by default). Its key is never written
//     anywhere. Run rotates it a third of its lifetime before it expires; a
//     rotation that fails (a KMS outage, say) keeps the current intermediate
//     serving, is logged and counted in flowdog_ca_rotation_failures_total,
//     and is retried every RetryInterval until it succeeds.
//   - Leaves are minted by Authority.Leaf for a LeafSpec (usually built by
//     SpecFromUpstream from the upstream server's certificate, the way
//     mitmproxy mirrors it) and signed by the current intermediate. All the
//     leaves of one intermediate generation share one ECDSA P-256 key
//     generated with it, so minting costs one ECDSA signature. Leaves are
//     kept in a bounded LRU cache keyed by their normalized set of names, and
//     concurrent requests for the same new names mint once.
//
// The chain a client receives is leaf + intermediate; the client completes
// it with the root from its trust store. Metrics are named flowdog_ca_*.
package ca
