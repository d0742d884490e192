package netstackx

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/gwlbsim"
	"github.com/flowdog/flowdog/internal/testutil"
)

var (
	clientV4 = netip.MustParseAddr("10.0.0.10")
	clientV6 = netip.MustParseAddr("fd00::10")
	serverV4 = netip.MustParseAddr("198.51.100.10")
	serverV6 = netip.MustParseAddr("2001:db8::10")
)

// lab is a real gwlb.Datapath with an Engine as its InterceptHandler,
// behind a simulated GWLB.
type lab struct {
	t      *testing.T
	engine *Engine
	dp     *gwlb.Datapath
	sim    *gwlbsim.Sim
	reg    *prometheus.Registry
	sender *recordingSender
}

type labOpts struct {
	cfg  Config
	gwlb gwlb.Options
	sim  gwlbsim.Config
	h    Handler
}

func newLab(t *testing.T, o labOpts) *lab {
	t.Helper()
	needRaw(t)
	if o.h == nil {
		o.h = splice(nil)
	}
	l := &lab{t: t, reg: prometheus.NewRegistry()}
	o.cfg.Registerer = l.reg
	if testing.Verbose() && os.Getenv("NETSTACKX_DEBUG") != "" {
		o.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	l.engine = New(o.cfg, o.h)

	gopts := o.gwlb
	gopts.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	if gopts.Workers == 0 {
		gopts.Workers = 2
	}
	if gopts.ReadBuffer == 0 {
		// As in production: the default buffer holds a dozen jumbo
		// datagrams, and a TCP burst overflows it.
		gopts.ReadBuffer = 8 << 20
	}
	if gopts.Policy == nil {
		gopts.Policy = &gwlb.Policy{Default: gwlb.Intercept}
	}
	gopts.Intercept = l.engine
	gopts.Registerer = l.reg
	dp, err := gwlb.New(gopts)
	if err != nil {
		t.Fatal(err)
	}
	l.dp = dp
	l.sender = &recordingSender{s: dp}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- dp.Run(ctx) }()
	l.engine.Start(ctx, l.sender)

	gw, err := gwlbsim.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	o.sim.GWLBAddr = gw
	o.sim.ApplianceAddr = dp.Addr()
	sim, err := gwlbsim.New(o.sim)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	l.sim = sim
	t.Cleanup(func() {
		if err := l.engine.Close(); err != nil {
			t.Errorf("engine close: %v", err)
		}
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("datapath: %v", err)
		}
		sim.Close()
		if max := int(l.sender.max.Load()); max > l.engine.cfg.MTU {
			t.Errorf("an emitted packet of %d bytes exceeds the MTU %d", max, l.engine.cfg.MTU)
		}
	})
	return l
}

// recordingSender forwards to the data path and records the largest packet.
type recordingSender struct {
	s   Sender
	max atomic.Int64
	n   atomic.Int64
}

func (r *recordingSender) Send(f *gwlb.Flow, pkt []byte) error {
	r.n.Add(1)
	for {
		m := r.max.Load()
		if int64(len(pkt)) <= m || r.max.CompareAndSwap(m, int64(len(pkt))) {
			break
		}
	}
	return r.s.Send(f, pkt)
}

// hosts adds a client and a server host to a new tenant.
func (l *lab) hosts(endpoint, attachment uint64) (tn *gwlbsim.Tenant, client, server *gwlbsim.Host) {
	l.t.Helper()
	tn = l.sim.AddTenant(endpoint, attachment)
	client, err := tn.AddHost(clientV4, clientV6)
	if err != nil {
		l.t.Fatal(err)
	}
	server, err = tn.AddHost(serverV4, serverV6)
	if err != nil {
		l.t.Fatal(err)
	}
	return tn, client, server
}

func (l *lab) noViolations() {
	l.t.Helper()
	if st := l.sim.Stats(); st.ViolationCount() != 0 {
		l.t.Errorf("GWLB contract violations: %v", st.Violations)
		for _, v := range l.sim.Violations() {
			l.t.Log(v)
		}
	}
}

// metric sums the counters and gauges of name whose labels include labels
// ("k=v,k2=v2").
func (l *lab) metric(name, labels string) float64 {
	l.t.Helper()
	return gather(l.t, l.reg, name, labels)
}

func gather(t testing.TB, reg *prometheus.Registry, name, labels string) float64 {
	return testutil.Metric(t, reg, name, labels)
}

func needRaw(t testing.TB) { testutil.NeedRaw(t) }

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, d, what, cond)
}

// splice is the tests' Handler: it copies both ways with half-close,
// passing client bytes through transform (nil: unchanged).
func splice(transform func([]byte)) Handler {
	return func(ctx context.Context, c *Conn) {
		defer c.Client.Close()
		defer c.Upstream.Close()
		errc := make(chan error, 2)
		go func() {
			_, err := io.Copy(c.Upstream, transformReader{c.Client, transform})
			c.Upstream.(*TCPConn).CloseWrite()
			errc <- err
		}()
		go func() {
			_, err := io.Copy(c.Client, c.Upstream)
			c.Client.(*TCPConn).CloseWrite()
			errc <- err
		}()
		for range 2 {
			select {
			case err := <-errc:
				if err != nil {
					// One side broke: end the other too.
					c.Client.Close()
					c.Upstream.Close()
				}
			case <-ctx.Done():
				c.Client.Close()
				c.Upstream.Close()
				<-errc
			}
		}
	}
}

type transformReader struct {
	r io.Reader
	f func([]byte)
}

func (t transformReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	if t.f != nil {
		t.f(b[:n])
	}
	return n, err
}

func upper(b []byte) { copy(b, bytes.ToUpper(b)) }

// echoServer serves echo on port of h (IPv4 and IPv6) and reports each
// connection's remote address.
func echoServer(t *testing.T, h *gwlbsim.Host, port uint16) <-chan netip.AddrPort {
	t.Helper()
	ln, err := h.ListenTCP(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	peers := make(chan netip.AddrPort, 4096)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			default:
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*gonet.TCPConn).CloseWrite()
			}()
		}
	}()
	return peers
}

// roundTrip sends msg over c, half-closes and returns everything read back.
func roundTrip(c net.Conn, msg []byte) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*gonet.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	return got, errors.Join(<-errc, rerr)
}

// randBytes is deterministic pseudo-random content.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// handlerLog records the connections a Handler saw.
type handlerLog struct {
	mu    sync.Mutex
	conns []*Conn
}

func (h *handlerLog) wrap(next Handler) Handler {
	return func(ctx context.Context, c *Conn) {
		h.mu.Lock()
		h.conns = append(h.conns, c)
		h.mu.Unlock()
		next(ctx, c)
	}
}

func (h *handlerLog) all() []*Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Conn(nil), h.conns...)
}

func testCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// diag logs every non-zero metric and the simulator's counters, to explain
// a failure.
func (l *lab) diag(t *testing.T) {
	mfs, _ := l.reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if v != 0 {
				t.Logf("%s %v = %v", mf.GetName(), m.GetLabel(), v)
			}
		}
	}
	t.Logf("sim %+v", l.sim.Stats())
}
