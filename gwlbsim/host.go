package gwlbsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Tenant is an isolated network behind one GWLB endpoint: its hosts reach
// each other only through GWLB, i.e. through the appliance. Two tenants may
// use identical addresses.
type Tenant struct {
	sim                      *Sim
	id                       int
	EndpointID, AttachmentID uint64
	hosts                    map[netip.Addr]*Host // guarded by sim.mu
	dev                      *device              // guarded by sim.mu; see AttachDevice
}

func (t *Tenant) String() string {
	return fmt.Sprintf("%#x/%#x", t.EndpointID, t.AttachmentID)
}

// Host is one gVisor netstack of a tenant. Its default routes (IPv4 and
// IPv6) lead into the Sim.
type Host struct {
	sim    *Sim
	tenant *Tenant
	addrs  []netip.Addr
	stack  *stack.Stack
	ep     *channel.Endpoint

	mu         sync.Mutex
	transports []*http.Transport
}

const nicID = 1

// AddHost adds a host owning addrs (IPv4 and/or IPv6) to the tenant.
func (t *Tenant) AddHost(addrs ...netip.Addr) (*Host, error) {
	s := t.sim
	if len(addrs) == 0 {
		return nil, errors.New("gwlbsim: AddHost: no address")
	}
	h := &Host{sim: s, tenant: t}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("gwlbsim: AddHost: address %v: not a unicast address", a)
		}
		h.addrs = append(h.addrs, a)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("gwlbsim: AddHost: %w", net.ErrClosed)
	}
	for _, a := range h.addrs {
		if t.hosts[a] != nil {
			return nil, fmt.Errorf("gwlbsim: AddHost: tenant %v already has a host with %v", t, a)
		}
	}
	if err := h.newStack(); err != nil {
		return nil, fmt.Errorf("gwlbsim: AddHost %v: %w", h.addrs, err)
	}
	for _, a := range h.addrs {
		t.hosts[a] = h
	}
	s.hosts = append(s.hosts, h)
	s.wg.Add(1)
	go h.readOutbound()
	return h, nil
}

func (h *Host) newStack() error {
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	// Why SACK: a full link queue drops packets; SACK keeps the 10 MB
	// transfers of the tests from stalling on retransmits.
	sack := tcpip.TCPSACKEnabled(true)
	// Why a short TIME-WAIT and global reuse: tests reuse a tuple (same
	// client port) soon after closing it, to exercise cookie reassignment.
	tw := tcpip.TCPTimeWaitTimeoutOption(h.sim.cfg.TCPTimeWait)
	reuse := tcpip.TCPTimeWaitReuseGlobal
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &tw, &reuse} {
		if err := st.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			st.Close()
			return fmt.Errorf("tcp option %T: %s", opt, err)
		}
	}
	// No link address: the NIC needs no ARP/NDP, every packet goes out as is.
	ep := channel.New(hostQueueLen, uint32(h.sim.cfg.MTU), "")
	if err := st.CreateNIC(nicID, ep); err != nil {
		st.Close()
		return fmt.Errorf("create NIC: %s", err)
	}
	for _, a := range h.addrs {
		pa := tcpip.ProtocolAddress{
			Protocol:          netProto(a),
			AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix(),
		}
		if err := st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			st.Close()
			return fmt.Errorf("add address %v: %s", a, err)
		}
	}
	// Everything not local goes out of the one NIC, i.e. to GWLB.
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	h.stack, h.ep = st, ep
	return nil
}

// readOutbound sends every packet the stack emits through GWLB.
func (h *Host) readOutbound() {
	defer h.sim.wg.Done()
	for {
		pkt := h.ep.ReadContext(h.sim.ctx)
		if pkt == nil {
			return
		}
		b := make([]byte, HeaderLen, HeaderLen+pkt.Size())
		for _, v := range pkt.AsSlices() {
			b = append(b, v...)
		}
		pkt.DecRef()
		h.sim.emit(h, b)
	}
}

// inject hands a reply's inner packet to the stack.
func (h *Host) inject(inner []byte) {
	proto := header.IPv4ProtocolNumber
	if inner[0]>>4 == 6 {
		proto = header.IPv6ProtocolNumber
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithData(append([]byte(nil), inner...)),
	})
	h.ep.InjectInbound(proto, pkt)
	pkt.DecRef()
}

