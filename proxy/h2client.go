package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Client sends requests as streams on the one HTTP/2 upstream
// connection. Its frame reader parks between frames as the client leg's
// does, so an idle upstream connection holds no goroutine either.
type h2Client struct {
	h2Conn
	timeout  time.Duration // response headers
	tls      *tls.ConnectionState
	nextID   uint32 // under wmu and mu
	deadOnce sync.Once
	onDead   func()
	reserved int // stream slots taken by requests about to open a stream; under mu
}

// newH2Client starts HTTP/2 on upstream; onDead runs once when it takes
// no more requests. poll, when set, lets the reader park.
func newH2Client(pc *conn, upstream net.Conn, poll *pollConn, onDead func()) (*h2Client, error) {
	cl := &h2Client{timeout: pc.p.o.ResponseHeaderTimeout, nextID: 1, onDead: onDead}
	cl.log = pc.log
	cl.onPanic = pc.http2Panic
	cl.role = cl
	cl.conn = upstream
	cl.poll = poll
	if tc, ok := unwrapTLS(upstream); ok {
		cs := tc.ConnectionState()
		cl.tls = &cs
	}
	cl.init()
	if _, err := io.WriteString(upstream, h2Preface); err != nil {
		return nil, fmt.Errorf("HTTP/2 upstream preface: %w", err)
	}
	if err := cl.writeSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0}); err != nil {
		return nil, fmt.Errorf("HTTP/2 upstream settings: %w", err)
	}
	go cl.wakeRead()
	return cl, nil
}

func (cl *h2Client) dead() {
	cl.deadOnce.Do(func() {
		if cl.onDead != nil {
			cl.onDead()
		}
	})
}

func (cl *h2Client) ended(error) { cl.dead() }
func (cl *h2Client) peerGoAway() { cl.dead() }

func (cl *h2Client) streamClosed(*h2Stream) {
	if cl.doneLocked() {
		go cl.fail(errUpstreamGone)
	}
}

// idleStream: streams flowdog has not opened yet, and any even one (the
// server may not push: ENABLE_PUSH is 0).
func (cl *h2Client) idleStream(id uint32) bool { return id%2 == 0 || id >= cl.nextID }

// RoundTrip sends req as a new stream and returns the response once its
// header came; the response-header timeout cancels the stream.
func (cl *h2Client) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	hasBody := req.Body != nil && req.Body != http.NoBody
	closeBody := func() {
		if req.Body != nil {
			req.Body.Close()
		}
	}
	fields, err := requestFields(req, hasBody)
	if err != nil {
		closeBody()
		return nil, err
	}
	// Wait for a stream slot.
	wake := context.AfterFunc(ctx, func() {
		cl.mu.Lock()
		cl.cond.Broadcast()
		cl.mu.Unlock()
	})
	cl.mu.Lock()
	for cl.err == nil && !cl.goAwayRecv && ctx.Err() == nil && uint32(len(cl.streams)+cl.reserved) >= cl.peer.maxStreams {
		cl.cond.Wait()
	}
	err = cl.err
	if err == nil && cl.goAwayRecv {
		err = errUpstreamGone
	}
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		cl.reserved++ // the slot is this request's until its stream exists
	}
	cl.mu.Unlock()
	wake()
	if err != nil {
		closeBody()
		return nil, fmt.Errorf("%w: %w", errUpstreamGone, err)
	}

	// Stream ids go out in order: allocated and sent under wmu.
	cl.wmu.Lock()
	cl.mu.Lock()
	cl.reserved--
	if cl.err != nil {
		cl.cond.Broadcast()
		cl.mu.Unlock()
		cl.wmu.Unlock()
		closeBody()
		return nil, fmt.Errorf("%w: %w", errUpstreamGone, cl.err)
	}
	id := cl.nextID
	cl.nextID += 2
	st := cl.newStreamLocked(id)
	st.isHead = req.Method == http.MethodHead
	if !hasBody {
		st.sendDone = true
	}
	// The gate exists before HEADERS go out: a server may answer 100 at
	// once, and the reader must find onContinue set.
	var gate *bodyGate
	if hasBody && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		gate = newBodyGate()
		st.onContinue = func() { gate.decide(true) }
	}
	cl.mu.Unlock()
	err = cl.writeLocked(func(fr *http2.Framer) error { return cl.writeHeadersLocked(fr, id, !hasBody, fields) })
	cl.wmu.Unlock()
	if err != nil {
		closeBody()
		return nil, err
	}

	stop := context.AfterFunc(ctx, func() {
		cl.cancelStream(st, http2.ErrCodeCancel, context.Cause(ctx))
	})
	timer := time.AfterFunc(cl.timeout, func() {
		cl.mu.Lock()
		waiting := st.resp == nil
		cl.mu.Unlock()
		if waiting {
			cl.cancelStream(st, http2.ErrCodeCancel, errHeaderTimeout)
		}
	})
	cl.mu.Lock()
	st.cleanup = func() { stop() }
	cl.mu.Unlock()

	if hasBody {
		if gate != nil {
			t := time.AfterFunc(expectContinueTimeout, func() { gate.decide(true) })
			defer t.Stop()
		}
		go cl.writeBody(st, req, gate)
	}

	trace := httptrace.ContextClientTrace(ctx)
	cl.mu.Lock()
	for {
		for st.resp == nil && !st.ended && !st.closed && len(st.info) == 0 {
			cl.cond.Wait()
		}
		if len(st.info) == 0 {
			break
		}
		infos := st.info
		st.info = nil
		cl.mu.Unlock()
		for _, in := range infos {
			if trace != nil && trace.Got1xxResponse != nil {
				trace.Got1xxResponse(in.code, textproto.MIMEHeader(in.h))
			}
		}
		cl.mu.Lock()
	}
	resp, rerr := st.resp, st.recvErr
	cl.mu.Unlock()
	timer.Stop()
	if gate != nil {
		gate.decide(false) // a final answer first: the body is not sent
	}
	if resp == nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if errors.Is(rerr, errHeaderTimeout) {
			return nil, errHeaderTimeout
		}
		if errors.Is(rerr, errRefused) {
			// Not processed (RFC 9113, 8.7): the client may retry it.
			return nil, fmt.Errorf("%w: %w", errUpstreamGone, rerr)
		}
		return nil, fmt.Errorf("upstream HTTP/2 stream: %w", rerr)
	}
	resp.Request = req
	return resp, nil
}

