package netstackx

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/gwlb/packet"
)

type nopSender struct{}

func (nopSender) Send(*gwlb.Flow, []byte) error { return nil }

var benchTuple = packet.Tuple{Proto: 6, Src: netip.MustParseAddr("10.0.0.10"), Dst: netip.MustParseAddr("198.51.100.10"),
	SrcPort: 40000, DstPort: 80}

// benchSegment is a 1,400-byte TCP segment with a valid IP header checksum
// and a wrong TCP checksum: the stack parses it, verifies the checksum over
// the whole segment (the bulk of the inline cost of a data segment) and
// drops it.
func benchSegment() []byte {
	b := ipv4TCP(benchTuple, 1400)
	binary.BigEndian.PutUint16(b[10:], 0)
	binary.BigEndian.PutUint16(b[10:], packet.Checksum(b[:20], 0))
	return b
}

func benchEngine(b *testing.B, queue int) (*Engine, *gwlb.Flow) {
	e := New(Config{QueueLen: queue}, func(context.Context, *Conn) {})
	e.Start(b.Context(), nopSender{})
	b.Cleanup(func() { e.Close() })
	c, _ := benchTuple.Canonical()
	return e, &gwlb.Flow{Key: gwlb.FlowKey{Tenant: packet.Tenant{EndpointID: 1}, Tuple: c}, Initiator: benchTuple}
}

// BenchmarkHandlePacket is what a socket worker pays per intercepted packet
// with the per-stack queue: decode, flow lookup, one copy, a channel send.
// The queue is large and drained between rounds, so nothing is dropped.
func BenchmarkHandlePacket(b *testing.B) {
	e, f := benchEngine(b, 1<<20)
	pkt := benchSegment()
	e.HandlePacket(f, pkt) // creates the stack
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		e.HandlePacket(f, pkt)
	}
	b.StopTimer()
	if d := gatherDrops(e); d > 0 {
		b.Fatalf("%v drops", d)
	}
}

// BenchmarkInjectInline is what a socket worker would pay per packet if
// HandlePacket injected straight into gVisor (the inject goroutine's work).
func BenchmarkInjectInline(b *testing.B) {
	e, f := benchEngine(b, 1)
	pkt := benchSegment()
	e.HandlePacket(f, pkt)
	t, _ := e.tenant(f.Key.Tenant)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		v := buffer.NewViewWithData(pkt)
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
		t.link.InjectInbound(header.IPv4ProtocolNumber, pb)
		pb.DecRef()
	}
	b.StopTimer()
	if n := t.stack.Stats().IP.PacketsDelivered.Value(); n < uint64(b.N) {
		b.Fatalf("the stack took %d of %d segments to its transport layer", n, b.N)
	}
}

func gatherDrops(e *Engine) float64 {
	var n float64
	for _, c := range e.m.dropBy {
		n += testCounter(c)
	}
	return n
}
