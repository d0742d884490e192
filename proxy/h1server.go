package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// pollable is a leg that can tell when it has something to read, so that
// an idle connection needs no goroutine blocked in Read
// (netstackx.TCPConn).
type pollable interface {
	// Readable reports whether a Read would return at once.
	Readable() bool
	// OnReadable runs f on a goroutine of its own once the leg is
	// readable; stop cancels it and reports whether f was not started.
	OnReadable(f func()) (stop func() bool)
}

// pollConn sits under TLS and the sniffing buffers. In non-blocking mode a
// Read that would wait fails at once with a temporary timeout instead,
// which crypto/tls and bufio pass up without harm (a partial TLS record
// stays buffered). That lets the proxy ask, through every layer, whether a
// request is already there.
type pollConn struct {
	net.Conn
	p        pollable
	nonblock atomic.Bool
}

func (c *pollConn) Read(b []byte) (int, error) {
	if c.nonblock.Load() && !c.p.Readable() {
		return 0, errWouldBlock
	}
	return c.Conn.Read(b)
}

// CloseWrite half-closes when the underlying connection can.
func (c *pollConn) CloseWrite() error { return closeWrite(c.Conn) }

// tryRead runs read with c in non-blocking mode.
func (c *pollConn) tryRead(read func() error) error {
	c.nonblock.Store(true)
	defer c.nonblock.Store(false)
	return read()
}

var errWouldBlock error = wouldBlock{}

// wouldBlock is a net.Error: Timeout and Temporary, as crypto/tls needs it
// to be to leave the connection usable.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

const (
	// maxHeaderBytes bounds a request line and its headers (net/http's
	// default).
	maxHeaderBytes = 1 << 20
	// maxDrain is how much of a request body that the handler left unread
	// is read and dropped to keep the connection (net/http's figure).
	maxDrain = 256 << 10
	// lingerTime is how long a closing connection reads and drops what
	// the client still sends, so that closing does not reset it and lose
	// the response it has not read yet (net/http's figure).
	lingerTime = 500 * time.Millisecond
	// parkAfter is how long a connection keeps its goroutine after a
	// response before it parks.
	parkAfter = 5 * time.Millisecond
)

// writers lends client connections their response writers while a request
// is served.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// h1Server serves HTTP/1.1 on the client leg: requests one at a time and
// in order (pipelined ones too), each sent on the one upstream connection
// by the handler. It does what net/http's server loop did for flowdog,
// except that between requests it holds no goroutine and no buffer: it
// parks on the legs' readiness and resumes on a new goroutine when the
// client sends the next request, the server closes or speaks out of turn,
// or the idle timeout passes. Without a pollable leg (tests, or a caller
// that cannot detach the connection) it waits in Read, as net/http does.
type h1Server struct {
	c      *conn
	h      *httpHandler
	conn   net.Conn             // the client leg: *tls.Conn or *bufConn
	tls    *tls.ConnectionState // nil for plain HTTP
	poll   *pollConn            // under conn; nil: never parks
	up     *h1Upstream          // watched while parked; nil for HTTP/2
	upPoll *pollConn

	lim headerLimit // between conn and br: bounds what a request's headers may take
	br  *bufio.Reader
	bw  *bufio.Writer

	closing atomic.Bool // the upstream is going: close after the response in flight

	// Serving a request: wmu orders a 100 Continue and the response
	// header; watch notices a client that leaves while its request waits.
	wmu          sync.Mutex
	sentHeader   bool
	sentContinue bool
	watchMu      sync.Mutex
	inHandler    bool
	watchGen     uint64 // a callback of an earlier request's watch is stale
	watchStop    func() bool
	cancelReq    context.CancelFunc

	parking parking // while parked
}

func newH1Server(c *conn, client net.Conn) *h1Server {
	s := &h1Server{c: c, conn: client}
	if tc, ok := unwrapTLS(client); ok {
		cs := tc.ConnectionState()
		s.tls = &cs
	}
	if c.pollClient != nil && c.info.Detach != nil {
		s.poll = c.pollClient
	}
	s.lim.r, s.lim.n = client, -1
	return s
}

