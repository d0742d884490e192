package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flowdog/flowdog/internal/testutil"
)

// The HTTP/2 legs (h2conn.go, h2server.go, h2client.go) against real
// peers: net/http's and x/net's HTTP/2 clients on the client leg, and
// httptest TLS servers speaking HTTP/2 or only HTTP/1.1 upstream, through
// the rig in both modes.

// h2Cases runs f in both rig modes, each against an HTTP/2 and an
// HTTP/1.1-only upstream; the client leg is HTTP/2 in all four.
func h2Cases(t *testing.T, f func(t *testing.T, blocking, upH2 bool)) {
	for _, m := range []struct {
		name     string
		blocking bool
	}{{"parking", false}, {"blocking", true}} {
		for _, u := range []struct {
			name string
			h2   bool
		}{{"h2-upstream", true}, {"h1-upstream", false}} {
			t.Run(m.name+"/"+u.name, func(t *testing.T) { f(t, m.blocking, u.h2) })
		}
	}
}

// upProto is the protocol the upstream is expected to see.
func upProto(upH2 bool) string {
	if upH2 {
		return "HTTP/2.0"
	}
	return "HTTP/1.1"
}

// h2Setup starts an HTTPS upstream serving h (HTTP/2 enabled, or
// HTTP/1.1 only) and a rig in front of it.
func h2Setup(t *testing.T, h http.Handler, upH2, blocking bool, o Options) (*rig, *httptest.Server) {
	t.Helper()
	srv, pool := tlsServer(t, h, upH2)
	o.UpstreamRoots = pool
	return newRigMode(t, srv.Listener.Addr().String(), o, blocking), srv
}

// h2Dial opens a TLS connection to the rig offering only h2 and checks
// that h2 was agreed.
func h2Dial(ctx context.Context, r *rig) (*tls.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.addr())
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, &tls.Config{RootCAs: r.rootPool(), ServerName: "example.com", NextProtos: []string{"h2"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tc.Close()
		return nil, fmt.Errorf("negotiated %q with the proxy, want h2", p)
	}
	return tc, nil
}

// h2HTTPClient is net/http's client speaking HTTP/2 to the rig (it offers
// only h2, so the client leg is HTTP/2 whatever the upstream speaks); dials
// counts its connections.
func h2HTTPClient(t *testing.T, r *rig) (cl *http.Client, dials *atomic.Int64) {
	dials = new(atomic.Int64)
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := h2Dial(ctx, r)
			if err == nil {
				dials.Add(1)
			}
			return c, err
		},
		ForceAttemptHTTP2:     true,
		ExpectContinueTimeout: 10 * time.Second, // longer than the test: the client waits for a 100
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}, dials
}

// xnetH2Client is x/net's HTTP/2 Transport to the rig: with more requests
// than a connection's streams allow, it opens more connections.
func xnetH2Client(t *testing.T, r *rig) (*http.Client, *atomic.Int64) {
	dials := new(atomic.Int64)
	tr := &http2.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			c, err := h2Dial(ctx, r)
			if err == nil {
				dials.Add(1)
			}
			return c, err
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}, dials
}

// oneConnClient sends every request on one x/net ClientConn, which queues
// them for the server's stream slots. (Not through a strict Transport's
// pool: its reservations count against the slots and stall once more
// requests wait than the server allows streams, golang/go#70809.) A stream
// the proxy refuses fails its request here, unretried.
func oneConnClient(t *testing.T, r *rig) *http.Client {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h2Dial(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{StrictMaxConcurrentStreams: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &http.Client{Transport: cc, Timeout: 60 * time.Second}
}

// h2Do sends req and reads the whole response.
func h2Do(t *testing.T, cl *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL.Path, err)
	}
	if resp.Proto != "HTTP/2.0" {
		t.Errorf("%s %s: client leg spoke %s, want HTTP/2.0", req.Method, req.URL.Path, resp.Proto)
	}
	return resp, string(b)
}

func h2Get(t *testing.T, cl *http.Client, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://example.com"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h2Do(t, cl, req)
}

// checkUpstream fails unless the upstream saw the protocol the case is
// about (its handlers answer X-Upstream-Proto).
func checkUpstream(t *testing.T, resp *http.Response, upH2 bool) {
	t.Helper()
	if got := resp.Header.Get("X-Upstream-Proto"); got != upProto(upH2) {
		t.Errorf("upstream spoke %q, want %s", got, upProto(upH2))
	}
}

