package packet

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	docA = netip.MustParseAddr("192.0.2.1")
	docB = netip.MustParseAddr("198.51.100.7")
)

// Golden inner packets. Checksums are left 0: the decoder does not check
// them (GWLB already did, and the fast path must not pay for it).
var (
	goldenV4TCP = []byte{
		0x45, 0x00, 0x00, 0x2c, // v4, IHL 5, TOS 0, total length 44
		0x12, 0x34, 0x40, 0x00, // id 0x1234, DF, offset 0
		0x40, 0x06, 0x00, 0x00, // TTL 64, TCP, header checksum
		10, 0, 0, 1, // src
		10, 0, 0, 2, // dst
		0x9c, 0x40, 0x01, 0xbb, // sport 40000, dport 443
		0x00, 0x00, 0x03, 0xe8, // seq 1000
		0x00, 0x00, 0x00, 0x00, // ack 0
		0x60, 0x02, 0xff, 0xff, // data offset 6 words, SYN, window
		0x00, 0x00, 0x00, 0x00, // checksum, urgent pointer
		0x02, 0x04, 0x05, 0xb4, // MSS 1460
		0x00, 0x00, // link-layer padding, trimmed
	}
	goldenV4Options = []byte{
		0x46, 0x00, 0x00, 0x24, // v4, IHL 6, total length 36
		0x00, 0x00, 0x00, 0x00, // id 0, no flags
		0x40, 0x11, 0x00, 0x00, // TTL 64, UDP
		192, 0, 2, 1, // src
		198, 51, 100, 7, // dst
		0x94, 0x04, 0x00, 0x00, // router alert option
		0x00, 0x35, 0x00, 0x35, // sport 53, dport 53
		0x00, 0x0c, 0x00, 0x00, // UDP length 12, checksum
		0x01, 0x02, 0x03, 0x04, // payload
	}
	goldenV6UDPExt = cat(
		[]byte{
			0x60, 0x00, 0x00, 0x00, // v6, traffic class 0, flow label 0
			0x00, 0x24, 0x00, 0x40, // payload length 36, next header hop-by-hop, hop limit 64
		},
		v6a.AsSlice(), v6b.AsSlice(), // src, dst
		[]byte{
			0x2b, 0x00, 0x01, 0x04, 0, 0, 0, 0, // hop-by-hop: next routing, 8 bytes, PadN
			0x3c, 0x00, 0x00, 0x00, 0, 0, 0, 0, // routing: next dst opts, 8 bytes, type 0, segments left 0
			0x11, 0x00, 0x01, 0x04, 0, 0, 0, 0, // dst opts: next UDP, 8 bytes, PadN
			0x14, 0xe9, 0x00, 0x35, // sport 5353, dport 53
			0x00, 0x0c, 0x00, 0x00, // UDP length 12, checksum
			'a', 'b', 'c', 'd', // payload
		})
	goldenV6AH = cat(
		[]byte{0x60, 0, 0, 0, 0x00, 0x2c, 0x33, 0x40}, // payload 44, next AH
		v6a.AsSlice(), v6b.AsSlice(),
		[]byte{
			0x06, 0x04, 0x00, 0x00, // AH: next TCP, length 4 (=(4+2)*4 = 24 bytes), reserved
			0, 0, 0, 1, 0, 0, 0, 1, // SPI, sequence
			0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ICV
		},
		tcpHdr(443, 50000, 1, 2, TCPAck|TCPPsh))
	goldenICMPEcho = []byte{
		0x45, 0x00, 0x00, 0x1c, // v4, total length 28
		0x00, 0x00, 0x00, 0x00, // id, flags
		0x40, 0x01, 0x00, 0x00, // TTL 64, ICMP
		192, 0, 2, 1, // src
		198, 51, 100, 7, // dst
		0x08, 0x00, 0xf7, 0xfe, // echo request, code 0, checksum
		0x00, 0x01, 0x00, 0x01, // identifier 1, sequence 1
	}
	goldenICMPUnreach = []byte{
		0x45, 0x00, 0x00, 0x1c, 0, 0, 0, 0, 0x40, 0x01, 0, 0, 192, 0, 2, 1, 198, 51, 100, 7,
		0x03, 0x01, 0x00, 0x00, // destination unreachable, host unreachable
		0x00, 0x00, 0x00, 0x00, // unused
	}
	goldenICMPv6Echo = cat(
		[]byte{0x60, 0, 0, 0, 0x00, 0x08, 0x3a, 0x40}, // payload 8, ICMPv6
		v6b.AsSlice(), v6a.AsSlice(),
		[]byte{
			0x81, 0x00, 0x00, 0x00, // echo reply, code 0, checksum
			0xbe, 0xef, 0x00, 0x07, // identifier 0xbeef, sequence 7
		})
	goldenV4FirstFrag = []byte{
		0x45, 0x00, 0x00, 0x24, // total length 36
		0xab, 0xcd, 0x20, 0x00, // id, MF, offset 0
		0x40, 0x11, 0x00, 0x00, // UDP
		10, 0, 0, 1, 10, 0, 0, 2,
		0x30, 0x39, 0x00, 0x35, // sport 12345, dport 53
		0x05, 0xdc, 0x00, 0x00, // UDP length 1500 (whole datagram), checksum
		1, 2, 3, 4, 5, 6, 7, 8, // first 8 payload bytes
	}
	goldenV4NonFirstFrag = []byte{
		0x45, 0x00, 0x00, 0x1c, // total length 28
		0xab, 0xcd, 0x00, 0xb9, // id, last fragment, offset 185 (1480 bytes)
		0x40, 0x11, 0x00, 0x00, // UDP
		10, 0, 0, 1, 10, 0, 0, 2,
		9, 10, 11, 12, 13, 14, 15, 16, // payload, no UDP header
	}
	goldenV6FirstFrag = cat(
		[]byte{0x60, 0, 0, 0, 0x00, 0x1c, 0x2c, 0x40}, // payload 28, next fragment
		v6a.AsSlice(), v6b.AsSlice(),
		[]byte{0x06, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef}, // next TCP, offset 0, M, id
		tcpHdr(1234, 80, 7, 0, TCPSyn))
	goldenV6NonFirstFrag = cat(
		[]byte{0x60, 0, 0, 0, 0x00, 0x10, 0x2c, 0x40}, // payload 16, next fragment
		v6a.AsSlice(), v6b.AsSlice(),
		[]byte{0x11, 0x00, 0x03, 0x20, 0xde, 0xad, 0xbe, 0xef}, // next UDP, offset 100 (800 bytes), no M
		[]byte{1, 2, 3, 4, 5, 6, 7, 8})
	goldenV6AtomicFrag = cat(
		[]byte{0x60, 0, 0, 0, 0x00, 0x10, 0x2c, 0x40},
		v6a.AsSlice(), v6b.AsSlice(),
		[]byte{0x11, 0x00, 0x00, 0x00, 0, 0, 0, 1}, // next UDP, offset 0, no M: atomic
		udpHdr(1, 2, 0))
	goldenV6NoNext = cat(
		[]byte{0x60, 0, 0, 0, 0x00, 0x00, 0x3b, 0x40}, // payload 0, No Next Header
		v6a.AsSlice(), v6b.AsSlice())
	goldenV6ESP = cat(
		[]byte{0x60, 0, 0, 0, 0x00, 0x08, 0x32, 0x40}, // payload 8, ESP
		v6a.AsSlice(), v6b.AsSlice(),
		[]byte{0, 0, 0, 9, 0, 0, 0, 1}) // SPI, sequence
	goldenV4GRE = []byte{
		0x45, 0x00, 0x00, 0x18, 0, 0, 0, 0, 0x40, 0x2f, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // GRE
		0x00, 0x00, 0x08, 0x00, // GRE header
	}
)

