package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// FuzzClientBytes sends whatever a client may send to an intercepted
// connection (sniffed as HTTP/1.1 or not), then half-closes. Whatever the
// bytes, the proxy must not panic and must end the connection (EOF, or a
// reset) instead of hanging on it.
func FuzzClientBytes(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello\r\n\r\nGET / HTTP/1.0\r\n\r\n",
		"POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"PUT /e HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"POST /big HTTP/1.1\r\nHost: a.test\r\nContent-Length: 99999999\r\n\r\npartial",
		"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET http://other.test/x HTTP/1.1\r\n\r\n",
		"\x16\x03\x01\x00\x05hello",
		"SSH-2.0-x\r\n",
	} {
		f.Add([]byte(s))
	}
	srv := pathServer(f)
	r := newRig(f, srv.Listener.Addr().String(), Options{
		SniffTimeout: 200 * time.Millisecond, HeaderTimeout: time.Second,
		ResponseHeaderTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second,
	})
	// Keep the fuzzing quiet: the rig's upstream logs malformed requests.
	srv.Config.ErrorLog = discardLog
	var mu sync.Mutex // one connection at a time: a hang is this input's
	f.Fuzz(func(t *testing.T, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		c, err := net.Dial("tcp", r.addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		go func() {
			c.Write(data)
			c.(*net.TCPConn).CloseWrite()
		}()
		_, err = io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the proxy neither answered nor closed within 15s after %q", data)
		}
		if n := r.counter(t, r.p.m.panics); n != 0 {
			t.Fatalf("%v panics after %q", n, data)
		}
	})
}
