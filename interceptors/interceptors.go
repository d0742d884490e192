package interceptors

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Flow is what GWLB and the stack know about an intercepted connection.
// Hooks must treat it as read-only.
type Flow struct {
	// EndpointID is the GWLB endpoint, as AWS prints it ("vpce-0123…").
	EndpointID string
	// AttachmentID is GWLB's attachment id, in hex.
	AttachmentID string
	// FlowCookie is GWLB's cookie of the flow when it was accepted.
	FlowCookie uint32
	// Client and Server are the connection's addresses, as the client
	// sent them: the server is the original destination.
	Client, Server netip.AddrPort
	// Protocol is "tcp".
	Protocol string
	// SNI is the server name the client asked for in its TLS ClientHello
	// ("" without TLS or without SNI).
	SNI string
	// ALPN is the protocol negotiated with the client ("h2", "http/1.1", or "").
	ALPN string
	// TLSVersion is the TLS version negotiated with the client (tls.VersionTLS13 …), 0 without TLS.
	TLSVersion uint16
}

// Decision is what a FlowAcceptor says about a flow.
type Decision int

// Decisions.
const (
	Intercept Decision = iota // terminate it and run the hooks
	Pass                      // send it on untouched (GWLB fast path)
	Drop                      // discard it
)

func (d Decision) String() string {
	switch d {
	case Intercept:
		return "intercept"
	case Pass:
		return "pass"
	case Drop:
		return "drop"
	}
	return fmt.Sprintf("decision(%d)", int(d))
}

// FlowAcceptor decides whether a new flow that the policy marked for
// interception is intercepted, passed or dropped. It runs off the packet
// path, once per flow, with the flow's first packets held meanwhile; ctx
// carries the configured deadline. Only Client, Server, EndpointID,
// AttachmentID, FlowCookie and Protocol are known at this point. An error
// drops the flow (fail closed). The first acceptor that does not say
// Intercept decides.
type FlowAcceptor interface {
	AcceptFlow(ctx context.Context, f *Flow) (Decision, error)
}

// RequestHook sees every HTTP request before it goes upstream. Headers are
// read; req.Body streams from the client (never buffered by flowdog): an
// interceptor that reads it must replace it. It may change anything in req
// but the destination (flowdog always sends to the connection's original
// server). Returning a non-nil response answers the client with it and no
// upstream request is made; later hooks' Request methods do not run, their
// Response methods do. req.Context() ends when the client goes away.
type RequestHook interface {
	Request(f *Flow, req *http.Request) (*http.Response, error)
}

// ResponseHook sees every response before the client does, headers read and
// resp.Body streaming from upstream (or from a RequestHook's answer). It may
// change the status and headers, wrap or replace resp.Body (keep it
// streaming: bodies can be gigabytes), or replace *resp entirely.
// resp.Request is the request as sent upstream.
type ResponseHook interface {
	Response(f *Flow, resp *http.Response) error
}

// WebSocketMessage is one WebSocket data message (text or binary). Control
// frames (ping, pong, close) are carried across by flowdog and not shown.
type WebSocketMessage struct {
	// FromClient is true for client → server messages.
	FromClient bool
	// Text is true for text messages, false for binary ones.
	Text bool
	// Data is the whole message; a hook may replace it.
	Data []byte
	// Drop, set by a hook, discards the message.
	Drop bool
}

// WebSocketHook sees every WebSocket message of an upgraded request (req is
// the upgrade request). Messages are buffered whole, up to the configured
// per-message limit.
type WebSocketHook interface {
	WebSocketMessage(f *Flow, req *http.Request, m *WebSocketMessage) error
}

// TCPMessage is one chunk of a raw TCP stream, as read from one side.
// Chunk boundaries are wherever the network put them: a hook that parses a
// protocol must keep its own state across chunks.
type TCPMessage struct {
	FromClient bool
	Data       []byte // a hook may replace it
	Drop       bool
}

// StreamHook sees every chunk of connections that are neither TLS-intercepted
// HTTP nor plain HTTP. An error closes the connection.
type StreamHook interface {
	TCPMessage(f *Flow, m *TCPMessage) error
}

// Context is what Provision receives.
type Context struct {
	context.Context
	// Logger is tagged with the interceptor's id.
	Logger *slog.Logger
	// Registerer takes the interceptor's Prometheus metrics (name them
	// flowdog_<interceptor>_...); nil when metrics are not collected.
	Registerer prometheus.Registerer
}

// Provisioner prepares an interceptor after its configuration is decoded.
type Provisioner interface {
	Provision(ctx Context) error
}

// Validator checks a provisioned interceptor; fast and without side effects.
type Validator interface {
	Validate() error
}

// CleanerUpper releases what Provision acquired. It must cope with a
// Provision that failed half way.
type CleanerUpper interface {
	Cleanup() error
}

// Info registers an interceptor.
type Info struct {
	// ID names the interceptor in configuration: lower case, [a-z0-9_].
	ID string
	// New returns a new, unconfigured value (a pointer, so that YAML
	// decodes into it). No side effects.
	New func() any
}

func validID(id string) bool {
	if id == "" {
		return false
	}
	return strings.Trim(id, "abcdefghijklmnopqrstuvwxyz0123456789_") == ""
}
