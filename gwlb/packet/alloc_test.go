package packet

import (
	"fmt"
	"testing"

	"github.com/flowdog/flowdog/internal/testutil"
)

// TestZeroAlloc pins the data path at zero allocations per packet.
func TestZeroAlloc(t *testing.T) {
	if testutil.Race {
		t.Skip("allocation counts are not meaningful under -race; the plain test run checks them")
	}
	v4pkt := withGeneve(EtherTypeIPv4, goldenV4TCP)
	v6pkt := withGeneve(EtherTypeIPv6, goldenV6UDPExt)
	out := make([]byte, OuterHeaderLen+1400)
	reset := make([]byte, 0, 128)
	var in6 Inner
	if err := in6.Decode(goldenV6AH); err != nil {
		t.Fatal(err)
	}
	var (
		p   Packet
		g   Geneve
		in  Inner
		err error
	)
	tests := []struct {
		name string
		f    func()
	}{
		{"Packet.Decode v4", func() { err = p.Decode(v4pkt) }},
		{"Packet.Decode v6", func() { err = p.Decode(v6pkt) }},
		{"Packet.Decode malformed", func() {
			if p.Decode(v4pkt[:20]) == nil {
				panic("no error")
			}
		}},
		{"Geneve.Decode", func() { err = g.Decode(v4pkt) }},
		{"Inner.Decode v4", func() { err = in.Decode(goldenV4TCP) }},
		{"Inner.Decode v6 ext", func() { err = in.Decode(goldenV6UDPExt) }},
		{"Tuple.Canonical", func() { c, _ := in6.Tuple().Canonical(); _ = c }},
		{"PutOuter", func() { PutOuter(out, [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2, 3, 1400, false) }},
		{"PutOuter checksum", func() { PutOuter(out, [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2, 3, 1400, true) }},
		{"AppendReset", func() { reset, err = AppendReset(reset[:0], &in6) }},
		{"KindOf", func() { _ = KindOf(ErrInnerShort) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, tt.f); n != 0 {
				t.Errorf("%v allocations per run, want 0", n)
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func BenchmarkPacketDecode(b *testing.B) {
	for _, n := range []int{64, 1400, MaxInnerLen} {
		dgram := withGeneve(EtherTypeIPv4, v4(6, append(tcpHdr(40000, 443, 1, 2, TCPAck), make([]byte, n-40)...)))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(dgram)))
			var p Packet
			for b.Loop() {
				if err := p.Decode(dgram); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPutOuter(b *testing.B) {
	for _, n := range []int{64 + 48, 1400 + 48, MaxInnerLen + 48} {
		for _, csum := range []bool{false, true} {
			buf := make([]byte, OuterHeaderLen+n)
			b.Run(fmt.Sprintf("%d/checksum=%v", n, csum), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(buf)))
				for b.Loop() {
					PutOuter(buf, [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, 40000, GenevePort, 7, n, csum)
				}
			})
		}
	}
}

func BenchmarkAppendReset(b *testing.B) {
	var in Inner
	if err := in.Decode(goldenV4TCP); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = AppendReset(buf[:0], &in)
	}
}
