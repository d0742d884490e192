package packet

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// goldenGeneveV4 is what GWLB sends, with an unknown option between the AWS
// options, followed by two bytes standing for the inner packet.
var goldenGeneveV4 = []byte{
	0x0a,       // version 0, option length 10 words (40 bytes)
	0x00,       // O=0, C=0, reserved
	0x08, 0x00, // protocol type IPv4
	0x00, 0x00, 0x00, 0x00, // VNI 0, reserved
	0x01, 0x08, 0x01, 0x02, // class AWS, type 1 (endpoint id), length 2 words
	0x0a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, // endpoint id
	0xff, 0xfe, 0x42, 0x01, // class 0xfffe, type 0x42 (unknown), length 1 word
	0xde, 0xad, 0xbe, 0xef, // its data
	0x01, 0x08, 0x02, 0x02, // class AWS, type 2 (attachment id), length 2 words
	0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // attachment id
	0x01, 0x08, 0x03, 0x01, // class AWS, type 3 (flow cookie), length 1 word
	0xca, 0xfe, 0xf0, 0x0d, // flow cookie
	0x45, 0x00, // inner packet (not Geneve's business)
}

// goldenGeneveV6 has the options in another order, an unknown critical
// option without data, the O and C bits and a VNI.
var goldenGeneveV6 = []byte{
	0x09,       // version 0, option length 9 words (36 bytes)
	0xc0,       // O=1, C=1
	0x86, 0xdd, // protocol type IPv6
	0x12, 0x34, 0x56, 0x00, // VNI 0x123456, reserved
	0x01, 0x08, 0x03, 0x01, // AWS flow cookie, 1 word
	0x00, 0x00, 0x00, 0x07, // flow cookie 7
	0x01, 0x08, 0x02, 0x02, // AWS attachment id, 2 words
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // attachment id 2
	0x00, 0x01, 0x85, 0x00, // class 1, type 0x85 (critical, unknown), no data
	0x01, 0x08, 0x01, 0x02, // AWS endpoint id, 2 words
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // endpoint id 1
}

func TestGeneveGolden(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Geneve
	}{
		{"v4 with unknown option", goldenGeneveV4, Geneve{
			Raw:          goldenGeneveV4[:48],
			Protocol:     EtherTypeIPv4,
			Options:      goldenGeneveV4[8:48],
			Tenant:       Tenant{EndpointID: 0x0abcdef012345678, AttachmentID: 0x1122334455667788},
			FlowCookie:   0xcafef00d,
			CookieOffset: 44,
		}},
		{"v6 flags vni reordered", goldenGeneveV6, Geneve{
			Raw:          goldenGeneveV6,
			OAM:          true,
			Critical:     true,
			Protocol:     EtherTypeIPv6,
			VNI:          0x123456,
			Options:      goldenGeneveV6[8:],
			Tenant:       Tenant{EndpointID: 1, AttachmentID: 2},
			FlowCookie:   7,
			CookieOffset: 12,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g Geneve
			if err := g.Decode(tt.in); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(g, tt.want) {
				t.Errorf("got  %+v\nwant %+v", g, tt.want)
			}
			if g.Len() != len(tt.want.Raw) {
				t.Errorf("Len() = %d, want %d", g.Len(), len(tt.want.Raw))
			}
			if &g.Raw[0] != &tt.in[0] {
				t.Error("Raw does not alias the input")
			}
			if cap(g.Raw) != len(g.Raw) {
				t.Errorf("cap(Raw) = %d, want clipped to %d", cap(g.Raw), len(g.Raw))
			}
		})
	}
}

// rawGeneve builds a Geneve header around hand-made options.
func rawGeneve(proto uint16, opts ...[]byte) []byte {
	o := cat(opts...)
	return cat([]byte{byte(len(o) / 4), 0, byte(proto >> 8), byte(proto), 0, 0, 0, 0}, o)
}

var (
	optEndpoint   = []byte{0x01, 0x08, 0x01, 0x02, 1, 2, 3, 4, 5, 6, 7, 8}
	optAttachment = []byte{0x01, 0x08, 0x02, 0x02, 1, 2, 3, 4, 5, 6, 7, 8}
	optCookie     = []byte{0x01, 0x08, 0x03, 0x01, 1, 2, 3, 4}
)

