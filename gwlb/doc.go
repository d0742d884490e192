// Package gwlb is flowdog's data path behind an AWS Gateway Load Balancer:
// socket workers that read Geneve datagrams in batches, the flow table
// keyed by tenant and direction-free 5-tuple, the policy that gives new
// flows a verdict (FAST, DROP or INTERCEPT, possibly decided asynchronously
// by an Acceptor), the zero-copy fast path that reflects datagrams to GWLB
// through a raw socket, and the health check GWLB probes.
//
// The codec lives in the packet subpackage. gwlb knows nothing of HTTP or
// netstacks: INTERCEPT flows are handed to an InterceptHandler, which sends
// its packets back with Datapath.Send in the flow's latest envelope.
package gwlb
