package netstackx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// forward handles a client's SYN (tcp.Forwarder runs it on a goroutine of
// its own, at most MaxInFlight at a time; SYN retransmits of a request in
// flight are ignored). It dials upstream first and completes the client's
// handshake only once the upstream has answered, so that flowdog stays
// transparent: refused upstream, RST to the client; silent upstream,
// silence; connected upstream, SYN-ACK and the Handler.
func (t *tenant) forward(r *tcp.ForwarderRequest) {
	if !t.enter() {
		r.Complete(false)
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			t.leave()
		}
	}()
	e := t.e
	id := r.ID()
	client := addrPort(id.RemoteAddress, id.RemotePort)
	server := addrPort(id.LocalAddress, id.LocalPort)
	tuple := packet.Tuple{Proto: 6, Src: client.Addr(), Dst: server.Addr(), SrcPort: client.Port(), DstPort: server.Port()}
	key, _ := tuple.Canonical()
	f := t.flow(key)
	if f == nil {
		// The flow closed while its SYN waited in the queue.
		r.Complete(false)
		e.m.dial(dialError)
		return
	}
	log := e.cfg.Logger.With("endpoint", t.id.EndpointString(), "attachment", t.id.AttachmentString(),
		"flow", tuple.String())

	// The dialled endpoint of an earlier connection on this tuple (say in
	// TIME-WAIT) would take the new server's SYN-ACK and fail the bind.
	// The client sent a new SYN: that connection is over.
	if t.stack.FindTransportEndpoint(netProto(client.Addr()), tcp.ProtocolNumber, endpointID(tuple), nicID) != nil {
		t.release(key)
	}

	ctx, cancel := context.WithTimeout(t.ctx, e.cfg.DialTimeout)
	up, upEP, upWQ, err := dialFrom(ctx, t.stack, client, server)
	cancel()
	if err != nil {
		var terr tcpipError
		switch {
		case errors.As(err, &terr) && isRefusal(terr.err):
			// What the client would have got from the server itself.
			r.Complete(true)
			e.m.dial(dialRefused)
			log.Debug("upstream refused; client reset", "err", err)
		case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &terr) && isTimeout(terr.err):
			// A silent server: the client hears nothing either.
			r.Complete(false)
			e.m.dial(dialTimeout)
			log.Debug("upstream timed out; client SYN left unanswered", "err", err)
		default:
			r.Complete(false)
			e.m.dial(dialError)
			log.Debug("upstream dial failed; client SYN left unanswered", "err", err)
		}
		return
	}

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq) // sends the SYN-ACK, waits for the ACK
	if terr != nil {
		r.Complete(false)
		upEP.Abort() // the client went away: so does the server's leg
		up.Close()
		e.m.dial(dialError)
		log.Debug("client handshake failed after upstream connected", "err", terr.String())
		return
	}
	r.Complete(false)
	e.m.dial(dialAccepted)

	c := &Conn{
		Flow:       f,
		Tenant:     t.id,
		Client:     &TCPConn{TCPConn: gonet.NewTCPConn(&wq, ep), ep: ep, wq: &wq},
		Upstream:   &TCPConn{TCPConn: up, ep: upEP, wq: upWQ},
		ClientAddr: client,
		ServerAddr: server,
	}
	e.conns.Add(1)
	e.m.conns.Inc()
	// Serve on a fresh goroutine: this one's stack grew in gVisor's
	// connect and accept paths and would stay that size for as long as the
	// connection lives, idle or not.
	handedOff = true
	c.end = func() {
		// Closing again is a no-op, and makes sure that no Handler
		// leaks an endpoint.
		c.Client.Close()
		c.Upstream.Close()
		e.m.conns.Dec()
		e.conns.Add(-1)
		t.leave()
	}
	go t.serve(c, log)
}

// serve runs the Handler; a panic costs this connection only.
func (t *tenant) serve(c *Conn, log *slog.Logger) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("connection handler panicked; connection closed", "panic", p)
			c.release() // whoever it was detached for is not to be trusted
			return
		}
		if !c.detached.Load() {
			c.release()
		}
	}()
	t.e.h(t.e.ctx, c)
}

