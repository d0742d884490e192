package netstackx

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/gwlb/packet"
)

const nicID tcpip.NICID = 1

// tenant is one tenant's netstack: the stack, its NIC, the inbound queue and
// its inject goroutine, and the flows whose packets the stack may emit.
type tenant struct {
	e     *Engine
	id    packet.Tenant
	stack *stack.Stack
	link  *linkEndpoint

	in          chan inbound
	wake        chan struct{} // releases are pending
	hasReleases atomic.Bool

	// ctx ends when the tenant closes: it stops the inject goroutine and
	// cancels upstream dials.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // inject goroutine and connection goroutines

	mu sync.RWMutex
	// flows maps a canonical tuple to its flow: emitted packets find their
	// envelope here. Filled by deliver, emptied by flowClosed.
	flows map[packet.Tuple]*gwlb.Flow
	// releases are tuples whose lingering endpoints the inject goroutine
	// must abort before it injects anything else.
	releases []packet.Tuple
	// silent counts releases in progress per tuple: the RSTs that aborting
	// an endpoint emits belong to a connection that is gone, so they are
	// dropped rather than sent in a newer flow's envelope.
	silent    map[packet.Tuple]int
	active    int       // connection goroutines (dialling or serving)
	idleSince time.Time // when flows or active last went down
	closed    bool
}

type inbound struct {
	v     *buffer.View
	proto tcpip.NetworkProtocolNumber
}

func newTenant(e *Engine, id packet.Tenant) (*tenant, error) {
	cfg := &e.cfg
	st := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		// TCP only: HandlePacket lets nothing else in, and without UDP or
		// ICMP endpoints the stack has nothing to answer for them either.
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	t := &tenant{
		e:         e,
		id:        id,
		stack:     st,
		in:        make(chan inbound, cfg.QueueLen),
		wake:      make(chan struct{}, 1),
		flows:     make(map[packet.Tuple]*gwlb.Flow),
		silent:    make(map[packet.Tuple]int),
		idleSince: time.Now(),
	}
	t.link = newLinkEndpoint(uint32(cfg.MTU), t.emit, e.m.drop)
	if err := t.configure(); err != nil {
		st.Close()
		st.Wait()
		return nil, fmt.Errorf("netstackx: tenant %v: %w", id, err)
	}
	fwd := tcp.NewForwarder(st, 0 /* default receive window */, cfg.MaxInFlight, t.forward)
	st.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	t.ctx, t.cancel = context.WithCancel(e.ctx)
	t.wg.Go(t.inject)
	return t, nil
}

// configure sets the stack's TCP options and its one NIC.
func (t *tenant) configure() error {
	st := t.stack
	// SACK is off by default in gVisor. Both legs cross GWLB and its
	// bounded send queue, which drop under bursts; without SACK every
	// loss costs a retransmission timeout or a go-back-N, and 20 MB
	// transfers crawl. Clients and servers offer SACK by default, so we do.
	sack := tcpip.TCPSACKEnabled(true)
	// gVisor defaults to Reno; CUBIC is what Linux clients and servers run,
	// and recovers its window faster on the high bandwidth-delay paths
	// behind GWLB.
	cc := tcpip.CongestionControlOption("cubic")
	// Grow receive buffers with the measured bandwidth-delay product
	// (gVisor's auto-tuning); window scaling follows from the buffer size
	// and, like timestamps, is negotiated with each peer per connection
	// (gVisor offers both on every SYN and accepts them when offered).
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	// TIME-WAIT absorbs late segments, but flowdog is a middlebox whose
	// peers keep their own TIME-WAIT; a long one here only holds tuples.
	// Reused tuples do not depend on it: their endpoints are released
	// when the flow closes or a new SYN replaces it (see release).
	tw := tcpip.TCPTimeWaitTimeoutOption(t.e.cfg.TimeWait)
	// Reuse applies to ephemeral ports only (we always bind): harmless,
	// and it keeps any future ephemeral dial from failing on TIME-WAIT.
	twReuse := tcpip.TCPTimeWaitReuseGlobal
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &cc, &moderate, &tw, &twReuse} {
		if err := st.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("tcp option %T: %s", opt, err)
		}
	}
	if err := st.CreateNIC(nicID, t.link); err != nil {
		return fmt.Errorf("create NIC: %s", err)
	}
	// Promiscuous: accept packets for any destination (the servers'
	// addresses on the client leg, the clients' on the upstream leg).
	if err := st.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("promiscuous mode: %s", err)
	}
	// Spoofing: send from (and bind to) addresses the stack does not own.
	if err := st.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("spoofing: %s", err)
	}
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return nil
}

// deliver records f as the owner of its tuple and queues pkt (copied) for
// the stack. It returns false when the tenant has been torn down.
func (t *tenant) deliver(f *gwlb.Flow, pkt []byte) bool {
	key := f.Key.Tuple
	t.mu.RLock()
	if t.closed {
		t.mu.RUnlock()
		return false
	}
	if t.flows[key] == f {
		t.enqueue(pkt)
		t.mu.RUnlock()
		return true
	}
	t.mu.RUnlock()

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if old := t.flows[key]; old != f {
		if old != nil {
			// A new flow on the tuple (a SYN with a new cookie) before
			// the old one's FlowClosed: the old endpoints must go before
			// the new SYN is injected.
			t.addReleaseLocked(key)
		}
		t.flows[key] = f
	}
	t.enqueue(pkt)
	return true
}

