package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

type roundTripper interface {
	RoundTrip(*http.Request) (*http.Response, error)
}

type ctxKey int

const xffKey ctxKey = 0

// serveHTTP serves HTTP on the client leg (HTTP/2 when h2) and sends every
// request on the single upstream connection (HTTP/2 when upProto is "h2").
// When the upstream connection goes away, the client's connection is closed
// gracefully (HTTP/1.1: after the response in flight; HTTP/2: GOAWAY) so
// that the client opens a new one, with a new upstream, instead of getting
// 502s.
func (c *conn) serveHTTP(client, upstream net.Conn, h2 bool, upProto string) {
	o := &c.p.o
	scheme := "http"
	if isTLS(client) {
		scheme = "https"
	}
	var hs *h2Server // HTTP/2 on the client leg
	var s *h1Server  // HTTP/1.1 on the client leg
	if h2 {
		hs = newH2Server(c, client, nil)
	} else {
		s = newH1Server(c, client)
	}
	var once sync.Once
	gone := func() {
		once.Do(func() {
			if h2 {
				hs.shutdown() // GOAWAY; streams in flight finish
			} else {
				s.upstreamGone() // closes when idle or after this response
			}
		})
	}
	var rt roundTripper
	var h1 *h1Upstream
	if upProto == "h2" {
		var poll *pollConn
		if c.info.Detach != nil {
			poll = c.pollUp
		}
		up, err := newH2Client(c, upstream, poll, gone)
		if err != nil {
			c.log.Warn("upstream HTTP/2 setup failed", "err", err)
			return
		}
		rt = up
	} else {
		upstream = &watchConn{Conn: upstream, onErr: gone}
		h1 = newH1Upstream(upstream, o.ResponseHeaderTimeout, gone)
		rt = h1
	}
	h := &httpHandler{c: c, rt: rt, h1: h1, scheme: scheme, h2: h2}
	h.rp = &httputil.ReverseProxy{
		Director:       h.direct,
		Transport:      roundTripFunc(h.roundTrip),
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
		FlushInterval:  -1, // stream: flowdog never holds response bytes back
		BufferPool:     copyBuffers,
		ErrorLog:       discardLog,
	}
	if !h2 {
		s.h = h
		if h1 != nil {
			s.watchUpstream(h1)
		}
		// When it parks, the connection lives on detached: nothing here
		// may close it.
		s.serve()
		return
	}
	hs.h = h
	if h1 != nil && c.pollUp != nil && c.info.Detach != nil {
		hs.watchUpstream(h1, c.pollUp)
	}
	// When it parks, the connection lives on detached: nothing here may
	// close it.
	hs.serve()
}

var discardLog = log.New(io.Discard, "", 0)

// http2Panic counts and logs a panic recovered in an HTTP/2 leg's own
// goroutines (frame readers, request-body writers).
func (c *conn) http2Panic(r any) {
	c.p.m.panics.Inc()
	c.log.Error("proxy panic in an HTTP/2 connection", "panic", r)
}

// alsoClose is a replaced response body that closes the original with it.
type alsoClose struct {
	io.ReadCloser
	orig io.Closer
}

func (a *alsoClose) Close() error {
	err := a.ReadCloser.Close()
	a.orig.Close()
	return err
}

// watchConn reports the first read error: the connection is gone.
type watchConn struct {
	net.Conn
	once  sync.Once
	onErr func()
}

func (w *watchConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if err != nil && !isTimeout(err) {
		w.once.Do(w.onErr)
	}
	return n, err
}

func (w *watchConn) CloseWrite() error { return closeWrite(w.Conn) }

func isTLS(c net.Conn) bool {
	_, ok := unwrapTLS(c)
	return ok
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type httpHandler struct {
	c      *conn
	rp     *httputil.ReverseProxy
	rt     roundTripper
	h1     *h1Upstream
	scheme string
	h2     bool
	wg     sync.WaitGroup
}

func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.wg.Add(1)
	defer h.wg.Done()
	if r.Method == http.MethodConnect {
		http.Error(w, "flowdog: CONNECT is not proxied on an intercepted connection", http.StatusMethodNotAllowed)
		return
	}
	if h.c.p.chain.HasWebSocketHooks() && isWebSocketUpgrade(r) {
		h.serveWebSocket(w, r)
		return
	}
	// Remember the client's own X-Forwarded-For: ReverseProxy would add the
	// peer's address to it, and flowdog is transparent.
	xff, hadXFF := r.Header["X-Forwarded-For"]
	r = r.WithContext(context.WithValue(r.Context(), xffKey, xffValue{xff, hadXFF, r}))
	h.rp.ServeHTTP(w, r)
}

