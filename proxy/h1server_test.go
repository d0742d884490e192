package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowdog/flowdog/interceptors"
	"github.com/flowdog/flowdog/internal/testutil"
)

// modes runs f with the proxy parking idle connections (as in flowdog)
// and with it waiting in Read (legs that cannot report readiness).
func modes(t *testing.T, f func(t *testing.T, blocking bool)) {
	t.Run("parking", func(t *testing.T) { f(t, false) })
	t.Run("blocking", func(t *testing.T) { f(t, true) })
}

// wire is a raw client connection to a rig, for exact HTTP/1.x bytes.
type wire struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialWire(t *testing.T, r *rig) *wire {
	t.Helper()
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &wire{t: t, c: c, br: bufio.NewReader(c)}
}

func (w *wire) send(s string) {
	w.t.Helper()
	if _, err := io.WriteString(w.c, s); err != nil {
		w.t.Fatal(err)
	}
}

// response reads one response to a request of method.
func (w *wire) response(method string) (*http.Response, string) {
	w.t.Helper()
	resp, err := http.ReadResponse(w.br, &http.Request{Method: method})
	if err != nil {
		w.t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		w.t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

// closed reports whether the proxy closed the connection (EOF or reset
// before any byte).
func (w *wire) closed() bool {
	w.t.Helper()
	_, err := w.br.ReadByte()
	return err != nil && !isTimeout(err)
}

// pathServer answers with the request's method, path and body length.
func pathServer(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Body-Length", strconv.FormatInt(n, 10))
		io.WriteString(w, r.Method+" "+r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestH1KeepAliveAndPipelining(t *testing.T) {
	modes(t, func(t *testing.T, blocking bool) {
		srv := pathServer(t)
		r := newRigMode(t, srv.Listener.Addr().String(), Options{}, blocking)
		w := dialWire(t, r)
		// Two requests in one segment, then a third after the connection
		// went idle: answered in order on the one connection.
		w.send("GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nPOST /two HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc")
		for _, want := range []string{"GET /one", "POST /two"} {
			resp, body := w.response("GET")
			if body != want || resp.Close {
				t.Fatalf("got %q close=%v, want %q on a kept connection", body, resp.Close, want)
			}
		}
		time.Sleep(50 * time.Millisecond)
		w.send("GET /three HTTP/1.1\r\nHost: a.test\r\n\r\n")
		if _, body := w.response("GET"); body != "GET /three" {
			t.Fatalf("after idling: %q", body)
		}
		if !blocking && r.detached.Load() != 1 {
			t.Errorf("connection detached %d times, want once (it parked)", r.detached.Load())
		}
	})
}

func TestH1HTTP10AndHEAD(t *testing.T) {
	modes(t, func(t *testing.T, blocking bool) {
		srv := pathServer(t)
		r := newRigMode(t, srv.Listener.Addr().String(), Options{}, blocking)

		w := dialWire(t, r)
		w.send("GET /a HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n")
		resp, body := w.response("GET")
		if body != "GET /a" || resp.Header.Get("Connection") != "keep-alive" || resp.ContentLength != int64(len(body)) {
			t.Fatalf("HTTP/1.0 keep-alive: %q Connection=%q length=%d", body, resp.Header.Get("Connection"), resp.ContentLength)
		}
		w.send("HEAD /b HTTP/1.0\r\nHost: a.test\r\n\r\n")
		resp, body = w.response("HEAD")
		if body != "" || resp.ContentLength != int64(len("HEAD /b")) {
			t.Errorf("HEAD: body %q, length %d: want no body and the GET's length", body, resp.ContentLength)
		}
		if !resp.Close || !w.closed() {
			t.Errorf("an HTTP/1.0 request without keep-alive must close the connection")
		}
	})
}

func TestH1MalformedRequestsAnswered(t *testing.T) {
	for _, c := range []struct {
		name, req string
		code      int
	}{
		{"bad target", "GET /\x01 HTTP/1.1\r\nHost: a.test\r\n\r\n", http.StatusBadRequest},
		{"bad header line", "GET / HTTP/1.1\r\nHost: a.test\r\nno colon\r\n\r\n", http.StatusBadRequest},
		{"no host", "GET / HTTP/1.1\r\n\r\n", http.StatusBadRequest},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", http.StatusBadRequest},
		{"two transfer encodings", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", http.StatusNotImplemented},
		{"bad header", "GET / HTTP/1.1\r\nHost: a.test\r\nBad Name: x\r\n\r\n", http.StatusBadRequest},
		{"version", "GET / HTTP/2.0\r\nHost: a.test\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"expect", "GET / HTTP/1.1\r\nHost: a.test\r\nExpect: teapot\r\n\r\n", http.StatusExpectationFailed},
		{"transfer encoding", "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n", http.StatusNotImplemented},
		{"huge headers", "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: " + strings.Repeat("a", 2*maxHeaderBytes) + "\r\n\r\n",
			http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := pathServer(t)
			r := newRig(t, srv.Listener.Addr().String(), Options{})
			w := dialWire(t, r)
			// The proxy may answer before the whole request is written.
			go io.WriteString(w.c, c.req)
			resp, body := w.response("GET")
			if resp.StatusCode != c.code || !strings.HasPrefix(body, "flowdog: ") || !resp.Close {
				t.Errorf("got %d %q close=%v, want %d with a reason, closing", resp.StatusCode, body, resp.Close, c.code)
			}
			if !w.closed() {
				t.Error("connection left open after a bad request")
			}
		})
	}
}

func TestH1UnreadRequestBody(t *testing.T) {
	// A request hook that answers without reading the body.
	h := &hooks{request: func(_ *interceptors.Flow, r *http.Request) (*http.Response, error) {
		if r.URL.Path != "/deny" {
			return nil, nil
		}
		return &http.Response{StatusCode: http.StatusForbidden, Header: http.Header{}, Body: http.NoBody}, nil
	}}
	modes(t, func(t *testing.T, blocking bool) {
		srv := pathServer(t)
		r := newRigMode(t, srv.Listener.Addr().String(), Options{Chain: chainOf(t, h, "http")}, blocking)

		// A small body is read and dropped: the connection is kept.
		w := dialWire(t, r)
		w.send("POST /deny HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello")
		resp, _ := w.response("POST")
		if resp.StatusCode != http.StatusForbidden || resp.Close {
			t.Fatalf("got %d close=%v, want 403 on a kept connection", resp.StatusCode, resp.Close)
		}
		w.send("GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n")
		if _, body := w.response("GET"); body != "GET /next" {
			t.Fatalf("next request after a dropped body: %q", body)
		}

		// A big one is not: the response arrives whole, then the
		// connection closes (it is not reset under the client's feet).
		w = dialWire(t, r)
		big := 2 * maxDrain
		go func() {
			io.WriteString(w.c, "POST /deny HTTP/1.1\r\nHost: a.test\r\nContent-Length: "+strconv.Itoa(big)+"\r\n\r\n")
			w.c.Write(make([]byte, big))
		}()
		resp, _ = w.response("POST")
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("got %d, want 403", resp.StatusCode)
		}
		if !w.closed() {
			t.Error("connection kept with most of a body unread")
		}

		// A client waiting for 100 Continue is answered, and the
		// connection closes: the body will not come.
		w = dialWire(t, r)
		w.send("POST /deny HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		resp, _ = w.response("POST")
		if resp.StatusCode != http.StatusForbidden || !resp.Close {
			t.Errorf("got %d close=%v, want 403 and Connection: close", resp.StatusCode, resp.Close)
		}
	})
}

func TestH1ResponseFraming(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream": // unknown length: chunked on to the client
			for i := range 3 {
				io.WriteString(w, strconv.Itoa(i))
				w.(http.Flusher).Flush()
			}
		case "/close":
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	t.Cleanup(srv.Close)
	modes(t, func(t *testing.T, blocking bool) {
		r := newRigMode(t, srv.Listener.Addr().String(), Options{}, blocking)
		w := dialWire(t, r)
		w.send("GET /stream HTTP/1.1\r\nHost: a.test\r\n\r\n")
		resp, body := w.response("GET")
		if body != "012" || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("stream: %q %v, want 012 chunked", body, resp.TransferEncoding)
		}
		w.send("GET /nocontent HTTP/1.1\r\nHost: a.test\r\n\r\n")
		if resp, body = w.response("GET"); resp.StatusCode != http.StatusNoContent || body != "" {
			t.Errorf("204: %d %q", resp.StatusCode, body)
		}
		// The server closes after this one: the client is told so in
		// the response, not by a surprise FIN on its next request.
		w.send("GET /close HTTP/1.1\r\nHost: a.test\r\n\r\n")
		resp, body = w.response("GET")
		if body != "bye" || !resp.Close {
			t.Errorf("got %q close=%v, want bye with Connection: close", body, resp.Close)
		}
		if !w.closed() {
			t.Error("connection kept after the server's last response")
		}
	})
}

func TestH1IdleTimeout(t *testing.T) {
	modes(t, func(t *testing.T, blocking bool) {
		srv := pathServer(t)
		r := newRigMode(t, srv.Listener.Addr().String(), Options{IdleTimeout: 200 * time.Millisecond}, blocking)
		w := dialWire(t, r)
		w.send("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
		w.response("GET")
		if !w.closed() {
			t.Fatal("idle connection not closed after the idle timeout")
		}
	})
}

// The parked connection notices what happens on either leg while idle.
func TestH1ParkedConnectionFollowsTheServer(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.Config.IdleTimeout = 300 * time.Millisecond // the server closes idle keep-alive connections
	srv.Start()
	t.Cleanup(srv.Close)
	r := newRig(t, srv.Listener.Addr().String(), Options{})
	w := dialWire(t, r)
	w.send("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
	if _, body := w.response("GET"); body != "ok" {
		t.Fatalf("body %q", body)
	}
	// Without flowdog the client would see the server's FIN; with it, too
	// (rather than a 502 on its next request).
	if !w.closed() {
		t.Fatal("the server closed its idle connection; the client's stayed open")
	}
	testutil.Eventually(t, 5*time.Second, "the parked connection released",
		func() bool { return r.released.Load() == r.detached.Load() && r.detached.Load() > 0 })
}

func TestH1ClientLeavingEndsTheUpstreamRequest(t *testing.T) {
	gone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // a long poll: answers only when the client goes
		close(gone)
	}))
	t.Cleanup(srv.Close)
	r := newRig(t, srv.Listener.Addr().String(), Options{ResponseHeaderTimeout: time.Minute})
	w := dialWire(t, r)
	w.send("GET /poll HTTP/1.1\r\nHost: a.test\r\n\r\n")
	time.Sleep(100 * time.Millisecond) // the request is upstream
	w.c.Close()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the client left, and the server's request stayed open")
	}
}

func TestH1TLSParksAndResumes(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool})
	raw, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{RootCAs: r.rootPool(), ServerName: "example.com", NextProtos: []string{"http/1.1"}})
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	w := &wire{t: t, c: c, br: bufio.NewReader(c)}
	for i := range 3 {
		path := "/" + strconv.Itoa(i)
		w.send("GET " + path + " HTTP/1.1\r\nHost: example.com\r\n\r\n")
		if _, body := w.response("GET"); body != path {
			t.Fatalf("request %d: %q", i, body)
		}
		time.Sleep(30 * time.Millisecond) // idle: parked
	}
	if r.detached.Load() != 1 {
		t.Errorf("detached %d times, want once", r.detached.Load())
	}
}
