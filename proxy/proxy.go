package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowdog/flowdog/ca"
	"github.com/flowdog/flowdog/interceptors"
)

// Options configure a Proxy. Zero durations take the defaults.
type Options struct {
	// CA mints certificates for intercepted TLS; nil passes all TLS through.
	CA *ca.Authority
	// Chain is the interceptors; nil runs none.
	Chain *interceptors.Chain
	// Passthrough lists TLS traffic spliced untouched.
	Passthrough Passthrough
	// UpstreamRoots verifies servers; nil uses the system roots.
	UpstreamRoots *x509.CertPool
	// InsecureSkipVerify accepts any server certificate. Only for labs.
	InsecureSkipVerify bool
	// AutoPassthrough passes a destination through for AutoPassthroughTTL
	// after a client rejected flowdog's certificate (certificate pinning).
	AutoPassthrough    bool
	AutoPassthroughTTL time.Duration // default 1h
	// SniffTimeout bounds the wait for either side's first bytes; default 30s.
	SniffTimeout time.Duration
	// TLSHandshakeTimeout bounds each TLS handshake; default 10s.
	TLSHandshakeTimeout time.Duration
	// HeaderTimeout bounds reading a request's headers; default 30s.
	HeaderTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for upstream response headers; default 60s.
	ResponseHeaderTimeout time.Duration
	// IdleTimeout closes idle keep-alive client connections; default 5m.
	IdleTimeout time.Duration
	// DisableHTTP2 negotiates HTTP/1.1 on both legs with clients that
	// offer it besides HTTP/2 (mitmproxy's http2 option); a client that
	// offers only HTTP/2 still gets it.
	DisableHTTP2 bool
	// MaxWebSocketMessage caps one WebSocket message; default 16 MiB.
	MaxWebSocketMessage int64
	Logger              *slog.Logger
	Registerer          prometheus.Registerer
}