type xffValue struct {
	v   []string
	had bool
	in  *http.Request
}

func (h *httpHandler) direct(out *http.Request) {
	out.URL.Scheme = h.scheme
	out.URL.Host = out.Host
	if out.URL.Host == "" {
		out.URL.Host = h.c.info.Server.String()
	}
}

// roundTrip runs the request hooks on the outgoing request, then sends it
// on the one upstream connection unless a hook answered it.
func (h *httpHandler) roundTrip(out *http.Request) (*http.Response, error) {
	if x, ok := out.Context().Value(xffKey).(xffValue); ok {
		if x.had {
			out.Header["X-Forwarded-For"] = x.v
		} else {
			delete(out.Header, "X-Forwarded-For")
		}
		// ReverseProxy's clone copied the trailer map before the body was
		// read; the client's trailers land in the original one.
		if x.in.Trailer != nil {
			out.Trailer = x.in.Trailer
		}
	}
	resp, err := h.c.p.chain.Request(h.c.flow, out)
	if err != nil {
		return nil, err
	}
	if resp != nil {
		if resp.Body == nil {
			resp.Body = http.NoBody
		}
		if resp.Header == nil {
			resp.Header = http.Header{}
		}
		return resp, nil
	}
	return h.rt.RoundTrip(out)
}

func (h *httpHandler) modifyResponse(resp *http.Response) error {
	orig := resp.Body
	if err := h.c.p.chain.Response(h.c.flow, resp); err != nil {
		return err
	}
	switch {
	case resp.Body == orig || orig == nil:
	case resp.Body == nil:
		orig.Close()
		resp.Body = http.NoBody
	default:
		// A hook replaced the body: ReverseProxy closes only the new one,
		// and the upstream's, unread, must end too (it holds the upstream
		// connection until then).
		resp.Body = &alsoClose{ReadCloser: resp.Body, orig: orig}
	}
	proto := "http/1.1"
	if h.h2 {
		proto = "h2"
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		// Spliced by ReverseProxy (no WebSocket hooks): still a WebSocket.
		h.c.p.m.conns("websocket").Inc()
	}
	h.c.p.m.requests.WithLabelValues(proto, fmt.Sprintf("%dxx", resp.StatusCode/100)).Inc()
	return nil
}

// errorHandler answers 502 with a short plain-text reason.
func (h *httpHandler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if rw, ok := w.(*h2Response); ok && errors.Is(err, errUpstreamGone) {
		// Never sent upstream (the connection was gone, or the server's
		// GOAWAY excluded the stream): refused, and the client retries it
		// on a new connection instead of getting a 502 (RFC 9113, 8.7).
		h.c.p.m.badGateway.WithLabelValues("upstream_gone_refused").Inc()
		rw.refuse()
		return
	}
	reason := "upstream"
	switch {
	case isInterceptorError(err):
		reason = "interceptor"
		h.c.p.interceptorFailed(err)
		h.c.log.Error("interceptor failed the request", "err", err, "method", r.Method, "url", r.URL.String())
	case errors.Is(err, context.Canceled):
		reason = "client_gone"
	case errors.Is(err, errUpstreamGone):
		reason = "upstream_gone"
	default:
		h.c.log.Info("upstream request failed", "err", err, "method", r.Method, "host", r.Host)
	}
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		reason = "upstream_timeout"
	}
	h.c.p.m.badGateway.WithLabelValues(reason).Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusBadGateway)
	io.WriteString(w, "502 Bad Gateway (flowdog): "+errString(err)+"\n")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isWebSocketUpgrade(r *http.Request) bool {
	return httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") &&
		strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// copyBuffers lends ReverseProxy its copy buffers instead of a new 32 KiB
// one per response.
var copyBuffers = &bufferPool{}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }
