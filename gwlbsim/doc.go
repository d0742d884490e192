// Package gwlbsim simulates the AWS Gateway Load Balancer side of the
// appliance contract, for tests and local runs of flowdog.
//
// A Sim owns tenants (one per VPC endpoint id + attachment id); a tenant owns
// hosts, each a gVisor netstack whose only way out is the Sim. Every packet a
// host emits is wrapped in Geneve exactly as GWLB wraps it (AWS options: VPC
// endpoint id, attachment id, per-flow cookie) and sent over UDP to the
// appliance from a per-flow source port. Replies that the appliance sends to
// the Sim's GWLB address on port 6081 are checked against the contract (same
// envelope as the latest one sent for the flow, same source port, inner packet
// at most 8,500 bytes) and, when valid, injected into the host of the same
// tenant that owns the inner destination address. Replies that break the
// contract are counted as Violations and dropped, as GWLB would drop them.
//
// A tenant may also take a PacketDevice (Tenant.AttachDevice), typically a
// TUN device (OpenTUN) into which a kernel routes real traffic: its packets
// go through the appliance like a host's, and valid replies that no host
// claims are written back to it. cmd/gwlbsim --tun and e2e/ use this to put
// flowdog between network namespaces.
//
// The Sim is an independent implementation: it shares no code with flowdog's
// gwlb package on purpose, so that a bug in one is caught by the other.
package gwlbsim
