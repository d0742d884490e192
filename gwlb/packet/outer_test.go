package packet

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := range 200 {
		b := make([]byte, n)
		fill(rng, b)
		if n%7 == 0 {
			for i := range b {
				b[i] = 0xff // all ones: the carries pile up
			}
		}
		initial := rng.Uint32() & 0xffff
		ib := []byte{byte(initial >> 8), byte(initial)}
		if got, want := Checksum(b, initial), refChecksum(ib, b); got != want {
			t.Errorf("len %d: Checksum = %#04x, want %#04x", n, got, want)
		}
	}
	// initial may be any unfolded uint32.
	if got, want := Checksum([]byte{0, 1}, 0xffffffff), refChecksum([]byte{0xff, 0xff, 0xff, 0xff, 0, 1}); got != want {
		t.Errorf("unfolded initial: %#04x, want %#04x", got, want)
	}
	// RFC 1071 section 3 example: sum of 0001 f203 f4f5 f6f7 is ddf2.
	if got := Checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0); got != ^uint16(0xddf2) {
		t.Errorf("RFC 1071 example: %#04x", got)
	}
}

func TestPutOuter(t *testing.T) {
	src, dst := [4]byte{10, 1, 2, 3}, [4]byte{10, 9, 8, 7}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 63, 64, 1401, 8568} {
		for _, csum := range []bool{false, true} {
			b := make([]byte, OuterHeaderLen+n)
			fill(rng, b) // PutOuter must overwrite every header byte
			PutOuter(b, src, dst, 40000, GenevePort, 0x4242, n, csum)

			var ip layers.IPv4
			var udp layers.UDP
			if err := ip.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
				t.Fatalf("n=%d: gopacket IPv4: %v", n, err)
			}
			if err := udp.DecodeFromBytes(ip.Payload, gopacket.NilDecodeFeedback); err != nil {
				t.Fatalf("n=%d: gopacket UDP: %v", n, err)
			}
			if ip.Version != 4 || ip.IHL != 5 || ip.TTL != 64 || ip.Flags != layers.IPv4DontFragment ||
				ip.FragOffset != 0 || ip.Protocol != layers.IPProtocolUDP || ip.Id != 0x4242 || ip.TOS != 0 ||
				int(ip.Length) != len(b) || !ip.SrcIP.Equal(net.IP(src[:])) || !ip.DstIP.Equal(net.IP(dst[:])) {
				t.Errorf("n=%d: IPv4 %+v", n, ip)
			}
			if udp.SrcPort != 40000 || udp.DstPort != GenevePort || int(udp.Length) != 8+n || len(udp.Payload) != n {
				t.Errorf("n=%d: UDP %+v", n, udp)
			}
			if _, res := ip.VerifyChecksum(); !res.Valid {
				t.Errorf("n=%d: gopacket: IPv4 checksum %+v", n, res)
			}
			if err := udp.SetNetworkLayerForChecksum(&ip); err != nil {
				t.Fatal(err)
			}
			if err, res := udp.VerifyChecksum(); err != nil || !res.Valid {
				t.Errorf("n=%d: gopacket: UDP checksum %v %+v", n, err, res)
			}
			// And independently: the header sums to 0xffff, complemented 0.
			if refChecksum(b[:20]) != 0 {
				t.Errorf("n=%d: IPv4 header checksum wrong", n)
			}
			got := binary.BigEndian.Uint16(b[26:])
			if !csum {
				if got != 0 {
					t.Errorf("n=%d: UDP checksum %#04x, want 0", n, got)
				}
				continue
			}
			pseudo := []byte{src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, 17, byte((8 + n) >> 8), byte(8 + n)}
			if got == 0 || refChecksum(pseudo, b[20:]) != 0 {
				t.Errorf("n=%d: UDP checksum %#04x does not verify", n, got)
			}
		}
	}
}

// TestPutOuterZeroChecksum: a UDP checksum that computes to 0 goes out as
// 0xffff, since 0 would mean "none".
func TestPutOuterZeroChecksum(t *testing.T) {
	src, dst := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	b := make([]byte, OuterHeaderLen+2)
	PutOuter(b, src, dst, 1, 2, 0, 2, true)
	// Choose the payload so that the sum without it is cancelled.
	c := binary.BigEndian.Uint16(b[26:])
	binary.BigEndian.PutUint16(b[28:], c)
	PutOuter(b, src, dst, 1, 2, 0, 2, true)
	if got := binary.BigEndian.Uint16(b[26:]); got != 0xffff {
		t.Fatalf("checksum %#04x, want 0xffff", got)
	}
	pseudo := []byte{10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 10}
	if refChecksum(pseudo, b[20:]) != 0 {
		t.Error("0xffff form does not verify")
	}
}
