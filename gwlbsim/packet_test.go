package gwlbsim

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestBuildDecodeHeader(t *testing.T) {
	env := envelope{endpointID: 0x0102030405060708, attachmentID: 0x1112131415161718, cookie: 0xa1b2c3d4}
	want := []byte{
		0x08, 0x00, 0x08, 0x00, // version 0, 8 words of options; flags 0; IPv4
		0x00, 0x00, 0x00, 0x00, // VNI 0, reserved
		0x01, 0x08, 0x01, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, // class 0x0108 type 1 len 2: endpoint id
		0x01, 0x08, 0x02, 0x02, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // type 2: attachment id
		0x01, 0x08, 0x03, 0x01, 0xa1, 0xb2, 0xc3, 0xd4, // type 3 len 1: cookie
	}
	h := buildHeader(env, false)
	if !bytes.Equal(h, want) {
		t.Fatalf("buildHeader\n got %x\nwant %x", h, want)
	}
	if h6 := buildHeader(env, true); h6[2] != 0x86 || h6[3] != 0xdd {
		t.Errorf("IPv6 protocol type %x", h6[2:4])
	}

	// gopacket decodes what we build, independently.
	var gn layers.Geneve
	if err := gn.DecodeFromBytes(append(h, 0x45), gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	if gn.Version != 0 || gn.OptionsLength != 32 || gn.Protocol != layers.EthernetTypeIPv4 || gn.VNI != 0 || len(gn.Options) != 3 {
		t.Errorf("gopacket: %+v", gn)
	}
	for i, o := range gn.Options {
		if o.Class != AWSOptionClass || o.Type != uint8(i+1) {
			t.Errorf("gopacket option %d: %+v", i, o)
		}
	}

	g, err := decodeGeneve(append(h, 0x45, 0))
	if err != nil {
		t.Fatal(err)
	}
	if g.env != env || g.hasEnv != [3]bool{true, true, true} || !bytes.Equal(g.header, h) || !bytes.Equal(g.inner, []byte{0x45, 0}) {
		t.Errorf("decodeGeneve = %+v", g)
	}
}

func TestDecodeGeneveErrors(t *testing.T) {
	h := buildHeader(envelope{1, 2, 3}, false)
	tests := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"empty", nil, false},
		{"short base header", h[:7], false},
		{"options cut", h[:HeaderLen-1], false},
		{"version 1", append([]byte{0x48}, h[1:]...), false},
		{"option length past header", func() []byte {
			b := bytes.Clone(h)
			b[HeaderLen-5] = 2 // cookie option claims 8 bytes
			return b
		}(), false},
		{"no options", []byte{0, 0, 8, 0, 0, 0, 0, 0}, true},
		{"header only", h, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeGeneve(tt.b)
			if (err == nil) != tt.ok {
				t.Errorf("err = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestParseInner(t *testing.T) {
	a4, b4 := net.IP{10, 0, 0, 10}, net.IP{198, 51, 100, 10}
	a6, b6 := net.ParseIP("fd00::10"), net.ParseIP("2001:db8::10")
	ip4 := func(p layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: p, SrcIP: a4, DstIP: b4}
	}
	ip6 := func(p layers.IPProtocol) *layers.IPv6 {
		return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: p, SrcIP: a6, DstIP: b6}
	}
	tcp4 := ip4(layers.IPProtocolTCP)
	tcpl := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Window: 1000}
	tcpl.SetNetworkLayerForChecksum(tcp4)
	udp6 := ip6(layers.IPProtocolUDP)
	udpl := &layers.UDP{SrcPort: 5353, DstPort: 53}
	udpl.SetNetworkLayerForChecksum(udp6)

	frag4 := serialize(t, tcp4, tcpl, gopacket.Payload("x"))
	frag4[6], frag4[7] = 0, 3 // fragment offset 3 (24 bytes): no ports
	// IPv6 with a fragment header (offset 0, first fragment) before UDP.
	v6frag := func(offset uint16) []byte {
		p := serialize(t, udp6, udpl, gopacket.Payload("y"))
		fh := []byte{17, 0, byte(offset >> 5), byte(offset<<3) | 1, 0, 0, 0, 1}
		p = append(p[:40:40], append(fh, p[40:]...)...)
		p[6] = 44
		p[5] += 8
		return p
	}

	ap := func(a net.IP, port uint16) netip.AddrPort {
		ad, _ := netip.AddrFromSlice(a)
		return netip.AddrPortFrom(ad.Unmap(), port)
	}
	tests := []struct {
		name string
		b    []byte
		want tuple
		ok   bool
	}{
		{"ipv4 tcp", serialize(t, tcp4, tcpl), tuple{6, ap(a4, 40000), ap(b4, 80)}, true},
		{"ipv4 non-first fragment", frag4, tuple{6, ap(a4, 0), ap(b4, 0)}, true},
		{"ipv4 icmp", serialize(t, ip4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}), tuple{1, ap(a4, 0), ap(b4, 0)}, true},
		{"ipv6 udp", serialize(t, udp6, udpl, gopacket.Payload("z")), tuple{17, ap(a6, 5353), ap(b6, 53)}, true},
		{"ipv6 first fragment", v6frag(0), tuple{17, ap(a6, 5353), ap(b6, 53)}, true},
		{"ipv6 later fragment", v6frag(100), tuple{17, ap(a6, 0), ap(b6, 0)}, true},
		{"empty", nil, tuple{}, false},
		{"version 5", []byte{0x50, 0, 0, 20}, tuple{}, false},
		{"ipv4 short", serialize(t, tcp4, tcpl)[:19], tuple{}, false},
		{"ipv4 total length past end", serialize(t, tcp4, tcpl)[:30], tuple{}, false},
		{"ipv6 short", serialize(t, udp6, udpl)[:39], tuple{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseInner(tt.b)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
			if tt.ok && got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCanonical(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.0.0.10:40000"), netip.MustParseAddrPort("10.0.0.10:80")
	fwd, rev := tuple{6, a, b}, tuple{6, b, a}
	if fwd.canonical() != rev.canonical() {
		t.Errorf("canonical differs: %v %v", fwd.canonical(), rev.canonical())
	}
}

// FuzzReply feeds arbitrary replies through the decoders the receive path
// uses; they must never panic.
func FuzzReply(f *testing.F) {
	h := buildHeader(envelope{1, 2, 3}, false)
	f.Add([]byte{})                                         // empty
	f.Add(h)                                                // header, no inner packet
	f.Add(append(bytes.Clone(h), 0x45))                     // truncated IPv4
	f.Add(append(bytes.Clone(h), 0x60, 0, 0, 0, 0, 8, 44))  // truncated IPv6 with fragment header
	f.Add([]byte{0x3f, 0, 8, 0, 0, 0, 0, 0, 1, 8, 3, 0x1f}) // option length past end
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := decodeGeneve(b)
		if err != nil {
			return
		}
		if len(g.header)+len(g.inner) != len(b) {
			t.Fatalf("split %d+%d of %d bytes", len(g.header), len(g.inner), len(b))
		}
		parseInner(g.inner)
	})
}
