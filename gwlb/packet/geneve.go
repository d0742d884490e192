package packet

import "encoding/binary"

const (
	GenevePort     = 6081
	AWSOptionClass = 0x0108
	// AWS option types; the values are the option data lengths that follow.
	OptEndpointID   = 1 // 8 bytes
	OptAttachmentID = 2 // 8 bytes
	OptFlowCookie   = 3 // 4 bytes
	// MaxInnerLen is GWLB's limit: it drops larger inner packets.
	MaxInnerLen = 8500
	// MaxGeneveHeaderLen is the fixed header plus the 6-bit option length
	// (in 4-byte words) at its maximum.
	MaxGeneveHeaderLen = 8 + 63*4
	// OuterHeaderLen is IPv4 (20, no options) + UDP (8) as PutOuter writes it.
	OuterHeaderLen = 28
	EtherTypeIPv4  = 0x0800
	EtherTypeIPv6  = 0x86DD
)

// awsOptionsLen is the length of the three AWS options AppendGeneve writes:
// three 4-byte option headers plus 8+8+4 data bytes.
const awsOptionsLen = 3*4 + 8 + 8 + 4

const hexDigits = "0123456789abcdef"

// Tenant identifies a GWLB endpoint + attachment. Different tenants can carry
// the same private addresses, so every per-flow key includes it.
type Tenant struct{ EndpointID, AttachmentID uint64 }

// EndpointString formats the endpoint id as AWS prints VPC endpoint ids:
// "vpce-" and 17 lower-case hex digits (the 64-bit value, zero-padded).
func (t Tenant) EndpointString() string {
	var b [5 + 17]byte
	copy(b[:], "vpce-")
	putHex(b[5:], t.EndpointID)
	return string(b[:])
}

// AttachmentString formats the attachment id as 16 lower-case hex digits.
// GWLB sends a raw 64-bit id with no AWS resource prefix; flowdog prints it
// as is (unlike the endpoint id, no console id maps to it one to one).
func (t Tenant) AttachmentString() string {
	var b [16]byte
	putHex(b[:], t.AttachmentID)
	return string(b[:])
}

// String returns "vpce-<endpoint>/<attachment>".
func (t Tenant) String() string {
	var b [5 + 17 + 1 + 16]byte
	copy(b[:], "vpce-")
	putHex(b[5:22], t.EndpointID)
	b[22] = '/'
	putHex(b[23:], t.AttachmentID)
	return string(b[:])
}

// putHex writes v as len(b) hex digits, zero-padded on the left.
func putHex(b []byte, v uint64) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = hexDigits[v&0xf]
		v >>= 4
	}
}

// Geneve is a decoded Geneve header (RFC 8926). Raw and Options alias the
// decoded buffer; their capacity is clipped so appending to them cannot
// overwrite the inner packet.
type Geneve struct {
	Raw           []byte // the whole Geneve header with options (b[:8+optlen])
	OAM, Critical bool
	Protocol      uint16
	VNI           uint32
	Options       []byte // the option bytes
	Tenant        Tenant
	FlowCookie    uint32
	CookieOffset  int // offset in Raw of the 4-byte cookie value (for in-place rewriting)
}

// Decode parses b, a UDP payload. It never allocates. Unknown options are
// allowed and kept in Raw; if an AWS option appears twice the last one wins.
// On error g's contents are undefined.
func (g *Geneve) Decode(b []byte) error {
	*g = Geneve{}
	if len(b) < 8 {
		return ErrGeneveShort
	}
	if b[0]>>6 != 0 {
		return ErrGeneveVersion
	}
	end := 8 + int(b[0]&0x3f)*4
	if end > len(b) {
		return ErrGeneveOptLen
	}
	g.Raw = b[:end:end]
	g.Options = b[8:end:end]
	g.OAM = b[1]&0x80 != 0
	g.Critical = b[1]&0x40 != 0
	g.Protocol = binary.BigEndian.Uint16(b[2:4])
	g.VNI = uint32(b[4])<<16 | uint32(b[5])<<8 | uint32(b[6])

	var have uint8 // bit per AWS option type seen
	for off := 8; off < end; {
		if end-off < 4 {
			return ErrGeneveOptLen
		}
		class := binary.BigEndian.Uint16(b[off:])
		typ := b[off+2] & 0x7f // the high bit only marks the option critical
		dlen := int(b[off+3]&0x1f) * 4
		data := off + 4
		if data+dlen > end {
			return ErrGeneveOptLen
		}
		if class == AWSOptionClass {
			switch typ {
			case OptEndpointID:
				if dlen != 8 {
					return ErrAWSOptionLen
				}
				g.Tenant.EndpointID = binary.BigEndian.Uint64(b[data:])
				have |= 1 << OptEndpointID
			case OptAttachmentID:
				if dlen != 8 {
					return ErrAWSOptionLen
				}
				g.Tenant.AttachmentID = binary.BigEndian.Uint64(b[data:])
				have |= 1 << OptAttachmentID
			case OptFlowCookie:
				if dlen != 4 {
					return ErrAWSOptionLen
				}
				g.FlowCookie = binary.BigEndian.Uint32(b[data:])
				g.CookieOffset = data
				have |= 1 << OptFlowCookie
			}
		}
		off = data + dlen
	}
	switch {
	case have&(1<<OptEndpointID) == 0:
		return ErrMissingEndpoint
	case have&(1<<OptAttachmentID) == 0:
		return ErrMissingAttachment
	case have&(1<<OptFlowCookie) == 0:
		return ErrMissingCookie
	}
	if g.Protocol != EtherTypeIPv4 && g.Protocol != EtherTypeIPv6 {
		return ErrGeneveProtocol
	}
	return nil
}

// Len returns the length of the header with its options, len(Raw).
func (g *Geneve) Len() int { return len(g.Raw) }

// AppendGeneve appends a Geneve header (version 0, VNI 0, no flags) with the
// three AWS options (endpoint, attachment, cookie in that order) followed by
// extra, options already encoded. It is for tests, benchmarks and packet
// generation; flowdog itself reflects the header GWLB sent. It panics if
// extra is not a multiple of 4 bytes or does not fit the 6-bit length field.
func AppendGeneve(dst []byte, proto uint16, t Tenant, cookie uint32, extra []byte) []byte {
	optLen := awsOptionsLen + len(extra)
	if len(extra)%4 != 0 || 8+optLen > MaxGeneveHeaderLen {
		panic("packet: AppendGeneve: extra options must be whole 4-byte words and fit 252 bytes")
	}
	dst = append(dst, byte(optLen/4), 0)
	dst = binary.BigEndian.AppendUint16(dst, proto)
	dst = append(dst, 0, 0, 0, 0) // VNI, reserved
	dst = appendOptHeader(dst, AWSOptionClass, OptEndpointID, 8)
	dst = binary.BigEndian.AppendUint64(dst, t.EndpointID)
	dst = appendOptHeader(dst, AWSOptionClass, OptAttachmentID, 8)
	dst = binary.BigEndian.AppendUint64(dst, t.AttachmentID)
	dst = appendOptHeader(dst, AWSOptionClass, OptFlowCookie, 4)
	dst = binary.BigEndian.AppendUint32(dst, cookie)
	return append(dst, extra...)
}

func appendOptHeader(dst []byte, class uint16, typ uint8, dataLen int) []byte {
	dst = binary.BigEndian.AppendUint16(dst, class)
	return append(dst, typ, byte(dataLen/4))
}
