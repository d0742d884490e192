package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Server serves HTTP/2 on the client leg: each stream's request runs
// the handler on a goroutine of its own, and the frame reader parks
// between frames (h2Conn).
type h2Server struct {
	h2Conn
	pc   *conn
	h    http.Handler
	ctx  context.Context
	tls  *tls.ConnectionState
	addr net.Addr
	// With an HTTP/1.1 upstream: watched while no stream is open.
	up     *h1Upstream
	upPoll *pollConn
	upStop func() bool // under mu

	handlers int         // running, under mu
	work     chan func() // to a worker waiting for its next stream
	queued   []func()    // handlers waiting for one of those to end
	setupErr error
}

// watchUpstream makes the client's connection end (GOAWAY) when the
// HTTP/1.1 server closes, or speaks out of turn, while no request is out,
// as on the HTTP/1.1 leg: without it the client's next request would get
// a 502. The watch is a readiness callback: no goroutine waits.
func (s *h2Server) watchUpstream(up *h1Upstream, pc *pollConn) {
	s.up, s.upPoll = up, pc
	s.mu.Lock()
	s.armUpWatchLocked()
	s.mu.Unlock()
}

func (s *h2Server) armUpWatchLocked() {
	if s.up == nil || s.upStop != nil || s.err != nil || len(s.streams) > 0 {
		return
	}
	s.upStop = s.upPoll.p.OnReadable(s.upstreamReadable)
}

func (s *h2Server) upstreamReadable() {
	s.mu.Lock()
	s.upStop = nil
	busy := len(s.streams) > 0
	s.mu.Unlock()
	if busy {
		return // a request's response reader sees it; the last stream re-arms
	}
	if s.up.idleCheck(s.upPoll) {
		s.mu.Lock()
		s.armUpWatchLocked()
		s.mu.Unlock()
	}
	// Otherwise idleCheck ended the upstream, and with it this
	// connection (shutdown).
}

func newH2Server(pc *conn, client net.Conn, h http.Handler) *h2Server {
	s := &h2Server{pc: pc, h: h, ctx: pc.ctx}
	s.role = s
	s.server = true
	s.conn = client
	s.log = pc.log
	s.idleTimeout = pc.p.o.IdleTimeout
	if pc.pollClient != nil && pc.info.Detach != nil {
		s.poll = pc.pollClient
		s.detach = pc.detach
		s.onPark = func(parked bool) {
			if parked {
				pc.p.m.parked.Inc()
			} else {
				pc.p.m.parked.Dec()
			}
		}
	}
	if tc, ok := unwrapTLS(client); ok {
		cs := tc.ConnectionState()
		s.tls = &cs
	}
	s.addr = net.TCPAddrFromAddrPort(pc.info.Server)
	s.onPanic = pc.http2Panic
	s.work = make(chan func())
	s.init()
	// SETTINGS first, before anything (a GOAWAY from shutdown) can be
	// written: the server's preface (RFC 9113, 3.4).
	s.setupErr = s.writeSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams})
	return s
}

var errBadPreface = errors.New("http2: bad client preface")

// serve reads the client's preface and serves frames until the connection
// ends or parks (then it lives on detached).
func (s *h2Server) serve() {
	if s.setupErr != nil {
		return
	}
	s.conn.SetReadDeadline(time.Now().Add(s.pc.p.o.HeaderTimeout))
	rf := s.reader()
	var pre [len(h2Preface)]byte
	if _, err := io.ReadFull(s.br, pre[:]); err != nil || string(pre[:]) != h2Preface {
		s.fail(errBadPreface)
		return
	}
	f, err := rf.fr.ReadFrame()
	s.conn.SetReadDeadline(time.Time{})
	if err != nil {
		s.readError(err)
		return
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		s.goAway(http2.ErrCodeProtocol, errors.New("http2: first frame is not SETTINGS"))
		return
	}
	if err := s.handle(sf); err != nil && !s.readError(err) {
		return
	}
	if s.poll == nil {
		s.mu.Lock()
		s.armIdleLocked() // idle until the first stream
		s.mu.Unlock()
	}
	s.run()
}