// TCPConn is a leg of an intercepted connection: a gonet.TCPConn that can
// also be reset, so that a failure looks to the peer as it would have
// without flowdog (a RST, not a FIN).
type TCPConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue
}

// Reset closes the connection abortively: the peer gets a RST.
func (c *TCPConn) Reset() error {
	c.ep.Abort()
	return c.TCPConn.Close()
}

// readMask is what makes a Read return at once: data, a FIN, a reset or
// an error.
const readMask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// Readable reports whether a Read would return at once.
func (c *TCPConn) Readable() bool { return c.ep.Readiness(readMask) != 0 }

// OnReadable runs f on a goroutine of its own once the connection becomes
// readable (at once if it already is), so that an idle connection needs no
// goroutine blocked in Read. stop cancels it and reports whether it did so
// before f was started.
func (c *TCPConn) OnReadable(f func()) (stop func() bool) {
	w := &readableWaiter{q: c.wq, f: f}
	w.entry.Init(w, readMask)
	c.wq.EventRegister(&w.entry)
	if c.ep.Readiness(readMask) != 0 {
		w.NotifyEvent(readMask)
	}
	return w.stop
}

type readableWaiter struct {
	entry waiter.Entry
	q     *waiter.Queue
	fired atomic.Bool
	f     func()
}

// NotifyEvent runs under the queue's lock, on gVisor's goroutines: it
// must not block, nor touch the queue.
func (w *readableWaiter) NotifyEvent(waiter.EventMask) {
	if w.fired.CompareAndSwap(false, true) {
		go w.run()
	}
}

func (w *readableWaiter) run() {
	w.q.EventUnregister(&w.entry)
	w.f()
}

func (w *readableWaiter) stop() bool {
	if !w.fired.CompareAndSwap(false, true) {
		return false
	}
	w.q.EventUnregister(&w.entry)
	return true
}

// tcpipError carries a gVisor error so callers can tell refusals from
// timeouts (gonet.DialTCPWithBind flattens it into a string).
type tcpipError struct{ err tcpip.Error }

func (e tcpipError) Error() string { return e.err.String() }

func isRefusal(err tcpip.Error) bool {
	switch err.(type) {
	case *tcpip.ErrConnectionRefused, *tcpip.ErrConnectionReset:
		return true
	}
	return false
}

func isTimeout(err tcpip.Error) bool {
	_, ok := err.(*tcpip.ErrTimeout)
	return ok
}

// dialFrom connects from local (the client's address and port, which the
// stack does not own: the NIC spoofs) to remote through s. It is
// gonet.DialTCPWithBind with three changes: SO_REUSEADDR, so that one client
// address and port may reach several servers at once as it can without
// flowdog; the endpoint is closed when Bind fails (DialTCPWithBind leaks
// it); and gVisor's error is kept for the caller.
func dialFrom(ctx context.Context, s interface {
	NewEndpoint(tcpip.TransportProtocolNumber, tcpip.NetworkProtocolNumber, *waiter.Queue) (tcpip.Endpoint, tcpip.Error)
}, local, remote netip.AddrPort) (*gonet.TCPConn, tcpip.Endpoint, *waiter.Queue, error) {
	wq := new(waiter.Queue)
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, netProto(remote.Addr()), wq)
	if terr != nil {
		return nil, nil, nil, fmt.Errorf("netstackx: dial %v->%v: new endpoint: %w", local, remote, tcpipError{terr})
	}
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	ep.SocketOptions().SetReuseAddress(true)
	if terr := ep.Bind(fullAddr(local)); terr != nil {
		ep.Close()
		return nil, nil, nil, fmt.Errorf("netstackx: dial %v->%v: bind: %w", local, remote, tcpipError{terr})
	}
	terr = ep.Connect(fullAddr(remote))
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, nil, nil, fmt.Errorf("netstackx: dial %v->%v: %w", local, remote, ctx.Err())
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, nil, nil, fmt.Errorf("netstackx: dial %v->%v: %w", local, remote, tcpipError{terr})
	}
	return gonet.NewTCPConn(wq, ep), ep, wq, nil
}

func netProto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return header.IPv4ProtocolNumber
	}
	return header.IPv6ProtocolNumber
}
