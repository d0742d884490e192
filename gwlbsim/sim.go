package gwlbsim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Violation kinds: the ways a reply can break GWLB's contract. A reply is
// counted under the first kind it matches, in the order listed, and is not
// delivered.
const (
	// KindMalformed: not a Geneve datagram carrying an IPv4/IPv6 packet.
	KindMalformed = "malformed"
	// KindOversize: inner packet longer than MaxInner.
	KindOversize = "oversize"
	// KindUnknownFlow: no tenant has a flow with the inner 5-tuple.
	KindUnknownFlow = "unknown_flow"
	// KindStaleCookie: the envelope is the flow's except that the cookie
	// is one the flow had before.
	KindStaleCookie = "stale_cookie"
	// KindWrongEnvelope: the Geneve header differs from the latest one
	// sent for the flow in any other way (options, order, cookie, tenant).
	KindWrongEnvelope = "wrong_envelope"
	// KindWrongSourcePort: the reply's UDP source port is not the source
	// port GWLB uses for the flow.
	KindWrongSourcePort = "wrong_source_port"
	// KindWrongDestinationPort: a datagram arrived on one of GWLB's source
	// ports instead of on GenevePort (the appliance answered the sender
	// address instead of GWLB's port 6081).
	KindWrongDestinationPort = "wrong_destination_port"
)

// Config configures a Sim. Zero fields take the documented defaults.
type Config struct {
	// GWLBAddr is GWLB's own IPv4 address, e.g. 127.0.0.2. The Sim
	// receives replies on GWLBAddr:6081 (bound with SO_REUSEPORT so that an
	// appliance may listen on 0.0.0.0:6081 on the same host) and sends from
	// GWLBAddr:<ephemeral>.
	GWLBAddr netip.Addr
	// ApplianceAddr is where the appliance listens, e.g. 127.0.0.1:6081.
	ApplianceAddr netip.AddrPort
	// SourcePorts is the number of UDP sockets bound to GWLBAddr:0 whose
	// ports serve as per-flow source ports. Default 8.
	SourcePorts int
	// TCPIdleTimeout and UDPIdleTimeout (the latter for every protocol
	// but TCP) give a flow a new cookie when its tuple is reused after
	// being idle this long. Defaults 350 s and 120 s, as GWLB's.
	TCPIdleTimeout, UDPIdleTimeout time.Duration
	// MTU is the hosts' link MTU, i.e. the largest inner packet. Default
	// and maximum 8500.
	MTU int
	// TCPTimeWait is the TIME-WAIT duration of the hosts' TCP stacks.
	// Default 1 s, short so that tests can reuse a tuple soon.
	TCPTimeWait time.Duration
	// Logger receives violations and errors. Nil discards.
	Logger *slog.Logger
}

// Violation is one reply that broke the contract.
type Violation struct {
	Kind string
	Desc string
	Time time.Time
}

func (v Violation) String() string { return v.Kind + ": " + v.Desc }

// Stats are packet counters of a Sim.
type Stats struct {
	// Sent counts datagrams sent to the appliance.
	Sent uint64
	// Received counts datagrams received from the appliance.
	Received uint64
	// Delivered counts valid replies injected into a host.
	Delivered uint64
	// NoHost counts valid replies whose inner destination no host of the
	// tenant owns (GWLB would forward them; nobody here listens).
	NoHost uint64
	// Filtered counts host packets never sent to the appliance because
	// GWLB would not see them (multicast, link-local, unparsable).
	Filtered uint64
	// SendErrors counts failed sends to the appliance.
	SendErrors uint64
	// DeviceErrors counts valid replies that could not be written to the
	// tenant's device (see Tenant.AttachDevice).
	DeviceErrors uint64
	// Violations counts contract violations by kind (only kinds seen).
	Violations map[string]uint64
}

// ViolationCount is the total of Violations.
func (st Stats) ViolationCount() uint64 {
	var n uint64
	for _, c := range st.Violations {
		n += c
	}
	return n
}

const (
	maxRecentViolations = 100
	maxOldCookies       = 16
	maxFlows            = 1 << 18
	hostQueueLen        = 1024
	rcvBufBytes         = 8 << 20
	// logPerKind is how many violations of one kind are logged at Warn
	// before the rest go to Debug, so a broken appliance cannot flood logs.
	logPerKind = 10
)

