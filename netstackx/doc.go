// Package netstackx terminates flowdog's INTERCEPT flows in userspace TCP/IP
// stacks (gVisor's netstack), one stack per tenant.
//
// A tenant is a GWLB endpoint: its VPC endpoint id plus attachment id. Two
// tenants may use the same private addresses, so nothing is shared between
// them: each gets its own stack, created when its first intercepted flow
// arrives and torn down once it has had no flows and no connections for
// Config.TenantIdle.
//
// Each stack's one NIC is promiscuous (it accepts packets for any
// destination address) and spoofing (it may send from any source address),
// so the stack can play both ends of every intercepted connection:
//
//   - the server's end towards the client: a TCP forwarder takes the client's
//     SYN (only SYNs of flows the data path marked INTERCEPT ever reach a
//     stack), and
//   - the client's end towards the server: the upstream connection is dialled
//     through the same stack from the client's address and port to the
//     original destination address and port, i.e. on the same 5-tuple, so the
//     server's answers come back through GWLB to this appliance.
//
// The client's handshake completes only once the upstream has answered, so
// interception stays transparent: a refused upstream port gets the client a
// RST, a silent upstream leaves the client without an answer, and only a
// connected upstream gets the client a SYN-ACK. The Handler then receives
// both legs as net.Conns (*TCPConn, which can also be reset).
//
// Every packet a stack emits is matched to its flow by its 5-tuple and sent
// back to GWLB in that flow's latest envelope through the Sender (the gwlb
// Datapath). No emitted packet is larger than Config.MTU. When a flow
// expires or is replaced (gwlb's FlowClosed), the endpoints still holding
// its tuple are released, so a client that reuses a tuple gets a fresh
// connection.
//
// Packets from the data path go through a bounded per-stack queue: the
// socket worker that calls HandlePacket only copies the packet and never
// waits for gVisor; when a stack falls behind, packets are dropped and
// counted (flowdog_netstack_dropped_packets_total{reason="queue_full"}).
package netstackx
