package netstackx

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/gwlb/packet"
)

// Sender is the data path's writer (gwlb.Datapath satisfies it). Send wraps
// pkt, an inner IP packet of flow f, in f's latest envelope and queues it for
// GWLB; it copies pkt and must not block.
type Sender interface {
	Send(f *gwlb.Flow, pkt []byte) error
}

var _ Sender = (*gwlb.Datapath)(nil)

// Conn is one intercepted TCP connection: both legs are already connected.
type Conn struct {
	Flow   *gwlb.Flow
	Tenant packet.Tenant
	// Client is the client's leg; flowdog plays the server (a *TCPConn).
	Client net.Conn
	// Upstream is the server's leg, dialled from the client's address and
	// port (a *TCPConn).
	Upstream   net.Conn
	ClientAddr netip.AddrPort
	ServerAddr netip.AddrPort

	detached atomic.Bool
	once     sync.Once
	end      func()
}

// Detach lets the connection outlive its Handler: when the Handler returns,
// both legs stay open and the connection stays counted until release is
// called. A Handler that keeps an idle connection without a goroutine (it
// waits with TCPConn.OnReadable) detaches it; whoever then serves it must
// call release exactly when done: it closes both legs.
func (c *Conn) Detach() (release func()) {
	c.detached.Store(true)
	return c.release
}

func (c *Conn) release() { c.once.Do(c.end) }

// Handler serves one Conn and closes both legs when done, unless it
// detached the Conn. ctx ends when the engine closes. The legs also fail
// (reads and writes return errors) when the flow leaves the data path's
// flow table or the engine closes.
type Handler func(ctx context.Context, c *Conn)

// Config configures an Engine. Zero values take the documented defaults.
type Config struct {
	// MTU is the largest inner packet a stack emits, GWLB's 8,500 by
	// default and at most; at least 1,280 (IPv6's minimum). The MSS that
	// both legs advertise follows from it, so peers send no larger either.
	MTU int
	// DialTimeout bounds the upstream handshake; when it passes, the
	// client's SYN goes unanswered, as it would without flowdog. Default 10s.
	DialTimeout time.Duration
	// MaxInFlight bounds concurrent pending handshakes (upstream dials) per
	// stack; SYNs beyond it are ignored, and clients retransmit. Default 1024.
	MaxInFlight int
	// TenantIdle is how long a tenant's stack lives on without flows or
	// connections. Default 5m.
	TenantIdle time.Duration
	// QueueLen bounds each stack's inbound packet queue. Default 4096.
	QueueLen int
	// TimeWait is gVisor's TIME-WAIT duration. Default 5s. A tuple that a
	// client reuses does not wait for it: the endpoints of a flow that
	// leaves the flow table (or is replaced by a new SYN) are released at
	// once.
	TimeWait time.Duration
	// Logger receives connection-level events. Nil discards.
	Logger *slog.Logger
	// Registerer registers the flowdog_netstack_* metrics. Nil: the metrics
	// are kept but not registered.
	Registerer prometheus.Registerer
}

const (
	maxMTU = packet.MaxInnerLen
	// minMTU is IPv6's minimum link MTU; gVisor refuses IPv6 below it.
	minMTU = 1280
)

func (c *Config) setDefaults() {
	if c.MTU <= 0 || c.MTU > maxMTU {
		c.MTU = maxMTU
	}
	if c.MTU < minMTU {
		c.MTU = minMTU
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.TenantIdle <= 0 {
		c.TenantIdle = 5 * time.Minute
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 4096
	}
	if c.TimeWait <= 0 {
		c.TimeWait = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}
