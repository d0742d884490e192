package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flowdog/flowdog/interceptors"
	"github.com/flowdog/flowdog/internal/testutil"
)

// tagHooks adds a header both ways, like geneve_headers.
func tagHooks() *hooks {
	return &hooks{
		request: func(f *interceptors.Flow, r *http.Request) (*http.Response, error) {
			r.Header.Set("X-Flowdog-Seen", f.EndpointID)
			return nil, nil
		},
		response: func(f *interceptors.Flow, r *http.Response) error {
			r.Header.Set("X-Flowdog-Seen", fmt.Sprintf("%08x", f.FlowCookie))
			return nil
		},
	}
}

func echoHeaderHandler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Server-Got", r.Header.Get("X-Flowdog-Seen"))
	w.Header().Set("X-Server-Proto", r.Proto)
	w.Header().Set("X-Server-Saw-XFF", strings.Join(r.Header.Values("X-Forwarded-For"), ","))
	io.WriteString(w, "hello from "+r.Host+r.URL.Path)
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestPlainHTTPThroughHooks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(echoHeaderHandler))
	defer srv.Close()
	r := newRig(t, srv.Listener.Addr().String(), Options{Chain: chainOf(t, tagHooks(), "http")})
	resp, body := get(t, r.client(false, ""), "http://example.test/path")
	if body != "hello from example.test/path" {
		t.Errorf("body %q", body)
	}
	if got := resp.Header.Get("X-Server-Got"); got != "vpce-0123456789abcdef0" {
		t.Errorf("server saw %q, want the request hook's header", got)
	}
	if got := resp.Header.Get("X-Flowdog-Seen"); got != "00c00c1e" {
		t.Errorf("client saw %q, want the response hook's header", got)
	}
	if got := resp.Header.Get("X-Server-Saw-XFF"); got != "" {
		t.Errorf("server saw X-Forwarded-For %q: flowdog must be transparent", got)
	}
	if n := r.counter(t, r.p.m.conns("http")); n != 1 {
		t.Errorf("http connections = %v", n)
	}
}

func TestClientXForwardedForKeptAsSent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(echoHeaderHandler))
	defer srv.Close()
	r := newRig(t, srv.Listener.Addr().String(), Options{})
	req, _ := http.NewRequest("GET", "http://example.test/", nil)
	req.Header.Set("X-Forwarded-For", "192.0.2.7")
	resp, err := r.client(false, "").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Server-Saw-XFF"); got != "192.0.2.7" {
		t.Errorf("server saw X-Forwarded-For %q, want the client's own", got)
	}
}

func TestHTTPSInterceptedBothWays(t *testing.T) {
	for _, c := range []struct {
		name               string
		clientH2, serverH2 bool
		h2Only             bool
		wantServer, wantCl string
	}{
		{"h1-h1", false, false, false, "HTTP/1.1", "HTTP/1.1"},
		{"h2-h2", true, true, false, "HTTP/2.0", "HTTP/2.0"},
		// Offered both, the client gets what the server chose (a browser
		// then opens parallel connections instead of queueing on one).
		{"h1+h2 client, h1-only server", true, false, false, "HTTP/1.1", "HTTP/1.1"},
		{"h2-only client, h1-only server", true, false, true, "HTTP/1.1", "HTTP/2.0"},
		{"h1 client, h2 server", false, true, false, "HTTP/1.1", "HTTP/1.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, pool := tlsServer(t, http.HandlerFunc(echoHeaderHandler), c.serverH2)
			r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool, Chain: chainOf(t, tagHooks(), "http")})
			// httptest's certificate names example.com.
			cl := r.client(c.clientH2, "example.com")
			if c.h2Only {
				cl = r.h2Client("example.com")
			}
			for i := range 3 { // keep-alive: several requests on one connection
				resp, body := get(t, cl, fmt.Sprintf("https://example.com/%d", i))
				if body != fmt.Sprintf("hello from example.com/%d", i) {
					t.Fatalf("body %q", body)
				}
				if got := resp.Header.Get("X-Server-Proto"); got != c.wantServer {
					t.Errorf("server proto %s, want %s", got, c.wantServer)
				}
				if resp.Proto != c.wantCl {
					t.Errorf("client proto %s, want %s", resp.Proto, c.wantCl)
				}
				if resp.Header.Get("X-Server-Got") == "" || resp.Header.Get("X-Flowdog-Seen") == "" {
					t.Error("hooks did not run on both legs")
				}
				issuer := resp.TLS.PeerCertificates[0].Issuer.CommonName
				if !strings.Contains(issuer, "flowdog") {
					t.Errorf("client saw a certificate issued by %q, want flowdog's intermediate", issuer)
				}
			}
			if n := r.counter(t, r.p.m.conns("tls_intercepted")); n != 1 {
				t.Errorf("intercepted connections = %v, want 1 (keep-alive)", n)
			}
		})
	}
}