// waitFor waits for ch to be closed (or to yield) for up to d.
func waitFor(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

func TestH2Trailers(t *testing.T) {
	payload := bytes.Repeat([]byte("trailers after flow-controlled data "), 6000) // ~210 KiB: several windows
	sum := sha256.Sum256(payload)
	want := hex.EncodeToString(sum[:])
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Proto", r.Proto)
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The request's trailers are there once its body is read.
		w.Header().Set("X-Got-Client-Trailer", r.Trailer.Get("X-Client-Sum"))
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(http.StatusOK)
		w.Write(b)
		w.(http.Flusher).Flush()
		s := sha256.Sum256(b)
		w.Header().Set("X-Sum", hex.EncodeToString(s[:]))          // announced
		w.Header().Set(http.TrailerPrefix+"X-Late", "unannounced") // not announced
	})
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		cl, dials := h2HTTPClient(t, r)
		for i := range 2 { // the connection is kept: trailers leave it in order
			req, _ := http.NewRequest(http.MethodPut, "https://example.com/echo", io.NopCloser(bytes.NewReader(payload)))
			req.ContentLength = -1 // a body of unknown length, then trailers
			req.Trailer = http.Header{"X-Client-Sum": {want}}
			resp, body := h2Do(t, cl, req)
			checkUpstream(t, resp, upH2)
			if resp.StatusCode != http.StatusOK || body != string(payload) {
				t.Fatalf("request %d: %d, %d bytes echoed of %d", i, resp.StatusCode, len(body), len(payload))
			}
			if got := resp.Header.Get("X-Got-Client-Trailer"); got != want {
				t.Errorf("request %d: upstream saw the client's trailer as %q, want %q", i, got, want)
			}
			if got := resp.Trailer.Get("X-Sum"); got != want {
				t.Errorf("request %d: client got trailer X-Sum %q, want %q (trailers %v)", i, got, want, resp.Trailer)
			}
			if got := resp.Trailer.Get("X-Late"); got != "unannounced" {
				t.Errorf("request %d: client got trailer X-Late %q, want the unannounced trailer (trailers %v)", i, got, resp.Trailer)
			}
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("%d client connections for two requests, want 1", n)
		}
	})
}

// bodySeed makes the large bodies: pseudo-random, so that a misplaced
// window of bytes changes the hash.
var bodySeed = [32]byte{'f', 'l', 'o', 'w', 'd', 'o', 'g'}

func bodyReader(n int64) io.Reader { return io.LimitReader(rand.NewChaCha8(bodySeed), n) }

// largeBody is the size of the large bodies: 64 MiB, a quarter of that
// under -race (whose TLS is too slow for 512 MiB in a few seconds); either
// is many times every 1 MiB window.
func largeBody() int64 {
	if testutil.Race {
		return 16 << 20
	}
	return 64 << 20
}

var largeBodySum = sync.OnceValue(func() string {
	h := sha256.New()
	io.Copy(h, bodyReader(largeBody()))
	return hex.EncodeToString(h.Sum(nil))
})

func TestH2LargeBodiesBothWays(t *testing.T) {
	size := largeBody()
	want := largeBodySum()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Proto", r.Proto)
		switch r.URL.Path {
		case "/upload":
			hs := sha256.New()
			n, err := io.Copy(hs, r.Body)
			if err != nil {
				http.Error(w, "reading the upload: "+err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%d %x", n, hs.Sum(nil))
		case "/download":
			// Streamed, of unknown length (chunked upstream on HTTP/1.1).
			io.Copy(w, bodyReader(size))
		}
	})
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		t.Parallel()
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		cl, dials := h2HTTPClient(t, r)

		req, _ := http.NewRequest(http.MethodPost, "https://example.com/upload", bodyReader(size))
		req.ContentLength = size
		resp, body := h2Do(t, cl, req)
		checkUpstream(t, resp, upH2)
		if wantBody := fmt.Sprintf("%d %s", size, want); resp.StatusCode != http.StatusOK || body != wantBody {
			t.Errorf("upload: %d %q, want the upstream to have got %q", resp.StatusCode, body, wantBody)
		}

		resp, err := cl.Get("https://example.com/download")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		// Read a little, then nothing for a while: every window on the
		// way (the client's, the proxy's 1 MiB ones) fills up and the
		// proxy must wait for them to open again.
		first := make([]byte, 1024)
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // not synchronisation: lets the windows fill
		hs := sha256.New()
		hs.Write(first)
		n, err := io.Copy(hs, resp.Body)
		n += int64(len(first))
		if err != nil || n != size {
			t.Fatalf("download: %d of %d bytes, %v", n, size, err)
		}
		if got := hex.EncodeToString(hs.Sum(nil)); got != want {
			t.Errorf("download: sha256 %s, want %s", got, want)
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("%d client connections, want 1", n)
		}
	})
}

func TestH2MoreStreamsThanTheServerAllows(t *testing.T) {
	const n = 300
	var inflight, maxInflight atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := inflight.Add(1)
		defer inflight.Add(-1)
		for m := maxInflight.Load(); k > m && !maxInflight.CompareAndSwap(m, k); m = maxInflight.Load() {
		}
		time.Sleep(2 * time.Millisecond) // holds the request open: requests overlap
		w.Header().Set("X-Upstream-Proto", r.Proto)
		io.WriteString(w, r.URL.Path)
	})
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		for _, c := range []struct {
			name string
			one  bool
		}{
			// The 300 requests share one connection and queue for its
			// 100 streams.
			{"one connection", true},
			// More connections once one is full.
			{"several connections", false},
		} {
			inflight.Store(0)
			maxInflight.Store(0)
			var cl *http.Client
			conns := new(atomic.Int64)
			if c.one {
				cl = oneConnClient(t, r)
				conns.Store(1)
			} else {
				cl, conns = xnetH2Client(t, r)
			}
			errs := make(chan error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					path := "/" + strconv.Itoa(i)
					resp, err := cl.Get("https://example.com" + path)
					if err != nil {
						errs <- err
						return
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case err != nil:
						errs <- fmt.Errorf("%s: %v", path, err)
					case resp.StatusCode != http.StatusOK || string(b) != path:
						errs <- fmt.Errorf("%s: %d %q", path, resp.StatusCode, b)
					case resp.Header.Get("X-Upstream-Proto") != upProto(upH2):
						errs <- fmt.Errorf("%s: upstream spoke %q", path, resp.Header.Get("X-Upstream-Proto"))
					}
				})
			}
			wg.Wait()
			close(errs)
			failed := 0
			for err := range errs {
				if failed++; failed <= 3 {
					t.Errorf("%s: %v", c.name, err)
				}
			}
			if failed > 0 {
				t.Errorf("%s: %d of %d requests failed", c.name, failed, n)
			}
			m := maxInflight.Load()
			switch {
			case !upH2 && int64(m) > conns.Load():
				// Each client connection has its own upstream connection.
				t.Errorf("%s: the HTTP/1.1 upstream saw %d requests at once on %d connections, want them one at a time on each",
					c.name, m, conns.Load())
			case upH2 && c.one && (m < 2 || m > h2MaxStreams):
				t.Errorf("%s: the HTTP/2 upstream saw at most %d requests at once, want several and no more than %d", c.name, m, h2MaxStreams)
			}
		}
	})
}

// h2Wire is a raw HTTP/2 client connection to a rig, for exact frames.
type h2Wire struct {
	t   *testing.T
	c   *tls.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func dialH2Wire(t *testing.T, r *rig) *h2Wire {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h2Dial(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	w := &h2Wire{t: t, c: c, fr: http2.NewFramer(c, c)}
	w.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	w.enc = hpack.NewEncoder(&w.hb)
	if err := w.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return w
}

// get opens stream id with a GET of path.
func (w *h2Wire) get(id uint32, path string) {
	w.t.Helper()
	w.hb.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "example.com"}, {":path", path}} {
		w.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		w.t.Fatal(err)
	}
}

// wireEvent is what a frame says about a stream (or, with GOAWAY, the
// connection); frames are copied out of the Framer's buffers.
type wireEvent struct {
	stream  uint32
	status  string // from HEADERS
	data    []byte
	end     bool          // END_STREAM
	rst     bool          // RST_STREAM, with code
	goAway  bool          // GOAWAY, with code and lastStream
	code    http2.ErrCode // of RST_STREAM or GOAWAY
	last    uint32
	readErr error // the connection ended
}

// next reads the next frame that concerns a stream or the connection's
// end, answering SETTINGS and PING as a client must.
func (w *h2Wire) next() wireEvent {
	for {
		f, err := w.fr.ReadFrame()
		if err != nil {
			return wireEvent{readErr: err}
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				w.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				w.fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			return wireEvent{stream: f.StreamID, status: f.PseudoValue("status"), end: f.StreamEnded()}
		case *http2.DataFrame:
			if len(f.Data()) > 0 {
				// Return the window at once: the proxy never waits on us.
				w.fr.WriteWindowUpdate(0, uint32(len(f.Data())))
				if !f.StreamEnded() {
					w.fr.WriteWindowUpdate(f.StreamID, uint32(len(f.Data())))
				}
			}
			return wireEvent{stream: f.StreamID, data: bytes.Clone(f.Data()), end: f.StreamEnded()}
		case *http2.RSTStreamFrame:
			return wireEvent{stream: f.StreamID, rst: true, code: f.ErrCode}
		case *http2.GoAwayFrame:
			return wireEvent{goAway: true, code: f.ErrCode, last: f.LastStreamID}
		}
	}
}

// response reads stream id's response to its end.
func (w *h2Wire) response(id uint32) (status, body string) {
	w.t.Helper()
	var b []byte
	for {
		e := w.next()
		switch {
		case e.readErr != nil:
			w.t.Fatalf("stream %d: connection ended: %v", id, e.readErr)
		case e.goAway:
			w.t.Fatalf("stream %d: GOAWAY %v before the response ended", id, e.code)
		case e.stream != id:
			w.t.Fatalf("stream %d: unexpected frame on stream %d", id, e.stream)
		case e.rst:
			w.t.Fatalf("stream %d: reset %v", id, e.code)
		}
		if e.status != "" {
			status = e.status
		}
		b = append(b, e.data...)
		if e.end {
			return status, string(b)
		}
	}
}

// closedWithGoAway reads until the proxy's GOAWAY, checks it, and then
// that the connection closes.
func (w *h2Wire) closedWithGoAway(lastStream uint32) {
	w.t.Helper()
	w.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		e := w.next()
		if e.readErr != nil {
			if isTimeout(e.readErr) {
				w.t.Fatalf("no GOAWAY: the connection is still open")
			}
			w.t.Fatalf("the connection ended without a GOAWAY: %v", e.readErr)
		}
		if !e.goAway {
			continue
		}
		if e.code != http2.ErrCodeNo || e.last != lastStream {
			w.t.Errorf("GOAWAY %v, last stream %d; want NO_ERROR, %d", e.code, e.last, lastStream)
		}
		break
	}
	for {
		e := w.next()
		if e.readErr == nil {
			continue
		}
		if isTimeout(e.readErr) {
			w.t.Fatal("the connection stayed open after GOAWAY")
		}
		return
	}
}

// The server's own limit: a client that ignores SETTINGS_MAX_CONCURRENT_
// STREAMS gets REFUSED_STREAM for the stream over it (which clients
// retry), and every stream within it is served.
func TestH2RefusesStreamsOverTheLimit(t *testing.T) {
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		release := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, r.URL.Path)
		})
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		w := dialH2Wire(t, r)
		const over = 2*h2MaxStreams + 1 // the id of stream 101
		for id := uint32(1); id <= over; id += 2 {
			w.get(id, "/"+strconv.Itoa(int(id)))
		}
		e := w.next()
		if !e.rst || e.stream != over || e.code != http2.ErrCodeRefusedStream {
			t.Fatalf("first frame %+v, want RST_STREAM REFUSED_STREAM on stream %d", e, over)
		}
		close(release)
		bodies := map[uint32][]byte{}
		ended := map[uint32]string{}
		for len(ended) < h2MaxStreams {
			e := w.next()
			switch {
			case e.readErr != nil:
				t.Fatalf("after %d responses: %v", len(ended), e.readErr)
			case e.rst || e.goAway:
				t.Fatalf("after %d responses: %+v", len(ended), e)
			case e.status != "" && e.status != "200":
				t.Errorf("stream %d: status %s", e.stream, e.status)
			}
			bodies[e.stream] = append(bodies[e.stream], e.data...)
			if e.end {
				ended[e.stream] = string(bodies[e.stream])
			}
		}
		for id := uint32(1); id < over; id += 2 {
			if want := "/" + strconv.Itoa(int(id)); ended[id] != want {
				t.Errorf("stream %d: body %q, want %q", id, ended[id], want)
			}
		}
		// And the connection serves on.
		w.get(over+2, "/again")
		if status, body := w.response(over + 2); status != "200" || body != "/again" {
			t.Errorf("after the refused stream: %s %q", status, body)
		}
	})
}