// watchUpstream makes a parked connection notice the server closing.
func (s *h1Server) watchUpstream(up *h1Upstream) {
	if s.poll != nil && s.c.pollUp != nil {
		s.up, s.upPoll = up, s.c.pollUp
	}
}

func unwrapTLS(c net.Conn) (*tls.Conn, bool) {
	if b, ok := c.(*bufConn); ok {
		c = b.Conn
	}
	tc, ok := c.(*tls.Conn)
	return tc, ok
}

// upstreamGone makes the response in flight the last one.
func (s *h1Server) upstreamGone() { s.closing.Store(true) }

// serve runs requests until the connection ends (false) or parks (true).
// When it parks, the connection is detached and a wake-up serves on.
func (s *h1Server) serve() (parked bool) {
	for {
		if s.poll != nil {
			ready := s.skipEmptyLines() || s.nextSoon()
			// Whatever the server sent since its last response (a FIN,
			// bytes out of turn) is for now, not for the next request to
			// find: the client sees the connection close, as it would
			// without flowdog, and retries elsewhere instead of getting a
			// 502.
			if s.up != nil && !s.up.idleCheck(s.upPoll) {
				s.closeGracefully(ready)
				return false
			}
			if !ready && s.park() {
				return true
			}
		}
		req, err := s.readRequest()
		if err != nil {
			s.badRequest(err)
			return false
		}
		if !s.serveRequest(req) {
			return false
		}
	}
}

// skipEmptyLines drops the empty lines a client may send between requests
// (RFC 9112, section 2.2; some send CRLF after a POST body) and reports
// whether anything else is buffered.
func (s *h1Server) skipEmptyLines() bool {
	if s.br == nil {
		return false
	}
	for s.br.Buffered() > 0 {
		b, _ := s.br.Peek(1)
		if b[0] != '\r' && b[0] != '\n' {
			return true
		}
		s.br.Discard(1)
	}
	return false
}

// nextSoon reports whether the next request (or EOF, or an error) comes
// within parkAfter. A client in a keep-alive loop sends it at once, and the
// goroutine that served the last one, its stack already grown by gVisor's
// send path, serves it too: parking and waking for every request would
// cost a new goroutine and a stack growth each time.
func (s *h1Server) nextSoon() bool {
	br := s.reader()
	s.conn.SetReadDeadline(time.Now().Add(parkAfter))
	defer s.conn.SetReadDeadline(time.Time{})
	for {
		if _, err := br.Peek(1); err != nil {
			return !isTimeout(err)
		}
		if s.skipEmptyLines() {
			return true
		}
	}
}

func (s *h1Server) reader() *bufio.Reader {
	if s.br == nil {
		s.br = readers.Get().(*bufio.Reader)
		s.br.Reset(&s.lim)
	}
	return s.br
}

func (s *h1Server) writer() *bufio.Writer {
	if s.bw == nil {
		s.bw = writers.Get().(*bufio.Writer)
		s.bw.Reset(s.conn)
	}
	return s.bw
}

// releaseBuffers returns the idle connection's buffers to the pools.
func (s *h1Server) releaseBuffers() {
	if s.br != nil && s.br.Buffered() == 0 {
		s.br.Reset(nil)
		readers.Put(s.br)
		s.br = nil
	}
	if s.bw != nil && s.bw.Buffered() == 0 {
		s.bw.Reset(nil)
		writers.Put(s.bw)
		s.bw = nil
	}
}

type wakeReason int

const (
	wakeClient wakeReason = iota
	wakeUpstream
	wakeIdle
)

// park waits for the next request with no goroutine. It reports false
// when the connection cannot be detached.
func (s *h1Server) park() bool {
	if !s.c.detach() {
		return false
	}
	s.releaseBuffers()
	s.c.p.m.parked.Inc()
	p := &s.parking
	p.park(func(gen uint64) {
		p.setTimer(s.c.p.o.IdleTimeout, func() { s.wake(gen, wakeIdle) })
		p.stops[0] = s.poll.p.OnReadable(func() { s.wake(gen, wakeClient) })
		if s.upPoll != nil {
			p.stops[1] = s.upPoll.p.OnReadable(func() { s.wake(gen, wakeUpstream) })
		}
	})
	return true
}