// shutdown says GOAWAY: streams open finish, then the connection closes
// (the upstream is gone, so new requests must go elsewhere).
func (s *h2Server) shutdown() {
	s.mu.Lock()
	if s.goAwaySent || s.err != nil {
		s.mu.Unlock()
		return
	}
	s.goAwaySent = true
	last := s.lastGood
	done := len(s.streams) == 0
	s.mu.Unlock()
	s.write(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	if done {
		s.closeSoon(errUpstreamGone)
	}
}

// h2GoAwayGrace is how long a connection that said GOAWAY, with no
// stream left, goes on reading before it closes: frames the client sent
// before it saw the GOAWAY (a PING, SETTINGS, WINDOW_UPDATE) are still
// answered, and closing with them unread does not reset the GOAWAY away
// (x/net's server waits a second too).
const h2GoAwayGrace = time.Second

// closeSoon ends the connection after h2GoAwayGrace, or sooner if the
// client closes it (the reader then fails it).
func (s *h2Server) closeSoon(why error) {
	time.AfterFunc(h2GoAwayGrace, func() { s.fail(why) })
}

func (s *h2Server) idleStream(id uint32) bool { return id > s.lastGood }

func (s *h2Server) ended(error) { s.pc.finish() }

func (s *h2Server) peerGoAway() {
	s.mu.Lock()
	done := s.doneLocked()
	s.mu.Unlock()
	if done {
		s.fail(errors.New("http2: client said GOAWAY"))
	}
}

func (s *h2Server) streamClosed(*h2Stream) {
	if len(s.streams) > 0 {
		return
	}
	if s.doneLocked() {
		s.closeSoon(errors.New("http2: connection done after GOAWAY"))
		return
	}
	s.armUpWatchLocked()
}

func (s *h2Server) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 != 1 {
		return h2ConnError(http2.ErrCodeProtocol, "client stream %d is even", id)
	}
	s.mu.Lock()
	if st := s.streams[id]; st != nil {
		if st.recvDone && st.sendDone && !st.reset {
			// Both END_STREAMs are sent: the stream is closed, though
			// not yet forgotten (its last frame is being written).
			s.mu.Unlock()
			return h2ConnError(http2.ErrCodeStreamClosed, "HEADERS on closed stream %d", id)
		}
		defer s.mu.Unlock()
		return s.trailersLocked(st, f)
	}
	if id <= s.lastGood {
		reset := s.wasReset(id)
		s.mu.Unlock()
		if reset {
			return nil // trailers in flight after flowdog's RST_STREAM (RFC 9113, 5.1)
		}
		return h2ConnError(http2.ErrCodeStreamClosed, "HEADERS on closed stream %d", id)
	}
	s.lastGood = id
	if s.goAwaySent {
		s.noteResetLocked(id) // its DATA in flight is dropped too
		s.mu.Unlock()
		return nil // after GOAWAY new streams are ignored; the client retries them
	}
	if s.openLocked() >= h2MaxStreams {
		s.mu.Unlock()
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}
	}
	st := s.newStreamLocked(id)
	s.mu.Unlock()
	req, cancel, err := s.newRequest(st, f)
	if err != nil {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: err}
	}
	var h http.Handler = s.h
	if f.Truncated {
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "431 Request Header Fields Too Large", http.StatusRequestHeaderFieldsTooLarge)
		})
	}
	return s.startHandler(func() { s.runHandler(st, req, h, cancel) })
}

