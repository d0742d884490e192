package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flowdog/flowdog/interceptors"
	"github.com/flowdog/flowdog/internal/testutil"
)

// Regression tests for the HTTP/2 bugs a code review found in the HTTP/2
// legs (fixed in 590d4ea, "proxy: HTTP/2 fixes from a code review"): one
// test per bug, each failing on the code before that commit.

// regressOpen opens stream id with a request of method for path; end:
// without a body.
func (w *h2Wire) regressOpen(id uint32, method, path string, end bool) {
	w.t.Helper()
	w.hb.Reset()
	for _, f := range [][2]string{{":method", method}, {":scheme", "https"}, {":authority", "example.com"}, {":path", path}} {
		w.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.hb.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		w.t.Fatal(err)
	}
}

// regressPanics is how many panics the proxy recovered.
func regressPanics(t *testing.T, r *rig) float64 {
	t.Helper()
	return testutil.Metric(t, r.reg, "flowdog_proxy_panics_total", "")
}

// A client lowered SETTINGS_INITIAL_WINDOW_SIZE after response data went
// out: the stream's send window went negative (RFC 9113, 6.9.2 allows
// it), and the END_STREAM that ends the response sliced its empty payload
// to that negative length, outside any recover: the process died. END_
// STREAM alone needs no window.
func TestH2NegativeWindowDoesNotCrash(t *testing.T) {
	h2Cases(t, func(t *testing.T, blocking, upH2 bool) {
		release := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, strings.Repeat("x", 100))
			w.(http.Flusher).Flush()
			<-release
		})
		r, _ := h2Setup(t, h, upH2, blocking, Options{})
		var once sync.Once
		done := func() { once.Do(func() { close(release) }) }
		t.Cleanup(done)
		w := dialH2Wire(t, r)
		w.get(1, "/")
		// Read without returning any window: the stream's window is
		// 65535-100 once the 100 bytes are in.
		acks, got := 0, 0
		for got < 100 {
			f, err := w.fr.ReadFrame()
			if err != nil {
				t.Fatalf("before the first data: %v", err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if f.IsAck() {
					acks++
				} else {
					w.fr.WriteSettingsAck()
				}
			case *http2.DataFrame:
				got += len(f.Data())
			case *http2.RSTStreamFrame, *http2.GoAwayFrame:
				t.Fatalf("before the first data: %v", f.Header())
			}
		}
		// The window goes to -100; the proxy's ACK says it took it.
		if err := w.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
			t.Fatal(err)
		}
		for acks < 2 { // the first ACK is for dialH2Wire's SETTINGS
			f, err := w.fr.ReadFrame()
			if err != nil {
				t.Fatalf("waiting for the SETTINGS ACK: %v", err)
			}
			if s, ok := f.(*http2.SettingsFrame); ok && s.IsAck() {
				acks++
			}
		}
		done() // the response ends: END_STREAM with no data
		for ended := false; !ended; {
			f, err := w.fr.ReadFrame()
			if err != nil {
				t.Fatalf("the connection ended instead of the response: %v", err)
			}
			switch f := f.(type) {
			case *http2.DataFrame:
				if len(f.Data()) > 0 {
					t.Fatalf("%d bytes of DATA sent on a stream whose window is negative", len(f.Data()))
				}
				ended = f.StreamEnded()
			case *http2.MetaHeadersFrame:
				ended = f.StreamEnded()
			case *http2.RSTStreamFrame, *http2.GoAwayFrame:
				t.Fatalf("the response did not end cleanly: %v", f.Header())
			}
		}
		if n := regressPanics(t, r); n != 0 {
			t.Errorf("%v panics recovered, want none", n)
		}
		// The connection is still good for another stream once the client
		// gives streams a window again.
		if err := w.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535}); err != nil {
			t.Fatal(err)
		}
		w.get(3, "/again")
		done()
		if status, body := w.response(3); status != "200" || body != strings.Repeat("x", 100) {
			t.Errorf("the next stream: %s %q", status, body)
		}
	})
}