func TestH2ClientConcurrentStreamsOnH1Upstream(t *testing.T) {
	var inflight, maxInflight atomic.Int32
	srv, pool := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			m := maxInflight.Load()
			if n <= m || maxInflight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		io.WriteString(w, r.URL.Path)
	}), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool})
	cl := r.h2Client("example.com")
	errs := make(chan error, 20)
	for i := range 20 {
		go func() {
			resp, err := cl.Get(fmt.Sprintf("https://example.com/%d", i))
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != fmt.Sprintf("/%d", i) {
					err = fmt.Errorf("stream %d got %q", i, b)
				}
			}
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if m := maxInflight.Load(); m != 1 {
		t.Errorf("server saw %d concurrent requests: the one HTTP/1.1 upstream must serialize them", m)
	}
}

func TestSNIPassthroughShowsServerCertificate(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(echoHeaderHandler), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool,
		Passthrough: Passthrough{SNI: []string{"*.example.com"}}})
	cl := r.client(false, "example.com")
	cl.Transport.(*http.Transport).TLSClientConfig.RootCAs = pool // trusts only the real server
	resp, _ := get(t, cl, "https://example.com/")
	if !resp.TLS.PeerCertificates[0].Equal(srv.Certificate()) {
		t.Error("client did not see the server's own certificate")
	}
	if n := r.counter(t, r.p.m.conns("tls_passthrough")); n != 1 {
		t.Errorf("passthrough connections = %v", n)
	}
}

func TestNoSNIClientGetsIPCertificate(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(echoHeaderHandler), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool})
	c, err := tls.Dial("tcp", r.addr(), &tls.Config{RootCAs: r.rootPool(), ServerName: "127.0.0.1"}) // an IP: no SNI sent
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	leaf := c.ConnectionState().PeerCertificates[0]
	if len(leaf.IPAddresses) == 0 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("leaf IPs %v, want the destination 127.0.0.1", leaf.IPAddresses)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("response %v %v", resp, err)
	}
}

func TestBadServerCertificateFailsClientAndIsCounted(t *testing.T) {
	srv, _ := tlsServer(t, http.HandlerFunc(echoHeaderHandler), false)
	// flowdog does not trust the server's CA.
	r := newRig(t, srv.Listener.Addr().String(), Options{})
	_, err := r.client(false, "example.com").Get("https://example.com/")
	if err == nil {
		t.Fatal("request succeeded through a server flowdog cannot verify")
	}
	if n := r.counter(t, r.p.m.upstreamTLSErrors.WithLabelValues("bad_server_certificate")); n != 1 {
		t.Errorf("bad_server_certificate = %v, want 1", n)
	}
}

