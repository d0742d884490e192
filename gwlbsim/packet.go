package gwlbsim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

const (
	// GenevePort is the UDP port GWLB sends to and receives replies on.
	GenevePort = 6081
	// MaxInner is GWLB's limit on the inner packet of a Geneve datagram.
	MaxInner = 8500

	// AWSOptionClass is the Geneve option class of GWLB's options.
	AWSOptionClass = 0x0108
	// Option types of class AWSOptionClass.
	OptionEndpointID   = 1 // VPC endpoint id, 8 bytes
	OptionAttachmentID = 2 // attachment id, 8 bytes
	OptionFlowCookie   = 3 // flow cookie, 4 bytes

	// HeaderLen is the length of the Geneve header the Sim sends: 8 bytes
	// of base header and three options (4+8, 4+8, 4+4).
	HeaderLen = 8 + 12 + 12 + 8

	protoIPv4 = 0x0800
	protoIPv6 = 0x86DD

	cookieOffset = HeaderLen - 4
)

var (
	errShort       = errors.New("short packet")
	errVersion     = errors.New("unsupported version")
	errIPVersion   = errors.New("inner packet is neither IPv4 nor IPv6")
	errIPHeaderLen = errors.New("bad IP header length")
)

// envelope is what identifies a flow's Geneve header.
type envelope struct {
	endpointID, attachmentID uint64
	cookie                   uint32
}

// buildHeader returns the Geneve header GWLB puts in front of an inner
// packet of the given IP version.
func buildHeader(env envelope, ipv6 bool) []byte {
	h := make([]byte, HeaderLen)
	h[0] = (HeaderLen - 8) / 4 // version 0, option length in 4-byte words
	h[1] = 0                   // O and C bits clear
	if ipv6 {
		binary.BigEndian.PutUint16(h[2:], protoIPv6)
	} else {
		binary.BigEndian.PutUint16(h[2:], protoIPv4)
	}
	// h[4:8]: VNI 0 and reserved byte.
	o := h[8:]
	o = putOption(o, OptionEndpointID, 2)
	binary.BigEndian.PutUint64(o, env.endpointID)
	o = putOption(o[8:], OptionAttachmentID, 2)
	binary.BigEndian.PutUint64(o, env.attachmentID)
	o = putOption(o[8:], OptionFlowCookie, 1)
	binary.BigEndian.PutUint32(o, env.cookie)
	return h
}

// putOption writes an option header (class, type, length in words) and
// returns the slice after it.
func putOption(b []byte, typ byte, words byte) []byte {
	binary.BigEndian.PutUint16(b, AWSOptionClass)
	b[2] = typ
	b[3] = words & 0x1f
	return b[4:]
}

// geneve is a decoded Geneve datagram: header bytes (with options), the
// inner packet, and the AWS options found (best effort).
type geneve struct {
	header, inner []byte
	env           envelope
	hasEnv        [3]bool // endpoint id, attachment id, cookie present
}

// decodeGeneve splits a UDP payload into header and inner packet and reads
// the AWS options. It fails only when the datagram cannot be a Geneve
// packet at all; unknown or missing options are left for the flow check.
func decodeGeneve(b []byte) (geneve, error) {
	var g geneve
	if len(b) < 8 {
		return g, fmt.Errorf("geneve: %d bytes: %w", len(b), errShort)
	}
	if v := b[0] >> 6; v != 0 {
		return g, fmt.Errorf("geneve: version %d: %w", v, errVersion)
	}
	hl := 8 + int(b[0]&0x3f)*4
	if len(b) < hl {
		return g, fmt.Errorf("geneve: options need %d bytes, have %d: %w", hl, len(b), errShort)
	}
	g.header, g.inner = b[:hl], b[hl:]
	for o := b[8:hl]; len(o) > 0; {
		if len(o) < 4 {
			return g, fmt.Errorf("geneve: truncated option header: %w", errShort)
		}
		n := int(o[3]&0x1f) * 4
		if len(o) < 4+n {
			return g, fmt.Errorf("geneve: option type %d needs %d bytes: %w", o[2], n, errShort)
		}
		data := o[4 : 4+n]
		if binary.BigEndian.Uint16(o) == AWSOptionClass {
			switch {
			case o[2] == OptionEndpointID && n == 8:
				g.env.endpointID, g.hasEnv[0] = binary.BigEndian.Uint64(data), true
			case o[2] == OptionAttachmentID && n == 8:
				g.env.attachmentID, g.hasEnv[1] = binary.BigEndian.Uint64(data), true
			case o[2] == OptionFlowCookie && n == 4:
				g.env.cookie, g.hasEnv[2] = binary.BigEndian.Uint32(data), true
			}
		}
		o = o[4+n:]
	}
	return g, nil
}