func TestInnerGolden(t *testing.T) {
	tests := []struct {
		name   string
		in     []byte
		rawLen int
		want   Inner
	}{
		{"v4 tcp syn padded", goldenV4TCP, 44, Inner{Version: 4, Proto: 6, Src: v4a, Dst: v4b,
			SrcPort: 40000, DstPort: 443, TCPFlags: TCPSyn, L4Offset: 20}},
		{"v4 options udp", goldenV4Options, 36, Inner{Version: 4, Proto: 17, Src: docA, Dst: docB,
			SrcPort: 53, DstPort: 53, L4Offset: 24}},
		{"v6 udp hop-by-hop routing dstopts", goldenV6UDPExt, 76, Inner{Version: 6, Proto: 17, Src: v6a, Dst: v6b,
			SrcPort: 5353, DstPort: 53, L4Offset: 64}},
		{"v6 ah tcp", goldenV6AH, 84, Inner{Version: 6, Proto: 6, Src: v6a, Dst: v6b,
			SrcPort: 443, DstPort: 50000, TCPFlags: TCPAck | TCPPsh, L4Offset: 64}},
		{"icmp echo", goldenICMPEcho, 28, Inner{Version: 4, Proto: 1, Src: docA, Dst: docB,
			SrcPort: 1, DstPort: 1, L4Offset: 20, ICMPType: 8}},
		{"icmp unreachable", goldenICMPUnreach, 28, Inner{Version: 4, Proto: 1, Src: docA, Dst: docB,
			L4Offset: 20, ICMPType: 3, ICMPCode: 1}},
		{"icmpv6 echo reply", goldenICMPv6Echo, 48, Inner{Version: 6, Proto: 58, Src: v6b, Dst: v6a,
			SrcPort: 0xbeef, DstPort: 0xbeef, L4Offset: 40, ICMPType: 129}},
		{"v4 first fragment", goldenV4FirstFrag, 36, Inner{Version: 4, Proto: 17, Src: v4a, Dst: v4b,
			SrcPort: 12345, DstPort: 53, Fragment: true, L4Offset: 20}},
		{"v4 non-first fragment", goldenV4NonFirstFrag, 28, Inner{Version: 4, Proto: 17, Src: v4a, Dst: v4b,
			Fragment: true, NonFirst: true}},
		{"v6 first fragment", goldenV6FirstFrag, 68, Inner{Version: 6, Proto: 6, Src: v6a, Dst: v6b,
			SrcPort: 1234, DstPort: 80, TCPFlags: TCPSyn, Fragment: true, L4Offset: 48}},
		{"v6 non-first fragment", goldenV6NonFirstFrag, 56, Inner{Version: 6, Proto: 17, Src: v6a, Dst: v6b,
			Fragment: true, NonFirst: true}},
		{"v6 atomic fragment", goldenV6AtomicFrag, 56, Inner{Version: 6, Proto: 17, Src: v6a, Dst: v6b,
			SrcPort: 1, DstPort: 2, L4Offset: 48}},
		{"v6 no next header", goldenV6NoNext, 40, Inner{Version: 6, Proto: 59, Src: v6a, Dst: v6b}},
		{"v6 esp", goldenV6ESP, 48, Inner{Version: 6, Proto: 50, Src: v6a, Dst: v6b, L4Offset: 40}},
		{"v4 gre", goldenV4GRE, 24, Inner{Version: 4, Proto: 47, Src: v4a, Dst: v4b, L4Offset: 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rawLen > len(tt.in) {
				t.Fatalf("bad test: rawLen %d > %d", tt.rawLen, len(tt.in))
			}
			want := tt.want
			want.Raw = tt.in[:tt.rawLen]
			var p Inner
			if err := p.Decode(tt.in); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("got  %+v\nwant %+v", p, want)
			}
			if len(p.Raw) > 0 && &p.Raw[0] != &tt.in[0] {
				t.Error("Raw does not alias the input")
			}
			// The same packet inside Geneve decodes the same.
			proto := uint16(EtherTypeIPv4)
			if want.Version == 6 {
				proto = EtherTypeIPv6
			}
			var pk Packet
			if err := pk.Decode(withGeneve(proto, tt.in)); err != nil {
				t.Fatalf("Packet.Decode: %v", err)
			}
			pk.Inner.Raw = want.Raw // differ only in backing array
			if !reflect.DeepEqual(pk.Inner, want) {
				t.Errorf("Packet.Inner = %+v", pk.Inner)
			}
		})
	}
}