func (h *Host) close() {
	h.mu.Lock()
	trs := h.transports
	h.transports = nil
	h.mu.Unlock()
	for _, tr := range trs {
		tr.CloseIdleConnections()
	}
	h.stack.Close()
	h.stack.Wait()
	h.ep.Close()
}

// Addrs returns the host's addresses.
func (h *Host) Addrs() []netip.Addr { return append([]netip.Addr(nil), h.addrs...) }

// Tenant returns the host's tenant.
func (h *Host) Tenant() *Tenant { return h.tenant }

// Stack returns the host's gVisor stack, for what the helpers here lack.
func (h *Host) Stack() *stack.Stack { return h.stack }

func netProto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}
}

// DialTCP connects from the host (source chosen by the stack) to dst.
func (h *Host) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return h.dialTCP(ctx, netip.AddrPort{}, dst)
}

// DialTCPFrom connects from src (an address of the host, fixed port) to
// dst. If an older connection on the same tuple is still in TIME-WAIT
// (Config.TCPTimeWait, 1 s by default), it waits for that to end.
func (h *Host) DialTCPFrom(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	if !src.IsValid() {
		return nil, fmt.Errorf("gwlbsim: DialTCPFrom: invalid source %v", src)
	}
	src = unmapAP(src)
	// A connection on this very tuple may still be in TIME-WAIT (gVisor,
	// like Linux, refuses the tuple then): wait it out, as tests reusing a
	// tuple want the new connection rather than an error.
	giveUp := time.Now().Add(h.sim.cfg.TCPTimeWait + time.Second)
	for {
		c, err := h.dialTCP(ctx, src, dst)
		if !errors.Is(err, syscall.EADDRNOTAVAIL) || time.Now().After(giveUp) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-h.sim.ctx.Done():
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (h *Host) dialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	dst = unmapAP(dst)
	if !dst.IsValid() {
		return nil, fmt.Errorf("gwlbsim: dial tcp: invalid destination %v", dst)
	}
	if src.IsValid() && src.Addr().Is4() != dst.Addr().Is4() {
		return nil, fmt.Errorf("gwlbsim: dial tcp %v -> %v: address families differ", src, dst)
	}
	opErr := func(op string, err error) error {
		return &net.OpError{Op: op, Net: "tcp", Source: tcpAddr(src), Addr: net.TCPAddrFromAddrPort(dst), Err: err}
	}
	var wq waiter.Queue
	ep, terr := h.stack.NewEndpoint(tcp.ProtocolNumber, netProto(dst.Addr()), &wq)
	if terr != nil {
		return nil, opErr("dial", tcpipErr(terr))
	}
	waitEntry, notifyCh := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&waitEntry)
	defer wq.EventUnregister(&waitEntry)
	if src.IsValid() {
		ep.SocketOptions().SetReuseAddress(true)
		if terr := ep.Bind(fullAddr(src)); terr != nil {
			ep.Close()
			return nil, opErr("bind", tcpipErr(terr))
		}
	}
	terr = ep.Connect(fullAddr(dst))
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, opErr("dial", ctx.Err())
		case <-h.sim.ctx.Done():
			ep.Close()
			return nil, opErr("dial", net.ErrClosed)
		case <-notifyCh:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, opErr("dial", tcpipErr(terr))
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

func tcpAddr(ap netip.AddrPort) net.Addr {
	if !ap.IsValid() {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

// tcpipErr maps gVisor errors onto the errnos callers test with errors.Is.
func tcpipErr(err tcpip.Error) error {
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress:
		return syscall.EADDRINUSE
	case *tcpip.ErrBadLocalAddress:
		return syscall.EADDRNOTAVAIL
	}
	return errors.New(err.String())
}

// ListenTCP listens on port on all of the host's addresses, IPv4 and
// IPv6. Port 0 picks one port for both.
func (h *Host) ListenTCP(port uint16) (net.Listener, error) {
	l4, err := h.listenTCP(port, ipv4.ProtocolNumber)
	if err != nil {
		return nil, err
	}
	if port == 0 {
		port = uint16(l4.Addr().(*net.TCPAddr).Port)
	}
	l6, err := h.listenTCP(port, ipv6.ProtocolNumber)
	if err != nil {
		l4.Close()
		return nil, err
	}
	l := &listener{
		ls:    []*gonet.TCPListener{l4, l6},
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
	}
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		l.Close()
		return nil, fmt.Errorf("gwlbsim: listen: %w", net.ErrClosed)
	}
	s.listeners = append(s.listeners, l)
	s.wg.Add(len(l.ls))
	for _, x := range l.ls {
		go l.acceptLoop(&s.wg, x)
	}
	return l, nil
}

func (h *Host) listenTCP(port uint16, proto tcpip.NetworkProtocolNumber) (*gonet.TCPListener, error) {
	var wq waiter.Queue
	ep, terr := h.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, fmt.Errorf("gwlbsim: listen tcp: %w", tcpipErr(terr))
	}
	if proto == ipv6.ProtocolNumber {
		// The IPv4 listener owns the port for IPv4.
		ep.SocketOptions().SetV6Only(true)
	}
	if terr := ep.Bind(tcpip.FullAddress{Port: port}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("gwlbsim: listen tcp port %d: %w", port, tcpipErr(terr))
	}
	if terr := ep.Listen(1024); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("gwlbsim: listen tcp port %d: %w", port, tcpipErr(terr))
	}
	return gonet.NewTCPListener(h.stack, &wq, ep), nil
}