// startHandler runs a stream's handler, or queues it while h2MaxStreams
// run: a stream the client resets at once leaves the map, but its handler
// runs on, so streams alone do not bound handlers (CVE-2023-44487, "rapid
// reset"). A client that queues more than a few rounds is told to calm
// down, as x/net's server does.
func (s *h2Server) startHandler(run func()) error {
	s.mu.Lock()
	if s.handlers >= h2MaxStreams {
		defer s.mu.Unlock()
		if len(s.queued) >= 4*h2MaxStreams {
			return h2ConnError(http2.ErrCodeEnhanceYourCalm, "%d handlers queued", len(s.queued))
		}
		s.queued = append(s.queued, run)
		return nil
	}
	s.handlers++
	s.mu.Unlock()
	select {
	case s.work <- run: // a worker that just finished a stream takes it
	default:
		go s.worker(run)
	}
	return nil
}

// worker runs handlers: run, then the queued ones, then whatever stream
// comes within parkAfter. A client's next request usually comes that
// soon, and a worker whose stack gVisor's send path has already grown
// serves it (a new goroutine per stream spent 8% of the CPU growing
// stacks, as the HTTP/1.1 leg's did before its grace).
func (s *h2Server) worker(run func()) {
	var t *time.Timer
	for run != nil {
		run()
		if run = s.handlerDone(); run != nil {
			continue
		}
		if t == nil {
			t = time.NewTimer(parkAfter)
		} else {
			t.Reset(parkAfter)
		}
		select {
		case run = <-s.work:
			t.Stop()
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
		}
	}
}

// handlerDone returns the next queued handler, if any, to run in the
// place of the one that ended; else that handler no longer counts.
func (s *h2Server) handlerDone() func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		s.queued = nil // the connection is gone: nobody waits for their answers
	}
	if len(s.queued) == 0 {
		s.handlers--
		return nil
	}
	next := s.queued[0]
	s.queued[0] = nil
	s.queued = s.queued[1:]
	if len(s.queued) == 0 {
		s.queued = nil
	}
	return next
}

// trailersLocked takes a second header block: the request's trailers.
func (s *h2Server) trailersLocked(st *h2Stream, f *http2.MetaHeadersFrame) error {
	if st.recvDone {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeStreamClosed}
	}
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}
	}
	if st.wantLen >= 0 && st.got != st.wantLen {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}
	}
	t, err := trailerFields(f)
	if err != nil {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol, Cause: err}
	}
	st.trailers = t
	st.recvEnd(nil)
	s.cond.Broadcast()
	return nil
}

func trailerFields(f *http2.MetaHeadersFrame) (http.Header, error) {
	t := make(http.Header)
	for _, hf := range f.RegularFields() {
		k := http.CanonicalHeaderKey(hf.Name)
		if !httpguts.ValidTrailerHeader(k) {
			return nil, fmt.Errorf("invalid trailer %q", k)
		}
		t[k] = append(t[k], hf.Value)
	}
	return t, nil
}