// A request body that arrived whole but that nobody read (here a request
// hook answered the POST itself) kept its bytes of the connection's
// receive window for good: after about a megabyte of such bodies no DATA
// could be sent on the connection and every upload on it stalled. The
// proxy must give the window back when the handler ends.
func TestH2UnreadBodiesReturnTheConnectionWindow(t *testing.T) {
	const (
		size    = h2Window / 4 // each body alone is worth a WINDOW_UPDATE
		blocked = 6            // 1.5 MiB: more than the connection's window
		frame   = 16384
	)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		io.WriteString(w, "read "+strconv.FormatInt(n, 10))
	})
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) {
			proceed := make(chan struct{})
			stop := make(chan struct{})
			hk := &hooks{request: func(f *interceptors.Flow, r *http.Request) (*http.Response, error) {
				if r.URL.Path != "/block" {
					return nil, nil
				}
				select { // until the whole body is in
				case <-proceed:
				case <-stop:
				}
				return &http.Response{StatusCode: http.StatusForbidden, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("blocked"))}, nil
			}}
			r, _ := h2Setup(t, up, true, blocking, Options{Chain: chainOf(t, hk, "http")})
			t.Cleanup(func() { close(stop) })
			w := dialH2Wire(t, r)

			// The client's view of the proxy's windows: the connection's
			// starts at 65535 and grows by the proxy's WINDOW_UPDATEs.
			win := int64(65535)
			settings := false
			var status string
			var body []byte
			// until reads frames until cond holds (nil: before the first),
			// answering SETTINGS and counting the connection's window.
			until := func(what string, d time.Duration, cond func(f http2.Frame) bool) {
				t.Helper()
				if cond(nil) {
					return
				}
				w.c.SetReadDeadline(time.Now().Add(d))
				defer w.c.SetReadDeadline(time.Now().Add(15 * time.Second))
				for {
					f, err := w.fr.ReadFrame()
					if err != nil {
						t.Fatalf("waiting for %s (connection window %d): %v", what, win, err)
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							settings = true
							w.fr.WriteSettingsAck()
						}
					case *http2.WindowUpdateFrame:
						if f.StreamID == 0 {
							win += int64(f.Increment)
						}
					case *http2.MetaHeadersFrame:
						status = f.PseudoValue("status")
					case *http2.DataFrame:
						body = append(body, f.Data()...)
					case *http2.RSTStreamFrame:
						t.Fatalf("waiting for %s: stream %d reset %v", what, f.StreamID, f.ErrCode)
					case *http2.GoAwayFrame:
						t.Fatalf("waiting for %s: GOAWAY %v", what, f.ErrCode)
					}
					if cond(f) {
						return
					}
				}
			}
			until("the proxy's SETTINGS and connection window", 5*time.Second, func(http2.Frame) bool { return settings && win >= h2Window })
			// upload sends a body of size on stream id, within the window.
			upload := func(id uint32, path string) {
				t.Helper()
				until(fmt.Sprintf("the connection window for %s on stream %d (the unread bodies' bytes given back)", path, id), 2*time.Second,
					func(http2.Frame) bool { return win >= size })
				w.regressOpen(id, http.MethodPost, path, false)
				chunk := make([]byte, frame)
				for sent := 0; sent < size; sent += frame {
					if err := w.fr.WriteData(id, sent+frame >= size, chunk); err != nil {
						t.Fatal(err)
					}
					win -= frame
				}
			}
			// response reads stream id's response.
			response := func(id uint32) (string, string) {
				t.Helper()
				status, body = "", nil
				until(fmt.Sprintf("the response on stream %d", id), 5*time.Second, func(f http2.Frame) bool {
					return f != nil && f.Header().StreamID == id && f.Header().Flags.Has(http2.FlagDataEndStream) &&
						(f.Header().Type == http2.FrameData || f.Header().Type == http2.FrameHeaders)
				})
				return status, string(body)
			}
			for i := range uint32(blocked) {
				id := 2*i + 1
				upload(id, "/block")
				// The proxy has read every frame before the PING: the
				// whole body is in when the hook answers.
				w.fr.WritePing(false, [8]byte{byte(id)})
				until("the PING's ACK", 5*time.Second, func(f http2.Frame) bool {
					p, ok := f.(*http2.PingFrame)
					return ok && p.IsAck() && p.Data[0] == byte(id)
				})
				select {
				case proceed <- struct{}{}:
				case <-time.After(5 * time.Second):
					t.Fatalf("stream %d: the hook was not called", id)
				}
				if status, body := response(id); status != "403" || body != "blocked" {
					t.Fatalf("stream %d: %s %q, want the hook's 403", id, status, body)
				}
			}
			// And an upload that reaches the upstream goes through.
			id := uint32(2*blocked + 1)
			upload(id, "/pass")
			if status, body := response(id); status != "200" || body != "read "+strconv.Itoa(size) {
				t.Errorf("an upload after %d unread bodies: %s %q", blocked, status, body)
			}
		})
	}
}