func TestPinningClientLearnsPassthrough(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(echoHeaderHandler), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool, AutoPassthrough: true})
	// A "pinning" client trusts only the real server's CA.
	pinned := &tls.Config{RootCAs: pool, ServerName: "example.com"}
	if c, err := tls.Dial("tcp", r.addr(), pinned); err == nil {
		c.Close()
		t.Fatal("pinning client accepted flowdog's certificate")
	}
	deadline := time.Now().Add(2 * time.Second)
	for r.counter(t, r.p.m.clientTLSErrors.WithLabelValues("certificate_rejected")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("rejection not counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := tls.Dial("tcp", r.addr(), pinned)
	if err != nil {
		t.Fatalf("after the rejection the destination is not passed through: %v", err)
	}
	c.Close()
}

func TestWebSocketMessagesRewritten(t *testing.T) {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			typ, m, err := ws.ReadMessage()
			if err != nil {
				return
			}
			if string(m) == "BYE" { // upper-cased by the hook
				ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "server says bye"))
				continue
			}
			ws.WriteMessage(typ, append([]byte("echo:"), m...))
		}
	}))
	defer srv.Close()
	h := &hooks{websocket: func(f *interceptors.Flow, r *http.Request, m *interceptors.WebSocketMessage) error {
		switch {
		case m.FromClient && string(m.Data) == "secret":
			m.Drop = true
		case m.FromClient:
			m.Data = bytes.ToUpper(m.Data)
		}
		return nil
	}}
	r := newRig(t, srv.Listener.Addr().String(), Options{Chain: chainOf(t, h, "ws")})
	d := websocket.Dialer{NetDial: func(_, _ string) (net.Conn, error) { return net.Dial("tcp", r.addr()) }}
	ws, _, err := d.Dial("ws://example.test/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, m := range []string{"hello", "secret", "again"} {
		ws.WriteMessage(websocket.TextMessage, []byte(m))
	}
	for _, want := range []string{"echo:HELLO", "echo:AGAIN"} {
		_, got, err := ws.ReadMessage()
		if err != nil || string(got) != want {
			t.Fatalf("got %q %v, want %q (the dropped message must not arrive)", got, err, want)
		}
	}
	// Pings are carried across and answered by the server.
	pong := make(chan string, 1)
	ws.SetPongHandler(func(s string) error { pong <- s; return nil })
	ws.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(time.Second))
	ws.WriteMessage(websocket.TextMessage, []byte("bye"))
	_, _, err = ws.ReadMessage() // processes the pong, then the close
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Text != "server says bye" {
		t.Errorf("close %v, want the server's code 4001 carried across", err)
	}
	select {
	case p := <-pong:
		if p != "p1" {
			t.Errorf("pong %q", p)
		}
	default:
		t.Error("ping not answered through the proxy")
	}
}

func TestRawTCPThroughStreamHook(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	h := &hooks{tcp: func(f *interceptors.Flow, m *interceptors.TCPMessage) error {
		if m.FromClient {
			m.Data = bytes.ToUpper(m.Data)
		}
		return nil
	}}
	r := newRig(t, ln.Addr().String(), Options{Chain: chainOf(t, h, "tcp")})
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "\x00binary echo protocol")
	c.(*net.TCPConn).CloseWrite() // half-close carries across
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "\x00BINARY ECHO PROTOCOL" {
		t.Fatalf("got %q %v", got, err)
	}
}

func TestServerFirstProtocolIsSpliced(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.WriteString(c, "220 smtp.example ESMTP\r\n")
		b := make([]byte, 64)
		n, _ := c.Read(b)
		io.WriteString(c, "250 got "+string(b[:n]))
		c.Close()
	}()
	r := newRig(t, ln.Addr().String(), Options{SniffTimeout: 10 * time.Second})
	c, _ := net.Dial("tcp", r.addr())
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "220 smtp.example ESMTP\r\n" {
		t.Fatalf("banner %q %v: a server-first protocol must not wait for the client", line, err)
	}
	io.WriteString(c, "EHLO x\r\n")
	rest, _ := io.ReadAll(br)
	if string(rest) != "250 got EHLO x\r\n" {
		t.Errorf("got %q", rest)
	}
}

func TestInterceptorPanicFailsOnlyThatRequest(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(echoHeaderHandler))
	defer srv.Close()
	h := &hooks{request: func(f *interceptors.Flow, r *http.Request) (*http.Response, error) {
		if r.URL.Path == "/boom" {
			panic("interceptor bug")
		}
		return nil, nil
	}}
	r := newRig(t, srv.Listener.Addr().String(), Options{Chain: chainOf(t, h, "http")})
	cl := r.client(false, "")
	resp, body := get(t, cl, "http://example.test/boom")
	if resp.StatusCode != 502 || !strings.Contains(body, "interceptor test_http failed") {
		t.Errorf("panic gave %d %q, want a 502 naming the interceptor", resp.StatusCode, body)
	}
	resp, body = get(t, cl, "http://example.test/fine")
	if resp.StatusCode != 200 || body != "hello from example.test/fine" {
		t.Errorf("next request: %d %q", resp.StatusCode, body)
	}
	if n := r.counter(t, r.p.m.interceptorErrors.WithLabelValues("test_http")); n != 1 {
		t.Errorf("interceptor errors = %v", n)
	}
}

func TestRequestHookAnswersDirectly(t *testing.T) {
	var upstreamHits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { upstreamHits.Add(1) }))
	defer srv.Close()
	h := &hooks{request: func(f *interceptors.Flow, r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 302, Header: http.Header{"Location": {"https://example.net/"}},
			Body: io.NopCloser(strings.NewReader("moved"))}, nil
	}}
	r := newRig(t, srv.Listener.Addr().String(), Options{Chain: chainOf(t, h, "http")})
	cl := r.client(false, "")
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, body := get(t, cl, "http://example.test/")
	if resp.StatusCode != 302 || body != "moved" || resp.Header.Get("Location") != "https://example.net/" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if upstreamHits.Load() != 0 {
		t.Error("the upstream was asked although a hook answered")
	}
}