func TestH2ClientCancelResetsTheUpstreamRequest(t *testing.T) {
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		gone := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Upstream-Proto", r.Proto)
			if r.URL.Path != "/stream" {
				io.WriteString(w, "next "+r.URL.Path)
				return
			}
			// An endless response: it ends only when the request's
			// context does (the client went away).
			chunk := bytes.Repeat([]byte("x"), 16<<10)
			deadline := time.After(20 * time.Second)
			for {
				select {
				case <-r.Context().Done():
					close(gone)
					return
				case <-deadline:
					return
				default:
				}
				w.Write(chunk)
				w.(http.Flusher).Flush()
			}
		})
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		cl, dials := h2HTTPClient(t, r)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://example.com/stream", nil)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		checkUpstream(t, resp, upH2)
		if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
			t.Fatalf("reading the start of the response: %v", err)
		}
		cancel() // RST_STREAM(CANCEL) mid-response
		waitFor(t, gone, 5*time.Second, "the upstream handler's request context to end")
		resp.Body.Close()

		resp, body := h2Get(t, cl, "/after")
		if resp.StatusCode != http.StatusOK || body != "next /after" {
			t.Fatalf("next request: %d %q", resp.StatusCode, body)
		}
		// With HTTP/2 upstream the stream alone was reset; an HTTP/1.1
		// request can only be ended with its connection, and the client's
		// then goes too (it may take a new one).
		if upH2 && dials.Load() != 1 {
			t.Errorf("%d client connections; the cancelled stream must not cost the connection", dials.Load())
		}
	})
}

func TestH2ExpectContinue(t *testing.T) {
	var bodyRead atomic.Bool
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Proto", r.Proto)
		if r.URL.Path == "/reject" {
			w.WriteHeader(http.StatusExpectationFailed) // without reading: no 100
			return
		}
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		bodyRead.Store(true)
		fmt.Fprintf(w, "%d", n)
	})
	payload := bytes.Repeat([]byte("e"), 300<<10)
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		cl, _ := h2HTTPClient(t, r)
		send := func(path string) (*http.Response, string, bool) {
			var got100 atomic.Bool
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got100Continue: func() { got100.Store(true) },
			})
			req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "https://example.com"+path, bytes.NewReader(payload))
			req.Header.Set("Expect", "100-continue")
			resp, body := h2Do(t, cl, req)
			return resp, body, got100.Load()
		}
		// Several times: the 100 must reach the client however soon the
		// server sends it (a 100 the proxy missed leaves the body waiting
		// for its 1 s fallback).
		for i := range 10 {
			bodyRead.Store(false)
			start := time.Now()
			resp, body, got100 := send("/accept")
			took := time.Since(start)
			checkUpstream(t, resp, upH2)
			if resp.StatusCode != http.StatusOK || body != strconv.Itoa(len(payload)) || !bodyRead.Load() {
				t.Errorf("accepted %d: %d %q, want 200 and the whole body upstream", i, resp.StatusCode, body)
			}
			if !got100 {
				t.Errorf("accepted %d: the client got no 100 Continue for a body the server read", i)
			}
			if took >= expectContinueTimeout*9/10 {
				t.Errorf("accepted %d: took %v: the body waited for the proxy's %v fallback, not for the server's 100 Continue",
					i, took, expectContinueTimeout)
			}
		}
		resp, _, got100 := send("/reject")
		if resp.StatusCode != http.StatusExpectationFailed {
			t.Errorf("rejected: %d, want the server's 417", resp.StatusCode)
		}
		if got100 {
			t.Error("the client got a 100 Continue for a body the server refused")
		}
		// The connection (or, after HTTP/1.1's close, a new one) serves on.
		resp, body, _ := send("/again")
		if resp.StatusCode != http.StatusOK || body != strconv.Itoa(len(payload)) {
			t.Errorf("after a refusal: %d %q", resp.StatusCode, body)
		}
	})
}

func TestH2BodylessResponses(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Proto", r.Proto)
		w.Header().Set("X-Custom", "kept")
		switch r.URL.Path {
		case "/head":
			// The length of the body a GET would get.
			w.Header().Set("Content-Length", "12345")
			w.WriteHeader(http.StatusOK)
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/notmodified":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		default:
			io.WriteString(w, "body of "+r.URL.Path)
		}
	})
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		cl, dials := h2HTTPClient(t, r)
		for _, c := range []struct {
			method, path string
			code         int
			length       int64 // -2: not checked
		}{
			{http.MethodHead, "/head", http.StatusOK, 12345},
			{http.MethodGet, "/nocontent", http.StatusNoContent, -2},
			{http.MethodGet, "/notmodified", http.StatusNotModified, -2},
			{http.MethodHead, "/head", http.StatusOK, 12345}, // again, on the same connection
		} {
			req, _ := http.NewRequest(c.method, "https://example.com"+c.path, nil)
			resp, body := h2Do(t, cl, req)
			checkUpstream(t, resp, upH2)
			if resp.StatusCode != c.code || body != "" {
				t.Errorf("%s %s: %d with %d body bytes, want %d and none", c.method, c.path, resp.StatusCode, len(body), c.code)
			}
			if resp.Header.Get("X-Custom") != "kept" {
				t.Errorf("%s %s: headers %v, want X-Custom kept", c.method, c.path, resp.Header)
			}
			if c.length != -2 && (resp.ContentLength != c.length || resp.Header.Get("Content-Length") != strconv.FormatInt(c.length, 10)) {
				t.Errorf("%s %s: Content-Length %q (%d), want %d", c.method, c.path, resp.Header.Get("Content-Length"), resp.ContentLength, c.length)
			}
			if c.code == http.StatusNotModified && resp.Header.Get("ETag") != `"v1"` {
				t.Errorf("304: ETag %q", resp.Header.Get("ETag"))
			}
		}
		// The bodyless responses left the stream states in order.
		if resp, body := h2Get(t, cl, "/x"); resp.StatusCode != http.StatusOK || body != "body of /x" {
			t.Errorf("GET after them: %d %q", resp.StatusCode, body)
		}
		if n := dials.Load(); n != 1 {
			t.Errorf("%d client connections, want 1", n)
		}
	})
}

