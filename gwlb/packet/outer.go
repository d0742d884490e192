package packet

import (
	"encoding/binary"
	"math/bits"
)

// PutOuter writes the 28-byte outer IPv4+UDP header flowdog sends on its raw
// socket (IP_HDRINCL) into b[:28]: IPv4 with IHL 5, TTL 64, DF (GWLB traffic
// must not be fragmented), protocol UDP, the given id and a correct header
// checksum; then UDP with the ports and length. The UDP checksum is 0 (legal
// for IPv4 and cheapest), or with udpChecksum the correct checksum over the
// pseudo header, the UDP header and the payload b[28:28+payloadLen], which
// must then be in place. b must be long enough; payloadLen at most 65507.
func PutOuter(b []byte, src, dst [4]byte, srcPort, dstPort uint16, id uint16, payloadLen int, udpChecksum bool) {
	_ = b[OuterHeaderLen-1]
	ip := b[:20]
	ip[0] = 0x45
	ip[1] = 0
	binary.BigEndian.PutUint16(ip[2:], uint16(OuterHeaderLen+payloadLen))
	binary.BigEndian.PutUint16(ip[4:], id)
	ip[6], ip[7] = 0x40, 0 // DF
	ip[8] = 64
	ip[9] = protoUDP
	ip[10], ip[11] = 0, 0
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip, 0))

	udp := b[20:28]
	ulen := uint16(8 + payloadLen)
	binary.BigEndian.PutUint16(udp[0:], srcPort)
	binary.BigEndian.PutUint16(udp[2:], dstPort)
	binary.BigEndian.PutUint16(udp[4:], ulen)
	udp[6], udp[7] = 0, 0
	if udpChecksum {
		c := Checksum(b[20:28+payloadLen], pseudoSum4(src, dst, protoUDP, ulen))
		if c == 0 { // 0 means "no checksum" in UDP; send its other form
			c = 0xffff
		}
		binary.BigEndian.PutUint16(udp[6:], c)
	}
}

// Checksum returns the Internet checksum (RFC 1071) of b: the complement of
// the one's-complement sum of b's 16-bit words plus initial, a running sum
// such as a pseudo header's (not complemented; any width, folded here).
// It adds 8 bytes at a time.
func Checksum(b []byte, initial uint32) uint16 {
	return ^fold(sum(b, uint64(initial)))
}

// sum adds b to acc as big-endian words with end-around carry. A one's
// complement sum of 64-bit words folds to the same 16-bit sum (RFC 1071).
func sum(b []byte, acc uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[0:]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[8:]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[16:]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, c = bits.Add64(acc, uint64(binary.BigEndian.Uint32(b)), c)
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, c = bits.Add64(acc, uint64(binary.BigEndian.Uint16(b)), c)
		b = b[2:]
	}
	if len(b) == 1 { // an odd byte is padded with a zero on the right
		acc, c = bits.Add64(acc, uint64(b[0])<<8, c)
	}
	acc, c = bits.Add64(acc, 0, c)
	return acc + c
}

// fold reduces a 64-bit one's-complement sum to 16 bits.
func fold(s uint64) uint16 {
	s = s>>32 + s&0xffffffff
	s = s>>32 + s&0xffffffff
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
}

func pseudoSum4(src, dst [4]byte, proto uint8, length uint16) uint32 {
	s := uint64(binary.BigEndian.Uint32(src[:])) + uint64(binary.BigEndian.Uint32(dst[:])) +
		uint64(proto) + uint64(length)
	return uint32(fold(s))
}

func pseudoSum6(src, dst [16]byte, proto uint8, length uint32) uint32 {
	s := sum(src[:], 0)
	s = sum(dst[:], s)
	return uint32(fold(uint64(fold(s)) + uint64(proto) + uint64(length)))
}