// An HTTP/2 upstream that sends part of a response with no content-length
// and then closes its connection at a frame boundary: the response is cut
// short, and the client must not get it as a complete one (x/net's
// Transport makes that EOF io.ErrUnexpectedEOF; the proxy ended the stream
// with io.EOF, which its body took for the body's clean end).
func TestH2TruncatedResponseIsNotComplete(t *testing.T) {
	const part = "first half of the file"
	s := httptest.NewUnstartedServer(nil)
	s.TLS = &tls.Config{NextProtos: []string{"h2"}}
	s.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){
		"h2": func(_ *http.Server, c *tls.Conn, _ http.Handler) {
			defer c.Close()
			pre := make([]byte, len(http2.ClientPreface))
			if _, err := io.ReadFull(c, pre); err != nil {
				return
			}
			fr := http2.NewFramer(c, c)
			fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			fr.WriteSettings()
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if h, ok := f.(*http2.MetaHeadersFrame); ok {
					var hb bytes.Buffer
					enc := hpack.NewEncoder(&hb)
					enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
					fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: hb.Bytes(), EndHeaders: true})
					fr.WriteData(h.StreamID, false, []byte(part))
					// The upstream ends there: close_notify and EOF at a
					// frame boundary, and reading on until the proxy
					// closes (unread bytes would make the close a reset).
					c.CloseWrite()
					io.Copy(io.Discard, c)
					return
				}
			}
		},
	}
	pool := startTLS(t, s)
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) {
			r := newRigMode(t, s.Listener.Addr().String(), Options{UpstreamRoots: pool}, blocking)
			cl, _ := h2HTTPClient(t, r)
			cl.Timeout = 10 * time.Second
			resp, err := cl.Get("https://example.com/file")
			if err != nil {
				return // failed outright: not taken for complete either
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Errorf("a response cut short upstream reached the client as complete: %d %q", resp.StatusCode, b)
			}
		})
	}
}

// slowClosePoll is a client leg whose Close waits for wait (at most
// closeWaitMax), as a netstack connection's may take its time.
type slowClosePoll struct {
	*pollTCP
	wait <-chan struct{}
}

const closeWaitMax = 2 * time.Second

func (p *slowClosePoll) Close() error {
	select {
	case <-p.wait:
	case <-time.After(closeWaitMax):
	}
	return p.pollTCP.Close()
}

