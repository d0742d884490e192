package gwlb

import "net/netip"

// maxPendingBytes caps what one flow may hold while its decision is pending.
const maxPendingBytes = 64 << 10

type pendingPacket struct {
	src   netip.AddrPort
	local netip.Addr
	data  []byte // the Geneve datagram as received
}

// pendingQueue holds a flow's first packets until its acceptor decides.
// Guarded by the flow's shard lock.
type pendingQueue struct {
	pkts     []pendingPacket
	bytes    int
	deciding bool // the decision arrived and the queue is being released
}

// push copies dgram into the queue; false when the queue is full.
func (q *pendingQueue) push(src netip.AddrPort, local netip.Addr, dgram []byte, max int) bool {
	if len(q.pkts) >= max || q.bytes+len(dgram) > maxPendingBytes {
		return false
	}
	q.pkts = append(q.pkts, pendingPacket{src, local, append([]byte(nil), dgram...)})
	q.bytes += len(dgram)
	return true
}

func (q *pendingQueue) take() []pendingPacket {
	p := q.pkts
	q.pkts, q.bytes = nil, 0
	return p
}