func TestGeneveMalformed(t *testing.T) {
	good := rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment, optCookie)
	tests := []struct {
		name string
		in   []byte
		want *Malformed
	}{
		{"empty", nil, ErrGeneveShort},
		{"7 bytes", good[:7], ErrGeneveShort},
		{"version 1", mod(good, func(b []byte) { b[0] |= 0x40 }), ErrGeneveVersion},
		{"version 3", mod(good, func(b []byte) { b[0] |= 0xc0 }), ErrGeneveVersion},
		{"option length beyond datagram", good[:len(good)-4], ErrGeneveOptLen},
		{"option length 1 word, none present", []byte{0x01, 0, 0x08, 0, 0, 0, 0, 0}, ErrGeneveOptLen},
		{"option overruns option area", mod(good, func(b []byte) { b[8+3] = 0x1f }), ErrGeneveOptLen},
		{"last option overruns", rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment, optCookie, []byte{0, 1, 2, 1}), ErrGeneveOptLen},
		{"ethernet protocol", rawGeneve(0x6558, optEndpoint, optAttachment, optCookie), ErrGeneveProtocol},
		{"protocol 0", rawGeneve(0, optEndpoint, optAttachment, optCookie), ErrGeneveProtocol},
		{"no options", rawGeneve(EtherTypeIPv4), ErrMissingEndpoint},
		{"no endpoint", rawGeneve(EtherTypeIPv4, optAttachment, optCookie), ErrMissingEndpoint},
		{"no attachment", rawGeneve(EtherTypeIPv4, optEndpoint, optCookie), ErrMissingAttachment},
		{"no cookie", rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment), ErrMissingCookie},
		{"other class type 3 is no cookie", rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment, []byte{0x01, 0x09, 0x03, 0x01, 1, 2, 3, 4}), ErrMissingCookie},
		{"endpoint 1 word", rawGeneve(EtherTypeIPv4, []byte{0x01, 0x08, 0x01, 0x01, 1, 2, 3, 4}, optAttachment, optCookie), ErrAWSOptionLen},
		{"attachment 3 words", rawGeneve(EtherTypeIPv4, optEndpoint, []byte{0x01, 0x08, 0x02, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, optCookie), ErrAWSOptionLen},
		{"cookie 0 words", rawGeneve(EtherTypeIPv4, optEndpoint, optAttachment, []byte{0x01, 0x08, 0x03, 0x00}), ErrAWSOptionLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g Geneve
			err := g.Decode(tt.in)
			if err != tt.want {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
			if KindOf(err) != tt.want.Kind {
				t.Errorf("KindOf = %q, want %q", KindOf(err), tt.want.Kind)
			}
		})
	}
	var g Geneve
	if err := g.Decode(good); err != nil {
		t.Fatalf("the unmodified base case must decode: %v", err)
	}
}

func TestAppendGeneve(t *testing.T) {
	extra := []byte{0xff, 0xfe, 0x42, 0x01, 0xde, 0xad, 0xbe, 0xef}
	prefix := []byte("prefix")
	b := AppendGeneve(append([]byte(nil), prefix...), EtherTypeIPv6, testTenant, testCookie, extra)
	if !bytes.HasPrefix(b, prefix) {
		t.Fatal("AppendGeneve clobbered dst")
	}
	b = b[len(prefix):]
	var g Geneve
	if err := g.Decode(b); err != nil {
		t.Fatal(err)
	}
	if g.Tenant != testTenant || g.FlowCookie != testCookie || g.Protocol != EtherTypeIPv6 || g.Len() != len(b) {
		t.Errorf("round trip: %+v", g)
	}
	if !bytes.HasSuffix(g.Options, extra) {
		t.Errorf("extra options not at the end: % x", g.Options)
	}

	// gopacket reads the same options.
	var gl layers.Geneve
	if err := gl.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		t.Fatalf("gopacket: %v", err)
	}
	type opt struct {
		class uint16
		typ   uint8
		data  []byte
	}
	want := []opt{
		{AWSOptionClass, OptEndpointID, []byte{0x0a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78}},
		{AWSOptionClass, OptAttachmentID, []byte{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}},
		{AWSOptionClass, OptFlowCookie, []byte{0xca, 0xfe, 0xf0, 0x0d}},
		{0xfffe, 0x42, []byte{0xde, 0xad, 0xbe, 0xef}},
	}
	if gl.Version != 0 || gl.Protocol != layers.EthernetTypeIPv6 || int(gl.OptionsLength) != len(g.Options) {
		t.Errorf("gopacket header: %+v", gl)
	}
	if len(gl.Options) != len(want) {
		t.Fatalf("gopacket sees %d options, want %d", len(gl.Options), len(want))
	}
	for i, w := range want {
		o := gl.Options[i]
		if o.Class != w.class || o.Type != w.typ || !bytes.Equal(o.Data, w.data) {
			t.Errorf("option %d: gopacket %+v, want %+v", i, *o, w)
		}
	}
}

