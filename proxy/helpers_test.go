package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/ca"
	"github.com/flowdog/flowdog/interceptors"
)

// testCA is a root and authority made once per test.
func testCA(t testing.TB) *ca.Authority {
	t.Helper()
	root, _, err := ca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.New(root, ca.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// rig runs a Proxy in front of one upstream address: each connection
// accepted on its listener gets its own upstream connection, as netstackx
// gives the proxy both legs.
type rig struct {
	p        *Proxy
	reg      *prometheus.Registry
	ca       *ca.Authority
	ln       net.Listener
	upstream string
	wg       sync.WaitGroup
	blocking bool
	// wrapClient, when set, replaces the client leg a parking rig serves.
	wrapClient func(*pollTCP) net.Conn

	detached, released atomic.Int64
}

// pollTCP gives a real TCP connection the readiness reports that
// netstackx's legs have, by polling its socket, so that the proxy parks
// idle connections here as it does in flowdog.
type pollTCP struct {
	*net.TCPConn
	fd     int
	closed atomic.Bool
}

func newPollTCP(c *net.TCPConn) *pollTCP {
	p := &pollTCP{TCPConn: c, fd: -1}
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { p.fd = int(fd) })
	}
	return p
}

func (p *pollTCP) Close() error {
	p.closed.Store(true)
	return p.TCPConn.Close()
}

func (p *pollTCP) Readable() bool {
	if p.closed.Load() || p.fd < 0 {
		return true // a Read fails at once
	}
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err != nil || n > 0
	}
}

func (p *pollTCP) OnReadable(f func()) (stop func() bool) {
	var state atomic.Int32 // 0 waiting, 1 fired, 2 stopped
	go func() {
		for state.Load() == 0 {
			if p.Readable() {
				if state.CompareAndSwap(0, 1) {
					f()
				}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return func() bool { return state.CompareAndSwap(0, 2) }
}

func newRig(t testing.TB, upstream string, o Options) *rig {
	return newRigMode(t, upstream, o, false)
}

// newRigMode is newRig; blocking serves without parking: the legs cannot
// report readiness (the proxy then waits in Read, as net/http does).
func newRigMode(t testing.TB, upstream string, o Options, blocking bool) *rig {
	return startRig(t, &rig{upstream: upstream, blocking: blocking}, o)
}

// startRig starts r, whose upstream and mode are set.
func startRig(t testing.TB, r *rig, o Options) *rig {
	t.Helper()
	r.reg = prometheus.NewRegistry()
	o.Registerer = r.reg
	if o.CA == nil {
		o.CA = testCA(t)
	}
	r.ca = o.CA
	var err error
	if r.p, err = New(o); err != nil {
		t.Fatal(err)
	}
	if r.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.wg.Go(func() {
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", r.upstream)
			if err != nil {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				continue
			}
			info := ConnInfo{EndpointID: "vpce-0123456789abcdef0", AttachmentID: "00000000000000a1", FlowCookie: 0xc00c1e,
				Client: c.RemoteAddr().(*net.TCPAddr).AddrPort(), Server: netip.MustParseAddrPort(r.upstream)}
			if r.blocking {
				r.wg.Go(func() { r.p.Serve(ctx, info, c, up) })
				continue
			}
			// As netstackx does: legs that report readiness, and a
			// connection that may outlive Serve.
			info.Detach = func() func() {
				r.detached.Add(1)
				r.wg.Add(1)
				return sync.OnceFunc(func() {
					r.released.Add(1)
					r.wg.Done()
				})
			}
			var pc net.Conn = newPollTCP(c.(*net.TCPConn))
			if r.wrapClient != nil {
				pc = r.wrapClient(pc.(*pollTCP))
			}
			pu := newPollTCP(up.(*net.TCPConn))
			r.wg.Go(func() { r.p.Serve(ctx, info, pc, pu) })
		}
	})
	t.Cleanup(func() {
		r.ln.Close()
		cancel()
		r.wg.Wait()
	})
	return r
}

func (r *rig) addr() string { return r.ln.Addr().String() }

// rootPool trusts the rig's root only.
func (r *rig) rootPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(r.ca.Root())
	return p
}

// client is an HTTP client that connects to the rig whatever the URL says.
func (r *rig) client(h2 bool, serverName string) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", r.addr())
		},
		TLSClientConfig:   &tls.Config{RootCAs: r.rootPool(), ServerName: serverName},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr}
}