// An upstream that answers before reading a large upload: the client gets
// the answer (and may stop sending).
func TestH2ResponseBeforeRequestBody(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Proto", r.Proto)
		if r.URL.Path == "/early" {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			io.WriteString(w, "too large, not read")
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "read %d", n)
	})
	const size = 16 << 20 // far more than every window on the way
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		cl, dials := h2HTTPClient(t, r)
		req, _ := http.NewRequest(http.MethodPost, "https://example.com/early", bodyReader(size))
		req.ContentLength = size
		resp, body := h2Do(t, cl, req)
		checkUpstream(t, resp, upH2)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || body != "too large, not read" {
			t.Errorf("got %d %q, want the server's early 413", resp.StatusCode, body)
		}
		// The connection (with HTTP/1.1, which closes after leaving a body
		// unread, a new one) serves on.
		req, _ = http.NewRequest(http.MethodPost, "https://example.com/read", bytes.NewReader(make([]byte, 100<<10)))
		if resp, body := h2Do(t, cl, req); resp.StatusCode != http.StatusOK || body != "read 102400" {
			t.Errorf("next request: %d %q", resp.StatusCode, body)
		}
		if upH2 && dials.Load() != 1 {
			t.Errorf("%d client connections, want 1", dials.Load())
		}
	})
}

// When the upstream connection goes, the client's is closed with GOAWAY
// (not left to fail its next request with a 502), and a new connection
// (with a new upstream) serves.
func TestH2UpstreamCloseEndsClientConnection(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Proto", r.Proto)
		io.WriteString(w, "ok "+r.URL.Path)
	})
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		t.Parallel() // the cases wait on timers: overlapped
		for _, c := range []struct {
			name  string
			idle  time.Duration // the server's IdleTimeout
			close bool          // CloseClientConnections
		}{
			{"server closes", 0, true},
			{"server idle timeout", 300 * time.Millisecond, false},
		} {
			t.Run(c.name, func(t *testing.T) {
				srv := httptest.NewUnstartedServer(h)
				srv.EnableHTTP2 = upH2
				srv.Config.IdleTimeout = c.idle
				var upClosed atomic.Int64
				srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
					if s == http.StateClosed {
						upClosed.Add(1)
					}
				}
				pool := startTLS(t, srv)
				r := newRigMode(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool}, blocking)
				w := dialH2Wire(t, r)
				w.get(1, "/first")
				if status, body := w.response(1); status != "200" || body != "ok /first" {
					t.Fatalf("first: %s %q", status, body)
				}
				if c.close {
					srv.CloseClientConnections()
				}
				if blocking && !upH2 {
					// Legs that cannot report readiness: nothing watches
					// an idle HTTP/1.1 upstream (on either client leg),
					// so the client learns at its next request, which
					// must then be refused (it retries it elsewhere), not
					// answered with a 502.
					testutil.Eventually(t, 5*time.Second, "the upstream to close its connection",
						func() bool { return upClosed.Load() == 1 })
					w.get(3, "/second")
					w.refusedAndClosed(3)
				} else {
					w.closedWithGoAway(1)
				}
				cl, _ := h2HTTPClient(t, r)
				if resp, body := h2Get(t, cl, "/second"); resp.StatusCode != http.StatusOK || body != "ok /second" {
					t.Errorf("on a new connection: %d %q", resp.StatusCode, body)
				}
			})
		}
	})
}