// wake runs on a goroutine of its own (a readiness callback or the idle
// timer); the first of them to come serves the connection on.
func (s *h1Server) wake(gen uint64, why wakeReason) {
	if !s.parking.claim(gen) {
		return
	}
	s.c.p.m.parked.Dec()

	defer func() {
		if r := recover(); r != nil {
			s.c.p.m.panics.Inc()
			s.c.log.Error("proxy panic; connection closed", "panic", r)
			s.c.finish()
		}
	}()
	switch why {
	case wakeIdle:
		s.c.log.Debug("idle client connection closed")
		s.closeGracefully(false)
		s.c.finish()
		return
	case wakeUpstream:
		// A TLS session ticket, say, leaves the connection as it was;
		// a FIN or stray bytes end it, as the server meant.
		if s.up.idleCheck(s.upPoll) {
			if !s.park() {
				s.c.finish()
			}
			return
		}
		s.closeGracefully(false)
		s.c.finish()
		return
	}
	if !s.serve() {
		s.c.finish()
	}
}

// headerLimit fails reads past n while headers are read (n < 0: no
// limit), and remembers a failing read: the connection, not the request,
// is then at fault.
type headerLimit struct {
	r   io.Reader
	n   int64
	hit bool
	err error
}

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.n == 0 {
		l.hit = true
		return 0, io.EOF
	}
	if l.n > 0 && int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	if l.n > 0 {
		l.n -= int64(n)
	}
	if err != nil {
		l.err = err
	}
	return n, err
}

func (s *h1Server) readRequest() (*http.Request, error) {
	br := s.reader()
	if s.poll == nil {
		// Blocking: the idle timeout bounds the wait for the first byte.
		s.conn.SetReadDeadline(time.Now().Add(s.c.p.o.IdleTimeout))
		if _, err := br.Peek(1); err != nil {
			return nil, &connError{err}
		}
	}
	s.conn.SetReadDeadline(time.Now().Add(s.c.p.o.HeaderTimeout))
	s.lim.n, s.lim.hit, s.lim.err = maxHeaderBytes+4096, false, nil
	for {
		b, err := br.Peek(1)
		if err != nil || b[0] != '\r' && b[0] != '\n' {
			break
		}
		br.Discard(1)
	}
	req, err := http.ReadRequest(br)
	s.lim.n = -1
	s.conn.SetReadDeadline(time.Time{})
	switch {
	case err == nil:
	case s.lim.hit:
		err = errHeaderTooLarge
	case s.lim.err != nil:
		err = &connError{s.lim.err}
	}
	return req, err
}

var errHeaderTooLarge = errors.New("request headers too large")

// serverMarker is the http.ServerContextKey value of every request: no
// net/http server runs, but handlers look for one.
var serverMarker = &http.Server{}

// connError: reading failed (the client left, timed out, or broke TLS),
// not parsing.
type connError struct{ err error }

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// badRequest answers a request that could not be parsed. A connection
// that failed (a client that left, was idle too long or hung up
// mid-request) gets no answer, as with net/http.
func (s *h1Server) badRequest(err error) {
	var ce *connError
	if errors.As(err, &ce) || errors.Is(err, io.EOF) {
		return
	}
	code, msg := http.StatusBadRequest, "bad request"
	switch {
	case errors.Is(err, errHeaderTooLarge):
		code, msg = http.StatusRequestHeaderFieldsTooLarge, "request headers too large"
	case strings.Contains(err.Error(), "unsupported transfer encoding"),
		strings.Contains(err.Error(), "too many transfer encodings"):
		code, msg = http.StatusNotImplemented, "unsupported transfer encoding"
	}
	s.c.log.Debug("bad request", "err", err)
	s.c.p.m.requests.WithLabelValues("http/1.1", strconv.Itoa(code/100)+"xx").Inc()
	s.rawError(code, msg)
	s.closeGracefully(true)
}

