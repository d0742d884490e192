package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowdog/flowdog/interceptors"
)

// rawUpstream accepts connections and runs serve on each one.
func rawUpstream(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				serve(c, bufio.NewReader(c))
			})
		}
	})
	return ln.Addr().String()
}

// A server that dies in the middle of a chunked response must not look to
// the client like a complete response: the response is aborted, as
// net/http's server does (ReverseProxy panics with http.ErrAbortHandler
// when it finds http.ServerContextKey in the request's context), not ended
// with a clean last chunk.
func TestH1TruncatedResponseIsNotCompleted(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		time.Sleep(50 * time.Millisecond)
		// Dies here: no last chunk.
	})
	modes(t, func(t *testing.T, blocking bool) {
		r := newRigMode(t, up, Options{}, blocking)
		w := dialWire(t, r)
		w.send("GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
		resp, err := http.ReadResponse(w.br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Errorf("the upstream died mid-body, and the client got a complete response %q (chunked=%v)",
				b, resp.TransferEncoding)
		}
	})
}

// delayPoll is a client leg whose readiness callbacks start late, as a
// callback goroutine does on a busy machine (netstackx's readableWaiter
// runs f on a goroutine started from gVisor's notification).
type delayPoll struct {
	*pollTCP
	delay time.Duration
}

func (d *delayPoll) OnReadable(f func()) (stop func() bool) {
	return d.pollTCP.OnReadable(func() { time.Sleep(d.delay); f() })
}

// newDelayRig is newRig (parking) with a client leg whose readiness
// callbacks run delay late.
func newDelayRig(t *testing.T, upstream string, o Options, delay time.Duration) *rig {
	t.Helper()
	r := &rig{upstream: upstream, wrapClient: func(p *pollTCP) net.Conn { return &delayPoll{pollTCP: p, delay: delay} }}
	return startRig(t, r, o)
}

// The client watch of one request (checkClient) may run late, during the
// next one: endWatch's stop fails once the callback has fired. It must
// then leave the reader alone, which the next request's body is being read
// from by the upstream writer. Run with -race.
func TestH1LateWatchCallbackLeavesNextRequestAlone(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(100 * time.Millisecond)
		}
		n, _ := io.Copy(io.Discard, r.Body)
		io.WriteString(w, r.Method+" "+r.URL.Path+" "+strconv.FormatInt(n, 10))
	}))
	t.Cleanup(srv.Close)
	r := newDelayRig(t, srv.Listener.Addr().String(), Options{}, 150*time.Millisecond)
	w := dialWire(t, r)
	w.send("GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
	time.Sleep(30 * time.Millisecond) // /slow is in the handler, its watch armed
	// The next request arrives while /slow is served: the watch fires,
	// late.
	w.send("POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\nhello")
	if _, body := w.response("GET"); body != "GET /slow 0" {
		t.Fatalf("first: %q", body)
	}
	time.Sleep(200 * time.Millisecond) // the stale checkClient runs while /echo's body is read
	w.send("world")
	if _, body := w.response("POST"); body != "POST /echo 10" {
		t.Fatalf("second: %q", body)
	}
}

// A handler may write while it reads the request (EnableFullDuplex): the
// response header must not wait for a read of the body in progress (the
// upstream writer blocks in one while the client has not sent more).
func TestH1ResponseHeaderNotHeldByBodyRead(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		buf := make([]byte, 5)
		io.ReadFull(r.Body, buf)
		w.WriteHeader(http.StatusOK)
		rc.Flush()
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "done")
	}))
	t.Cleanup(srv.Close)
	modes(t, func(t *testing.T, blocking bool) {
		r := newRigMode(t, srv.Listener.Addr().String(), Options{}, blocking)
		w := dialWire(t, r)
		w.send("POST /dup HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		w.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := w.br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Errorf("no response header while the upload is open: %q %v", line, err)
		}
		w.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		w.send("0\r\n\r\n")
	})
}

// The CRLF that old clients send after a POST body is dropped, as
// net/http's server drops it (RFC 9112 section 2.2: a server SHOULD ignore
// at least one empty line before a request line).
func TestH1EmptyLineAfterPOSTIsIgnored(t *testing.T) {
	modes(t, func(t *testing.T, blocking bool) {
		srv := pathServer(t)
		r := newRigMode(t, srv.Listener.Addr().String(), Options{}, blocking)
		w := dialWire(t, r)
		w.send("POST /one HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc\r\n")
		if resp, body := w.response("POST"); body != "POST /one" || resp.Close {
			t.Fatalf("first: %q close=%v", body, resp.Close)
		}
		w.send("GET /two HTTP/1.1\r\nHost: a.test\r\n\r\n")
		if resp, body := w.response("GET"); body != "GET /two" {
			t.Errorf("after a CRLF following a POST body: %d %q", resp.StatusCode, body)
		}
	})
}