// writeBody streams the request body, then its trailers.
func (cl *h2Client) writeBody(st *h2Stream, req *http.Request, gate *bodyGate) {
	defer func() {
		if r := recover(); r != nil {
			cl.onPanic(r)
			cl.cancelStream(st, http2.ErrCodeInternal, fmt.Errorf("request body: %v", r))
		}
	}()
	defer req.Body.Close()
	if gate != nil {
		<-gate.done
		if !gate.send {
			// The server answered first: the body is not sent. The
			// stream is reset only once the answer is in, or it would
			// be lost with it (as x/net's Transport does).
			cl.mu.Lock()
			for !st.recvDone {
				cl.cond.Wait()
			}
			cl.mu.Unlock()
			cl.cancelStream(st, http2.ErrCodeCancel, errBodyRefused)
			return
		}
	}
	buf := copyBuffers.Get()
	defer copyBuffers.Put(buf)
	for {
		n, err := req.Body.Read(buf)
		if n > 0 {
			if werr := st.writeData(buf[:n], false); werr != nil {
				return // the stream or connection ended: its reader says why
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			cl.cancelStream(st, http2.ErrCodeCancel, fmt.Errorf("reading request body: %w", err))
			return
		}
	}
	if t := appendFields(nil, req.Trailer); len(t) > 0 {
		st.writeHeaders(t, true)
		return
	}
	st.writeData(nil, true)
}

// max1xx bounds the informational responses to one request (net/http's
// Transport's figure).
const max1xx = 5

// info1xx is an informational response waiting for RoundTrip to pass on.
type info1xx struct {
	code int
	h    http.Header
}

// requestFields encodes req's header block, as x/net's Transport does.
func requestFields(req *http.Request, hasBody bool) ([]hpack.HeaderField, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return nil, fmt.Errorf("invalid Host %q", host)
	}
	path := req.URL.RequestURI()
	if req.Method == http.MethodOptions && path == "*" || req.URL.Opaque != "" {
		path = req.URL.Opaque
		if path == "" {
			path = "*"
		}
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	scheme := req.URL.Scheme
	if scheme == "" {
		scheme = "https"
	}
	f := []hpack.HeaderField{
		{Name: ":method", Value: method},
		{Name: ":authority", Value: host},
		{Name: ":scheme", Value: scheme},
		{Name: ":path", Value: path},
	}
	h := req.Header
	for k, vv := range h {
		lk := strings.ToLower(k)
		switch lk {
		case "host", "content-length", "trailer":
			continue
		case "user-agent":
			// ReverseProxy sets an empty one to keep net/http's default
			// out; like net/http, send none then, and only the first.
			if len(vv) > 0 && vv[0] != "" {
				f = append(f, hpack.HeaderField{Name: lk, Value: vv[0]})
			}
			continue
		case "te":
			// Only "trailers" may pass (RFC 9113, 8.2.2).
			if !httpguts.HeaderValuesContainsToken(vv, "trailers") {
				continue
			}
			f = append(f, hpack.HeaderField{Name: "te", Value: "trailers"})
			continue
		}
		if connSpecific(lk) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("invalid value for header %q", k)
			}
			f = append(f, hpack.HeaderField{Name: lk, Value: v, Sensitive: lk == "authorization" || lk == "cookie"})
		}
	}
	if len(req.Trailer) > 0 {
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, strings.ToLower(k))
		}
		f = append(f, hpack.HeaderField{Name: "trailer", Value: strings.Join(keys, ",")})
	}
	if cl := req.ContentLength; cl > 0 || cl == 0 && !hasBody && sendsZeroLength(method) {
		f = append(f, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(cl, 10)})
	}
	return f, nil
}

