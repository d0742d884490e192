package gwlb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// Acceptor decides, asynchronously, the fate of a new flow that the policy
// marked INTERCEPT (a Lambda call, say). Accept must not block: it starts the
// work and calls done exactly once, from any goroutine, with Fast, Drop or
// Intercept. Meanwhile the flow's first packets wait in a small bounded
// queue; a decision that takes longer than the pending timeout drops the flow.
type Acceptor interface {
	Accept(f *Flow, done func(Verdict))
}

// InterceptHandler terminates INTERCEPT flows (the interception engine).
type InterceptHandler interface {
	// HandlePacket receives an inner IP packet of f. It runs on a socket
	// worker: it must not block, and must copy pkt to keep it.
	HandlePacket(f *Flow, pkt []byte)
	// FlowClosed says f left the flow table (expired or replaced).
	FlowClosed(f *Flow)
}

// Options configure a Datapath. Zero values take the documented defaults.
type Options struct {
	Listen      netip.AddrPort // default 0.0.0.0:6081
	Workers     int            // default runtime.NumCPU()
	BatchSize   int            // default 64
	ReadBuffer  int            // SO_RCVBUF per worker socket
	WriteBuffer int            // SO_SNDBUF per raw socket
	UDPChecksum bool           // compute outer UDP checksums (zero is valid for IPv4)

	MaxFlows         int           // default 1,000,000
	TCPIdleTimeout   time.Duration // default 350s, GWLB's
	IdleTimeout      time.Duration // default 120s, GWLB's
	TCPClosedTimeout time.Duration // default 10s
	MaxPending       int           // default 4096
	PendingPackets   int           // default 16
	PendingTimeout   time.Duration // default 5s
	SweepInterval    time.Duration // default 1s

	Policy    *Policy // nil: everything FAST
	Acceptor  Acceptor
	Intercept InterceptHandler

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are kept but not registered
}