// rawError answers with a short plain-text error and no keep-alive.
func (s *h1Server) rawError(code int, msg string) {
	bw := s.writer()
	bw.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(msg)+len("flowdog: \n")) + "\r\n\r\n" +
		"flowdog: " + msg + "\n")
	bw.Flush()
}

// closeGracefully sends the client a FIN (after TLS's close_notify) and,
// when it may still be sending (unread input), reads and drops what comes
// for a moment, so that closing does not reset the connection and lose
// the response.
func (s *h1Server) closeGracefully(linger bool) {
	if tc, ok := unwrapTLS(s.conn); ok {
		tc.SetWriteDeadline(time.Now().Add(lingerTime))
		tc.CloseWrite()
	}
	raw := s.c.client
	closeWrite(raw.Conn)
	if linger {
		raw.Conn.SetReadDeadline(time.Now().Add(lingerTime))
		io.CopyN(io.Discard, raw.Conn, maxDrain)
	}
}

// checkRequest applies net/http's server-side checks to a parsed request.
func checkRequest(req *http.Request) (int, string) {
	if req.ProtoMajor != 1 {
		return http.StatusHTTPVersionNotSupported, "unsupported protocol version"
	}
	// http.ReadRequest moved the Host header to req.Host (and refused
	// several).
	// http.ReadRequest moved the Host header to req.Host (and refused
	// several). net/http's server refuses HTTP/1.1 without one; so does
	// flowdog, rather than make one up for the server.
	switch {
	case req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != http.MethodConnect:
		return http.StatusBadRequest, "missing required Host header"
	case req.Host != "" && !httpguts.ValidHostHeader(req.Host):
		return http.StatusBadRequest, "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return http.StatusBadRequest, "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return http.StatusBadRequest, "invalid header value"
			}
		}
	}
	for _, e := range req.Header["Expect"] {
		if !strings.EqualFold(strings.TrimSpace(e), "100-continue") {
			return http.StatusExpectationFailed, "unsupported Expect header"
		}
	}
	return 0, ""
}

// serveRequest runs the handler for req and reports whether the
// connection stays open for another request.
func (s *h1Server) serveRequest(req *http.Request) (keep bool) {
	if code, msg := checkRequest(req); code != 0 {
		s.c.log.Debug("bad request", "err", msg)
		s.c.p.m.requests.WithLabelValues("http/1.1", strconv.Itoa(code/100)+"xx").Inc()
		s.rawError(code, msg)
		s.closeGracefully(true)
		return false
	}
	req.RemoteAddr = s.c.info.Client.String()
	req.TLS = s.tls
	ctx, cancel := context.WithCancel(s.c.ctx)
	defer cancel()
	// As net/http's server: with ServerContextKey, httputil.ReverseProxy
	// aborts (http.ErrAbortHandler) a response whose upstream body fails,
	// so that the client sees it cut short rather than complete.
	ctx = context.WithValue(ctx, http.ServerContextKey, serverMarker)
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, net.Addr(net.TCPAddrFromAddrPort(s.c.info.Server)))
	req = req.WithContext(ctx)

	var body *reqBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &reqBody{s: s, rc: req.Body}
		body.expect.Store(req.ProtoAtLeast(1, 1) && strings.EqualFold(req.Header.Get("Expect"), "100-continue"))
		req.Body = body
	}
	w := &h1Response{s: s, req: req, header: http.Header{}, body: body}
	s.writer() // before anything may write: a 100 Continue, from the body's reader
	s.wmu.Lock()
	s.sentHeader, s.sentContinue = false, false
	s.wmu.Unlock()
	s.watchMu.Lock()
	s.inHandler, s.cancelReq = true, cancel
	s.watchMu.Unlock()
	if body == nil {
		s.watchClient()
	}

	aborted := s.runHandler(w, req)
	s.endWatch()
	if w.hijacked {
		// The handler owned the connection (an upgrade) and is done with it.
		s.br, s.bw = nil, nil
		return false
	}
	if aborted {
		return false // cut short, as the handler asked: the client sees a truncated response
	}
	keep = w.finish()
	if body != nil && !body.ended() {
		// Unread body: drop a little of it to keep the connection, as
		// net/http does; beyond that, close.
		if keep {
			s.conn.SetReadDeadline(time.Now().Add(s.c.p.o.HeaderTimeout))
			keep = body.drain(maxDrain)
			s.conn.SetReadDeadline(time.Time{})
		}
		if !keep {
			s.closeGracefully(true)
			return false
		}
	}
	if !keep {
		s.closeGracefully(false)
	}
	return keep
}