// A client's connection closes, at a frame boundary, in the middle of an
// upload: the upstream must not see a complete body. The proxy ended the
// stream with io.EOF, which its body took for the body's end, and sent
// END_STREAM (or the last chunk) upstream; whether the upstream got it
// before the proxy closed its upstream leg was a race, which the body
// seldom won. Here the client leg's Close waits until the upstream has
// read to the end, which takes that race away (parking rig only: it alone
// wraps the client leg). Against an HTTP/2 upstream one remains: the
// request's context, cancelled as the stream ends, resets the upstream
// stream, which beat END_STREAM about one time in three; the rounds make
// a body that wins once certain.
func TestH2TruncatedUploadIsNotComplete(t *testing.T) {
	const (
		part   = "first half"
		rounds = 15
	)
	type result struct {
		body string
		err  error
	}
	var readEnded atomic.Pointer[chan struct{}] // this round's
	started := make(chan struct{}, 1)
	got := make(chan result, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, len(part))
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			got <- result{string(buf), err}
			return
		}
		started <- struct{}{}
		rest, err := io.ReadAll(r.Body)
		close(*readEnded.Load())
		got <- result{string(buf) + string(rest), err}
	})
	for _, upH2 := range []bool{true, false} {
		t.Run(upProto(upH2), func(t *testing.T) {
			srv, pool := tlsServer(t, h, upH2)
			r := startRig(t, &rig{upstream: srv.Listener.Addr().String(), wrapClient: func(p *pollTCP) net.Conn {
				return &slowClosePoll{pollTCP: p, wait: *readEnded.Load()}
			}}, Options{UpstreamRoots: pool})
			for i := range rounds {
				ended := make(chan struct{})
				readEnded.Store(&ended)
				w := dialH2Wire(t, r)
				w.regressOpen(1, http.MethodPost, "/up", false)
				if err := w.fr.WriteData(1, false, []byte(part)); err != nil {
					t.Fatal(err)
				}
				select {
				case <-started:
				case res := <-got:
					t.Fatalf("round %d: the upstream could not read the first part: %q, %v", i, res.body, res.err)
				case <-time.After(5 * time.Second):
					t.Fatalf("round %d: the upload did not reach the upstream", i)
				}
				w.c.Close() // close_notify, then FIN: at a frame boundary
				select {
				case res := <-got:
					if res.err == nil {
						t.Fatalf("round %d: the upstream read an upload cut short as complete: %q", i, res.body)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("round %d: the upstream's read did not end after the client's connection closed", i)
				}
			}
		})
	}
}

// Rapid reset (CVE-2023-44487): a client that opens streams and resets
// them at once never has more than a few open, but each one started a
// handler that ran on. Handlers must stay within the streams the proxy
// allows, and a client that keeps it up gets GOAWAY ENHANCE_YOUR_CALM.
func TestH2RapidResetBoundsHandlers(t *testing.T) {
	const pairs = 1000
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) {
			var in, most atomic.Int32
			stop := make(chan struct{})
			hk := &hooks{request: func(f *interceptors.Flow, r *http.Request) (*http.Response, error) {
				k := in.Add(1)
				defer in.Add(-1)
				for m := most.Load(); k > m && !most.CompareAndSwap(m, k); m = most.Load() {
				}
				<-stop // a slow policy lookup
				return nil, nil
			}}
			r, _ := h2Setup(t, http.NotFoundHandler(), true, blocking, Options{Chain: chainOf(t, hk, "http")})
			t.Cleanup(func() {
				// The hooks are global: no handler of these streams may
				// run on into the next test's (queued ones start late).
				close(stop)
				testutil.Eventually(t, 10*time.Second, "the reset streams' handlers to end", func() bool {
					return testutil.GoroutinesIn("github.com/flowdog/flowdog/proxy.(*h2Server).runHandler") == 0
				})
			})
			w := dialH2Wire(t, r)
			// Take the proxy's SETTINGS; then one goroutine reads (and
			// writes nothing) while this one opens and resets streams.
			w.awaitSettings()
			w.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			var over atomic.Bool
			ended := make(chan error, 1)
			go func() {
				defer over.Store(true)
				for {
					f, err := w.fr.ReadFrame()
					if err != nil {
						ended <- err
						return
					}
					if g, ok := f.(*http2.GoAwayFrame); ok {
						if g.ErrCode != http2.ErrCodeEnhanceYourCalm {
							ended <- fmt.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM", g.ErrCode)
							return
						}
						ended <- nil
						return
					}
				}
			}()
			w.hb.Reset()
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "example.com"}, {":path", "/"}} {
				w.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			block := w.hb.Bytes() // it refers to no entry of the dynamic table: good for every stream
			for id := uint32(1); id < 2*pairs && !over.Load(); id += 2 {
				if w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}) != nil ||
					w.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
					break // the proxy closed the connection
				}
			}
			if err := <-ended; err != nil {
				t.Errorf("%d streams opened and reset at once: %v; want GOAWAY ENHANCE_YOUR_CALM", pairs, err)
			}
			if m := most.Load(); m > h2MaxStreams {
				t.Errorf("%d handlers ran at once for streams reset at once, want at most %d", m, h2MaxStreams)
			}
		})
	}
}

