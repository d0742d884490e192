package loadgen

import (
	"net/netip"
	"testing"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// The datagrams must be what GWLB sends: flowdog's own decoder accepts
// them, with the tenant, the flow's cookie and 5-tuple and valid checksums.
func TestDatagrams(t *testing.T) {
	for _, size := range []int{MinInnerSize, 64, 1400, packet.MaxInnerLen} {
		g := &gen{cfg: Config{InnerSize: size, Flows: 300, Sockets: 7, Batch: 64}}
		g.srcs = make([]*source, g.cfg.Sockets)
		for i := range g.srcs {
			g.srcs[i] = &source{}
		}
		g.build()
		for f, d := range g.dgram {
			var p packet.Packet
			if err := p.Decode(d); err != nil {
				t.Fatalf("size %d flow %d: %v", size, f, err)
			}
			if len(d) != GeneveLen+size || p.Geneve.Len() != GeneveLen || len(p.Inner.Raw) != size {
				t.Fatalf("size %d flow %d: datagram %d bytes, Geneve %d, inner %d", size, f, len(d), p.Geneve.Len(), len(p.Inner.Raw))
			}
			if p.Geneve.Tenant != Tenant || p.Geneve.FlowCookie != uint32(f)+1 {
				t.Fatalf("flow %d: tenant %v cookie %d", f, p.Geneve.Tenant, p.Geneve.FlowCookie)
			}
			want := packet.Tuple{Proto: 17, Src: netip.AddrFrom4([4]byte{10, 1, byte(f >> 8), byte(f)}),
				Dst: netip.MustParseAddr("10.2.0.1"), SrcPort: uint16(1024 + f), DstPort: 443}
			if got := p.Inner.Tuple(); got != want {
				t.Fatalf("flow %d: tuple %v, want %v", f, got, want)
			}
			in := p.Inner.Raw
			if packet.Checksum(in[:20], 0) != 0 {
				t.Fatalf("flow %d: bad IPv4 header checksum", f)
			}
			// Pseudo header: 10.1.x.y, 10.2.0.1, protocol 17, UDP length.
			pseudo := uint32(10<<8|1) + uint32(f&0xffff) + uint32(10<<8|2) + 1 + 17 + uint32(size-20)
			if c := packet.Checksum(in[20:], pseudo); c != 0 {
				t.Fatalf("flow %d: bad UDP checksum (residue %#x)", f, c)
			}
		}
		// Every source's vector covers its flows in order, then wraps.
		for i, s := range g.srcs {
			for j := range s.hdrs {
				flow := i + (j%s.flows)*g.cfg.Sockets
				if s.iovs[j].Base != &g.dgram[flow][0] {
					t.Fatalf("source %d slot %d is not flow %d", i, j, flow)
				}
			}
		}
	}
}

func TestConfigChecks(t *testing.T) {
	bad := []Config{
		{InnerSize: 64},
		{Target: netip.MustParseAddrPort("127.0.0.1:6081"), InnerSize: 27},
		{Target: netip.MustParseAddrPort("127.0.0.1:6081"), InnerSize: 8501},
		{Target: netip.MustParseAddrPort("[::1]:6081"), InnerSize: 64},
		{Target: netip.MustParseAddrPort("127.0.0.1:6081"), InnerSize: 64, Flows: 4, Sockets: 5},
	}
	for _, c := range bad {
		c.setDefaults()
		if c.check() == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
}
