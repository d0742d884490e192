package netstackx

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/gwlb/packet"
)

// Engine owns the tenants' netstacks. It is the data path's
// gwlb.InterceptHandler.
type Engine struct {
	cfg Config
	h   Handler
	m   *metrics

	sender atomic.Pointer[senderBox]
	conns  atomic.Int64 // connections served or detached

	// ctx is the handlers' context; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // background goroutines (idle teardown)

	mu      sync.RWMutex
	tenants map[packet.Tenant]*tenant
	closed  bool
	started bool
}

type senderBox struct{ s Sender }

var _ gwlb.InterceptHandler = (*Engine)(nil)

// New returns an engine that serves intercepted connections with h. It
// creates no stack yet: a tenant's stack comes with its first flow.
func New(cfg Config, h Handler) *Engine {
	if h == nil {
		panic("netstackx: New: nil Handler")
	}
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{cfg: cfg, h: h, ctx: ctx, cancel: cancel, tenants: make(map[packet.Tenant]*tenant)}
	e.m = newMetrics(cfg.Registerer, e)
	return e
}

// Start sets the writer (the Datapath is created after the Engine, since it
// takes the Engine as its InterceptHandler) and starts the background
// goroutine that tears idle tenants down; ctx ending stops it. Packets that
// arrive before Start are dropped.
func (e *Engine) Start(ctx context.Context, s Sender) {
	if s == nil {
		panic("netstackx: Start: nil Sender")
	}
	e.sender.Store(&senderBox{s})
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.started {
		return
	}
	e.started = true
	e.wg.Go(func() { e.sweep(ctx) })
}

// HandlePacket implements gwlb.InterceptHandler. It runs on a socket worker:
// it copies pkt into the tenant's bounded inbound queue and returns; a full
// queue drops the packet (TCP retransmits).
func (e *Engine) HandlePacket(f *gwlb.Flow, pkt []byte) {
	e.m.in.Inc()
	var in packet.Inner
	if err := in.Decode(pkt); err != nil {
		e.m.drop(dropMalformed)
		return
	}
	if in.Proto != 6 || in.Fragment {
		// Only TCP is terminated: gVisor would answer pings for any
		// address on a promiscuous NIC, so nothing else goes in.
		// Fragments neither: the non-first ones carry no ports, so they
		// belong to no intercepted flow (and MSS clamping keeps TCP
		// from fragmenting).
		e.m.drop(dropUnsupported)
		return
	}
	if e.sender.Load() == nil {
		e.m.drop(dropClosed)
		return
	}
	for {
		t, err := e.tenant(f.Key.Tenant)
		if err != nil {
			e.m.drop(dropStackError)
			return
		}
		if t == nil {
			e.m.drop(dropClosed)
			return
		}
		if t.deliver(f, in.Raw) {
			return
		}
		// t was torn down meanwhile: the next round makes a new one.
	}
}

// FlowClosed implements gwlb.InterceptHandler: f left the flow table, so
// the endpoints on its tuple are released (a lingering endpoint would
// swallow the SYN of a client that reuses the tuple).
func (e *Engine) FlowClosed(f *gwlb.Flow) {
	e.mu.RLock()
	t := e.tenants[f.Key.Tenant]
	e.mu.RUnlock()
	if t != nil {
		t.flowClosed(f)
	}
}

// tenant returns id's tenant, creating its stack if needed. It returns nil
// when the engine is closed.
func (e *Engine) tenant(id packet.Tenant) (*tenant, error) {
	e.mu.RLock()
	t, closed := e.tenants[id], e.closed
	e.mu.RUnlock()
	if t != nil || closed {
		return t, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, nil
	}
	if t = e.tenants[id]; t != nil {
		return t, nil
	}
	t, err := newTenant(e, id)
	if err != nil {
		e.cfg.Logger.Error("cannot create netstack", "endpoint", id.EndpointString(),
			"attachment", id.AttachmentString(), "err", err)
		return nil, err
	}
	e.tenants[id] = t
	e.m.stacks.Inc()
	e.cfg.Logger.Debug("netstack created", "endpoint", id.EndpointString(), "attachment", id.AttachmentString())
	return t, nil
}

// sweep tears down tenants idle for TenantIdle.
func (e *Engine) sweep(ctx context.Context) {
	every := min(max(e.cfg.TenantIdle/4, 10*time.Millisecond), 5*time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.ctx.Done():
			return
		case now := <-tick.C:
			e.teardownIdle(now)
		}
	}
}

func (e *Engine) teardownIdle(now time.Time) {
	var idle []*tenant
	e.mu.Lock()
	for id, t := range e.tenants {
		if t.retireIfIdle(now, e.cfg.TenantIdle) {
			delete(e.tenants, id)
			idle = append(idle, t)
		}
	}
	e.mu.Unlock()
	for _, t := range idle {
		t.close()
		e.m.stacks.Dec()
		e.cfg.Logger.Debug("idle netstack torn down", "endpoint", t.id.EndpointString(),
			"attachment", t.id.AttachmentString())
	}
}

// Close tears every stack down and waits for every goroutine: handlers get
// their ctx cancelled, and legs they have not closed by the time their stack
// goes are reset. It also waits for every detached connection to be
// released: closing the stacks wakes their OnReadable callbacks, and their
// owners must then release them. It is safe to call more than once.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	ts := make([]*tenant, 0, len(e.tenants))
	for id, t := range e.tenants {
		t.retire()
		ts = append(ts, t)
		delete(e.tenants, id)
	}
	e.mu.Unlock()
	e.cancel()
	var wg sync.WaitGroup
	for _, t := range ts {
		wg.Go(func() {
			t.close()
			e.m.stacks.Dec()
		})
	}
	wg.Wait()
	e.wg.Wait()
	return nil
}

// Stats are the engine's counts, for tests and metrics.
type Stats struct {
	Stacks    int // tenant netstacks
	Endpoints int // gVisor transport endpoints across stacks (registered or closing)
	Conns     int // connections served by a Handler or detached
	Flows     int // flows tracked
}

// Stats returns a snapshot of the engine's counts.
func (e *Engine) Stats() Stats {
	e.mu.RLock()
	ts := make([]*tenant, 0, len(e.tenants))
	for _, t := range e.tenants {
		ts = append(ts, t)
	}
	e.mu.RUnlock()
	st := Stats{Stacks: len(ts), Conns: int(e.conns.Load())}
	for _, t := range ts {
		st.Endpoints += len(t.stack.RegisteredEndpoints()) + len(t.stack.CleanupEndpoints())
		st.Flows += t.flowCount()
	}
	return st
}

func (e *Engine) flowCount() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	n := 0
	for _, t := range e.tenants {
		n += t.flowCount()
	}
	return n
}

// send hands an emitted packet of f to the data path.
func (e *Engine) send(f *gwlb.Flow, b []byte) {
	sb := e.sender.Load()
	if sb == nil {
		e.m.drop(dropClosed)
		return
	}
	if err := sb.s.Send(f, b); err != nil {
		e.m.drop(dropSendFailed)
		return
	}
	e.m.out.Inc()
}
