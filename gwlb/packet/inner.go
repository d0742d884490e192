package packet

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// TCP flags, as in Inner.TCPFlags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPPsh = 0x08
	TCPAck = 0x10
)

// IP protocol numbers the decoder looks at.
const (
	protoHopByHop = 0
	protoICMP     = 1
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoESP      = 50
	protoAH       = 51
	protoICMPv6   = 58
	protoNoNext   = 59
	protoDstOpts  = 60
)

// Inner is a decoded inner IP packet. Raw aliases the decoded buffer.
type Inner struct {
	Raw              []byte // b trimmed to the IP total length
	Version          uint8  // 4 or 6
	Proto            uint8  // transport protocol (after IPv6 extension headers)
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // TCP/UDP ports; for ICMP/ICMPv6 echo request/reply the echo identifier in both; 0 otherwise
	TCPFlags         uint8
	Fragment         bool // part of a fragmented datagram (IPv4 MF/offset, IPv6 fragment header with M or an offset)
	NonFirst         bool // a non-first fragment: no transport header, ports are 0
	L4Offset         int  // offset in Raw of the transport header, 0 when absent
	ICMPType         uint8
	ICMPCode         uint8
}

// Decode parses an IPv4 or IPv6 packet. It never allocates. Bytes after the
// IP length (link padding) are trimmed from Raw. Protocols other than
// TCP/UDP/ICMP get Proto set, ports 0 and L4Offset pointing after the IP
// headers. IPv6 extension headers are walked up to a transport protocol, No
// Next Header (Proto 59, L4Offset 0) or ESP (Proto 50). On error p's contents
// are undefined.
func (p *Inner) Decode(b []byte) error {
	*p = Inner{}
	if len(b) == 0 {
		return ErrInnerShort
	}
	var off int // of the upper-layer header in Raw
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return ErrInnerShort
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || ihl > len(b) {
			return ErrInnerHeaderLen
		}
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if total > len(b) || total < ihl {
			return ErrInnerTotalLen
		}
		p.Raw = b[:total:total]
		p.Version = 4
		p.Proto = b[9]
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		frag := binary.BigEndian.Uint16(b[6:8])
		p.NonFirst = frag&0x1fff != 0
		p.Fragment = p.NonFirst || frag&0x2000 != 0
		off = ihl
	case 6:
		if len(b) < 40 {
			return ErrInnerShort
		}
		total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
		if total > len(b) {
			return ErrInnerTotalLen
		}
		p.Raw = b[:total:total]
		p.Version = 6
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		var err error
		if off, err = p.walkIPv6(b[6]); err != nil {
			return err
		}
	default:
		return ErrInnerVersion
	}
	if p.NonFirst || p.Proto == protoNoNext {
		return nil
	}
	p.L4Offset = off
	return p.decodeTransport(p.Raw[off:])
}

// walkIPv6 follows the extension header chain starting with next header nh
// and sets Proto (and the fragment fields). It returns the offset in Raw of
// what follows the last header it understood. Each header is at least 8
// bytes long, so the loop ends within len(Raw)/8 rounds.
func (p *Inner) walkIPv6(nh uint8) (int, error) {
	raw := p.Raw
	off := 40
	for {
		switch nh {
		case protoHopByHop, protoRouting, protoDstOpts, protoAH:
			if len(raw)-off < 2 {
				return 0, ErrInnerExtHeader
			}
			n := (int(raw[off+1]) + 1) * 8
			if nh == protoAH { // AH counts 4-byte units, minus 2
				n = (int(raw[off+1]) + 2) * 4
			}
			if len(raw)-off < n {
				return 0, ErrInnerExtHeader
			}
			nh = raw[off]
			off += n
		case protoFragment:
			if len(raw)-off < 8 {
				return 0, ErrInnerExtHeader
			}
			fo := binary.BigEndian.Uint16(raw[off+2:])
			// An atomic fragment (offset 0, no M) is a whole datagram (RFC 6946).
			p.NonFirst = fo>>3 != 0
			p.Fragment = p.NonFirst || fo&1 != 0
			nh = raw[off]
			off += 8
			if p.NonFirst { // the rest is payload, not headers
				p.Proto = nh
				return off, nil
			}
		default: // a transport protocol, ESP or No Next Header
			p.Proto = nh
			return off, nil
		}
	}
}

