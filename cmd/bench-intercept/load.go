package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/flowdog/flowdog/examples/geneve_headers"
)

// target is one side of a comparison: the same server reached on a port
// that flowdog fast-paths or on one that it intercepts, or (cff scenario)
// on an intercepted port by a name a CloudFront function is attached to
// or not.
type target struct {
	name        string // FAST, INTERCEPT or CFF
	intercepted bool
	https       bool
	port        uint16
	host        string // URL host, Host and SNI; "": the server's address (HTTP) or serverName (HTTPS)
	cff         bool   // the function is attached to host: responses echo its header
}

func (t target) url() string {
	switch {
	case t.host != "":
		return fmt.Sprintf("%s://%s:%d/", t.scheme(), t.host, t.port)
	case t.https:
		return fmt.Sprintf("https://%s:%d/", serverName, t.port)
	}
	return fmt.Sprintf("http://%s:%d/", serverAddr, t.port)
}

func (t target) scheme() string {
	if t.https {
		return "https"
	}
	return "http"
}

// serverName is the name the client sends in SNI and checks in the
// certificate.
func (t target) serverName() string {
	if t.host != "" {
		return t.host
	}
	return serverName
}

func targets(https bool) [2]target {
	if https {
		return [2]target{{"FAST", false, true, portHTTPSFast, "", false}, {"INTERCEPT", true, true, portHTTPSIntercept, "", false}}
	}
	return [2]target{{"FAST", false, false, portHTTPFast, "", false}, {"INTERCEPT", true, false, portHTTPIntercept, "", false}}
}

// cffTargets are the cff scenario's: both intercepted, on the same port,
// and both named, so that the requests differ only in the name (HTTP: the
// Host header; HTTPS: SNI too, and the leaf flowdog mints for it). The
// function is attached to cffHost only.
func cffTargets(https bool) [2]target {
	port := uint16(portHTTPIntercept)
	if https {
		port = portHTTPSIntercept
	}
	return [2]target{{"INTERCEPT", true, https, port, serverName, false}, {"CFF", true, https, port, cffHost, true}}
}

// rateResult is one measured interval of a closed-loop load.
type rateResult struct {
	n       int             // requests (or connections) completed in the interval
	elapsed time.Duration   // the interval
	lat     []time.Duration // latency of each, sorted
	dials   int64           // TCP connections opened, warm-up included
	// CPU time used in the measured interval by flowdog and by this
	// process (simulator, hosts, clients and servers).
	fdCPU, benchCPU time.Duration
	// flowdog's metrics at the start and at the end of the interval.
	m0, m1   map[string]float64
	errs     int64
	firstErr error
}

func (r rateResult) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

// pct returns the p-th percentile latency (nearest rank).
func (r rateResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(p/100*float64(len(r.lat))+0.5) - 1
	return r.lat[min(max(i, 0), len(r.lat)-1)]
}

// load runs o.clients closed-loop clients against t for o.warmup, then
// measures for o.duration. Each client has its own http.Transport with at
// most one connection: with keepAlive it is reused for every request (one
// keep-alive connection per client), without it every request opens,
// handshakes and closes a connection of its own.
func load(ctx context.Context, l *lab, o *options, t target, keepAlive, h2 bool, during func(time.Duration)) rateResult {
	var dials atomic.Int64
	dial := l.dialer()
	start := time.Now()
	mStart := start.Add(o.warmup)
	mEnd := mStart.Add(o.duration)
	var (
		mu       sync.Mutex
		res      rateResult
		firstErr error
		wg       sync.WaitGroup
	)
	res.elapsed = o.duration
	fail := func(err error) {
		mu.Lock()
		res.errs++
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	for range o.clients {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return dial(ctx, network, addr)
			},
			TLSClientConfig:     l.tlsConfig(t.serverName()),
			TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
			DisableKeepAlives:   !keepAlive,
			DisableCompression:  true,
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			TLSHandshakeTimeout: 10 * time.Second,
		}
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		if h2 {
			c.Transport = &http2.Transport{
				DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
					dials.Add(1)
					raw, err := dial(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					tc := tls.Client(raw, cfg)
					if err := tc.HandshakeContext(ctx); err != nil {
						raw.Close()
						return nil, err
					}
					return tc, nil
				},
				TLSClientConfig:    l.tlsConfig(t.serverName(), "h2"),
				DisableCompression: true,
			}
		}
		wg.Go(func() {
			defer tr.CloseIdleConnections()
			var lat []time.Duration
			checked := false
			for {
				t0 := time.Now()
				if t0.After(mEnd) || ctx.Err() != nil {
					break
				}
				err := l.get(ctx, c, t, !checked)
				t1 := time.Now()
				if err != nil {
					fail(err)
					time.Sleep(10 * time.Millisecond) // no hot loop against a broken target
					continue
				}
				checked = true
				if !t0.Before(mStart) && t1.Before(mEnd) {
					lat = append(lat, t1.Sub(t0))
				}
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			mu.Unlock()
		})
	}
	sleepUntil(ctx, mStart)
	m0, mErr := l.fd.metrics(ctx)
	fd0, fdErr := cpuTime(l.fd.Pid())
	b0, bErr := cpuTime(os.Getpid())
	var dwg sync.WaitGroup
	if during != nil {
		dwg.Go(func() { during(o.duration) })
	}
	sleepUntil(ctx, mEnd)
	fd1, fdErr1 := cpuTime(l.fd.Pid())
	b1, bErr1 := cpuTime(os.Getpid())
	m1, mErr1 := l.fd.metrics(ctx)
	if err := errors.Join(fdErr, bErr, fdErr1, bErr1, mErr, mErr1); err != nil && ctx.Err() == nil {
		fail(fmt.Errorf("CPU time or flowdog metrics: %w", err))
	}
	res.fdCPU, res.benchCPU, res.m0, res.m1 = fd1-fd0, b1-b0, m0, m1
	dwg.Wait()
	wg.Wait()
	res.n = len(res.lat)
	slices.Sort(res.lat)
	res.dials = dials.Load()
	res.firstErr = firstErr
	if ctx.Err() != nil && res.firstErr == nil {
		res.firstErr = ctx.Err()
		res.errs++
	}
	return res
}

