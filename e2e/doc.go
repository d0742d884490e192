// Package e2e is flowdog's end-to-end suite on real sockets: a local VPC of
// Linux network namespaces (e2e/vpc.sh) in which unmodified programs (curl,
// nginx, the kernel's TCP/IP) talk through flowdog exactly as they would
// behind a real Gateway Load Balancer, played by gwlbsim in TUN mode.
//
// The tests carry the build tag e2e, so that `go test ./...` neither
// compiles nor runs them. They need root; run them with `make e2e`:
//
//	go test -tags e2e -count=1 -v ./e2e/
//
// Environment: E2E_RUN_DIR (default /tmp/flowdog-e2e), E2E_BIG_MB (size of
// the large transfer, default 1024), E2E_KEEP=1 (leave the VPC up after the
// run, for a look around; `make e2e-down` removes it).
package e2e