// sendsZeroLength: methods whose empty body is worth saying (net/http's
// rule).
func sendsZeroLength(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		return true
	}
	return false
}

// headers takes a response header block (or trailers) for one of
// flowdog's streams.
func (cl *h2Client) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	cl.mu.Lock()
	defer cl.mu.Unlock()
	st := cl.streams[id]
	if st == nil {
		if cl.idleStream(id) {
			return h2ConnError(http2.ErrCodeProtocol, "HEADERS on idle stream %d", id)
		}
		return nil // a stream flowdog reset: its frames in flight are dropped
	}
	if f.Truncated {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: errors.New("response header list too large")}
	}
	if st.resp != nil {
		if st.recvDone {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		}
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		t, err := trailerFields(f)
		if err != nil {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: err}
		}
		st.trailers = t
		st.recvEnd(nil)
		cl.cond.Broadcast()
		return nil
	}
	status := f.PseudoValue("status")
	code, err := strconv.Atoi(status)
	if err != nil || len(status) != 3 || code < 100 {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: fmt.Errorf("bad :status %q", status)}
	}
	if code < 200 {
		if f.StreamEnded() {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		if code == http.StatusContinue {
			if st.onContinue != nil {
				st.onContinue()
			}
			return nil
		}
		// Others (103 Early Hints) go to RoundTrip's caller through
		// httptrace, as x/net's Transport does; net/http's limit.
		if st.infos++; st.infos > max1xx {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: errors.New("too many 1xx responses")}
		}
		h := make(http.Header, len(f.Fields))
		for _, hf := range f.RegularFields() {
			k := http.CanonicalHeaderKey(hf.Name)
			h[k] = append(h[k], hf.Value)
		}
		st.info = append(st.info, info1xx{code, h})
		cl.cond.Broadcast()
		return nil
	}
	header := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		k := http.CanonicalHeaderKey(hf.Name)
		header[k] = append(header[k], hf.Value)
	}
	resp := &http.Response{
		Status: status + " " + http.StatusText(code), StatusCode: code,
		Proto: "HTTP/2.0", ProtoMajor: 2, Header: header, TLS: cl.tls, ContentLength: -1,
	}
	for _, v := range header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
				if resp.Trailer == nil {
					resp.Trailer = make(http.Header)
				}
				resp.Trailer[k] = nil
			}
		}
	}
	delete(header, "Trailer")
	if v := header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			resp.ContentLength = n
		}
	}
	noBody := !bodyAllowedForStatus(code) || st.isHead
	if !noBody && resp.ContentLength >= 0 {
		st.wantLen = resp.ContentLength
	}
	if f.StreamEnded() {
		if !noBody && resp.ContentLength > 0 {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: errors.New("content-length without body")}
		}
		if resp.ContentLength < 0 && !st.isHead {
			resp.ContentLength = 0
		}
		resp.Body = http.NoBody
		st.resp = resp
		st.recvEnd(nil)
	} else {
		resp.Body = &h2Body{st: st, trailer: &resp.Trailer}
		st.resp = resp
	}
	cl.cond.Broadcast()
	return nil
}