// Sim is a simulated Gateway Load Balancer.
type Sim struct {
	cfg       Config
	log       *slog.Logger
	appliance netip.AddrPort
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	rx       *net.UDPConn
	src      []*net.UDPConn
	srcPorts []uint16

	mu         sync.Mutex
	closed     bool
	tenants    map[[2]uint64]*Tenant
	tenantList []*Tenant
	hosts      []*Host
	listeners  []io.Closer
	flows      map[flowKey]*flow

	sent, received, delivered, noHost, filtered, sendErrors, deviceErrors atomic.Uint64

	vmu    sync.Mutex
	vcount map[string]uint64
	recent []Violation // ring of the latest maxRecentViolations
	vnext  int
}

// New starts a Sim: it binds GWLB's sockets and starts the goroutine that
// receives replies. Close stops it.
func New(cfg Config) (*Sim, error) {
	cfg.GWLBAddr = cfg.GWLBAddr.Unmap()
	if !cfg.GWLBAddr.Is4() {
		return nil, fmt.Errorf("gwlbsim: GWLBAddr %v: must be IPv4 (the outer header always is)", cfg.GWLBAddr)
	}
	app := netip.AddrPortFrom(cfg.ApplianceAddr.Addr().Unmap(), cfg.ApplianceAddr.Port())
	if !app.Addr().Is4() || app.Port() == 0 {
		return nil, fmt.Errorf("gwlbsim: ApplianceAddr %v: must be IPv4 address and port", cfg.ApplianceAddr)
	}
	if cfg.SourcePorts <= 0 {
		cfg.SourcePorts = 8
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = 350 * time.Second
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = 120 * time.Second
	}
	if cfg.MTU <= 0 || cfg.MTU > MaxInner {
		cfg.MTU = MaxInner
	}
	if cfg.MTU < 1280 {
		return nil, fmt.Errorf("gwlbsim: MTU %d: below IPv6's minimum 1280", cfg.MTU)
	}
	if cfg.TCPTimeWait <= 0 {
		cfg.TCPTimeWait = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sim{
		cfg:       cfg,
		log:       log,
		appliance: app,
		ctx:       ctx,
		cancel:    cancel,
		tenants:   make(map[[2]uint64]*Tenant),
		flows:     make(map[flowKey]*flow),
		vcount:    make(map[string]uint64),
	}
	var err error
	s.rx, err = listenUDP(netip.AddrPortFrom(cfg.GWLBAddr, GenevePort), true)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("gwlbsim: reply socket: %w", err)
	}
	// Why: a fast appliance must never lose replies to a small buffer
	// here; a drop would look like the appliance's fault.
	if err := setRcvBuf(s.rx, rcvBufBytes); err != nil {
		log.Warn("gwlbsim: cannot enlarge receive buffer", "err", err)
	}
	for i := 0; i < cfg.SourcePorts; i++ {
		c, err := listenUDP(netip.AddrPortFrom(cfg.GWLBAddr, 0), false)
		if err != nil {
			s.closeSockets()
			cancel()
			return nil, fmt.Errorf("gwlbsim: source port %d: %w", i, err)
		}
		s.src = append(s.src, c)
		s.srcPorts = append(s.srcPorts, c.LocalAddr().(*net.UDPAddr).AddrPort().Port())
	}
	s.wg.Add(1 + len(s.src))
	go s.receiveReplies()
	for i := range s.src {
		go s.watchSourcePort(i)
	}
	log.Debug("gwlbsim: started", "gwlb", cfg.GWLBAddr, "appliance", app, "source_ports", s.srcPorts)
	return s, nil
}

// Close stops every goroutine and host stack and waits for them.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	hosts, listeners := s.hosts, s.listeners
	s.mu.Unlock()

	s.cancel()
	var errs []error
	for _, l := range listeners {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.closeSockets())
	s.wg.Wait()
	// Stacks close only after the receive goroutine has stopped injecting.
	for _, h := range hosts {
		h.close()
	}
	return errors.Join(errs...)
}

