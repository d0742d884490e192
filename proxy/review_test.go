package proxy

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// slowReader yields n bytes over d.
type slowReader struct {
	left  int
	chunk int
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.pause)
	n := min(len(p), s.chunk, s.left)
	for i := range n {
		p[i] = 'u'
	}
	s.left -= n
	return n, nil
}

func TestSlowUploadIsNotCutByTheResponseHeaderTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		io.WriteString(w, "got "+itoa(n))
	}))
	defer srv.Close()
	r := newRig(t, srv.Listener.Addr().String(), Options{ResponseHeaderTimeout: 500 * time.Millisecond})
	body := &slowReader{left: 30 * 1024, chunk: 1024, pause: 50 * time.Millisecond} // 1.5 s of upload
	req, _ := http.NewRequest("PUT", "http://example.test/up", body)
	resp, err := r.client(false, "").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "got 30720" {
		t.Errorf("%d %q: the header timeout must start after the upload", resp.StatusCode, b)
	}
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func TestExpectContinueIgnoredByServer(t *testing.T) {
	// A raw HTTP/1.1 server that never sends 100 Continue: it reads the
	// whole body, then answers.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufioReader(c))
				if err != nil {
					return
				}
				n, _ := io.Copy(io.Discard, req.Body)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+itoa(int64(len(itoa(n))))+"\r\n\r\n"+itoa(n))
			}()
		}
	}()
	r := newRig(t, ln.Addr().String(), Options{ResponseHeaderTimeout: 5 * time.Second})
	cl := r.client(false, "")
	cl.Transport.(*http.Transport).ExpectContinueTimeout = 10 * time.Second // the client waits for flowdog
	req, _ := http.NewRequest("PUT", "http://example.test/", bytes.NewReader(make([]byte, 5000)))
	req.Header.Set("Expect", "100-continue")
	start := time.Now()
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "5000" {
		t.Errorf("%d %q, want the server's 200 after the body", resp.StatusCode, b)
	}
	if time.Since(start) > 4*time.Second {
		t.Errorf("took %v: the body must go after about a second without a 100", time.Since(start))
	}
}

func TestQuietConnectionIsKept(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	r := newRig(t, ln.Addr().String(), Options{SniffTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(500 * time.Millisecond) // longer than the sniff timeout: nobody speaks
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "late")
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "late" {
		t.Fatalf("a connection quiet past the sniff timeout was not kept: %q %v", got, err)
	}
}

func TestSilentH2UpstreamTimesOutWith502(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}), true)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool, ResponseHeaderTimeout: 300 * time.Millisecond})
	start := time.Now()
	resp, err := r.h2Client("example.com").Get("https://example.com/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 || time.Since(start) > 5*time.Second {
		t.Errorf("%d after %v, want a 502 at the header timeout", resp.StatusCode, time.Since(start))
	}
}

func TestAutoPassthroughIsPerTenantAndServer(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(echoHeaderHandler), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool, AutoPassthrough: true})
	c := &conn{p: r.p, info: ConnInfo{EndpointID: "vpce-a", Server: mustAP("198.51.100.1:443")}}
	other := &conn{p: r.p, info: ConnInfo{EndpointID: "vpce-b", Server: mustAP("198.51.100.1:443")}}
	r.p.auto.add(c.autoKey("www.example.com", c.info.Server.Addr()), time.Hour)
	if !r.p.auto.has(c.autoKey("www.example.com", c.info.Server.Addr())) {
		t.Fatal("not learnt")
	}
	if r.p.auto.has(other.autoKey("www.example.com", other.info.Server.Addr())) {
		t.Error("one tenant's rejection passes another tenant's traffic through")
	}
	if r.p.auto.has(c.autoKey("www.example.com", mustAP("203.0.113.9:443").Addr())) {
		t.Error("a rejection for one server passes the same name at another address through")
	}
}

func TestUpstreamSessionsResumePerTenant(t *testing.T) {
	srv, pool := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS.DidResume {
			w.Header().Set("X-Resumed", "yes")
		}
	}), false)
	r := newRig(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool})
	resumed := 0
	for range 3 {
		cl := r.client(false, "example.com") // a new client: a new connection, a new upstream
		resp, err := cl.Get("https://example.com/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("X-Resumed") == "yes" {
			resumed++
		}
	}
	if resumed < 2 {
		t.Errorf("%d of 3 upstream connections resumed, want the later two", resumed)
	}
	if r.p.sessions.get("vpce-a/1") == r.p.sessions.get("vpce-b/1") {
		t.Error("two tenants share a session cache")
	}
}