// refusedAndClosed reads until the connection closes: stream id must not
// be answered but refused (RST_STREAM REFUSED_STREAM, or a GOAWAY whose
// last stream is before it: either tells the client it was not processed),
// and the connection must say GOAWAY(NO_ERROR) before it closes.
func (w *h2Wire) refusedAndClosed(id uint32) {
	w.t.Helper()
	w.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	refused, goAway := false, false
	for {
		e := w.next()
		switch {
		case e.readErr != nil:
			if isTimeout(e.readErr) {
				w.t.Fatalf("stream %d: the connection stayed open (refused %v, GOAWAY %v)", id, refused, goAway)
			}
			if !refused {
				w.t.Errorf("stream %d: the connection closed without refusing it", id)
			}
			if !goAway {
				w.t.Error("the connection closed without a GOAWAY")
			}
			return
		case e.stream == id && e.status != "":
			w.t.Fatalf("stream %d: answered %s, want it refused (the client would retry it on a new connection)", id, e.status)
		case e.stream == id && e.rst:
			if e.code != http2.ErrCodeRefusedStream {
				w.t.Fatalf("stream %d: reset %v, want REFUSED_STREAM", id, e.code)
			}
			refused = true
		case e.goAway:
			if e.code != http2.ErrCodeNo {
				w.t.Errorf("GOAWAY %v, want NO_ERROR", e.code)
			}
			goAway = true
			refused = refused || e.last < id
		}
	}
}

func TestH2IdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(2 * idle) // the scenario: a request open longer than the idle timeout
		}
		io.WriteString(w, "ok "+r.URL.Path)
	})
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		t.Parallel() // the cases wait on timers: overlapped
		r, _ := h2Setup(t, h, upH2, blocking, Options{IdleTimeout: idle})
		w := dialH2Wire(t, r)
		// A connection with a stream open is not idle, however long.
		w.get(1, "/slow")
		if status, body := w.response(1); status != "200" || body != "ok /slow" {
			t.Fatalf("a request longer than the idle timeout: %s %q", status, body)
		}
		idleSince := time.Now()
		w.closedWithGoAway(1)
		// The proxy's timer starts a little before the client sees the
		// response end: half the timeout is a lower bound with room.
		if d := time.Since(idleSince); d < idle/2 {
			t.Errorf("closed %v after the last response, before the idle timeout (%v)", d, idle)
		}
	})
}

// h2Goroutines are the goroutines in the proxy's connection code: none
// should be left for idle, parked connections.
var h2Goroutines = []string{
	"github.com/flowdog/flowdog/proxy.(*h2",
	"github.com/flowdog/flowdog/proxy.(*Proxy).Serve",
	"github.com/flowdog/flowdog/proxy.(*conn).",
	"github.com/flowdog/flowdog/proxy.(*httpHandler)",
	"github.com/flowdog/flowdog/proxy.newH2",
}

func TestH2IdleConnectionsParkWithoutGoroutines(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream-Proto", r.Proto)
		io.WriteString(w, "ok "+r.URL.Path)
	})
	for _, upH2 := range []bool{true, false} {
		t.Run(upProto(upH2), func(t *testing.T) {
			before := testutil.GoroutinesIn(h2Goroutines...)
			r, _ := h2Setup(t, h, upH2, false, Options{})
			const conns = 3
			var clients []*http.Client
			var dials []*atomic.Int64
			for i := range conns {
				cl, d := h2HTTPClient(t, r)
				clients, dials = append(clients, cl), append(dials, d)
				for j := range 3 {
					resp, body := h2Get(t, cl, fmt.Sprintf("/%d/%d", i, j))
					checkUpstream(t, resp, upH2)
					if body != fmt.Sprintf("ok /%d/%d", i, j) {
						t.Fatalf("body %q", body)
					}
				}
			}
			parked := func() float64 { return testutil.Metric(t, r.reg, "flowdog_proxy_parked_connections", "") }
			testutil.Eventually(t, 5*time.Second, "the idle connections parked", func() bool { return parked() == conns })
			// Parked, the connections hold no goroutine of the proxy's:
			// neither the client leg's frame reader, nor the upstream's,
			// nor Serve's.
			var last int
			deadline := time.Now().Add(5 * time.Second)
			for last = testutil.GoroutinesIn(h2Goroutines...); last > before && time.Now().Before(deadline); last = testutil.GoroutinesIn(h2Goroutines...) {
				time.Sleep(10 * time.Millisecond)
			}
			if last > before {
				t.Errorf("%d goroutines in the proxy's connection code for %d parked connections, want none:\n%s",
					last-before, conns, stacksIn(h2Goroutines))
			}
			if d := r.detached.Load(); d != conns {
				t.Errorf("%d connections detached, want %d", d, conns)
			}
			// A parked connection wakes for its next request.
			for i, cl := range clients {
				if resp, body := h2Get(t, cl, "/again"); resp.StatusCode != http.StatusOK || body != "ok /again" {
					t.Errorf("connection %d after parking: %d %q", i, resp.StatusCode, body)
				}
				if n := dials[i].Load(); n != 1 {
					t.Errorf("client %d dialled %d times, want its one connection reused", i, n)
				}
			}
			testutil.Eventually(t, 5*time.Second, "the connections parked again", func() bool { return parked() == conns })
			// Closed by the clients, they are released and no longer counted.
			for _, cl := range clients {
				cl.CloseIdleConnections()
			}
			testutil.Eventually(t, 5*time.Second, "the closed connections released", func() bool {
				return parked() == 0 && r.released.Load() == conns
			})
		})
	}
}