// tuple is an inner packet's flow identity. Ports are zero for protocols
// without ports and for non-first fragments.
type tuple struct {
	proto    uint8
	src, dst netip.AddrPort
}

func (t tuple) String() string {
	return fmt.Sprintf("proto %d %s -> %s", t.proto, t.src, t.dst)
}

// canonical orders the endpoints so that both directions share one key.
func (t tuple) canonical() tuple {
	if c := t.src.Addr().Compare(t.dst.Addr()); c > 0 || (c == 0 && t.src.Port() > t.dst.Port()) {
		t.src, t.dst = t.dst, t.src
	}
	return t
}

const (
	ipProtoHopByHop = 0
	ipProtoTCP      = 6
	ipProtoUDP      = 17
	ipProtoRouting  = 43
	ipProtoFragment = 44
	ipProtoDstOpts  = 60
)

// parseInner reads the 5-tuple of an IPv4 or IPv6 packet.
func parseInner(b []byte) (tuple, error) {
	var t tuple
	if len(b) < 1 {
		return t, fmt.Errorf("inner: %w", errShort)
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return t, fmt.Errorf("inner ipv4: %w", errShort)
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < 20 || total < ihl || len(b) < total {
			return t, fmt.Errorf("inner ipv4: ihl %d total %d len %d: %w", ihl, total, len(b), errIPHeaderLen)
		}
		t.proto = b[9]
		src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		fragOff := binary.BigEndian.Uint16(b[6:]) & 0x1fff
		var sp, dp uint16
		if fragOff == 0 {
			sp, dp = ports(t.proto, b[ihl:total])
		}
		t.src, t.dst = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
		return t, nil
	case 6:
		if len(b) < 40 {
			return t, fmt.Errorf("inner ipv6: %w", errShort)
		}
		src, dst := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		end := 40 + int(binary.BigEndian.Uint16(b[4:]))
		if len(b) < end {
			return t, fmt.Errorf("inner ipv6: payload length %d exceeds packet: %w", end-40, errIPHeaderLen)
		}
		next, off, first := b[6], 40, true
	ext:
		for {
			switch next {
			case ipProtoHopByHop, ipProtoRouting, ipProtoDstOpts:
				if end < off+8 {
					return t, fmt.Errorf("inner ipv6: extension header: %w", errShort)
				}
				next, off = b[off], off+8+int(b[off+1])*8
			case ipProtoFragment:
				if end < off+8 {
					return t, fmt.Errorf("inner ipv6: fragment header: %w", errShort)
				}
				first = binary.BigEndian.Uint16(b[off+2:])&0xfff8 == 0
				next, off = b[off], off+8
			default:
				break ext
			}
		}
		if off > end {
			return t, fmt.Errorf("inner ipv6: extension headers: %w", errShort)
		}
		t.proto = next
		var sp, dp uint16
		if first {
			sp, dp = ports(next, b[off:end])
		}
		t.src, t.dst = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
		return t, nil
	default:
		return t, fmt.Errorf("inner: version %d: %w", b[0]>>4, errIPVersion)
	}
}

// ports returns the transport ports of TCP and UDP (zero for anything else
// or a segment too short to hold them).
func ports(proto uint8, l4 []byte) (src, dst uint16) {
	if (proto != ipProtoTCP && proto != ipProtoUDP) || len(l4) < 4 {
		return 0, 0
	}
	return binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
}