// runHandler runs the handler; it reports a panic (the response is cut
// short; http.ErrAbortHandler is the quiet way to ask for that).
func (s *h1Server) runHandler(w *h1Response, req *http.Request) (aborted bool) {
	defer func() {
		if r := recover(); r != nil {
			aborted = true
			if r != http.ErrAbortHandler {
				s.c.p.m.panics.Inc()
				s.c.log.Error("HTTP handler panic; connection closed", "panic", r)
			}
		}
	}()
	s.h.ServeHTTP(w, req)
	return false
}

// watchClient notices, while a request waits for its response, that the
// client left: the request's context is cancelled, which ends the
// upstream exchange too. It starts once the request body is read (before,
// reading the body notices), as net/http's background read does.
func (s *h1Server) watchClient() {
	if s.poll == nil {
		return
	}
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if s.inHandler && s.watchStop == nil {
		s.watchLocked()
	}
}

func (s *h1Server) watchLocked() {
	gen := s.watchGen
	s.watchStop = s.poll.p.OnReadable(func() { s.checkClient(gen) })
}

func (s *h1Server) checkClient(gen uint64) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if gen != s.watchGen || !s.inHandler {
		return // a callback that came late, for an earlier request
	}
	s.watchStop = nil
	// The handler is done with the request body: the reader is free.
	err := s.poll.tryRead(func() error { _, err := s.br.Peek(1); return err })
	switch {
	case err == nil:
		// The next request, pipelined: served after this one.
	case isTimeout(err):
		// Part of a TLS record: look again when more comes.
		s.watchLocked()
	default:
		s.c.log.Debug("client left before its response", "err", err)
		s.cancelReq()
	}
}

func (s *h1Server) endWatch() {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	s.inHandler = false
	s.watchGen++
	if s.watchStop != nil {
		s.watchStop()
		s.watchStop = nil
	}
}

func (s *h1Server) continueSent() bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.sentContinue
}

// writeContinue sends a 100 Continue unless the final response went first.
func (s *h1Server) writeContinue() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.sentHeader || s.sentContinue {
		return nil
	}
	s.sentContinue = true
	bw := s.bw
	bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	return bw.Flush()
}

// reqBody is a request body that the handler and the connection share:
// the handler reads it (a 100 Continue goes out on the first read when the
// client asked for one); after the handler, the connection drops what is
// left to read the next request. Reads are serialised, so that a writer
// still sending the body upstream when the handler returns never races the
// next request's reads.
type reqBody struct {
	s      *h1Server
	rc     io.ReadCloser
	mu     sync.Mutex  // held across reads of rc
	expect atomic.Bool // a 100 Continue is owed on the first read
	eof    atomic.Bool
	closed bool
}

func (b *reqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return 0, http.ErrBodyReadAfterClose
	case b.eof.Load():
		return 0, io.EOF
	}
	if b.expect.Swap(false) {
		if err := b.s.writeContinue(); err != nil {
			return 0, err
		}
	}
	n, err := b.rc.Read(p)
	if errors.Is(err, io.EOF) {
		// Watch first: once eof is set, the connection may move on to
		// the next request, and no watch of this one may start then.
		b.s.watchClient()
		b.eof.Store(true)
	}
	return n, err
}