// stacksIn is the stacks of the goroutines with a frame in one of
// prefixes, for a failure's message.
func stacksIn(prefixes []string) string { return testutil.StacksIn(prefixes...) }

// A response flowdog makes itself (here a 502) carries a Date, as net/http's
// would; a proxied one keeps the server's.
func TestH2DateHeader(t *testing.T) {
	const fixed = "Mon, 02 Jan 2006 15:04:05 GMT"
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/abort" {
			panic(http.ErrAbortHandler) // no response: flowdog answers 502
		}
		w.Header().Set("Date", fixed)
		io.WriteString(w, "ok")
	})
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		cl, _ := h2HTTPClient(t, r)
		if resp, _ := h2Get(t, cl, "/fixed"); resp.Header.Get("Date") != fixed {
			t.Errorf("proxied response: Date %q, want the server's %q", resp.Header.Get("Date"), fixed)
		}
		resp, _ := h2Get(t, cl, "/abort")
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("aborted upstream: %d, want 502", resp.StatusCode)
		}
		if d, err := http.ParseTime(resp.Header.Get("Date")); err != nil || time.Since(d) > time.Minute {
			t.Errorf("flowdog's 502: Date %q (%v), want the current time", resp.Header.Get("Date"), err)
		}
	})
}

// A 103 Early Hints from the server reaches the client before the final
// response, through either client leg's protocol (x/net's Transport passed
// it to ReverseProxy, and flowdog's HTTP/2 client does too).
func TestH2EarlyHints(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})
	for _, blocking := range []bool{false, true} {
		r, _ := h2Setup(t, h, true, blocking, Options{})
		cl, _ := h2HTTPClient(t, r)
		var hints []string
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, fmt.Sprintf("%d %s", code, h.Get("Link")))
			return nil
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, "https://example.com/", nil)
		resp, body := h2Do(t, cl, req)
		if resp.StatusCode != http.StatusOK || body != "final" {
			t.Errorf("blocking=%v: %d %q, want 200 final", blocking, resp.StatusCode, body)
		}
		if want := "103 </style.css>; rel=preload; as=style"; len(hints) != 1 || hints[0] != want {
			t.Errorf("blocking=%v: informational responses %q, want [%q]", blocking, hints, want)
		}
	}
}

// Requests whose target is ambiguous are refused with RST_STREAM
// PROTOCOL_ERROR and never reach the upstream: a Host that differs from
// :authority, an invalid authority, a :path not in origin form. The
// connection serves on.
func TestH2RefusesAmbiguousTargets(t *testing.T) {
	var reached atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		io.WriteString(w, "ok")
	})
	r, _ := h2Setup(t, h, true, false, Options{})
	w := dialH2Wire(t, r)
	id := uint32(1)
	for _, c := range []struct{ name, authority, host, path string }{
		{"Host differs from :authority", "example.com", "other.example", "/"},
		{"invalid authority", "exa mple.com", "", "/"},
		{":path not in origin form", "example.com", "", "http://example.com/"},
	} {
		w.hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", c.authority}, {":path", c.path}} {
			w.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if c.host != "" {
			w.enc.WriteField(hpack.HeaderField{Name: "host", Value: c.host})
		}
		if err := w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if e := w.next(); !e.rst || e.stream != id || e.code != http2.ErrCodeProtocol {
			t.Errorf("%s: %+v, want RST_STREAM PROTOCOL_ERROR on stream %d", c.name, e, id)
		}
		id += 2
	}
	w.get(id, "/fine")
	if status, body := w.response(id); status != "200" || body != "ok" {
		t.Errorf("a well-formed request after them: %s %q", status, body)
	}
	if n := reached.Load(); n != 1 {
		t.Errorf("the upstream saw %d requests, want only the well-formed one", n)
	}
}