func TestAppendGenevePanics(t *testing.T) {
	for _, extra := range [][]byte{{1, 2, 3}, make([]byte, MaxGeneveHeaderLen-8-awsOptionsLen+4)} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("extra of %d bytes: no panic", len(extra))
				}
			}()
			AppendGeneve(nil, EtherTypeIPv4, testTenant, 0, extra)
		}()
	}
	// The largest header fits.
	b := AppendGeneve(nil, EtherTypeIPv4, testTenant, 0, make([]byte, MaxGeneveHeaderLen-8-awsOptionsLen))
	if len(b) != MaxGeneveHeaderLen {
		t.Fatalf("len = %d", len(b))
	}
	var g Geneve
	if err := g.Decode(b); err != nil || g.Len() != MaxGeneveHeaderLen {
		t.Errorf("max header: %v, len %d", err, g.Len())
	}
}

// TestGeneveFromGopacket decodes Geneve that gopacket wrote.
func TestGeneveFromGopacket(t *testing.T) {
	for _, proto := range []layers.EthernetType{layers.EthernetTypeIPv4, layers.EthernetTypeIPv6} {
		gl := &layers.Geneve{
			Protocol:       proto,
			VNI:            0xabcdef,
			CriticalOption: true,
			Options: []*layers.GeneveOption{
				{Class: 0x0103, Type: 0x80, Data: []byte{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9}},
				{Class: AWSOptionClass, Type: OptFlowCookie, Data: []byte{0, 0, 1, 0}},
				{Class: AWSOptionClass, Type: OptAttachmentID, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
				{Class: AWSOptionClass, Type: OptEndpointID, Data: []byte{8, 7, 6, 5, 4, 3, 2, 1}},
			},
		}
		b := serialize(t, gl, gopacket.Payload([]byte{0x45}))
		var g Geneve
		if err := g.Decode(b); err != nil {
			t.Fatalf("%v: %v", proto, err)
		}
		want := Tenant{EndpointID: 0x0807060504030201, AttachmentID: 0x0102030405060708}
		if g.Tenant != want || g.FlowCookie != 256 || g.VNI != 0xabcdef || !g.Critical || g.OAM ||
			g.Protocol != uint16(proto) || g.Len() != len(b)-1 {
			t.Errorf("%v: got %+v", proto, g)
		}
	}
}

func TestTenantStrings(t *testing.T) {
	tests := []struct {
		t                     Tenant
		endpoint, attach, all string
	}{
		{testTenant, "vpce-00abcdef012345678", "1122334455667788", "vpce-00abcdef012345678/1122334455667788"},
		{Tenant{}, "vpce-00000000000000000", "0000000000000000", "vpce-00000000000000000/0000000000000000"},
		{Tenant{^uint64(0), ^uint64(0)}, "vpce-0ffffffffffffffff", "ffffffffffffffff", "vpce-0ffffffffffffffff/ffffffffffffffff"},
	}
	for _, tt := range tests {
		t.Run(tt.all, func(t *testing.T) {
			if got := tt.t.EndpointString(); got != tt.endpoint {
				t.Errorf("EndpointString = %q, want %q", got, tt.endpoint)
			}
			if got := tt.t.AttachmentString(); got != tt.attach {
				t.Errorf("AttachmentString = %q, want %q", got, tt.attach)
			}
			if got := tt.t.String(); got != tt.all {
				t.Errorf("String = %q, want %q", got, tt.all)
			}
		})
	}
}

func TestKinds(t *testing.T) {
	kinds := Kinds()
	if len(kinds) != len(allMalformed) {
		t.Fatalf("Kinds() has %d entries, want %d", len(kinds), len(allMalformed))
	}
	seen := map[string]bool{}
	for _, k := range kinds {
		if k == "" || seen[k] || k == "other" {
			t.Errorf("bad or duplicate kind %q", k)
		}
		seen[k] = true
	}
	kinds[0] = "mutated"
	if Kinds()[0] == "mutated" {
		t.Error("Kinds returns shared state")
	}
	wrapped := errors.Join(errors.New("ctx"), ErrInnerShort)
	tests := []struct {
		err  error
		want string
	}{
		{ErrGeneveShort, "geneve_short"},
		{wrapped, "inner_short"},
		{errors.New("x"), "other"},
		{nil, "other"},
	}
	for _, tt := range tests {
		if got := KindOf(tt.err); got != tt.want {
			t.Errorf("KindOf(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