// TestMalformed decodes whole datagrams, so that every sentinel is reachable.
func TestMalformed(t *testing.T) {
	tcpSyn := v4(6, tcpHdr(1, 2, 3, 0, TCPSyn))
	udp6 := v6(17, udpHdr(1, 2, 4))
	tests := []struct {
		name string
		in   []byte
		want *Malformed
	}{
		{"geneve short", []byte{0, 0, 8, 0}, ErrGeneveShort},
		{"geneve version", mod(withGeneve(EtherTypeIPv4, tcpSyn), func(b []byte) { b[0] |= 0x80 }), ErrGeneveVersion},
		{"geneve truncated options", withGeneve(EtherTypeIPv4, nil)[:20], ErrGeneveOptLen},
		{"geneve option overrun", mod(withGeneve(EtherTypeIPv4, tcpSyn), func(b []byte) { b[8+3] = 9 }), ErrGeneveOptLen},
		{"geneve protocol", mod(withGeneve(EtherTypeIPv4, tcpSyn), func(b []byte) { b[2], b[3] = 0x65, 0x58 }), ErrGeneveProtocol},
		{"missing endpoint", cat(rawGeneve(EtherTypeIPv4, optAttachment, optCookie), tcpSyn), ErrMissingEndpoint},
		{"missing attachment", cat(rawGeneve(EtherTypeIPv4, optEndpoint, optCookie), tcpSyn), ErrMissingAttachment},
		{"missing cookie", cat(rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment), tcpSyn), ErrMissingCookie},
		{"aws option length", cat(rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment, []byte{0x01, 0x08, 0x03, 0x02, 0, 0, 0, 0, 0, 0, 0, 0}), tcpSyn), ErrAWSOptionLen},

		{"inner empty", withGeneve(EtherTypeIPv4, nil), ErrInnerShort},
		{"inner v4 19 bytes", withGeneve(EtherTypeIPv4, tcpSyn[:19]), ErrInnerShort},
		{"inner v6 39 bytes", withGeneve(EtherTypeIPv6, udp6[:39]), ErrInnerShort},
		{"inner v6 in v4 envelope", withGeneve(EtherTypeIPv4, udp6), ErrInnerVersion},
		{"inner v4 in v6 envelope", withGeneve(EtherTypeIPv6, tcpSyn), ErrInnerVersion},
		{"inner version 5", withGeneve(EtherTypeIPv4, mod(tcpSyn, func(b []byte) { b[0] = 0x55 })), ErrInnerVersion},
		{"inner version 0", withGeneve(EtherTypeIPv6, make([]byte, 40)), ErrInnerVersion},
		{"ihl 4", withGeneve(EtherTypeIPv4, mod(tcpSyn, func(b []byte) { b[0] = 0x44 })), ErrInnerHeaderLen},
		{"ihl 15 beyond packet", withGeneve(EtherTypeIPv4, mod(tcpSyn, func(b []byte) { b[0] = 0x4f })[:40]), ErrInnerHeaderLen},
		{"v4 total beyond bytes", withGeneve(EtherTypeIPv4, tcpSyn[:39]), ErrInnerTotalLen},
		{"v4 total below header", withGeneve(EtherTypeIPv4, mod(tcpSyn, func(b []byte) { b[2], b[3] = 0, 19 })), ErrInnerTotalLen},
		{"v4 total below ihl", withGeneve(EtherTypeIPv4, mod(tcpSyn, func(b []byte) { b[0], b[3] = 0x46, 20 })), ErrInnerTotalLen},
		{"v6 payload beyond bytes", withGeneve(EtherTypeIPv6, udp6[:len(udp6)-1]), ErrInnerTotalLen},
		{"v4 oversize", withGeneve(EtherTypeIPv4, v4(17, udpHdr(1, 2, MaxInnerLen-28+1))), ErrInnerOversize},
		{"v6 oversize", withGeneve(EtherTypeIPv6, v6(17, udpHdr(1, 2, MaxInnerLen-48+1))), ErrInnerOversize},
		{"v6 hop-by-hop overruns", withGeneve(EtherTypeIPv6, v6(0, []byte{17, 1, 0, 0, 0, 0, 0, 0})), ErrInnerExtHeader},
		{"v6 hop-by-hop 1 byte", withGeneve(EtherTypeIPv6, v6(0, []byte{17})), ErrInnerExtHeader},
		{"v6 routing after dstopts overruns", withGeneve(EtherTypeIPv6, v6(60, []byte{43, 0, 1, 4, 0, 0, 0, 0, 17, 0, 0, 0})), ErrInnerExtHeader},
		{"v6 fragment header 7 bytes", withGeneve(EtherTypeIPv6, v6(44, []byte{17, 0, 0, 0, 0, 0, 0})), ErrInnerExtHeader},
		{"v6 ah overruns", withGeneve(EtherTypeIPv6, v6(51, []byte{6, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})), ErrInnerExtHeader},
		{"tcp 19 bytes", withGeneve(EtherTypeIPv4, v4(6, tcpHdr(1, 2, 3, 4, 0)[:19])), ErrInnerTransport},
		{"tcp data offset 4", withGeneve(EtherTypeIPv4, v4(6, mod(tcpHdr(1, 2, 3, 4, 0), func(b []byte) { b[12] = 4 << 4 }))), ErrInnerTransport},
		{"tcp data offset beyond packet", withGeneve(EtherTypeIPv4, v4(6, mod(tcpHdr(1, 2, 3, 4, 0), func(b []byte) { b[12] = 6 << 4 }))), ErrInnerTransport},
		{"udp 7 bytes", withGeneve(EtherTypeIPv6, v6(17, make([]byte, 7))), ErrInnerTransport},
		{"icmp 3 bytes", withGeneve(EtherTypeIPv4, v4(1, []byte{3, 1, 0})), ErrInnerTransport},
		{"icmp echo 6 bytes", withGeneve(EtherTypeIPv4, v4(1, []byte{8, 0, 0, 0, 0, 1})), ErrInnerTransport},
		{"icmpv6 echo 7 bytes", withGeneve(EtherTypeIPv6, v6(58, []byte{128, 0, 0, 0, 0, 1, 0})), ErrInnerTransport},
		{"v4 first fragment, udp cut", withGeneve(EtherTypeIPv4, mod(v4(17, make([]byte, 4)), func(b []byte) { b[6] = 0x20 })), ErrInnerTransport},
		{"v6 first fragment, tcp cut", withGeneve(EtherTypeIPv6, v6(44, cat([]byte{6, 0, 0, 1, 0, 0, 0, 1}, make([]byte, 12)))), ErrInnerTransport},
	}
	seen := map[*Malformed]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			err := p.Decode(tt.in)
			if err != tt.want {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
			if KindOf(err) != tt.want.Kind {
				t.Errorf("KindOf = %q", KindOf(err))
			}
		})
		seen[tt.want] = true
	}
	for _, m := range allMalformed {
		if !seen[m] {
			t.Errorf("no malformed case for %s", m.Kind)
		}
	}
	// The base packets themselves are fine, and the largest inner packet too.
	for _, b := range [][]byte{
		withGeneve(EtherTypeIPv4, tcpSyn), withGeneve(EtherTypeIPv6, udp6),
		withGeneve(EtherTypeIPv4, v4(17, udpHdr(1, 2, MaxInnerLen-28))),
		withGeneve(EtherTypeIPv6, v6(17, udpHdr(1, 2, MaxInnerLen-48))),
	} {
		var p Packet
		if err := p.Decode(b); err != nil {
			t.Errorf("valid packet of %d bytes: %v", len(b), err)
		}
	}
}