// connHeaders are HTTP/1 connection-specific fields, not allowed in
// HTTP/2 (RFC 9113, 8.2.2).
func connSpecific(name string) bool {
	switch name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// newRequest builds the stream's request, as x/net's server does.
func (s *h2Server) newRequest(st *h2Stream, f *http2.MetaHeadersFrame) (*http.Request, context.CancelFunc, error) {
	method, path := f.PseudoValue("method"), f.PseudoValue("path")
	scheme, authority := f.PseudoValue("scheme"), f.PseudoValue("authority")
	if f.PseudoValue("protocol") != "" {
		return nil, nil, errors.New(":protocol without extended CONNECT")
	}
	if method == http.MethodConnect {
		if path != "" || scheme != "" || authority == "" {
			return nil, nil, errors.New("malformed CONNECT")
		}
	} else if method == "" || path == "" || scheme == "" {
		return nil, nil, errors.New("missing pseudo-header")
	}
	header := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		if connSpecific(hf.Name) || hf.Name == "te" && hf.Value != "trailers" {
			return nil, nil, fmt.Errorf("connection-specific header %q", hf.Name)
		}
		k := http.CanonicalHeaderKey(hf.Name)
		header[k] = append(header[k], hf.Value)
	}
	if c := header["Cookie"]; len(c) > 1 {
		header["Cookie"] = []string{strings.Join(c, "; ")}
	}
	end := f.StreamEnded()
	var cl int64 = -1
	if vv := header["Content-Length"]; len(vv) > 0 {
		for _, v := range vv[1:] {
			if v != vv[0] {
				return nil, nil, errors.New("conflicting content-length")
			}
		}
		n, err := strconv.ParseUint(vv[0], 10, 63)
		if err != nil {
			return nil, nil, errors.New("invalid content-length")
		}
		cl = int64(n)
		if end && cl != 0 {
			return nil, nil, errors.New("content-length without body")
		}
	}
	var u *url.URL
	var err error
	switch {
	case method == http.MethodConnect:
		u = &url.URL{Host: authority}
	case path == "*" && method == http.MethodOptions:
		u = &url.URL{Path: "*"}
	default:
		if u, err = url.ParseRequestURI(path); err != nil {
			return nil, nil, fmt.Errorf("invalid :path: %w", err)
		}
	}
	if method != http.MethodConnect && path != "*" && !strings.HasPrefix(path, "/") {
		return nil, nil, fmt.Errorf("invalid :path %q", path) // origin-form only (RFC 9113, 8.3.1)
	}
	if hosts := header["Host"]; len(hosts) > 1 || len(hosts) == 1 && authority != "" && hosts[0] != authority {
		// Which one the upstream, or an interceptor's policy, would take
		// is anybody's guess (RFC 9113, 8.3.1): refused, as x/net does.
		return nil, nil, errors.New("Host differs from :authority")
	}
	if authority == "" {
		authority = header.Get("Host")
	}
	if authority != "" && !httpguts.ValidHostHeader(authority) {
		return nil, nil, fmt.Errorf("invalid authority %q", authority)
	}
	delete(header, "Host")
	var trailer http.Header
	for _, v := range header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if k == "" || !httpguts.ValidTrailerHeader(k) {
				continue
			}
			if trailer == nil {
				trailer = make(http.Header)
			}
			trailer[k] = nil
		}
	}
	delete(header, "Trailer")

	ctx, cancel := context.WithCancel(s.ctx)
	ctx = context.WithValue(ctx, http.ServerContextKey, serverMarker)
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, s.addr)
	req := (&http.Request{
		Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: header, Host: authority, RequestURI: path, TLS: s.tls,
		RemoteAddr: s.pc.info.Client.String(), Trailer: trailer,
	}).WithContext(ctx)
	s.mu.Lock()
	st.wantLen = cl
	st.onEnd = func(error) { cancel() } // a reset stream ends its request
	if end {
		st.recvEnd(nil)
	}
	s.mu.Unlock()
	if end {
		req.Body, req.ContentLength = http.NoBody, 0
		return req, cancel, nil
	}
	req.ContentLength = cl
	b := &h2Body{st: st, trailer: &req.Trailer}
	req.Body = b
	return req, cancel, nil
}

// runHandler serves one stream's request and ends the stream.
func (s *h2Server) runHandler(st *h2Stream, req *http.Request, h http.Handler, cancel context.CancelFunc) {
	w := &h2Response{s: s, st: st, req: req, header: make(http.Header)}
	if b, ok := req.Body.(*h2Body); ok && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		b.onRead = w.sendContinue
	}
	defer func() {
		// Whatever happened below, the goroutine ends here: a panic in
		// finishing the stream resets it and nothing else.
		if r := recover(); r != nil {
			s.pc.p.m.panics.Inc()
			s.log.Error("proxy panic ending an HTTP/2 stream", "panic", r)
			s.cancelStream(st, http2.ErrCodeInternal, fmt.Errorf("ending stream: %v", r))
		}
		cancel()
		s.abandonBody(st)
	}()
	if !s.serveStream(w, req, h) {
		return
	}
	if err := w.finish(); err != nil {
		s.cancelStream(st, http2.ErrCodeInternal, err)
		return
	}
	s.mu.Lock()
	open := !st.recvDone
	s.mu.Unlock()
	if open {
		// Answered before the request body ended: the client may stop
		// sending it (RFC 9113, 8.1).
		s.cancelStream(st, http2.ErrCodeNo, errors.New("response complete"))
	}
}