// listener merges the host's IPv4 and IPv6 listeners.
type listener struct {
	ls    []*gonet.TCPListener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *listener) acceptLoop(wg *sync.WaitGroup, x *gonet.TCPListener) {
	defer wg.Done()
	for {
		c, err := x.Accept()
		if err != nil {
			// Only a closed or shut down endpoint fails here.
			l.Close()
			return
		}
		select {
		case l.conns <- c:
		case <-l.done:
			c.Close()
			return
		}
	}
}

// Accept implements net.Listener.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		for _, x := range l.ls {
			x.Shutdown()
			x.Close()
		}
	})
	return nil
}

// Addr implements net.Listener; it reports the IPv4 listener's address.
func (l *listener) Addr() net.Addr { return l.ls[0].Addr() }

// DialUDP returns a UDP socket of the host connected to dst.
func (h *Host) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	dst = unmapAP(dst)
	if !dst.IsValid() {
		return nil, fmt.Errorf("gwlbsim: dial udp: invalid destination %v", dst)
	}
	fa := fullAddr(dst)
	c, err := gonet.DialUDP(h.stack, nil, &fa, netProto(dst.Addr()))
	if err != nil {
		return nil, fmt.Errorf("gwlbsim: dial udp %v: %w", dst, err)
	}
	return c, nil
}

// ListenUDP returns a UDP socket bound to port on all of the host's
// addresses, IPv4 and IPv6. Peer addresses are plain IPv4 or IPv6 (never
// IPv4-mapped).
func (h *Host) ListenUDP(port uint16) (net.PacketConn, error) {
	var wq waiter.Queue
	// One dual-stack IPv6 endpoint: a PacketConn cannot merge two sockets.
	ep, terr := h.stack.NewEndpoint(udp.ProtocolNumber, ipv6.ProtocolNumber, &wq)
	if terr != nil {
		return nil, fmt.Errorf("gwlbsim: listen udp: %w", tcpipErr(terr))
	}
	ep.SocketOptions().SetV6Only(false)
	if terr := ep.Bind(tcpip.FullAddress{Port: port}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("gwlbsim: listen udp port %d: %w", port, tcpipErr(terr))
	}
	return udpConn{gonet.NewUDPConn(&wq, ep)}, nil
}

// udpConn hides the IPv4-mapped addresses of a dual-stack endpoint.
type udpConn struct{ *gonet.UDPConn }

func (c udpConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.UDPConn.ReadFrom(b)
	if ua, ok := addr.(*net.UDPAddr); ok {
		if ip4 := ua.IP.To4(); ip4 != nil {
			ua.IP = ip4
		}
	}
	return n, addr, err
}

func (c udpConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok && ua.IP.To4() != nil {
		addr = &net.UDPAddr{IP: ua.IP.To16(), Port: ua.Port, Zone: ua.Zone}
	}
	return c.UDPConn.WriteTo(b, addr)
}

// HTTPClient returns a net/http client whose connections are dialled from
// this host. Hosts have no resolver: URLs must use IP literals. The Sim
// closes its idle connections on Close.
func (h *Host) HTTPClient() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, fmt.Errorf("gwlbsim: dial %q: hosts have no resolver, use an IP literal: %w", addr, err)
			}
			return h.DialTCP(ctx, ap)
		},
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	h.mu.Lock()
	h.transports = append(h.transports, tr)
	h.mu.Unlock()
	return &http.Client{Transport: tr}
}