func (o *Options) setDefaults() {
	d := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	d(&o.AutoPassthroughTTL, time.Hour)
	d(&o.SniffTimeout, 30*time.Second)
	d(&o.TLSHandshakeTimeout, 10*time.Second)
	d(&o.HeaderTimeout, 30*time.Second)
	d(&o.ResponseHeaderTimeout, 60*time.Second)
	d(&o.IdleTimeout, 5*time.Minute)
	if o.MaxWebSocketMessage <= 0 {
		o.MaxWebSocketMessage = 16 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// ConnInfo describes an intercepted connection.
type ConnInfo struct {
	EndpointID   string
	AttachmentID string
	FlowCookie   uint32
	Client       netip.AddrPort
	Server       netip.AddrPort
	// Detach, when set, lets Serve return while the connection lives on
	// without a goroutine (an idle HTTP/1.1 keep-alive connection whose
	// legs can report readiness, as netstackx's do). Serve calls it before
	// returning early, and calls the release it returned once both legs
	// are closed (netstackx.Conn.Detach).
	Detach func() (release func())
}

// Proxy serves intercepted connections.
type Proxy struct {
	o          Options
	ticketKeys [][32]byte
	sessions   sessionCaches
	log        *slog.Logger
	m          *metrics
	auto       *autoPassthrough
	chain      *interceptors.Chain
}

// New returns a Proxy.
func New(o Options) (*Proxy, error) {
	o.setDefaults()
	if err := o.Passthrough.compile(); err != nil {
		return nil, err
	}
	if o.InsecureSkipVerify {
		o.Logger.Warn("UPSTREAM TLS CERTIFICATES ARE NOT VERIFIED (tls.insecure_skip_verify): " +
			"anyone between flowdog and the servers can read and change intercepted traffic")
	}
	p := &Proxy{o: o, log: o.Logger, m: newMetrics(o.Registerer), auto: newAutoPassthrough(10000), chain: o.Chain}
	p.ticketKeys = make([][32]byte, 1)
	if _, err := rand.Read(p.ticketKeys[0][:]); err != nil {
		return nil, fmt.Errorf("proxy: session ticket key: %w", err)
	}
	return p, nil
}

// Serve handles one connection until either side is done, then closes both
// legs; or, with info.Detach, until the connection is idle (see
// ConnInfo.Detach).
func (p *Proxy) Serve(ctx context.Context, info ConnInfo, client, upstream net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	rawClient, rawUp := client, upstream
	c := &conn{p: p, ctx: ctx, cancel: cancel, info: info, rawClient: client, rawUp: upstream}
	// Closing both legs when ctx ends unblocks every read, and wakes a
	// parked connection to finish.
	c.stopAfter = context.AfterFunc(ctx, func() {
		rawClient.Close()
		rawUp.Close()
	})
	if info.Detach != nil {
		if pc, ok := client.(pollable); ok {
			c.pollClient = &pollConn{Conn: client, p: pc}
			client = c.pollClient
		}
		if pu, ok := upstream.(pollable); ok {
			c.pollUp = &pollConn{Conn: upstream, p: pu}
			upstream = c.pollUp
		}
	}
	defer func() {
		if r := recover(); r != nil {
			p.m.panics.Inc()
			p.log.Error("proxy panic; connection closed", "client", info.Client.String(), "server", info.Server.String(), "panic", r)
			c.finish()
			return
		}
		if !c.isDetached() {
			c.finish()
		}
	}()

	c.flow = &interceptors.Flow{
		EndpointID: info.EndpointID, AttachmentID: info.AttachmentID, FlowCookie: info.FlowCookie,
		Client: info.Client, Server: info.Server, Protocol: "tcp",
	}
	c.client, c.upstream = newBufConn(client), newBufConn(upstream)
	c.log = p.log.With("client", info.Client.String(), "server", info.Server.String())
	c.serve()
}

// conn is the state of one intercepted connection.
type conn struct {
	p        *Proxy
	ctx      context.Context
	cancel   context.CancelFunc
	info     ConnInfo
	flow     *interceptors.Flow
	log      *slog.Logger
	client   *bufConn
	upstream *bufConn

	rawClient, rawUp   net.Conn  // as Serve got them
	pollClient, pollUp *pollConn // nil unless the legs can park
	stopAfter          func() bool
	// detached is set by the goroutine serving, before it parks; on
	// HTTP/2 a handler may finish the connection meanwhile (lifeMu).
	lifeMu    sync.Mutex
	detached  bool
	finishing bool
	release   func()
	finished  sync.Once
}

// detach lets the connection outlive Serve's goroutine.
func (c *conn) detach() bool {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.detached {
		return true
	}
	if c.info.Detach == nil || c.finishing {
		return false
	}
	c.release = c.info.Detach()
	c.detached = true
	return true
}

func (c *conn) isDetached() bool {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	return c.detached
}

// finish closes both legs and lets the connection go; only once.
func (c *conn) finish() {
	c.finished.Do(func() {
		c.lifeMu.Lock()
		c.finishing = true
		release := c.release
		c.lifeMu.Unlock()
		c.stopAfter()
		c.rawClient.Close()
		c.rawUp.Close()
		c.cancel()
		if release != nil {
			release()
		}
	})
}

func (c *conn) serve() {
	first, err := c.sniff()
	if err != nil {
		if !isTimeout(err) {
			return // a side closed before saying anything
		}
		// Nobody spoke for SniffTimeout (a preconnect, a pool opened
		// ahead of use): keep the connection, as it would be without
		// flowdog, and pass whatever comes untouched.
		c.client.doneSniffing()
		c.upstream.doneSniffing()
		c.p.m.conns("raw").Inc()
		c.splice(c.client, c.upstream)
		return
	}
	// The upstream leg is never peeked again; the client leg is done once
	// the protocol is known (TLS peeks the ClientHello in place).
	c.upstream.doneSniffing()
	switch {
	case first == sideUpstream:
		// The server speaks first (SMTP, SSH banners...): not HTTP, not TLS.
		c.client.doneSniffing()
		c.p.m.conns("raw").Inc()
		c.splice(c.client, c.upstream)
	case c.client.looksTLS():
		c.serveTLS()
	case c.client.looksHTTP():
		c.client.doneSniffing()
		c.p.m.conns("http").Inc()
		c.serveHTTP(c.client, c.upstream, false, "http")
	default:
		c.client.doneSniffing()
		c.p.m.conns("raw").Inc()
		c.splice(c.client, c.upstream)
	}
}

type side int

const (
	sideClient side = iota
	sideUpstream
)

// sniff waits for the first bytes from either side.
func (c *conn) sniff() (side, error) {
	type res struct {
		s   side
		err error
	}
	ch := make(chan res, 2)
	deadline := time.Now().Add(c.p.o.SniffTimeout)
	c.client.SetReadDeadline(deadline)
	c.upstream.SetReadDeadline(deadline)
	go func() { _, err := c.client.br.Peek(1); ch <- res{sideClient, err} }()
	go func() { _, err := c.upstream.br.Peek(1); ch <- res{sideUpstream, err} }()
	r := <-ch
	// Unblock the other peek, then clear the deadlines.
	past := time.Unix(1, 0)
	if r.s == sideClient {
		c.upstream.SetReadDeadline(past)
	} else {
		c.client.SetReadDeadline(past)
	}
	<-ch
	c.client.SetReadDeadline(time.Time{})
	c.upstream.SetReadDeadline(time.Time{})
	if r.err != nil {
		if !errors.Is(r.err, io.EOF) {
			c.log.Debug("nothing to sniff", "err", r.err)
		}
		return 0, r.err
	}
	return r.s, nil
}

// bufConn is a net.Conn whose reads go through a bufio.Reader while the
// proxy sniffs, so that peeked bytes are not lost. Once sniffing is over and
// the buffer is drained, reads go straight to the connection and the buffer
// is dropped: an idle connection should not hold sniffing buffers.
type bufConn struct {
	net.Conn
	br      *bufio.Reader
	sniffed bool // set when no more peeking will happen
	keep    bool // br reads from more than Conn (a replayed ClientHello): never drop it
}

func newBufConn(c net.Conn) *bufConn { return &bufConn{Conn: c, br: bufio.NewReaderSize(c, 16<<10)} }

func (b *bufConn) Read(p []byte) (int, error) {
	if b.br == nil {
		return b.Conn.Read(p)
	}
	if b.sniffed && !b.keep && b.br.Buffered() == 0 {
		b.br = nil
		return b.Conn.Read(p)
	}
	return b.br.Read(p)
}

// doneSniffing lets the buffer go once drained.
func (b *bufConn) doneSniffing() { b.sniffed = true }

// CloseWrite half-closes when the underlying connection can.
func (b *bufConn) CloseWrite() error { return closeWrite(b.Conn) }

// peekAtLeast returns at least n buffered bytes, waiting briefly for them:
// sniffing must never block on a client that sent a short first segment.
func (b *bufConn) peekAtLeast(n int) []byte {
	if b.br.Buffered() < n {
		b.Conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		b.br.Peek(n)
		b.Conn.SetReadDeadline(time.Time{})
	}
	h, _ := b.br.Peek(b.br.Buffered())
	return h
}

func (b *bufConn) looksTLS() bool {
	h := b.peekAtLeast(3)
	// A handshake record (22) of TLS 1.0-1.3 (major version 3).
	return len(h) >= 3 && h[0] == 0x16 && h[1] == 3
}

var methods = []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "}

func (b *bufConn) looksHTTP() bool {
	for n := 1; n <= 8; n++ {
		h := b.peekAtLeast(n)
		if len(h) < n {
			return false // the client stopped short of a method
		}
		prefix := false
		for _, m := range methods {
			if len(h) >= len(m) && string(h[:len(m)]) == m {
				return true
			}
			if len(h) < len(m) && strings.HasPrefix(m, string(h)) {
				prefix = true
			}
		}
		if !prefix {
			return false
		}
		n = len(h)
	}
	return false
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// reset closes c abortively (a TCP RST) when the connection supports it.
func reset(c net.Conn) {
	for {
		if b, ok := c.(*bufConn); ok {
			c = b.Conn
			continue
		}
		if w, ok := c.(*watchConn); ok {
			c = w.Conn
			continue
		}
		if p, ok := c.(*pollConn); ok {
			c = p.Conn
			continue
		}
		break
	}
	if r, ok := c.(interface{ Reset() error }); ok {
		_ = r.Reset()
		return
	}
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	c.Close()
}

// errString shortens an error for a 502 body.
func errString(err error) string {
	var ie *interceptors.Error
	if errors.As(err, &ie) {
		return fmt.Sprintf("interceptor %s failed", ie.ID)
	}
	return err.Error()
}

func isInterceptorError(err error) bool {
	var ie *interceptors.Error
	return errors.As(err, &ie)
}