// enqueue copies pkt into the inbound queue or drops it. Callers hold t.mu
// (either way), so close cannot have started.
func (t *tenant) enqueue(pkt []byte) {
	if len(t.in) == cap(t.in) {
		t.e.m.drop(dropQueueFull)
		return
	}
	proto := header.IPv4ProtocolNumber
	if pkt[0]>>4 == 6 {
		proto = header.IPv6ProtocolNumber
	}
	v := buffer.NewViewWithData(pkt)
	select {
	case t.in <- inbound{v: v, proto: proto}:
	default:
		v.Release()
		t.e.m.drop(dropQueueFull)
	}
}

// inject feeds queued packets to the stack until the tenant closes.
func (t *tenant) inject() {
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-t.wake:
			t.doReleases()
		case p := <-t.in:
			// A release queued before this packet must happen first: it
			// may be the SYN that reuses the released tuple.
			if t.hasReleases.Load() {
				t.doReleases()
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(p.v)})
			t.link.InjectInbound(p.proto, pkt)
			pkt.DecRef()
		}
	}
}

// flowClosed forgets f and releases its tuple's endpoints.
func (t *tenant) flowClosed(f *gwlb.Flow) {
	key := f.Key.Tuple
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || t.flows[key] != f {
		return // replaced meanwhile: deliver released the tuple already
	}
	delete(t.flows, key)
	t.idleSince = time.Now()
	t.addReleaseLocked(key)
}

func (t *tenant) addReleaseLocked(key packet.Tuple) {
	t.releases = append(t.releases, key)
	t.hasReleases.Store(true)
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *tenant) doReleases() {
	t.mu.Lock()
	keys := t.releases
	t.releases = nil
	t.hasReleases.Store(false)
	t.mu.Unlock()
	for _, k := range keys {
		t.release(k)
	}
}

// release aborts every endpoint on tuple k, either direction: the accepted
// one (local = server) and the dialled one (local = client). Left alone, a
// TIME-WAIT or half-closed endpoint would swallow the SYN (or the SYN-ACK)
// of a new connection on the same tuple: gVisor hands a SYN in TIME-WAIT
// only to a listening endpoint, and a forwarder is none.
func (t *tenant) release(k packet.Tuple) {
	ids := [2]stack.TransportEndpointID{endpointID(k), endpointID(k.Reverse())}
	proto := netProto(k.Src)
	t.mu.Lock()
	t.silent[k]++
	t.mu.Unlock()
	for _, id := range ids {
		// An abort unregisters the endpoint; a few rounds catch several
		// endpoints sharing the tuple (never expected).
		for range 4 {
			ep := t.stack.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID)
			if ep == nil {
				break
			}
			if log := t.e.cfg.Logger; log.Enabled(t.ctx, slog.LevelDebug) {
				state := "?"
				if te, ok := ep.(tcpip.Endpoint); ok {
					state = tcp.EndpointState(te.State()).String()
				}
				log.Debug("released a lingering endpoint", "endpoint", t.id.EndpointString(),
					"attachment", t.id.AttachmentString(), "flow", k.String(), "local", id.LocalPort, "state", state)
			}
			ep.Abort()
		}
	}
	t.mu.Lock()
	if t.silent[k]--; t.silent[k] <= 0 {
		delete(t.silent, k)
	}
	t.mu.Unlock()
}

// endpointID is the id of the endpoint whose local end is tuple's source.
func endpointID(tu packet.Tuple) stack.TransportEndpointID {
	return stack.TransportEndpointID{
		LocalPort:     tu.SrcPort,
		LocalAddress:  tcpip.AddrFromSlice(tu.Src.AsSlice()),
		RemotePort:    tu.DstPort,
		RemoteAddress: tcpip.AddrFromSlice(tu.Dst.AsSlice()),
	}
}

// emit sends a packet the stack wrote to its flow's envelope. It runs on
// gVisor's goroutines; b is only valid during the call (Send copies).
func (t *tenant) emit(b []byte) {
	var in packet.Inner
	if err := in.Decode(b); err != nil {
		t.e.m.drop(dropMalformed)
		return
	}
	key, _ := in.Tuple().Canonical()
	t.mu.RLock()
	f := t.flows[key]
	if len(t.silent) > 0 && t.silent[key] > 0 {
		f = nil
	}
	t.mu.RUnlock()
	if f == nil {
		t.e.m.drop(dropNoFlow)
		return
	}
	t.e.send(f, in.Raw)
}

func (t *tenant) flow(key packet.Tuple) *gwlb.Flow {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.flows[key]
}

func (t *tenant) flowCount() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.flows)
}

// enter registers a connection goroutine; false means the tenant closed.
func (t *tenant) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.active++
	t.wg.Add(1)
	return true
}

func (t *tenant) leave() {
	t.mu.Lock()
	t.active--
	t.idleSince = time.Now()
	t.mu.Unlock()
	t.wg.Done()
}

// retireIfIdle marks the tenant closed if it has been idle for idle.
// Callers hold the engine's lock.
func (t *tenant) retireIfIdle(now time.Time, idle time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(t.flows) > 0 || t.active > 0 || len(t.in) > 0 || now.Sub(t.idleSince) < idle {
		return false
	}
	t.closed = true
	return true
}

// retire marks the tenant closed unconditionally (engine shutdown).
func (t *tenant) retire() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
}

// close tears a retired tenant's stack down and waits for its goroutines.
func (t *tenant) close() {
	t.cancel()      // stop injecting, cancel dials
	t.stack.Close() // abort every endpoint: handlers' reads and writes fail
	t.wg.Wait()     // inject goroutine and connection goroutines
	t.stack.Wait()  // gVisor's goroutines; removes the NIC
	for {
		select {
		case p := <-t.in:
			p.v.Release()
		default:
			return
		}
	}
}

func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}
}