// serveStream runs the handler; false: it panicked (the stream is reset).
func (s *h2Server) serveStream(w *h2Response, req *http.Request, h http.Handler) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			if r != http.ErrAbortHandler {
				s.pc.p.m.panics.Inc()
				s.log.Error("proxy panic serving an HTTP/2 stream", "panic", r)
			}
			s.cancelStream(w.st, http2.ErrCodeInternal, fmt.Errorf("handler: %v", r))
			ok = false
		}
	}()
	h.ServeHTTP(w, req)
	return true
}

// abandonBody drops what the handler left unread of the request body and
// gives its window back: unread, it would shrink the connection's window
// for good (a hook that answered a POST itself, an upstream that answered
// early).
func (s *h2Server) abandonBody(st *h2Stream) {
	s.mu.Lock()
	left := st.buf.Len()
	st.buf = bytes.Buffer{}
	if left > 0 && st.recvDone {
		st.recvErr = errors.New("http2: request body read after its handler returned")
	}
	s.mu.Unlock()
	if left > 0 {
		s.consumed(nil, left)
	}
}

// h2Response is a stream's http.ResponseWriter.
type h2Response struct {
	s      *h2Server
	st     *h2Stream
	req    *http.Request
	header http.Header

	mu          sync.Mutex // a 100 Continue (from the body's reader) vs the response header
	status      int        // 0 until WriteHeader
	sentHeader  bool
	sentCont    bool
	noBody      bool
	isHead      bool
	contentLen  int64
	written     int64
	declared    []string // trailer names announced in the header
	handlerDone bool
	refused     bool
}

func (w *h2Response) Header() http.Header { return w.header }

func (w *h2Response) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status != 0 {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		if code == http.StatusContinue && w.sentCont {
			return
		}
		w.sentCont = w.sentCont || code == http.StatusContinue
		w.st.writeHeaders(responseFields(code, w.header, nil), false)
		return
	}
	w.status = code
	w.isHead = w.req.Method == http.MethodHead
	w.noBody = w.isHead || !bodyAllowedForStatus(code)
	w.contentLen = -1
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.contentLen = n
		} else {
			w.header.Del("Content-Length")
		}
	}
}

func bodyAllowedForStatus(code int) bool {
	return !(code >= 100 && code < 200 || code == http.StatusNoContent || code == http.StatusNotModified)
}

// sendContinue answers Expect: 100-continue when the handler first reads
// the body (as net/http does), unless the response already began.
func (w *h2Response) sendContinue() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sentCont || w.sentHeader || w.status != 0 {
		return
	}
	w.sentCont = true
	w.st.writeHeaders([]hpack.HeaderField{{Name: ":status", Value: "100"}}, false)
}

// commitLocked sends the response header.
func (w *h2Response) commitLocked(end bool) error {
	return w.st.writeHeaders(w.headerFieldsLocked(), end)
}

// headerFieldsLocked marks the header sent and encodes it.
func (w *h2Response) headerFieldsLocked() []hpack.HeaderField {
	w.sentHeader = true
	for _, v := range w.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
				w.declared = append(w.declared, k)
			}
		}
	}
	if _, ok := w.header["Date"]; !ok {
		// As net/http and x/net do: a response flowdog makes itself (a
		// 502, a hook's answer) has one too; a proxied one keeps its own.
		w.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	return responseFields(w.status, w.header, nil)
}

