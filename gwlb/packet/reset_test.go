package packet

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestAppendReset(t *testing.T) {
	withPayload := func(h []byte, n int) []byte { return append(h, make([]byte, n)...) }
	tests := []struct {
		name     string
		in       []byte
		seq, ack uint32
		flags    uint8
	}{
		{"v4 syn", v4(6, tcpHdr(40000, 443, 1000, 0, TCPSyn)), 0, 1001, TCPRst | TCPAck},
		{"v4 syn with options", goldenV4TCP, 0, 1001, TCPRst | TCPAck},
		{"v4 ack data", v4(6, withPayload(tcpHdr(40000, 443, 1000, 5000, TCPAck|TCPPsh), 100)), 5000, 0, TCPRst},
		{"v4 fin no ack", v4(6, withPayload(tcpHdr(1, 2, 10, 0, TCPFin), 5)), 0, 16, TCPRst | TCPAck},
		{"v4 bare packet", v4(6, withPayload(tcpHdr(1, 2, 10, 0, 0), 3)), 0, 13, TCPRst | TCPAck},
		{"v6 syn fin payload", v6(6, withPayload(tcpHdr(5, 6, 100, 0, TCPSyn|TCPFin), 10)), 0, 112, TCPRst | TCPAck},
		{"v6 syn seq wraps", v6(6, tcpHdr(5, 6, 0xffffffff, 0, TCPSyn)), 0, 0, TCPRst | TCPAck},
		{"v6 ah ack", goldenV6AH, 2, 0, TCPRst},
		{"v6 first fragment syn", goldenV6FirstFrag, 0, 8, TCPRst | TCPAck},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in Inner
			if err := in.Decode(tt.in); err != nil {
				t.Fatal(err)
			}
			prefix := []byte("keep")
			out, err := AppendReset(append([]byte(nil), prefix...), &in)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(out, prefix) {
				t.Fatal("dst prefix clobbered")
			}
			out = out[len(prefix):]
			var r Inner
			if err := r.Decode(out); err != nil {
				t.Fatalf("reset does not decode: %v", err)
			}
			if len(r.Raw) != len(out) || r.Version != in.Version || r.Fragment {
				t.Errorf("reset: %+v", r)
			}
			if r.Tuple() != in.Tuple().Reverse() {
				t.Errorf("tuple %v, want %v", r.Tuple(), in.Tuple().Reverse())
			}
			th := r.Raw[r.L4Offset:]
			if len(th) != 20 || th[12] != 5<<4 {
				t.Fatalf("TCP header % x", th)
			}
			if seq, ack := binary.BigEndian.Uint32(th[4:]), binary.BigEndian.Uint32(th[8:]); seq != tt.seq || ack != tt.ack || r.TCPFlags != tt.flags {
				t.Errorf("seq %d ack %d flags %#x, want %d %d %#x", seq, ack, r.TCPFlags, tt.seq, tt.ack, tt.flags)
			}

			// Checksums, by gopacket and by the naive sum.
			var nl gopacket.NetworkLayer
			var pseudo []byte
			if r.Version == 4 {
				ip := &layers.IPv4{}
				if err := ip.DecodeFromBytes(out, gopacket.NilDecodeFeedback); err != nil {
					t.Fatal(err)
				}
				if _, res := ip.VerifyChecksum(); !res.Valid || refChecksum(out[:20]) != 0 {
					t.Errorf("IPv4 checksum %+v", res)
				}
				if ip.TTL != 64 || ip.Flags != layers.IPv4DontFragment {
					t.Errorf("IPv4 %+v", ip)
				}
				nl = ip
				pseudo = cat(out[12:20], []byte{0, 6, 0, 20})
			} else {
				ip := &layers.IPv6{}
				if err := ip.DecodeFromBytes(out, gopacket.NilDecodeFeedback); err != nil {
					t.Fatal(err)
				}
				if ip.HopLimit != 64 {
					t.Errorf("IPv6 %+v", ip)
				}
				nl = ip
				pseudo = cat(out[8:40], []byte{0, 0, 0, 20, 0, 0, 0, 6})
			}
			var tcp layers.TCP
			if err := tcp.DecodeFromBytes(th, gopacket.NilDecodeFeedback); err != nil {
				t.Fatal(err)
			}
			if err := tcp.SetNetworkLayerForChecksum(nl); err != nil {
				t.Fatal(err)
			}
			if err, res := tcp.VerifyChecksum(); err != nil || !res.Valid {
				t.Errorf("gopacket TCP checksum %v %+v", err, res)
			}
			if refChecksum(pseudo, th) != 0 {
				t.Error("TCP checksum does not verify")
			}
		})
	}
}

func TestAppendResetNotTCP(t *testing.T) {
	nonFirst := mod(v4(6, make([]byte, 24)), func(b []byte) { b[7] = 3 })
	for name, b := range map[string][]byte{
		"udp":                goldenV4Options,
		"icmp":               goldenICMPEcho,
		"tcp fragment no l4": nonFirst,
	} {
		t.Run(name, func(t *testing.T) {
			var in Inner
			if err := in.Decode(b); err != nil {
				t.Fatal(err)
			}
			dst := []byte{1}
			out, err := AppendReset(dst, &in)
			if err != ErrNotTCP || len(out) != 1 {
				t.Errorf("AppendReset = %d bytes, %v; want ErrNotTCP", len(out), err)
			}
		})
	}
	// A hand-filled Inner with mixed families must not panic.
	in := Inner{Version: 4, Proto: 6, Src: v4a, Dst: v6b, L4Offset: 20, Raw: v4(6, tcpHdr(1, 2, 3, 4, 0))}
	if _, err := AppendReset(nil, &in); err != ErrNotTCP {
		t.Errorf("mixed families: %v", err)
	}
}