func (p *Inner) decodeTransport(l4 []byte) error {
	switch {
	case p.Proto == protoTCP:
		if len(l4) < 20 {
			return ErrInnerTransport
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return ErrInnerTransport
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
		p.TCPFlags = l4[13]
	case p.Proto == protoUDP:
		if len(l4) < 8 {
			return ErrInnerTransport
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
	case p.Proto == protoICMP && p.Version == 4, p.Proto == protoICMPv6 && p.Version == 6:
		if len(l4) < 4 {
			return ErrInnerTransport
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
		if isEcho(p.Version, p.ICMPType) {
			if len(l4) < 8 {
				return ErrInnerTransport
			}
			// The identifier tells concurrent pings apart, like a port.
			id := binary.BigEndian.Uint16(l4[4:6])
			p.SrcPort, p.DstPort = id, id
		}
	}
	return nil
}

func isEcho(version, typ uint8) bool {
	if version == 4 {
		return typ == 8 || typ == 0 // request, reply
	}
	return typ == 128 || typ == 129
}

// Tuple returns the packet's 5-tuple.
func (p *Inner) Tuple() Tuple {
	return Tuple{Proto: p.Proto, Src: p.Src, Dst: p.Dst, SrcPort: p.SrcPort, DstPort: p.DstPort}
}

// IsSYN reports a TCP SYN without ACK: the packet that opens a connection.
func (p *Inner) IsSYN() bool {
	return p.Proto == protoTCP && p.L4Offset != 0 && p.TCPFlags&(TCPSyn|TCPAck) == TCPSyn
}

// Tuple is a 5-tuple. For ICMP echo both ports hold the echo identifier.
type Tuple struct {
	Proto            uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// Canonical returns the direction-free form, with the lower (addr, port)
// first, and whether it swapped, so both directions share one flow key.
func (t Tuple) Canonical() (Tuple, bool) {
	c := t.Src.Compare(t.Dst)
	if c > 0 || c == 0 && t.SrcPort > t.DstPort {
		return t.Reverse(), true
	}
	return t, false
}

// Reverse returns the tuple of the opposite direction.
func (t Tuple) Reverse() Tuple {
	return Tuple{Proto: t.Proto, Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort}
}

// String returns e.g. "tcp 10.0.0.1:40000->10.0.0.2:443" or
// "udp [2001:db8::1]:53->[2001:db8::2]:53"; for protocols without ports
// just the addresses.
func (t Tuple) String() string {
	var name string
	switch t.Proto {
	case protoTCP:
		name = "tcp"
	case protoUDP:
		name = "udp"
	case protoICMP:
		name = "icmp"
	case protoICMPv6:
		name = "icmpv6"
	default:
		name = "proto-" + strconv.Itoa(int(t.Proto))
	}
	if t.SrcPort == 0 && t.DstPort == 0 {
		return name + " " + t.Src.String() + "->" + t.Dst.String()
	}
	return name + " " + netip.AddrPortFrom(t.Src, t.SrcPort).String() + "->" +
		netip.AddrPortFrom(t.Dst, t.DstPort).String()
}

// Packet is a whole GWLB datagram: the Geneve header and the inner packet.
type Packet struct {
	Geneve Geneve
	Inner  Inner
}

// Decode parses b, a UDP payload from GWLB. It never allocates. Beyond what
// Geneve.Decode and Inner.Decode check, the inner IP version must match
// Geneve's protocol type and the inner packet must fit MaxInnerLen.
func (p *Packet) Decode(b []byte) error {
	if err := p.Geneve.Decode(b); err != nil {
		return err
	}
	in := b[p.Geneve.Len():]
	if len(in) > 0 {
		want := uint8(4)
		if p.Geneve.Protocol == EtherTypeIPv6 {
			want = 6
		}
		if in[0]>>4 != want {
			p.Inner = Inner{}
			return ErrInnerVersion
		}
	}
	if err := p.Inner.Decode(in); err != nil {
		return err
	}
	if len(p.Inner.Raw) > MaxInnerLen {
		return ErrInnerOversize
	}
	return nil
}