// Close stops the handler's reads; what is left stays for drain.
func (b *reqBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// ended reports whether the body was read to its end; it never waits for
// a read in progress.
func (b *reqBody) ended() bool { return b.eof.Load() }

// owesContinue reports whether the client still waits for a 100 Continue
// before sending the body.
func (b *reqBody) owesContinue() bool {
	return b.expect.Load() && !b.eof.Load() && !b.s.continueSent()
}

// drain reads and drops up to max bytes of what is left of the body and
// reports whether the body ended. A client still waiting for a 100
// Continue sends no body: there is nothing to drain, and the connection
// cannot be kept. The caller bounds the wait with a read deadline (which
// also ends a read in progress elsewhere).
func (b *reqBody) drain(max int64) bool {
	if b.owesContinue() {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.eof.Load() {
		return true
	}
	_, err := io.CopyN(io.Discard, b.rc, max+1)
	b.eof.Store(errors.Is(err, io.EOF))
	return b.eof.Load()
}

// h1Response is the http.ResponseWriter of one request. The header goes
// out with the first body bytes, a Flush or the end of the handler, so
// that a response the handler ends without a body gets a Content-Length.
type h1Response struct {
	s      *h1Server
	req    *http.Request
	body   *reqBody
	header http.Header

	status     int // set by WriteHeader; 0 until then
	committed  bool
	hijacked   bool
	chunked    bool
	noBody     bool
	length     int64 // declared Content-Length; -1: none
	written    int64
	closeAfter bool
	trailers   []string // declared, canonical
	err        error    // the first write error: the client is gone
}

var (
	_ http.ResponseWriter = (*h1Response)(nil)
	_ http.Flusher        = (*h1Response)(nil)
	_ http.Hijacker       = (*h1Response)(nil)
)

func (w *h1Response) Header() http.Header { return w.header }

func (w *h1Response) WriteHeader(code int) {
	if w.hijacked || w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic("flowdog: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.informational(code)
		return
	}
	w.status = code
}

// informational sends a 1xx (103 Early Hints, say) at once, with the
// headers set so far; the handler clears them afterwards, as
// httputil.ReverseProxy does.
func (w *h1Response) informational(code int) {
	s := w.s
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.sentHeader || code == http.StatusContinue && s.sentContinue {
		return
	}
	if code == http.StatusContinue {
		s.sentContinue = true
	}
	bw := s.writer()
	writeStatusLine(bw, w.req.ProtoAtLeast(1, 1), code)
	w.header.WriteSubset(bw, noBodyHeaders)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil && w.err == nil {
		w.err = err
	}
}

// noBodyHeaders say nothing in a 1xx.
var noBodyHeaders = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func writeStatusLine(bw *bufio.Writer, is11 bool, code int) {
	if is11 {
		bw.WriteString("HTTP/1.1 ")
	} else {
		bw.WriteString("HTTP/1.0 ")
	}
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	bw.WriteByte(' ')
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	bw.WriteString(text)
	bw.WriteString("\r\n")
}

// commit writes the status line and the header. done: the handler has
// returned, so an unknown length is the length written (none).
func (w *h1Response) commit(done bool) {
	if w.committed {
		return
	}
	w.committed = true
	if w.status == 0 {
		w.status = http.StatusOK
	}
	s, h, req := w.s, w.header, w.req
	code := w.status
	w.noBody = req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	w.length = -1
	if cl := h.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(strings.TrimSpace(cl), 10, 64); err == nil && n >= 0 {
			w.length = n
		} else {
			s.c.log.Debug("handler set an invalid Content-Length; dropped", "value", cl)
			h.Del("Content-Length")
		}
	}
	delete(h, "Transfer-Encoding") // the framing is this writer's to choose
	if done && w.length < 0 && !w.noBody && code != http.StatusSwitchingProtocols {
		w.length = 0
		h.Set("Content-Length", "0")
	}
	is11 := req.ProtoAtLeast(1, 1)
	switch {
	case w.noBody || w.length >= 0:
	case code == http.StatusSwitchingProtocols:
		w.closeAfter = true
	case is11:
		w.chunked = true
		h.Set("Transfer-Encoding", "chunked")
	default:
		w.closeAfter = true // an HTTP/1.0 client: the end of the body is the end of the connection
	}
	if w.chunked {
		for _, v := range h["Trailer"] {
			for _, k := range strings.Split(v, ",") {
				k = http.CanonicalHeaderKey(strings.TrimSpace(k))
				switch k {
				case "", "Transfer-Encoding", "Trailer", "Content-Length":
				default:
					w.trailers = append(w.trailers, k)
				}
			}
		}
	} else {
		delete(h, "Trailer")
	}
	if w.body != nil && w.body.owesContinue() {
		// The client waits for a 100 that will not come now: it will not
		// send the body, and the connection cannot be reused.
		w.closeAfter = true
	}
	if req.Close || s.closing.Load() || httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	keepAlive10 := !is11 && httpguts.HeaderValuesContainsToken(req.Header["Connection"], "keep-alive")
	switch {
	case w.closeAfter || !is11 && !keepAlive10:
		w.closeAfter = true
		h.Set("Connection", "close")
	case keepAlive10:
		h.Set("Connection", "keep-alive")
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.sentHeader = true
	bw := s.writer()
	writeStatusLine(bw, is11, code)
	if len(w.trailers) > 0 {
		// Declared trailers go at the end, not in the header.
		exclude := make(map[string]bool, len(w.trailers))
		for _, k := range w.trailers {
			exclude[k] = true
		}
		h.WriteSubset(bw, exclude)
	} else {
		h.Write(bw)
	}
	bw.WriteString("\r\n")
}

func (w *h1Response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	w.commit(false)
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		n, _ := w.writeBody(p[:w.length-w.written])
		w.closeAfter = true
		return n, http.ErrContentLength
	}
	return w.writeBody(p)
}

func (w *h1Response) writeBody(p []byte) (int, error) {
	bw := w.s.bw
	if w.chunked && len(p) > 0 {
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunked && err == nil && len(p) > 0 {
		_, err = bw.WriteString("\r\n")
	}
	w.written += int64(n)
	if err != nil {
		w.err, w.closeAfter = err, true
	}
	return n, err
}

func (w *h1Response) Flush() { w.FlushError() }

// FlushError is what http.ResponseController calls.
func (w *h1Response) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	w.commit(false)
	if w.err != nil {
		return w.err
	}
	if err := w.s.bw.Flush(); err != nil {
		w.err, w.closeAfter = err, true
		return err
	}
	return nil
}

// Hijack hands the connection to the handler (an upgrade); the server is
// done with it once the handler returns.
func (w *h1Response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	s := w.s
	s.endWatch() // the watch reads the connection; the handler does now
	s.wmu.Lock()
	s.sentHeader = true // no automatic 100 Continue into the handler's stream
	s.wmu.Unlock()
	if w.committed {
		if err := s.bw.Flush(); err != nil {
			return nil, nil, err
		}
	}
	w.hijacked = true
	return s.conn, bufio.NewReadWriter(s.reader(), s.writer()), nil
}

// EnableFullDuplex is what http.ResponseController calls: this server
// always lets a handler read the request while it writes the response.
func (w *h1Response) EnableFullDuplex() error { return nil }

func (w *h1Response) SetReadDeadline(t time.Time) error  { return w.s.conn.SetReadDeadline(t) }
func (w *h1Response) SetWriteDeadline(t time.Time) error { return w.s.conn.SetWriteDeadline(t) }

// finish ends the response after the handler and reports whether the
// connection can carry another request.
func (w *h1Response) finish() bool {
	w.commit(true)
	bw := w.s.bw
	switch {
	case w.err != nil:
	case w.chunked:
		bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				writeHeaderLine(bw, k, v)
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vv {
					writeHeaderLine(bw, http.CanonicalHeaderKey(name), v)
				}
			}
		}
		bw.WriteString("\r\n")
	case w.length >= 0 && w.written < w.length && !w.noBody:
		// Shorter than declared: only closing tells the client.
		w.closeAfter = true
	}
	if err := bw.Flush(); err != nil && w.err == nil {
		w.err = err
	}
	return w.err == nil && !w.closeAfter && !w.s.closing.Load()
}

// newlines become spaces in header values, as http.Header.Write does.
var newlines = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ")

// writeHeaderLine writes one valid header field (a trailer); invalid ones
// are dropped, as http.Header.Write drops them.
func writeHeaderLine(bw *bufio.Writer, k, v string) {
	if !httpguts.ValidHeaderFieldName(k) {
		return
	}
	v = newlines.Replace(v)
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(strings.TrimSpace(v))
	bw.WriteString("\r\n")
}
