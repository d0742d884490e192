package packet

import "errors"

// Malformed is the error for input that is dropped. Kind is a short
// snake_case label for metrics; Msg is for logs.
type Malformed struct{ Kind, Msg string }

func (e *Malformed) Error() string { return e.Msg }

// The sentinels are preallocated so that returning one never allocates.
var (
	ErrGeneveShort       = &Malformed{"geneve_short", "geneve: datagram shorter than the 8-byte header"}
	ErrGeneveVersion     = &Malformed{"geneve_version", "geneve: version is not 0"}
	ErrGeneveOptLen      = &Malformed{"geneve_option_overrun", "geneve: options overrun the datagram or the option area"}
	ErrGeneveProtocol    = &Malformed{"geneve_protocol", "geneve: protocol type is neither IPv4 nor IPv6"}
	ErrMissingEndpoint   = &Malformed{"aws_missing_endpoint", "geneve: AWS endpoint id option missing"}
	ErrMissingAttachment = &Malformed{"aws_missing_attachment", "geneve: AWS attachment id option missing"}
	ErrMissingCookie     = &Malformed{"aws_missing_cookie", "geneve: AWS flow cookie option missing"}
	ErrAWSOptionLen      = &Malformed{"aws_option_length", "geneve: AWS option has the wrong length"}
	ErrInnerShort        = &Malformed{"inner_short", "inner: packet shorter than its IP header"}
	ErrInnerVersion      = &Malformed{"inner_version", "inner: IP version is not 4/6 or does not match the geneve protocol type"}
	ErrInnerHeaderLen    = &Malformed{"inner_header_length", "inner: bad IPv4 header length"}
	ErrInnerTotalLen     = &Malformed{"inner_total_length", "inner: IP length field disagrees with the bytes present"}
	ErrInnerOversize     = &Malformed{"inner_oversize", "inner: packet larger than GWLB's 8500-byte limit"}
	ErrInnerExtHeader    = &Malformed{"inner_ext_header", "inner: IPv6 extension header overruns the packet"}
	ErrInnerTransport    = &Malformed{"inner_transport", "inner: truncated TCP/UDP/ICMP header"}
)

// ErrNotTCP is returned by AppendReset for a packet without a TCP header.
// It is a caller error, not malformed input, so it is no *Malformed.
var ErrNotTCP = errors.New("packet: reset: not a TCP packet with a header")

var allMalformed = [...]*Malformed{
	ErrGeneveShort, ErrGeneveVersion, ErrGeneveOptLen, ErrGeneveProtocol,
	ErrMissingEndpoint, ErrMissingAttachment, ErrMissingCookie, ErrAWSOptionLen,
	ErrInnerShort, ErrInnerVersion, ErrInnerHeaderLen, ErrInnerTotalLen,
	ErrInnerOversize, ErrInnerExtHeader, ErrInnerTransport,
}

// Kinds returns every Kind, so that metrics can pre-register their labels.
func Kinds() []string {
	k := make([]string, len(allMalformed))
	for i, m := range allMalformed {
		k[i] = m.Kind
	}
	return k
}

// KindOf returns the Kind of a *Malformed in err's chain, "other" otherwise.
func KindOf(err error) string {
	if m, ok := err.(*Malformed); ok { // the usual case; errors.As is slower
		return m.Kind
	}
	var m *Malformed
	if errors.As(err, &m) {
		return m.Kind
	}
	return "other"
}
