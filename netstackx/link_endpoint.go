package netstackx

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// linkEndpoint is the NIC of a tenant's stack. There is no wire: inbound
// packets are injected by the tenant's inject goroutine, and every outbound
// packet is flattened into a pooled buffer and handed to emit synchronously,
// on whichever gVisor goroutine wrote it. emit wraps it in its flow's envelope
// and queues it for GWLB (gwlb.Datapath.Send copies and never blocks), so
// this endpoint needs neither an outbound queue nor a goroutine of its own.
//
// Why not channel.Endpoint: it queues clones of every packet for a reader
// goroutine, which costs a channel hop and a second queue (GWLB's send
// queue already is one) and would have to be drained on teardown; and its
// GSO hints are of no use here.
type linkEndpoint struct {
	mtu  atomic.Uint32
	emit func(b []byte) // owns nothing: b is only valid during the call
	drop func(reason string)

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	onClose    func()
}

var _ stack.LinkEndpoint = (*linkEndpoint)(nil)

func newLinkEndpoint(mtu uint32, emit func([]byte), drop func(string)) *linkEndpoint {
	l := &linkEndpoint{emit: emit, drop: drop}
	l.mtu.Store(mtu)
	return l
}

// outBufs holds flat copies of outbound packets, sized for GWLB's largest.
var outBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxMTU); return &b }}

// WritePackets implements stack.LinkWriter. It never fails: like a lossy
// wire, a packet that cannot be sent is counted and dropped, and TCP
// retransmits.
func (l *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	mtu := int(l.mtu.Load())
	n := 0
	for _, pkt := range pkts.AsSlice() {
		n++
		if size := pkt.Size(); size > mtu || size > maxMTU {
			// gVisor sizes segments by the NIC's MTU, so this is a bug
			// guard: GWLB would drop the packet anyway.
			l.drop(dropOversize)
			continue
		}
		bp := outBufs.Get().(*[]byte)
		b := (*bp)[:0]
		for _, v := range pkt.AsSlices() {
			b = append(b, v...)
		}
		l.emit(b)
		*bp = b[:0]
		outBufs.Put(bp)
	}
	return n, nil
}

// InjectInbound hands an IP packet to the stack, as if it came off the wire.
func (l *linkEndpoint) InjectInbound(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d != nil {
		d.DeliverNetworkPacket(proto, pkt)
	}
}

// MTU implements stack.NetworkLinkEndpoint.
func (l *linkEndpoint) MTU() uint32 { return l.mtu.Load() }

// SetMTU implements stack.NetworkLinkEndpoint.
func (l *linkEndpoint) SetMTU(mtu uint32) { l.mtu.Store(mtu) }

// MaxHeaderLength implements stack.NetworkLinkEndpoint: no link header.
func (*linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint: an IP-only link has
// none, so the stack never resolves neighbours (no ARP, no NDP).
func (*linkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint.
func (*linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint. No checksum offload:
// the packets travel to real hosts, and inbound ones come from untrusted
// networks, so gVisor computes and verifies every checksum.
func (*linkEndpoint) Capabilities() stack.LinkEndpointCapabilities { return 0 }

// Attach implements stack.NetworkLinkEndpoint.
func (l *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (l *linkEndpoint) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}

// Wait implements stack.NetworkLinkEndpoint: there is no goroutine to wait for.
func (*linkEndpoint) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (*linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint: no link header.
func (*linkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint: no link header.
func (*linkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint. The stack calls it when the
// NIC is removed (stack.Wait); later injections are dropped.
func (l *linkEndpoint) Close() {
	l.mu.Lock()
	l.dispatcher = nil
	f := l.onClose
	l.onClose = nil
	l.mu.Unlock()
	if f != nil {
		f()
	}
}

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (l *linkEndpoint) SetOnCloseAction(f func()) {
	l.mu.Lock()
	l.onClose = f
	l.mu.Unlock()
}
