package packet

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the seed corpora under testdata/fuzz")

// Seeds, one per edge case. TestFuzzCorpus keeps testdata/fuzz/<Target>/
// in step with them (go test -run TestFuzzCorpus -update); files the fuzzer
// found live beside them under their hash names and are left alone.
var fuzzSeeds = map[string]map[string][]byte{
	"FuzzGeneve": {
		"valid_v4_unknown_option": goldenGeneveV4,
		"valid_v6_flags_vni":      goldenGeneveV6,
		"max_header":              AppendGeneve(nil, EtherTypeIPv4, testTenant, 1, make([]byte, MaxGeneveHeaderLen-8-awsOptionsLen)),
		"empty":                   {},
		"short_header":            goldenGeneveV4[:7],
		"truncated_options":       goldenGeneveV4[:20],
		"bad_version":             mod(goldenGeneveV4, func(b []byte) { b[0] |= 0x80 }),
		"overrunning_option":      mod(goldenGeneveV4, func(b []byte) { b[8+3] = 0x1f }),
		"missing_cookie":          rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment),
		"aws_option_wrong_length": rawGeneve(EtherTypeIPv6, optEndpoint, optAttachment, []byte{0x01, 0x08, 0x03, 0x02, 0, 0, 0, 0, 0, 0, 0, 0}),
		"ethernet_protocol":       rawGeneve(0x6558, optEndpoint, optAttachment, optCookie),
	},
	"FuzzInner": {
		"valid_v4_tcp_syn_padded": goldenV4TCP,
		"v4_options_udp":          goldenV4Options,
		"v6_udp_ext_headers":      goldenV6UDPExt,
		"v6_ah_tcp":               goldenV6AH,
		"icmp_echo":               goldenICMPEcho,
		"icmpv6_echo":             goldenICMPv6Echo,
		"v4_first_fragment":       goldenV4FirstFrag,
		"v4_nonfirst_fragment":    goldenV4NonFirstFrag,
		"v6_first_fragment":       goldenV6FirstFrag,
		"v6_nonfirst_fragment":    goldenV6NonFirstFrag,
		"v6_atomic_fragment":      goldenV6AtomicFrag,
		"v6_no_next_header":       goldenV6NoNext,
		"v6_esp":                  goldenV6ESP,
		"bad_version":             mod(goldenV4TCP, func(b []byte) { b[0] = 0x55 }),
		"bad_ihl":                 mod(goldenV4TCP, func(b []byte) { b[0] = 0x44 }),
		"total_length_beyond":     goldenV4TCP[:40],
		"ext_header_overrun":      v6(0, []byte{17, 1, 0, 0, 0, 0, 0, 0}),
		"tcp_truncated":           v4(6, make([]byte, 19)),
	},
	"FuzzPacket": {
		"valid_v4_tcp":        withGeneve(EtherTypeIPv4, goldenV4TCP),
		"valid_v6_ext":        withGeneve(EtherTypeIPv6, goldenV6UDPExt),
		"unknown_option":      cat(goldenGeneveV4[:48], goldenICMPEcho),
		"v4_fragment":         withGeneve(EtherTypeIPv4, goldenV4NonFirstFrag),
		"v6_fragment":         withGeneve(EtherTypeIPv6, goldenV6FirstFrag),
		"version_mismatch":    withGeneve(EtherTypeIPv4, goldenV6NoNext),
		"inner_empty":         withGeneve(EtherTypeIPv6, nil),
		"truncated_options":   goldenGeneveV4[:20],
		"bad_version":         mod(withGeneve(EtherTypeIPv4, goldenV4TCP), func(b []byte) { b[0] |= 0x40 }),
		"overrunning_option":  mod(withGeneve(EtherTypeIPv4, goldenV4TCP), func(b []byte) { b[8+3] = 0x1f }),
		"inner_transport_cut": withGeneve(EtherTypeIPv4, v4(17, make([]byte, 7))),
	},
}

func corpusFile(b []byte) []byte {
	return []byte("go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n")
}

func TestFuzzCorpus(t *testing.T) {
	for target, seeds := range fuzzSeeds {
		dir := filepath.Join("testdata", "fuzz", target)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for name, b := range seeds {
			path := filepath.Join(dir, name)
			if *update {
				if err := os.WriteFile(path, corpusFile(b), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, corpusFile(b)) {
				t.Errorf("%s is stale or missing (%v); run go test -run TestFuzzCorpus -update", path, err)
			}
		}
	}
}

func FuzzGeneve(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var g Geneve
		if err := g.Decode(b); err != nil {
			checkErr(t, err)
			return
		}
		checkGeneve(t, b, &g)
	})
}

func FuzzInner(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Inner
		if err := p.Decode(b); err != nil {
			checkErr(t, err)
			if err == ErrInnerOversize || !isInner(err) {
				t.Fatalf("Inner.Decode returned %v", err)
			}
			return
		}
		checkInner(t, b, &p)
	})
}