// TestInnerDirect covers Inner.Decode without the Packet checks: it takes a
// bare packet of any size (netstack output) and rejects unknown versions.
func TestInnerDirect(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrInnerShort},
		{"version 5", []byte{0x50, 0, 0, 0}, ErrInnerVersion},
		{"oversize is Packet's business", v4(17, udpHdr(1, 2, 9000)), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Inner
			if err := p.Decode(tt.in); err != tt.want {
				t.Errorf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestGopacketCrossCheck builds random packets with gopacket and compares
// what both decoders see.
func TestGopacketCrossCheck(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	addr4 := func() net.IP { a := make(net.IP, 4); fill(rng, a); return a }
	addr6 := func() net.IP { a := make(net.IP, 16); fill(rng, a); a[0] = 0x20; return a }
	payload := func() gopacket.Payload { p := make([]byte, rng.IntN(1400)); fill(rng, p); return p }

	kinds := []string{"v4 tcp", "v4 udp", "v4 icmp echo", "v6 tcp", "v6 udp dstopts", "v6 icmpv6 echo", "v6 fragment tcp"}
	for i := range 500 {
		kind := kinds[i%len(kinds)]
		var net6 bool
		var nl gopacket.SerializableLayer
		var ip4 *layers.IPv4
		var ip6 *layers.IPv6
		if kind[1] == '4' {
			ip4 = &layers.IPv4{Version: 4, TTL: 64, SrcIP: addr4(), DstIP: addr4(), Id: uint16(rng.Uint32())}
			nl = ip4
		} else {
			net6 = true
			ip6 = &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: addr6(), DstIP: addr6(), FlowLabel: rng.Uint32() & 0xfffff}
			nl = ip6
		}
		tcp := &layers.TCP{SrcPort: layers.TCPPort(rng.Uint32()), DstPort: layers.TCPPort(rng.Uint32()),
			Seq: rng.Uint32(), Ack: rng.Uint32(), SYN: rng.IntN(2) == 0, ACK: rng.IntN(2) == 0,
			FIN: rng.IntN(2) == 0, RST: rng.IntN(2) == 0, PSH: rng.IntN(2) == 0, Window: 1000}
		udp := &layers.UDP{SrcPort: layers.UDPPort(rng.Uint32()), DstPort: layers.UDPPort(rng.Uint32())}
		echoID := uint16(rng.Uint32())
		var ls []gopacket.SerializableLayer
		var proto layers.IPProtocol
		switch kind {
		case "v4 tcp", "v6 tcp":
			proto = layers.IPProtocolTCP
			if net6 {
				tcp.SetNetworkLayerForChecksum(ip6)
			} else {
				tcp.SetNetworkLayerForChecksum(ip4)
			}
			ls = []gopacket.SerializableLayer{nl, tcp, payload()}
		case "v4 udp":
			proto = layers.IPProtocolUDP
			udp.SetNetworkLayerForChecksum(ip4)
			ls = []gopacket.SerializableLayer{nl, udp, payload()}
		case "v4 icmp echo":
			proto = layers.IPProtocolICMPv4
			ls = []gopacket.SerializableLayer{nl, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: echoID, Seq: 1}, payload()}
		case "v6 udp dstopts":
			proto = layers.IPProtocolUDP
			ip6.NextHeader = layers.IPProtocolIPv6Destination
			udp.SetNetworkLayerForChecksum(ip6)
			dst := &layers.IPv6Destination{Options: []*layers.IPv6DestinationOption{{OptionType: 0x1e, OptionData: []byte{1, 2, 3, 4}}}}
			dst.NextHeader = layers.IPProtocolUDP
			ls = []gopacket.SerializableLayer{nl, dst, udp, payload()}
		case "v6 icmpv6 echo":
			proto = layers.IPProtocolICMPv6
			icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
			icmp.SetNetworkLayerForChecksum(ip6)
			ls = []gopacket.SerializableLayer{nl, icmp, &layers.ICMPv6Echo{Identifier: echoID, SeqNumber: 1}, payload()}
		case "v6 fragment tcp":
			proto = layers.IPProtocolTCP
			ip6.NextHeader = layers.IPProtocolIPv6Fragment
			tcp.SetNetworkLayerForChecksum(ip6)
			ls = []gopacket.SerializableLayer{nl, &layers.IPv6Fragment{NextHeader: layers.IPProtocolTCP, MoreFragments: true, Identification: rng.Uint32()}, tcp, payload()}
		}
		if !net6 {
			ip4.Protocol = proto
		} else if ip6.NextHeader == 0 {
			ip6.NextHeader = proto
		}
		inner := serialize(t, ls...)
		ethType := layers.EthernetTypeIPv4
		if net6 {
			ethType = layers.EthernetTypeIPv6
		}
		tenant := Tenant{rng.Uint64(), rng.Uint64()}
		cookie := rng.Uint32()
		dgram := serialize(t, &layers.Geneve{Protocol: ethType, VNI: 0, Options: []*layers.GeneveOption{
			{Class: AWSOptionClass, Type: OptEndpointID, Data: be64(tenant.EndpointID)},
			{Class: AWSOptionClass, Type: OptAttachmentID, Data: be64(tenant.AttachmentID)},
			{Class: AWSOptionClass, Type: OptFlowCookie, Data: be32(cookie)},
		}}, gopacket.Payload(inner))

		var p Packet
		if err := p.Decode(dgram); err != nil {
			t.Fatalf("%d %s: Decode: %v", i, kind, err)
		}
		// What gopacket sees, decoding the same bytes.
		gp := gopacket.NewPacket(dgram, layers.LayerTypeGeneve, gopacket.Default)
		if el := gp.ErrorLayer(); el != nil {
			t.Fatalf("%d %s: gopacket: %v", i, kind, el.Error())
		}
		g := p.Geneve
		if g.Tenant != tenant || g.FlowCookie != cookie || g.Protocol != uint16(ethType) || g.Len() != len(dgram)-len(inner) {
			t.Errorf("%d %s: geneve %+v", i, kind, g)
		}
		in := p.Inner
		var src, dst net.IP
		if n4, ok := gp.NetworkLayer().(*layers.IPv4); ok {
			src, dst = n4.SrcIP, n4.DstIP
		} else {
			n6 := gp.NetworkLayer().(*layers.IPv6)
			src, dst = n6.SrcIP, n6.DstIP
		}
		if !bytes.Equal(in.Src.AsSlice(), src) || !bytes.Equal(in.Dst.AsSlice(), dst) || !bytes.Equal(in.Raw, inner) {
			t.Errorf("%d %s: addresses %v %v, gopacket %v %v", i, kind, in.Src, in.Dst, src, dst)
		}
		if in.Proto != uint8(proto) {
			t.Errorf("%d %s: proto %d, want %d", i, kind, in.Proto, proto)
		}
		var wantSport, wantDport uint16
		var wantFlags uint8
		var l4 []byte
		tl := gp.TransportLayer()
		if frag := gp.Layer(layers.LayerTypeIPv6Fragment); frag != nil {
			// gopacket leaves even a first fragment's payload undecoded.
			var ft layers.TCP
			if err := ft.DecodeFromBytes(frag.LayerPayload(), gopacket.NilDecodeFeedback); err != nil {
				t.Fatalf("%d %s: gopacket TCP in fragment: %v", i, kind, err)
			}
			tl = &ft
		}
		switch l := tl.(type) {
		case *layers.TCP:
			wantSport, wantDport = uint16(l.SrcPort), uint16(l.DstPort)
			wantFlags = tcpFlags(l)
			l4 = l.Contents
		case *layers.UDP:
			wantSport, wantDport = uint16(l.SrcPort), uint16(l.DstPort)
			l4 = l.Contents
		}
		if icmp := gp.Layer(layers.LayerTypeICMPv4); icmp != nil {
			wantSport, wantDport = icmp.(*layers.ICMPv4).Id, icmp.(*layers.ICMPv4).Id
			l4 = icmp.LayerContents()
		}
		if icmp := gp.Layer(layers.LayerTypeICMPv6); icmp != nil {
			echo, ok := gp.Layer(layers.LayerTypeICMPv6Echo).(*layers.ICMPv6Echo)
			if !ok {
				t.Fatalf("%d %s: gopacket sees no echo", i, kind)
			}
			wantSport, wantDport = echo.Identifier, echo.Identifier
			l4 = icmp.LayerContents()
			if in.ICMPType != 128 {
				t.Errorf("%d %s: ICMP type %d", i, kind, in.ICMPType)
			}
		}
		if in.SrcPort != wantSport || in.DstPort != wantDport || in.TCPFlags != wantFlags {
			t.Errorf("%d %s: ports %d %d flags %#x, gopacket %d %d %#x", i, kind, in.SrcPort, in.DstPort, in.TCPFlags, wantSport, wantDport, wantFlags)
		}
		if in.L4Offset == 0 || !bytes.HasPrefix(in.Raw[in.L4Offset:], l4) {
			t.Errorf("%d %s: L4Offset %d does not point at gopacket's transport header", i, kind, in.L4Offset)
		}
		if wantFrag := kind == "v6 fragment tcp"; in.Fragment != wantFrag || in.NonFirst {
			t.Errorf("%d %s: Fragment %v NonFirst %v", i, kind, in.Fragment, in.NonFirst)
		}
	}
}