func (w *h2Response) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody {
		if w.isHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.contentLen >= 0 && w.written+int64(len(p)) > w.contentLen {
		return 0, errors.New("http2: handler wrote more than the declared Content-Length")
	}
	w.mu.Lock()
	if !w.sentHeader {
		// The header and the first data go out in one write: one TLS
		// record and one segment fewer per response.
		fields := w.headerFieldsLocked() // a 100 Continue now is too late
		w.mu.Unlock()
		err := w.st.writeHeadersAndData(fields, p)
		if err != nil {
			return 0, err
		}
		w.written += int64(len(p))
		return len(p), nil
	}
	w.mu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	if err := w.st.writeData(p, false); err != nil {
		return 0, err
	}
	w.written += int64(len(p))
	return len(p), nil
}

func (w *h2Response) Flush() { w.FlushError() }

// FlushError sends the header if it was not sent; data is never held.
func (w *h2Response) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.sentHeader {
		return w.commitLocked(false)
	}
	return nil
}

// EnableFullDuplex: HTTP/2 is.
func (w *h2Response) EnableFullDuplex() error { return nil }

// finish ends the stream: the header if not sent, trailers if any, and
// END_STREAM.
func (w *h2Response) finish() error {
	if w.refused {
		return nil
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.contentLen > 0 && w.written < w.contentLen && !w.noBody {
		return fmt.Errorf("http2: handler wrote %d of %d declared bytes", w.written, w.contentLen)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.handlerDone = true
	var trailers []hpack.HeaderField
	if !w.sentHeader {
		if !w.hasTrailers() {
			return w.commitLocked(true)
		}
		if err := w.commitLocked(false); err != nil {
			return err
		}
	}
	trailers = w.trailerFields()
	if len(trailers) > 0 {
		return w.st.writeHeaders(trailers, true)
	}
	return w.st.writeData(nil, true)
}

func (w *h2Response) hasTrailers() bool {
	if len(w.header["Trailer"]) > 0 {
		return true
	}
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// trailerFields are the announced trailers and those set with
// http.TrailerPrefix.
func (w *h2Response) trailerFields() []hpack.HeaderField {
	var f []hpack.HeaderField
	add := func(k string, vv []string) {
		k = http.CanonicalHeaderKey(k)
		if !httpguts.ValidTrailerHeader(k) {
			return
		}
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				f = append(f, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
			}
		}
	}
	for _, k := range w.declared {
		add(k, w.header[k])
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			add(name, vv)
		}
	}
	return f
}

// responseFields encodes a status and header (fields that HTTP/2 does not
// allow are dropped) after the given pseudo-fields.
func responseFields(code int, h http.Header, f []hpack.HeaderField) []hpack.HeaderField {
	f = append(f, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)})
	return appendFields(f, h)
}

func appendFields(f []hpack.HeaderField, h http.Header) []hpack.HeaderField {
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		lk := strings.ToLower(k)
		if connSpecific(lk) || lk == "te" {
			continue
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				continue
			}
			f = append(f, hpack.HeaderField{Name: lk, Value: v, Sensitive: lk == "authorization" || lk == "cookie" || lk == "set-cookie"})
		}
	}
	return f
}

// openLocked counts the streams that count against MAX_CONCURRENT_STREAMS
// (c.mu held). A stream whose END_STREAM is being written is closed for the
// client as soon as the frame can reach it, before maybeCloseLocked forgets
// it: counting it would refuse the stream the client opens in its place.
func (s *h2Server) openLocked() int {
	n := 0
	for _, st := range s.streams {
		if !st.sendDone || !st.recvDone {
			n++
		}
	}
	return n
}

// refuse resets the stream with REFUSED_STREAM: the request was not
// processed and the client may retry it.
func (w *h2Response) refuse() {
	w.mu.Lock()
	w.refused = true
	w.mu.Unlock()
	w.s.cancelStream(w.st, http2.ErrCodeRefusedStream, errUpstreamGone)
}
