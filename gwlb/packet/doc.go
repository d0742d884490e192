// Package packet is flowdog's zero-allocation codec for what GWLB sends and
// what flowdog sends back: the Geneve header with AWS's options (VPC endpoint
// id, attachment id, flow cookie), the inner IPv4/IPv6 packet and its 5-tuple,
// the outer IPv4+UDP header flowdog writes on its raw socket, and TCP resets.
//
// Decoders fill structs the caller owns and keep sub-slices of the input
// instead of copying, so a socket worker can reuse one Packet for every
// datagram. Decoding never allocates; a test pins that with
// testing.AllocsPerRun. Input is untrusted: every length is checked and
// malformed input yields one of the preallocated *Malformed sentinels, whose
// Kind is a metric label (see Kinds).
package packet