func FuzzPacket(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		err := p.Decode(b)
		var g Geneve
		gerr := g.Decode(b)
		if gerr != nil {
			if err != gerr {
				t.Fatalf("Packet.Decode %v, Geneve.Decode %v", err, gerr)
			}
			return
		}
		if err != nil {
			checkErr(t, err)
			if !isInner(err) {
				t.Fatalf("geneve decoded but Packet.Decode returned %v", err)
			}
			return
		}
		checkGeneve(t, b, &p.Geneve)
		rest := b[p.Geneve.Len():]
		checkInner(t, rest, &p.Inner)
		if len(p.Inner.Raw) > MaxInnerLen {
			t.Fatalf("inner of %d bytes accepted", len(p.Inner.Raw))
		}
		if want := map[uint16]uint8{EtherTypeIPv4: 4, EtherTypeIPv6: 6}[p.Geneve.Protocol]; p.Inner.Version != want {
			t.Fatalf("protocol %#x carries IPv%d", p.Geneve.Protocol, p.Inner.Version)
		}
		// Re-encoding the envelope around the inner packet decodes the same.
		var p2 Packet
		again := append(append([]byte(nil), p.Geneve.Raw...), p.Inner.Raw...)
		if err := p2.Decode(again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !reflect.DeepEqual(p, p2) {
			t.Fatalf("re-decode differs:\n%+v\n%+v", p, p2)
		}
	})
}

func checkErr(t *testing.T, err error) {
	t.Helper()
	m, ok := err.(*Malformed)
	if !ok {
		t.Fatalf("error %v is no *Malformed", err)
	}
	for _, s := range allMalformed {
		if s == m {
			return
		}
	}
	t.Fatalf("error %v is not a sentinel", err)
}

func isInner(err error) bool {
	switch err {
	case ErrInnerShort, ErrInnerVersion, ErrInnerHeaderLen, ErrInnerTotalLen, ErrInnerOversize, ErrInnerExtHeader, ErrInnerTransport:
		return true
	}
	return false
}

func checkGeneve(t *testing.T, b []byte, g *Geneve) {
	t.Helper()
	if g.Len() != 8+int(b[0]&0x3f)*4 || g.Len() != len(g.Raw) || g.Len() > len(b) || g.Len() > MaxGeneveHeaderLen {
		t.Fatalf("Len %d, option length byte %#x, input %d", g.Len(), b[0], len(b))
	}
	if &g.Raw[0] != &b[0] {
		t.Fatal("Raw does not alias the input")
	}
	if !bytes.Equal(g.Options, g.Raw[8:]) {
		t.Fatal("Options is not Raw[8:]")
	}
	if g.CookieOffset < 12 || g.CookieOffset+4 > len(g.Raw) || binary.BigEndian.Uint32(g.Raw[g.CookieOffset:]) != g.FlowCookie {
		t.Fatalf("CookieOffset %d does not hold cookie %#x", g.CookieOffset, g.FlowCookie)
	}
	if g.Protocol != EtherTypeIPv4 && g.Protocol != EtherTypeIPv6 {
		t.Fatalf("protocol %#x accepted", g.Protocol)
	}
	var g2 Geneve
	if err := g2.Decode(g.Raw); err != nil || !reflect.DeepEqual(*g, g2) {
		t.Fatalf("re-decoding Raw: %v\n%+v\n%+v", err, *g, g2)
	}
	var g3 Geneve
	if err := g3.Decode(AppendGeneve(nil, g.Protocol, g.Tenant, g.FlowCookie, nil)); err != nil ||
		g3.Tenant != g.Tenant || g3.FlowCookie != g.FlowCookie || g3.Protocol != g.Protocol {
		t.Fatalf("AppendGeneve round trip: %v %+v", err, g3)
	}
}

func checkInner(t *testing.T, b []byte, p *Inner) {
	t.Helper()
	if len(p.Raw) > len(b) || &p.Raw[0] != &b[0] {
		t.Fatal("Raw is not a prefix of the input")
	}
	if p.Version != b[0]>>4 || p.Src.Is4() != (p.Version == 4) || p.Dst.Is4() != (p.Version == 4) || !p.Src.IsValid() {
		t.Fatalf("version %d, addresses %v %v", p.Version, p.Src, p.Dst)
	}
	if p.L4Offset < 0 || p.L4Offset > len(p.Raw) {
		t.Fatalf("L4Offset %d beyond %d bytes", p.L4Offset, len(p.Raw))
	}
	if p.NonFirst && (!p.Fragment || p.L4Offset != 0) {
		t.Fatalf("non-first fragment: %+v", *p)
	}
	if p.L4Offset == 0 && (p.SrcPort != 0 || p.DstPort != 0 || p.TCPFlags != 0) {
		t.Fatalf("ports without a transport header: %+v", *p)
	}
	var p2 Inner
	if err := p2.Decode(p.Raw); err != nil || !reflect.DeepEqual(*p, p2) {
		t.Fatalf("re-decoding Raw: %v\n%+v\n%+v", err, *p, p2)
	}
	tu := p.Tuple()
	c1, _ := tu.Canonical()
	c2, _ := tu.Reverse().Canonical()
	if c1 != c2 {
		t.Fatalf("directions disagree: %v %v", c1, c2)
	}
	_ = fmt.Sprint(tu) // String must not panic

	rst, err := AppendReset(nil, p)
	if p.Proto != protoTCP || p.L4Offset == 0 {
		if err != ErrNotTCP {
			t.Fatalf("AppendReset on %v: %v", tu, err)
		}
		return
	}
	var r Inner
	if err != nil {
		t.Fatalf("AppendReset: %v", err)
	}
	if err := r.Decode(rst); err != nil || r.Tuple() != tu.Reverse() || r.TCPFlags&TCPRst == 0 {
		t.Fatalf("reset: %v %+v", err, r)
	}
	if r.Version == 4 && refChecksum(rst[:20]) != 0 {
		t.Fatal("reset IPv4 checksum")
	}
}