// An upstream that closes right after a response without saying so
// (no Connection: close). The client's next request comes 1 ms later.
// Without flowdog the client finds the connection closed and retries on a
// new one (Go's Transport does, for an idle connection the server
// closed), and so it must with flowdog, even when the request comes
// while the proxy still waits for it (before parking), not a 502.
func TestH1UpstreamCloseRightAfterResponse(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// returns: the connection closes, no Connection: close said
	})
	r := newRig(t, up, Options{})
	fails := 0
	for i := 0; i < 20; i++ {
		w := dialWire(t, r)
		w.send("GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
		if _, body := w.response("GET"); body != "ok" {
			t.Fatalf("first: %q", body)
		}
		time.Sleep(time.Millisecond)
		w.send("GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
		resp, err := http.ReadResponse(w.br, &http.Request{Method: "GET"})
		if err == nil {
			resp.Body.Close()
			if fails++; fails == 1 {
				t.Logf("try %d: second request answered %d (want the connection closed, as the server closed it)", i, resp.StatusCode)
			}
		}
		w.c.Close()
	}
	if fails > 0 {
		t.Errorf("%d of 20 clients got a response from a server that had closed the connection", fails)
	}
}

// countPoll counts the readiness callbacks a parking connection asks for
// on its client leg: one per park.
type countPoll struct {
	*pollTCP
	n *atomic.Int64
}

func (c *countPoll) OnReadable(f func()) (stop func() bool) {
	c.n.Add(1)
	return c.pollTCP.OnReadable(f)
}

// A response hook may replace resp.Body without closing the upstream one
// (interceptors.ResponseHook allows it). The upstream exchange must still
// end: the connection must not hold it, spin between parking and waking
// for the unread upstream bytes, nor make the next request wait.
func TestH1ReplacedResponseBodyReleasesUpstream(t *testing.T) {
	big := strings.Repeat("x", 256<<10) // more than the upstream reader and socket buffers hold
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, big)
	}))
	t.Cleanup(srv.Close)
	h := &hooks{response: func(_ *interceptors.Flow, resp *http.Response) error {
		resp.Body = io.NopCloser(strings.NewReader("replaced")) // the original is not closed
		resp.ContentLength = -1
		resp.Header.Del("Content-Length")
		return nil
	}}
	var parks atomic.Int64
	r := &rig{upstream: srv.Listener.Addr().String(), wrapClient: func(p *pollTCP) net.Conn { return &countPoll{pollTCP: p, n: &parks} }}
	startRig(t, r, Options{Chain: chainOf(t, h, "http"), IdleTimeout: time.Minute})
	w := dialWire(t, r)
	w.send("GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
	if _, body := w.response("GET"); body != "replaced" {
		t.Fatalf("first: %q", body)
	}
	time.Sleep(300 * time.Millisecond)
	if n := parks.Load(); n > 5 {
		t.Errorf("the idle connection parked %d times in 300 ms (want once): a wake-up loop", n)
	}
	w.send("GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
	w.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := http.ReadResponse(w.br, &http.Request{Method: "GET"}); isTimeout(err) {
		t.Errorf("second request: %v (it waits for the semaphore the replaced body holds)", err)
	}
}

// proxy.http2 off: a client that offers h2 and http/1.1 speaks HTTP/1.1
// on both legs; a client that offers only h2 (gRPC) still gets HTTP/2.
func TestHTTP2OffALPN(t *testing.T) {
	for _, serverH2 := range []bool{true, false} {
		srv, pool := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.Proto)
		}), serverH2)
		r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool, DisableHTTP2: true})
		for _, c := range []struct {
			name       string
			cl         *http.Client
			wantClient string
		}{
			{"h2+h1 client", r.client(true, "example.com"), "HTTP/1.1"},
			{"h2-only client", r.h2Client("example.com"), "HTTP/2.0"},
		} {
			resp, err := c.cl.Get("https://example.com/")
			if err != nil {
				t.Errorf("server h2=%v, %s: %v", serverH2, c.name, err)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.Proto != c.wantClient {
				t.Errorf("server h2=%v, %s: client leg %s, want %s", serverH2, c.name, resp.Proto, c.wantClient)
			}
			if c.name == "h2+h1 client" && string(b) != "HTTP/1.1" {
				t.Errorf("server h2=%v, %s: upstream leg %s, want HTTP/1.1", serverH2, c.name, b)
			}
		}
	}
}

// For every HTTP offer a client may make, and whatever the server picks
// from flowdog's offer (or nothing), what flowdog offers the client back
// holds something the client offered: the client's handshake never ends
// in no_application_protocol.
func TestALPNAlwaysAgrees(t *testing.T) {
	offers := [][]string{{"h2"}, {"http/1.1"}, {"h2", "http/1.1"}, {"http/1.1", "h2"}, {"h2", "acme-x"}, {"http/1.0", "h2"}}
	for _, off := range []bool{false, true} {
		c := &conn{p: &Proxy{o: Options{DisableHTTP2: off}}}
		for _, offer := range offers {
			h := &hello{ALPN: offer}
			up := upstreamALPN(c.clientOffer(h))
			for _, chosen := range append([]string{""}, up...) {
				got := clientALPN(chosen, c.clientOffer(h))
				ok := false
				for _, p := range got {
					ok = ok || slices.Contains(offer, p)
				}
				if !ok {
					t.Errorf("http2 off=%v, client offers %q, server picks %q: flowdog offers the client %q", off, offer, chosen, got)
				}
			}
		}
	}
}