func (s *Sim) closeSockets() error {
	var errs []error
	if s.rx != nil {
		errs = append(errs, s.rx.Close())
	}
	for _, c := range s.src {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// GWLBAddr is the address replies must go to (port GenevePort).
func (s *Sim) GWLBAddr() netip.Addr { return s.cfg.GWLBAddr }

// SourcePorts returns the UDP source ports GWLB sends from.
func (s *Sim) SourcePorts() []uint16 { return slices.Clone(s.srcPorts) }

// AddTenant adds an isolated network behind the GWLB endpoint with these
// ids. Adding ids that exist returns the existing tenant.
func (s *Sim) AddTenant(endpointID, attachmentID uint64) *Tenant {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]uint64{endpointID, attachmentID}
	if t := s.tenants[k]; t != nil {
		return t
	}
	t := &Tenant{
		sim:          s,
		id:           len(s.tenantList),
		EndpointID:   endpointID,
		AttachmentID: attachmentID,
		hosts:        make(map[netip.Addr]*Host),
	}
	s.tenants[k] = t
	s.tenantList = append(s.tenantList, t)
	return t
}

// Stats returns a snapshot of the counters.
func (s *Sim) Stats() Stats {
	st := Stats{
		Sent:         s.sent.Load(),
		Received:     s.received.Load(),
		Delivered:    s.delivered.Load(),
		NoHost:       s.noHost.Load(),
		Filtered:     s.filtered.Load(),
		SendErrors:   s.sendErrors.Load(),
		DeviceErrors: s.deviceErrors.Load(),
	}
	s.vmu.Lock()
	st.Violations = make(map[string]uint64, len(s.vcount))
	for k, v := range s.vcount {
		st.Violations[k] = v
	}
	s.vmu.Unlock()
	return st
}

// Violations returns the most recent violations (at most 100), oldest
// first.
func (s *Sim) Violations() []Violation {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	if len(s.recent) < maxRecentViolations {
		return slices.Clone(s.recent)
	}
	return append(slices.Clone(s.recent[s.vnext:]), s.recent[:s.vnext]...)
}

func (s *Sim) violate(kind, format string, args ...any) {
	v := Violation{Kind: kind, Desc: fmt.Sprintf(format, args...), Time: time.Now()}
	s.vmu.Lock()
	s.vcount[kind]++
	n := s.vcount[kind]
	if len(s.recent) < maxRecentViolations {
		s.recent = append(s.recent, v)
	} else {
		s.recent[s.vnext] = v
		s.vnext = (s.vnext + 1) % maxRecentViolations
	}
	s.vmu.Unlock()
	level := slog.LevelWarn
	if n > logPerKind {
		level = slog.LevelDebug
	}
	s.log.Log(s.ctx, level, "gwlbsim: contract violation", "kind", kind, "detail", v.Desc, "count", n)
}

// ReassignCookies gives every known flow a new cookie now, as GWLB does
// when a tuple is reused after the idle timeout.
func (s *Sim) ReassignCookies() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.flows {
		f.newCookie()
	}
}

// FlowCookie returns the current cookie of tenant's flow between a and b
// (either order). Use port 0 for protocols without ports.
func (s *Sim) FlowCookie(tenant *Tenant, proto uint8, a, b netip.AddrPort) (uint32, bool) {
	k := flowKey{tenant: tenant.id, t: tuple{proto: proto, src: unmapAP(a), dst: unmapAP(b)}.canonical()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.flows[k]; f != nil {
		return f.cookie, true
	}
	return 0, false
}

// FlowSourcePort returns the UDP source port GWLB uses for tenant's flow
// between a and b.
func (s *Sim) FlowSourcePort(tenant *Tenant, proto uint8, a, b netip.AddrPort) (uint16, bool) {
	k := flowKey{tenant: tenant.id, t: tuple{proto: proto, src: unmapAP(a), dst: unmapAP(b)}.canonical()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.flows[k]; f != nil {
		return s.srcPorts[f.port], true
	}
	return 0, false
}

// SendRaw sends an arbitrary UDP payload to the appliance from the first
// source port, for malformed-input tests.
func (s *Sim) SendRaw(payload []byte) error {
	if _, err := s.src[0].WriteToUDPAddrPort(payload, s.appliance); err != nil {
		s.sendErrors.Add(1)
		return fmt.Errorf("gwlbsim: send raw: %w", err)
	}
	s.sent.Add(1)
	return nil
}

// emit sends a packet a host's stack wrote. pkt has HeaderLen bytes of room
// in front of the inner packet.
func (s *Sim) emit(h *Host, pkt []byte) { s.emitFor(h.tenant, pkt) }

// emitFor sends a packet of tenant's network (a host's or its device's)
// through GWLB. pkt has HeaderLen bytes of room in front of the inner
// packet.
func (s *Sim) emitFor(tenant *Tenant, pkt []byte) {
	inner := pkt[HeaderLen:]
	t, err := parseInner(inner)
	if err != nil || !routed(t) {
		// GWLB only sees routed unicast traffic, never neighbour
		// discovery or multicast.
		s.filtered.Add(1)
		return
	}
	hdr, port := s.flowFor(tenant, t)
	copy(pkt, hdr)
	if _, err := s.src[port].WriteToUDPAddrPort(pkt, s.appliance); err != nil {
		s.sendErrors.Add(1)
		if s.ctx.Err() == nil {
			s.log.Debug("gwlbsim: send to appliance", "err", err, "tenant", tenant, "flow", t)
		}
		return
	}
	s.sent.Add(1)
}

func routed(t tuple) bool {
	src, dst := t.src.Addr(), t.dst.Addr()
	return src.IsValid() && !src.IsUnspecified() &&
		!dst.IsMulticast() && !dst.IsLinkLocalUnicast() && !dst.IsUnspecified() &&
		dst != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// receiveReplies reads the appliance's replies until Close.
func (s *Sim) receiveReplies() {
	defer s.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		n, from, err := s.rx.ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("gwlbsim: receive", "err", err)
			continue
		}
		s.received.Add(1)
		s.handleReply(buf[:n], from)
	}
}

// watchSourcePort reports anything sent to a source port: replies belong
// on GenevePort.
func (s *Sim) watchSourcePort(i int) {
	defer s.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		n, from, err := s.src[i].ReadFromUDPAddrPort(buf)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.received.Add(1)
		s.violate(KindWrongDestinationPort, "%d bytes from %v to source port %d instead of %d", n, from, s.srcPorts[i], GenevePort)
	}
}