func (o *Options) setDefaults() {
	if !o.Listen.IsValid() {
		o.Listen = netip.AddrPortFrom(netip.IPv4Unspecified(), packet.GenevePort)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Workers, runtime.NumCPU())
	def(&o.BatchSize, 64)
	def(&o.MaxFlows, 1_000_000)
	def(&o.MaxPending, 4096)
	def(&o.PendingPackets, 16)
	defd(&o.TCPIdleTimeout, 350*time.Second)
	defd(&o.IdleTimeout, 120*time.Second)
	defd(&o.TCPClosedTimeout, 10*time.Second)
	defd(&o.PendingTimeout, 5*time.Second)
	defd(&o.SweepInterval, time.Second)
	if o.Policy == nil {
		o.Policy = &Policy{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Datapath owns the socket workers, the flow table and the reply path.
type Datapath struct {
	opts  Options
	log   *slog.Logger
	table *table
	m     *metrics

	conns   []*net.UDPConn
	workers []*worker
	inject  *injector
	addr    netip.AddrPort

	running atomic.Int32
	died    atomic.Bool
	started atomic.Bool

	logMalformed, logFull, logSend rateLimit
}

// New opens the sockets (so that a busy port or a missing CAP_NET_RAW fails
// at start-up) and returns a Datapath ready to Run.
func New(opts Options) (*Datapath, error) {
	d, err := newDatapath(opts)
	if err != nil {
		return nil, err
	}
	opts = d.opts
	ok := false
	defer func() {
		if !ok {
			d.closeSockets()
		}
	}()
	listen := opts.Listen
	for i := 0; i < opts.Workers; i++ {
		c, err := listenUDP(context.Background(), listen, opts.ReadBuffer)
		if err != nil {
			return nil, fmt.Errorf("gwlb: listen %s: %w", listen, err)
		}
		if i == 0 {
			// With port 0 (tests), every worker joins the port the first one got.
			la := c.LocalAddr().(*net.UDPAddr).AddrPort()
			listen = netip.AddrPortFrom(listen.Addr(), la.Port())
			d.addr = listen
		}
		d.conns = append(d.conns, c)
		raw, err := openRaw(opts.WriteBuffer)
		if err != nil {
			return nil, fmt.Errorf("gwlb: %w", err)
		}
		rc, err := c.SyscallConn()
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("gwlb: %w", err)
		}
		d.workers = append(d.workers, newWorker(d, i, rc, raw))
	}
	raw, err := openRaw(opts.WriteBuffer)
	if err != nil {
		return nil, fmt.Errorf("gwlb: %w", err)
	}
	d.inject = newInjector(d, raw)
	ok = true
	return d, nil
}

// newDatapath builds everything but the sockets.
func newDatapath(opts Options) (*Datapath, error) {
	opts.setDefaults()
	if opts.Intercept == nil && policyIntercepts(opts.Policy) {
		return nil, errors.New("gwlb: the policy has intercept rules but no interception engine is configured")
	}
	d := &Datapath{opts: opts, log: opts.Logger}
	d.table = newTable(opts.MaxFlows, opts.TCPIdleTimeout, opts.IdleTimeout, opts.TCPClosedTimeout)
	d.m = newMetrics(opts.Registerer, d)
	return d, nil
}

func policyIntercepts(p *Policy) bool {
	if p.Default == Intercept {
		return true
	}
	for _, r := range p.Rules {
		if r.Verdict == Intercept {
			return true
		}
	}
	return false
}

// Addr returns the address the workers listen on.
func (d *Datapath) Addr() netip.AddrPort { return d.addr }

func (d *Datapath) closeSockets() {
	for _, c := range d.conns {
		c.Close()
	}
	for _, w := range d.workers {
		w.raw.Close()
	}
	if d.inject != nil {
		d.inject.raw.Close()
	}
}

// Run serves until ctx is done, then closes the sockets and returns once
// every goroutine it started has ended. It returns an error when a socket
// worker failed (the process should then exit; health already says 503).
func (d *Datapath) Run(ctx context.Context) error {
	if !d.started.CompareAndSwap(false, true) {
		return errors.New("gwlb: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(d.workers))
	for _, w := range d.workers {
		d.running.Add(1)
		d.m.workersRunning.Inc()
		wg.Go(func() {
			defer d.m.workersRunning.Dec()
			defer d.running.Add(-1)
			if err := w.run(); err != nil && ctx.Err() == nil {
				d.died.Store(true)
				d.log.Error("socket worker died", "worker", w.id, "err", err)
				errc <- fmt.Errorf("gwlb: worker %d: %w", w.id, err)
				cancel()
			}
		})
	}
	wg.Go(func() { d.inject.run(ctx) })
	wg.Go(func() { d.sweep(ctx) })
	d.log.Info("gwlb data path running", "listen", d.addr.String(), "workers", len(d.workers),
		"batch", d.opts.BatchSize, "max_flows", d.opts.MaxFlows)
	<-ctx.Done()
	d.closeSockets()
	wg.Wait()
	d.table.expire(1<<62, 0, d.retire(expireShutdown))
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// Healthy returns nil while every socket worker runs.
func (d *Datapath) Healthy() error {
	if !d.started.Load() {
		return errors.New("socket workers not started")
	}
	if d.died.Load() {
		return errors.New("a socket worker died")
	}
	if n := int(d.running.Load()); n != len(d.workers) {
		return fmt.Errorf("%d of %d socket workers running", n, len(d.workers))
	}
	return nil
}

// Lookup returns the flow of tenant that carries t (either direction), or nil.
func (d *Datapath) Lookup(tenant packet.Tenant, t packet.Tuple) *Flow {
	c, _ := t.Canonical()
	return d.table.lookup(FlowKey{Tenant: tenant, Tuple: c})
}

// FlowCount returns the number of flows in the table.
func (d *Datapath) FlowCount() int { return int(d.table.count.Load()) }

func (d *Datapath) kernelDrops() uint64 {
	var n uint64
	for _, w := range d.workers {
		n += uint64(w.kernelDrops.Load())
	}
	return n
}

func (d *Datapath) sweep(ctx context.Context) {
	t := time.NewTicker(d.opts.SweepInterval)
	defer t.Stop()
	gone := d.retire(expireIdle)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			d.table.expire(now.UnixNano(), int64(d.opts.PendingTimeout), gone)
		}
	}
}

// retire returns the callback for flows leaving the table.
func (d *Datapath) retire(def expireReason) func(*Flow, expireReason) {
	return func(f *Flow, r expireReason) {
		if def == expireShutdown {
			r = expireShutdown
		}
		d.m.expiredBy[r].Inc()
		if r == expirePendingTimeout {
			d.m.drop(reasonPendingTimeout).Inc()
			d.log.Warn("acceptor decision timed out; flow dropped", flowAttrs(f)...)
			return // stays in the table as a DROP flow until idle
		}
		if d.opts.Intercept != nil && f.interceptSeen {
			d.opts.Intercept.FlowClosed(f)
		}
	}
}

func flowAttrs(f *Flow) []any {
	return []any{"endpoint", f.Key.Tenant.EndpointString(), "attachment", f.Key.Tenant.AttachmentString(),
		"flow", f.Initiator.String()}
}

type rateLimit struct{ next atomic.Int64 }

// allow reports whether a rate-limited log line may be written now (one per second).
func (r *rateLimit) allow() bool {
	now := time.Now().UnixNano()
	n := r.next.Load()
	return now >= n && r.next.CompareAndSwap(n, now+int64(time.Second))
}

// classify finds or creates the flow of a decoded packet, updates it and
// returns its verdict. For a Pending flow the datagram is queued here.
// It allocates only when it creates a flow.
func (d *Datapath) classify(now int64, src netip.AddrPort, local netip.Addr, p *packet.Packet, dgram []byte) (v Verdict, f *Flow, reason string) {
	in := &p.Inner
	tuple := in.Tuple()
	canon, _ := tuple.Canonical()
	key := FlowKey{Tenant: p.Geneve.Tenant, Tuple: canon}
	isTCP := in.Proto == 6
	syn := isTCP && in.IsSYN()
	t := d.table
	s := t.shardOf(&key)

	s.mu.Lock()
	f = s.m[key]
	var replaced *Flow
	if f != nil && syn && (f.env.Cookie != p.Geneve.FlowCookie || f.closed()) {
		// GWLB gives a reused tuple a new cookie: a SYN with a new cookie
		// (or after the old connection closed) starts a new flow.
		t.removeLocked(s, f)
		replaced, f = f, nil
	}
	var askAcceptor bool
	if f == nil {
		if t.count.Load() >= t.max {
			s.mu.Unlock()
			d.retireReplaced(replaced)
			if d.logFull.allow() {
				d.log.Warn("flow table full; new flows are dropped", "max_flows", t.max)
			}
			return Drop, nil, reasonTableFull
		}
		hasPorts := !in.NonFirst
		v, rule := d.opts.Policy.Decide(key.Tenant, tuple, hasPorts)
		if v == Intercept && !syn {
			// Mid-stream TCP (restart, GWLB rebalance) or not TCP at all:
			// there is no connection to terminate.
			v = Fast
		}
		if v == Intercept && d.opts.Acceptor != nil {
			if t.pending.Load() >= int64(d.opts.MaxPending) {
				v, reason = Drop, reasonPendingFull
			} else {
				v, askAcceptor = Pending, true
				t.pending.Add(1)
			}
		}
		f = &Flow{Key: key, Initiator: tuple, Created: time.Unix(0, now), Rule: rule, verdict: v, shard: s}
		if v == Drop {
			f.dropReason = cmp.Or(reason, reasonPolicy)
		}
		if v == Pending {
			f.pending = &pendingQueue{}
		}
		f.env.set(src, local, &p.Geneve)
		s.m[key] = f
		t.count.Add(1)
		d.m.createdBy[v].Inc()
	} else if !f.env.same(src, local, &p.Geneve) {
		f.env.set(src, local, &p.Geneve)
	}
	dir := 0
	if tuple != f.Initiator {
		dir = 1
	}
	f.lastSeen = now
	f.packets[dir]++
	f.bytes[dir] += uint64(len(in.Raw))
	if isTCP && !in.NonFirst {
		if in.TCPFlags&packet.TCPFin != 0 {
			f.finSeen[dir] = true
		}
		if in.TCPFlags&packet.TCPRst != 0 {
			f.rst = true
		}
	}
	v = f.verdict
	if v == Drop && reason == "" {
		reason = f.dropReason
	}
	if v == Pending {
		if !f.pending.push(src, local, dgram, d.opts.PendingPackets) {
			reason = reasonQueueFull
		}
	}
	if v == Intercept {
		f.interceptSeen = true
	}
	s.mu.Unlock()

	d.retireReplaced(replaced)
	if askAcceptor {
		d.startAccept(f)
	}
	if v == Drop && reason == "" {
		reason = reasonPolicy
	}
	return v, f, reason
}

func (d *Datapath) retireReplaced(f *Flow) {
	if f != nil {
		d.retire(expireReplaced)(f, expireReplaced)
	}
}

func (d *Datapath) startAccept(f *Flow) {
	var once atomic.Bool
	done := func(v Verdict) {
		if once.CompareAndSwap(false, true) {
			d.decided(f, v)
		}
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				d.log.Error("acceptor panicked; flow dropped", append(flowAttrs(f), "panic", r)...)
				done(Drop)
			}
		}()
		d.opts.Acceptor.Accept(f, done)
	}()
}

// decided applies an acceptor's verdict and releases the flow's queue in
// order: workers keep queueing until the queue is empty, so the first
// packets are never overtaken by later ones.
func (d *Datapath) decided(f *Flow, v Verdict) {
	if v != Fast && v != Drop && v != Intercept {
		v = Drop
	}
	if v == Intercept && d.opts.Intercept == nil {
		v = Drop
	}
	s := f.shard
	for {
		s.mu.Lock()
		if f.verdict != Pending || f.pending == nil {
			s.mu.Unlock() // timed out or removed meanwhile
			return
		}
		f.pending.deciding = true
		if v == Intercept {
			// Before the engine sees a packet: if the flow goes meanwhile,
			// retire must tell the engine.
			f.interceptSeen = true
		}
		if v == Drop {
			f.dropReason = reasonAcceptor
		}
		q := f.pending.take()
		if len(q) == 0 {
			f.verdict, f.pending = v, nil
			d.table.pending.Add(-1)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		d.release(f, v, q)
	}
}

// release sends a decided flow's queued packets on their way. FAST ones go
// through the injector; release waits until it has sent them, so that the
// flow's later packets, which workers send directly once the verdict is
// set, cannot overtake them.
func (d *Datapath) release(f *Flow, v Verdict, q []pendingPacket) {
	for _, pp := range q {
		switch v {
		case Fast:
			d.inject.sendDatagram(pp.src, pp.local, pp.data, Fast)
		case Intercept:
			var pk packet.Packet
			if pk.Decode(pp.data) == nil {
				d.opts.Intercept.HandlePacket(f, pk.Inner.Raw)
			}
		case Drop:
			d.m.drop(reasonAcceptor).Inc()
		}
	}
	if v == Fast {
		if done := d.inject.barrier(); done != nil {
			select {
			case <-done:
			case <-time.After(time.Second):
			}
		}
	}
}

// Send wraps inner (an IP packet the appliance originates on flow f, e.g. a
// netstack segment or a RST) in f's latest envelope and queues it for GWLB.
// It copies inner and never blocks; when the queue is full it drops and
// returns an error.
func (d *Datapath) Send(f *Flow, inner []byte) error {
	if len(inner) > packet.MaxInnerLen {
		d.m.drop(packet.ErrInnerOversize.Kind).Inc()
		return fmt.Errorf("gwlb: send: %d-byte packet exceeds GWLB's %d", len(inner), packet.MaxInnerLen)
	}
	now := time.Now().UnixNano()
	s := f.shard
	s.mu.Lock()
	// Traffic the appliance originates keeps the flow alive, as it keeps
	// GWLB's flow alive.
	f.lastSeen = max(f.lastSeen, now)
	env := f.env
	v := f.verdict
	buf := d.inject.get()
	buf = append(buf[:headroom], env.Geneve...)
	s.mu.Unlock()
	buf = append(buf, inner...)
	return d.inject.enqueue(buf, env.Local, env.GWLB, v)
}