// An upstream that allows 5 concurrent streams: the proxy's check for a
// free stream slot and the stream's creation were not atomic, so the
// requests woken together all went, exceeded the server's limit, were
// refused and answered 502.
func TestH2UpstreamStreamLimitRespected(t *testing.T) {
	const (
		limit = 5
		n     = 100
	)
	var in, most atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := in.Add(1)
		defer in.Add(-1)
		for m := most.Load(); k > m && !most.CompareAndSwap(m, k); m = most.Load() {
		}
		time.Sleep(5 * time.Millisecond) // holds the stream open: requests overlap
		io.WriteString(w, "ok")
	})
	s := httptest.NewUnstartedServer(h)
	s.EnableHTTP2 = true
	s.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: limit}
	pool := startTLS(t, s)
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) {
			r := newRigMode(t, s.Listener.Addr().String(), Options{UpstreamRoots: pool}, blocking)
			cl := oneConnClient(t, r)
			// The upstream's SETTINGS, with its limit, are in after one
			// request.
			if resp, body := h2Get(t, cl, "/warm"); resp.StatusCode != http.StatusOK || body != "ok" {
				t.Fatalf("warm-up: %d %q", resp.StatusCode, body)
			}
			most.Store(0)
			errs := make(chan error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					resp, err := cl.Get("https://example.com/" + strconv.Itoa(i))
					if err != nil {
						errs <- err
						return
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK || string(b) != "ok" {
						errs <- fmt.Errorf("/%d: %d %q %v", i, resp.StatusCode, b, err)
					}
				})
			}
			wg.Wait()
			close(errs)
			failed := 0
			for err := range errs {
				if failed++; failed <= 3 {
					t.Error(err)
				}
			}
			if failed > 0 {
				t.Errorf("%d of %d requests failed", failed, n)
			}
			if m := most.Load(); m > limit {
				t.Errorf("the upstream saw %d requests at once, more than the %d streams it allows", m, limit)
			}
		})
	}
}

// The proxy answers a POST before its body ended and resets the stream
// with NO_ERROR; the client's trailers, in flight by then, must be
// ignored (RFC 9113, 5.1), not taken for a connection error that ends
// every stream.
func TestH2TrailersAfterResetKeepConnection(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "early "+r.URL.Path)
	})
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) {
			r, _ := h2Setup(t, h, true, blocking, Options{})
			w := dialH2Wire(t, r)
			w.regressOpen(1, http.MethodPost, "/up", false)
			if err := w.fr.WriteData(1, false, []byte("part")); err != nil {
				t.Fatal(err)
			}
			if status, body := w.response(1); status != "200" || body != "early /up" {
				t.Fatalf("stream 1: %s %q", status, body)
			}
			if e := w.next(); !e.rst || e.stream != 1 || e.code != http2.ErrCodeNo {
				t.Fatalf("want RST_STREAM NO_ERROR on stream 1 after its response, got %+v", e)
			}
			// The client's trailers, sent before it saw the RST_STREAM.
			w.hb.Reset()
			w.enc.WriteField(hpack.HeaderField{Name: "x-checksum", Value: "abc"})
			if err := w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: w.hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
				t.Fatal(err)
			}
			w.get(3, "/next")
			if status, body := w.response(3); status != "200" || body != "early /next" {
				t.Errorf("stream 3, after late trailers on stream 1: %s %q", status, body)
			}
		})
	}
}