// handleReply checks one reply against the contract and delivers it.
func (s *Sim) handleReply(b []byte, from netip.AddrPort) {
	g, err := decodeGeneve(b)
	if err != nil {
		s.violate(KindMalformed, "%d bytes from %v: %v", len(b), from, err)
		return
	}
	if len(g.inner) > MaxInner {
		s.violate(KindOversize, "inner packet of %d bytes from %v (max %d)", len(g.inner), from, MaxInner)
		return
	}
	t, err := parseInner(g.inner)
	if err != nil {
		s.violate(KindMalformed, "from %v: %v", from, err)
		return
	}
	ck := t.canonical()

	s.mu.Lock()
	var f *flow
	if ten := s.tenants[[2]uint64{g.env.endpointID, g.env.attachmentID}]; ten != nil && g.hasEnv[0] && g.hasEnv[1] {
		f = s.flows[flowKey{tenant: ten.id, t: ck}]
	}
	if f == nil {
		// The options may be garbled or another tenant's: find the flow
		// by its tuple alone so the envelope check names the fault.
		for _, ten := range s.tenantList {
			if f = s.flows[flowKey{tenant: ten.id, t: ck}]; f != nil {
				break
			}
		}
	}
	var (
		want  []byte
		stale bool
		port  uint16
		ten   *Tenant
		host  *Host
		dev   *device
	)
	if f != nil {
		want, port, ten = f.hdr, s.srcPorts[f.port], f.tenant
		stale = g.hasEnv[2] && slices.Contains(f.old, g.env.cookie)
		host, dev = ten.hosts[t.dst.Addr()], ten.dev
	}
	s.mu.Unlock()

	switch {
	case f == nil:
		s.violate(KindUnknownFlow, "%v from %v (endpoint %#x attachment %#x)", t, from, g.env.endpointID, g.env.attachmentID)
		return
	case !bytes.Equal(g.header, want):
		if stale && len(g.header) == len(want) && bytes.Equal(g.header[:cookieOffset], want[:cookieOffset]) {
			s.violate(KindStaleCookie, "tenant %v %v: cookie %#08x, current %#08x", ten, t, g.env.cookie, cookieOf(want))
		} else {
			s.violate(KindWrongEnvelope, "tenant %v %v: header %x, want %x", ten, t, g.header, want)
		}
		return
	case from.Port() != port:
		s.violate(KindWrongSourcePort, "tenant %v %v: reply from port %d, flow's source port is %d", ten, t, from.Port(), port)
		return
	}
	if host == nil && dev != nil {
		// GWLB forwards the reply into the VPC; here the tenant's kernel
		// routes it from its TUN device.
		if err := dev.write(g.inner); err != nil {
			s.deviceErrors.Add(1)
			if s.ctx.Err() == nil {
				s.log.Debug("gwlbsim: write to device", "err", err, "tenant", ten, "flow", t)
			}
			return
		}
		s.delivered.Add(1)
		return
	}
	if host == nil {
		s.noHost.Add(1)
		s.log.Debug("gwlbsim: no host for reply", "tenant", ten, "flow", t)
		return
	}
	host.inject(g.inner)
	s.delivered.Add(1)
}

func cookieOf(hdr []byte) uint32 {
	if len(hdr) < HeaderLen {
		return 0
	}
	return uint32(hdr[cookieOffset])<<24 | uint32(hdr[cookieOffset+1])<<16 | uint32(hdr[cookieOffset+2])<<8 | uint32(hdr[cookieOffset+3])
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