func tcpFlags(l *layers.TCP) uint8 {
	var f uint8
	for _, b := range []struct {
		set  bool
		flag uint8
	}{{l.FIN, TCPFin}, {l.SYN, TCPSyn}, {l.RST, TCPRst}, {l.PSH, TCPPsh}, {l.ACK, TCPAck}, {l.URG, 0x20}, {l.ECE, 0x40}, {l.CWR, 0x80}} {
		if b.set {
			f |= b.flag
		}
	}
	return f
}

func fill(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

func be64(v uint64) []byte {
	b := make([]byte, 8)
	for i := range 8 {
		b[i] = byte(v >> (56 - 8*i))
	}
	return b
}

func be32(v uint32) []byte { return be64(uint64(v) << 32)[:4] }

func TestTuple(t *testing.T) {
	a := Tuple{Proto: 6, Src: v4b, Dst: v4a, SrcPort: 80, DstPort: 40000}
	c, swapped := a.Canonical()
	if !swapped || c != (Tuple{Proto: 6, Src: v4a, Dst: v4b, SrcPort: 40000, DstPort: 80}) {
		t.Errorf("Canonical = %v, %v", c, swapped)
	}
	if c2, swapped2 := c.Canonical(); swapped2 || c2 != c {
		t.Errorf("Canonical not idempotent: %v %v", c2, swapped2)
	}
	if rc, _ := a.Reverse().Canonical(); rc != c {
		t.Errorf("both directions must share a canonical form: %v vs %v", rc, c)
	}
	if a.Reverse().Reverse() != a {
		t.Error("Reverse twice is not the identity")
	}
	same := Tuple{Proto: 17, Src: v6a, Dst: v6a, SrcPort: 9, DstPort: 5}
	if c, sw := same.Canonical(); !sw || c.SrcPort != 5 {
		t.Errorf("same address: ports decide: %v %v", c, sw)
	}
	strs := []struct {
		t    Tuple
		want string
	}{
		{a, "tcp 10.0.0.2:80->10.0.0.1:40000"},
		{Tuple{Proto: 17, Src: v6a, Dst: v6b, SrcPort: 53, DstPort: 5353}, "udp [2001:db8::1]:53->[2001:db8::2]:5353"},
		{Tuple{Proto: 1, Src: v4a, Dst: v4b, SrcPort: 7, DstPort: 7}, "icmp 10.0.0.1:7->10.0.0.2:7"},
		{Tuple{Proto: 58, Src: v6a, Dst: v6b}, "icmpv6 2001:db8::1->2001:db8::2"},
		{Tuple{Proto: 47, Src: v4a, Dst: v4b}, "proto-47 10.0.0.1->10.0.0.2"},
	}
	for _, s := range strs {
		if got := s.t.String(); got != s.want {
			t.Errorf("String = %q, want %q", got, s.want)
		}
	}
	var p Inner
	if err := p.Decode(goldenV4TCP); err != nil {
		t.Fatal(err)
	}
	if p.Tuple() != (Tuple{Proto: 6, Src: v4a, Dst: v4b, SrcPort: 40000, DstPort: 443}) {
		t.Errorf("Tuple = %v", p.Tuple())
	}
	for _, tt := range []struct {
		flags uint8
		want  bool
	}{{TCPSyn, true}, {TCPSyn | TCPAck, false}, {TCPAck, false}, {TCPSyn | TCPPsh, true}} {
		p.TCPFlags = tt.flags
		if p.IsSYN() != tt.want {
			t.Errorf("IsSYN with flags %#x = %v", tt.flags, !tt.want)
		}
	}
	p.Proto = 17
	p.TCPFlags = TCPSyn
	if p.IsSYN() {
		t.Error("a UDP packet is no SYN")
	}
}