// h2Client speaks only HTTP/2 (ALPN "h2" alone), like gRPC clients.
func (r *rig) h2Client(serverName string) *http.Client {
	return &http.Client{Transport: &http2.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string, cfg *tls.Config) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.addr())
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, &tls.Config{RootCAs: r.rootPool(), ServerName: serverName, NextProtos: []string{"h2"}})
			return tc, tc.HandshakeContext(ctx)
		},
	}}
}

func (r *rig) counter(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

// tlsServer is an HTTPS server with its own CA, which flowdog trusts through
// Options.UpstreamRoots.
func tlsServer(t testing.TB, h http.Handler, h2 bool) (*httptest.Server, *x509.CertPool) {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	s.EnableHTTP2 = h2
	return s, startTLS(t, s)
}

// startTLS starts s, configured, with TLS, and returns a pool that trusts it.
func startTLS(t testing.TB, s *httptest.Server) *x509.CertPool {
	t.Helper()
	s.StartTLS()
	t.Cleanup(s.Close)
	pool := x509.NewCertPool()
	pool.AddCert(s.Certificate())
	return pool
}

// hooks is a configurable interceptor for tests.
type hooks struct {
	request   func(*interceptors.Flow, *http.Request) (*http.Response, error)
	response  func(*interceptors.Flow, *http.Response) error
	websocket func(*interceptors.Flow, *http.Request, *interceptors.WebSocketMessage) error
	tcp       func(*interceptors.Flow, *interceptors.TCPMessage) error
}

func (h *hooks) Request(f *interceptors.Flow, r *http.Request) (*http.Response, error) {
	if h.request == nil {
		return nil, nil
	}
	return h.request(f, r)
}

func (h *hooks) Response(f *interceptors.Flow, r *http.Response) error {
	if h.response == nil {
		return nil
	}
	return h.response(f, r)
}

var registerOnce sync.Once

// current is the hooks value the "test_hooks" interceptor delegates to.
var current struct {
	sync.Mutex
	h *hooks
}

type delegating struct{}

func (delegating) h() *hooks { current.Lock(); defer current.Unlock(); return current.h }
func (d delegating) Request(f *interceptors.Flow, r *http.Request) (*http.Response, error) {
	return d.h().Request(f, r)
}
func (d delegating) Response(f *interceptors.Flow, r *http.Response) error {
	return d.h().Response(f, r)
}

type wsDelegating struct{ delegating }

func (d wsDelegating) WebSocketMessage(f *interceptors.Flow, r *http.Request, m *interceptors.WebSocketMessage) error {
	if h := d.h(); h.websocket != nil {
		return h.websocket(f, r, m)
	}
	return nil
}

type tcpDelegating struct{ delegating }

func (d tcpDelegating) TCPMessage(f *interceptors.Flow, m *interceptors.TCPMessage) error {
	if h := d.h(); h.tcp != nil {
		return h.tcp(f, m)
	}
	return nil
}

// chainOf builds a chain around h: kinds picks which hook sets it implements.
func chainOf(t testing.TB, h *hooks, kinds ...string) *interceptors.Chain {
	t.Helper()
	registerOnce.Do(func() {
		interceptors.Register(interceptors.Info{ID: "test_http", New: func() any { return delegating{} }})
		interceptors.Register(interceptors.Info{ID: "test_ws", New: func() any { return wsDelegating{} }})
		interceptors.Register(interceptors.Info{ID: "test_tcp", New: func() any { return tcpDelegating{} }})
	})
	current.Lock()
	current.h = h
	current.Unlock()
	var cfgs []interceptors.Config
	for _, k := range kinds {
		cfgs = append(cfgs, interceptors.Config{Name: "test_" + k})
	}
	c, err := interceptors.NewChain(context.Background(), cfgs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