// delta is how much flowdog's metrics with this prefix grew in the
// interval, summed.
func (r rateResult) delta(prefix string) float64 {
	var d float64
	for k, v := range r.m1 {
		if strings.HasPrefix(k, prefix) {
			d += v - r.m0[k]
		}
	}
	return d
}

func sleepUntil(ctx context.Context, t time.Time) {
	select {
	case <-time.After(time.Until(t)):
	case <-ctx.Done():
	}
}

// get does one GET of t and reads the whole body. It checks the status,
// the body's length, and that the response went the way t says: through
// flowdog's interceptors (geneve_headers adds its headers to responses)
// or not. With deep it also checks who signed the certificate the client
// saw, flowdog's root or the server's CA.
func (l *lab) get(ctx context.Context, c *http.Client, t target, deep bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url(), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", t.name, t.url(), err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("%s %s: body: %w", t.name, t.url(), err)
	}
	if resp.StatusCode != http.StatusOK || n != int64(len(l.body)) {
		return fmt.Errorf("%s %s: %s, %d-byte body, want 200 and %d bytes", t.name, t.url(), resp.Status, n, len(l.body))
	}
	if got := resp.Header.Get(geneve_headers.HeaderEndpoint) != ""; got != t.intercepted {
		return fmt.Errorf("%s %s: response intercepted=%v (geneve_headers), want %v: check flowdog's policy", t.name, t.url(), got, t.intercepted)
	}
	if got := resp.Header.Get(cffHeader) == "1"; got != t.cff {
		return fmt.Errorf("%s %s: the CloudFront function ran=%v (the server echoes %s), want %v", t.name, t.url(), got, cffHeader, t.cff)
	}
	if deep && t.https {
		return l.checkIssuer(t, resp.TLS)
	}
	return nil
}

func (l *lab) checkIssuer(t target, cs *tls.ConnectionState) error {
	if cs == nil || len(cs.VerifiedChains) == 0 {
		return fmt.Errorf("%s: no verified TLS chain", t.name)
	}
	ch := cs.VerifiedChains[0]
	byFlowdog := ch[len(ch)-1].Equal(l.fdRoot)
	if byFlowdog != t.intercepted {
		return fmt.Errorf("%s: certificate chain ends in flowdog's root=%v, want %v", t.name, byFlowdog, t.intercepted)
	}
	return nil
}

// idleConns opens n HTTPS connections to port from the client host, each
// with a full TLS handshake and one keep-alive GET, and leaves them open
// and idle. Connections are opened par at a time. It returns the open
// connections even on error, for the caller to close.
// idleConns opens n idle HTTPS connections, par at a time, each after one
// request (HTTP/2 when h2).
func (l *lab) idleConns(ctx context.Context, t target, n, par int, h2 bool) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dst := netip.AddrPortFrom(serverAddr, t.port)
	req := []byte(fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench-intercept\r\n\r\n", serverName))
	for range min(par, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := l.openIdle(ctx, t, dst, req, i == 0, h2)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("%s idle connection %d of %d: %w", t.name, i+1, n, err)
					}
					mu.Unlock()
					cancel()
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	open := conns[:0]
	for _, c := range conns {
		if c != nil {
			open = append(open, c)
		}
	}
	return open, firstErr
}

func (l *lab) openIdle(ctx context.Context, t target, dst netip.AddrPort, req []byte, deep, h2 bool) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := l.client.DialTCP(ctx, dst)
	if err != nil {
		return nil, err
	}
	cfg := l.tlsConfig(t.serverName())
	if h2 {
		cfg = l.tlsConfig(t.serverName(), "h2")
	}
	c := tls.Client(raw, cfg)
	// The deadline also bounds the handshake and the response; it is
	// cleared once the connection is idle.
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	err = c.HandshakeContext(ctx)
	if err == nil && deep {
		cs := c.ConnectionState()
		err = l.checkIssuer(t, &cs)
	}
	var resp *http.Response
	switch {
	case err != nil:
	case h2:
		// The client connection's read loop stays in this process; only
		// flowdog's memory is measured.
		var cc *http2.ClientConn
		if cc, err = (&http2.Transport{}).NewClientConn(c); err == nil {
			hreq, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+serverName+"/", nil)
			resp, err = cc.RoundTrip(hreq)
		}
	default:
		if _, err = c.Write(req); err == nil {
			// A reader of its own per connection, dropped after the
			// response: the server sends nothing more on an idle
			// keep-alive connection.
			resp, err = http.ReadResponse(bufio.NewReaderSize(c, 4096), nil)
		}
	}
	if err == nil {
		var n int64
		n, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
		case resp.StatusCode != http.StatusOK || n != int64(len(l.body)) || resp.Close:
			err = fmt.Errorf("%s, %d-byte body, close=%v: want 200, %d bytes, keep-alive", resp.Status, n, resp.Close, len(l.body))
		case (resp.Header.Get(geneve_headers.HeaderEndpoint) != "") != t.intercepted:
			err = errors.New("intercepted or not, against the policy")
		case h2 && resp.ProtoMajor != 2:
			err = fmt.Errorf("%s, want HTTP/2", resp.Proto)
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