// A connection with no stream is idle however many PINGs its client
// sends: the idle timeout counts from the last stream's end, as x/net's
// server does. A parked connection re-armed a full timer at each PING, and
// lived as long as they came.
func TestH2PingsDoNotDefeatIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	for _, blocking := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocking=%v", blocking), func(t *testing.T) {
			t.Parallel() // the cases wait on timers: overlapped
			r, _ := h2Setup(t, http.NotFoundHandler(), true, blocking, Options{IdleTimeout: idle})
			start := time.Now()
			w := dialH2Wire(t, r)
			// Take the proxy's SETTINGS first; then one goroutine reads
			// (and writes nothing) while this one sends PINGs.
			w.awaitSettings()
			closed := make(chan error, 1)
			go func() {
				for {
					f, err := w.fr.ReadFrame()
					if err != nil {
						closed <- err
						return
					}
					if g, ok := f.(*http2.GoAwayFrame); ok {
						closed <- fmt.Errorf("GOAWAY %v", g.ErrCode)
						return
					}
				}
			}()
			tick := time.NewTicker(idle / 4)
			defer tick.Stop()
			deadline := time.After(5 * idle)
			for {
				select {
				case <-tick.C:
					if err := w.fr.WritePing(false, [8]byte{1}); err != nil {
						t.Fatalf("PING: %v", err) // closed without GOAWAY
					}
					continue
				case err := <-closed:
					if d := time.Since(start); d < idle/2 {
						t.Errorf("closed after %v (%v), before the idle timeout (%v)", d, err, idle)
					}
				case <-deadline:
					t.Errorf("still open after %v of PINGs and no stream, with an idle timeout of %v", 5*idle, idle)
				}
				return
			}
		})
	}
}

// A client sending no User-Agent: ReverseProxy sets an empty one so that
// net/http adds none of its own, and net/http then sends none; the
// proxy's HTTP/2 client sent an empty user-agent field. One that is sent
// goes through as it is.
func TestH2NoEmptyUserAgentUpstream(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := r.Header["User-Agent"]
		fmt.Fprintf(w, "%v %q", ok, v)
	})
	for _, upH2 := range []bool{true, false} {
		t.Run(upProto(upH2), func(t *testing.T) {
			r, _ := h2Setup(t, h, upH2, false, Options{})
			w := dialH2Wire(t, r)
			w.get(1, "/")
			if _, body := w.response(1); body != "false []" {
				t.Errorf("a request with no User-Agent reached the upstream with User-Agent %s, want none", strings.TrimPrefix(body, "true "))
			}
			w.hb.Reset()
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "example.com"}, {":path", "/"}, {"user-agent", "regress/1.0"}} {
				w.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			if err := w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: w.hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
				t.Fatal(err)
			}
			if _, body := w.response(3); body != `true ["regress/1.0"]` {
				t.Errorf("User-Agent regress/1.0 reached the upstream as %s", body)
			}
		})
	}
}

// awaitSettings reads up to the proxy's SETTINGS and acknowledges them.
func (w *h2Wire) awaitSettings() {
	w.t.Helper()
	for {
		f, err := w.fr.ReadFrame()
		if err != nil {
			w.t.Fatal(err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			w.fr.WriteSettingsAck()
			return
		}
	}
}
