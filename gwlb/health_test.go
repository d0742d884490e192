package gwlb

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func startHealth(t *testing.T, check func() error) *Health {
	t.Helper()
	h, err := NewHealth("127.0.0.1:0", nil, check)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return h
}

func probe(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ContentLength != int64(len(b)) {
		t.Errorf("Content-Length %d for a %d-byte body", resp.ContentLength, len(b))
	}
	return resp.StatusCode, string(b)
}

func TestHealthHTTPAndHTTPSThenDraining(t *testing.T) {
	var broken atomic.Bool
	h := startHealth(t, func() error {
		if broken.Load() {
			return errors.New("a socket worker died")
		}
		return nil
	})
	addr := h.Addr().String()
	plain := &http.Client{Timeout: 5 * time.Second}
	secure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // as GWLB: it does not verify
	}}
	for _, u := range []string{"http://" + addr + "/", "http://" + addr + "/healthz", "https://" + addr + "/", "https://" + addr + "/healthz"} {
		c := plain
		if strings.HasPrefix(u, "https") {
			c = secure
		}
		if code, body := probe(t, c, u); code != 200 || body != "ok\n" {
			t.Errorf("%s: %d %q, want 200", u, code, body)
		}
	}
	if code, _ := probe(t, plain, "http://"+addr+"/other"); code != 404 {
		t.Errorf("/other: %d, want 404", code)
	}
	broken.Store(true)
	if code, body := probe(t, plain, "http://"+addr+"/"); code != 503 || !strings.Contains(body, "socket worker") {
		t.Errorf("broken worker: %d %q, want 503 naming it", code, body)
	}
	broken.Store(false)
	h.SetDraining()
	if code, body := probe(t, secure, "https://"+addr+"/healthz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("draining: %d %q, want 503", code, body)
	}
}

func TestHealthTCPProbeAndCleanClose(t *testing.T) {
	h := startHealth(t, nil)
	// A TCP probe: connect, then close without a word.
	c, err := net.Dial("tcp", h.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// An HTTP probe by hand: the server answers and closes with a FIN (EOF), not a RST.
	c, err = net.Dial("tcp", h.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: ELB-HealthChecker/2.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading until close: %v (a RST instead of a clean close?)", err)
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") || !strings.Contains(string(b), "Content-Length: 3") {
		t.Errorf("response: %q", b)
	}
}
