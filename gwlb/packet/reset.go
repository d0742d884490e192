package packet

import "encoding/binary"

// AppendReset appends to dst an IP packet holding a TCP RST that answers in,
// a TCP packet (IPv4 or IPv6) with its header: addresses and ports swapped,
// TTL/hop limit 64, and per RFC 793 section 3.4: if in had ACK, seq = its
// ack and flags RST; else seq 0, ack = its seq + payload length (+1 for SYN,
// +1 for FIN) and flags RST|ACK. IP and TCP checksums are correct. It returns
// ErrNotTCP when in has no TCP header (other protocol, non-first fragment).
func AppendReset(dst []byte, in *Inner) ([]byte, error) {
	if in.Proto != protoTCP || in.NonFirst || in.L4Offset == 0 || len(in.Raw) < in.L4Offset+20 {
		return dst, ErrNotTCP
	}
	v4 := in.Src.Is4() && in.Dst.Is4()
	if !v4 && !(in.Src.Is6() && in.Dst.Is6()) { // a hand-filled Inner; As4 would panic
		return dst, ErrNotTCP
	}
	tcp := in.Raw[in.L4Offset:]
	seq := binary.BigEndian.Uint32(tcp[4:])
	ack := binary.BigEndian.Uint32(tcp[8:])
	flags := tcp[13]
	payload := len(tcp) - int(tcp[12]>>4)*4
	if payload < 0 {
		payload = 0
	}

	var rseq, rack uint32
	var rflags uint8 = TCPRst
	if flags&TCPAck != 0 {
		rseq = ack
	} else {
		rack = seq + uint32(payload)
		if flags&TCPSyn != 0 {
			rack++
		}
		if flags&TCPFin != 0 {
			rack++
		}
		rflags |= TCPAck
	}

	start := len(dst)
	var ipLen int
	var pseudo uint32
	if v4 {
		ipLen = 20
		dst = append(dst, make([]byte, ipLen+20)...)
		ip := dst[start:]
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], 40)
		ip[6] = 0x40 // DF
		ip[8] = 64
		ip[9] = protoTCP
		src, dstA := in.Dst.As4(), in.Src.As4()
		copy(ip[12:16], src[:])
		copy(ip[16:20], dstA[:])
		binary.BigEndian.PutUint16(ip[10:], Checksum(ip[:20], 0))
		pseudo = pseudoSum4(src, dstA, protoTCP, 20)
	} else {
		ipLen = 40
		dst = append(dst, make([]byte, ipLen+20)...)
		ip := dst[start:]
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], 20)
		ip[6] = protoTCP
		ip[7] = 64
		src, dstA := in.Dst.As16(), in.Src.As16()
		copy(ip[8:24], src[:])
		copy(ip[24:40], dstA[:])
		pseudo = pseudoSum6(src, dstA, protoTCP, 20)
	}
	th := dst[start+ipLen:]
	binary.BigEndian.PutUint16(th[0:], in.DstPort)
	binary.BigEndian.PutUint16(th[2:], in.SrcPort)
	binary.BigEndian.PutUint32(th[4:], rseq)
	binary.BigEndian.PutUint32(th[8:], rack)
	th[12] = 5 << 4
	th[13] = rflags
	binary.BigEndian.PutUint16(th[16:], Checksum(th[:20], pseudo))
	return dst, nil
}