func TestUpstreamResetGives502(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // a RST mid-request
	}))
	defer srv.Close()
	r := newRig(t, srv.Listener.Addr().String(), Options{})
	resp, body := get(t, r.client(false, ""), "http://example.test/")
	if resp.StatusCode != 502 || !strings.HasPrefix(body, "502 Bad Gateway (flowdog): ") {
		t.Errorf("got %d %q, want a 502 with a reason", resp.StatusCode, body)
	}
}

func TestSilentUpstreamTimesOutWith502(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	defer srv.Close()
	r := newRig(t, srv.Listener.Addr().String(), Options{ResponseHeaderTimeout: 200 * time.Millisecond})
	start := time.Now()
	resp, _ := get(t, r.client(false, ""), "http://example.test/")
	if resp.StatusCode != 502 {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if time.Since(start) > 5*time.Second {
		t.Error("the client hung")
	}
}

func TestExpectContinueAndTrailers(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Reject") != "" {
			w.WriteHeader(http.StatusExpectationFailed)
			return
		}
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, fmt.Sprintf("%d bytes, trailer %s", len(b), r.Trailer.Get("X-Client-Sum")))
		w.Header().Set("X-Sum", fmt.Sprintf("%x", sha256.Sum256(b)))
	}), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool})
	cl := r.client(false, "example.com")
	cl.Transport.(*http.Transport).ExpectContinueTimeout = 5 * time.Second
	payload := bytes.Repeat([]byte("a"), 100000)
	req, _ := http.NewRequest("PUT", "https://example.com/", io.NopCloser(bytes.NewReader(payload)))
	req.ContentLength = -1 // chunked, so that a trailer can follow
	req.Header.Set("Expect", "100-continue")
	req.Trailer = http.Header{"X-Client-Sum": {"abc"}}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "100000 bytes, trailer abc" {
		t.Errorf("body %q", b)
	}
	if want := fmt.Sprintf("%x", sha256.Sum256(payload)); resp.Trailer.Get("X-Sum") != want {
		t.Errorf("trailer %q, want %q", resp.Trailer.Get("X-Sum"), want)
	}
	// A server that refuses before the body: the client gets its answer.
	req, _ = http.NewRequest("PUT", "https://example.com/", io.NopCloser(bytes.NewReader(payload)))
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("X-Reject", "1")
	resp, err = cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusExpectationFailed {
		t.Errorf("status %d, want 417", resp.StatusCode)
	}
}

func TestLargeBodyIsStreamedWithBoundedMemory(t *testing.T) {
	const size = 200 << 20
	srv, pool := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		chunk := bytes.Repeat([]byte{0x5a}, 64<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}), true)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool})
	heapPeak := testutil.HeapPeak()
	resp, err := r.client(true, "example.com").Get("https://example.com/big")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	peak := heapPeak()
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if p := peak; p > 96<<20 {
		t.Errorf("heap in use peaked at %d MiB while streaming 200 MiB: the body is being buffered", p>>20)
	}
}

func TestRawUpstreamResetResetsClient(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b := make([]byte, 16)
		c.Read(b)
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST
	}()
	r := newRig(t, ln.Addr().String(), Options{})
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "\x00raw")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(c)
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("client read %v, want a connection reset mirrored from the server", err)
	}
}

func TestWebSocketWithoutHooksIsSplicedAndCounted(t *testing.T) {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		typ, m, _ := ws.ReadMessage()
		ws.WriteMessage(typ, m)
	}))
	defer srv.Close()
	r := newRig(t, srv.Listener.Addr().String(), Options{})
	d := websocket.Dialer{NetDial: func(_, _ string) (net.Conn, error) { return net.Dial("tcp", r.addr()) }}
	ws, _, err := d.Dial("ws://example.test/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.WriteMessage(websocket.TextMessage, []byte("as is"))
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, m, err := ws.ReadMessage(); err != nil || string(m) != "as is" {
		t.Fatalf("echo %q %v", m, err)
	}
	if n := r.counter(t, r.p.m.conns("websocket")); n != 1 {
		t.Errorf("websocket connections = %v, want 1", n)
	}
}
