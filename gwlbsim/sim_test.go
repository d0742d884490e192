package gwlbsim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

var (
	clientV4 = netip.MustParseAddr("10.0.0.10")
	clientV6 = netip.MustParseAddr("fd00::10")
	serverV4 = netip.MustParseAddr("198.51.100.10")
	serverV6 = netip.MustParseAddr("2001:db8::10")
)

const (
	testEndpoint   = 0x0123456789abcdef
	testAttachment = 0xa77ac4000000001
)

func newTestSim(t *testing.T, appliance netip.AddrPort, mod func(*Config)) *Sim {
	t.Helper()
	gw, err := FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{GWLBAddr: gw, ApplianceAddr: appliance}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// reflectedSim is a Sim in front of a reflector; mutate may misbehave.
func reflectedSim(t *testing.T, mutate func(*Sim, *reply) bool) *Sim {
	t.Helper()
	gw, err := FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	var sim atomic.Pointer[Sim]
	var m func(*reply) bool
	if mutate != nil {
		m = func(r *reply) bool { return mutate(sim.Load(), r) }
	}
	r := startReflector(t, gw, m)
	s, err := New(Config{GWLBAddr: gw, ApplianceAddr: r.addr})
	if err != nil {
		t.Fatal(err)
	}
	sim.Store(s)
	// Registered after the reflector's cleanup, so it runs first.
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func addClientServer(t *testing.T, ten *Tenant) (client, server *Host) {
	t.Helper()
	client, err := ten.AddHost(clientV4, clientV6)
	if err != nil {
		t.Fatal(err)
	}
	server, err = ten.AddHost(serverV4, serverV6)
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}

func serveHTTP(t *testing.T, h *Host, handler http.Handler) {
	t.Helper()
	l, err := h.ListenTCP(80)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

func assertNoViolations(t *testing.T, s *Sim) {
	t.Helper()
	if st := s.Stats(); st.ViolationCount() != 0 {
		t.Errorf("violations %v: %v", st.Violations, s.Violations())
	}
}

func TestHTTPThroughReflector(t *testing.T) {
	s := reflectedSim(t, nil)
	ten := s.AddTenant(testEndpoint, testAttachment)
	client, server := addClientServer(t, ten)

	body := make([]byte, 10<<20)
	for i := range body {
		body[i] = byte(i*7 + i>>11)
	}
	serveHTTP(t, server, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	hc := client.HTTPClient()
	for _, dst := range []netip.Addr{serverV4, serverV6} {
		t.Run(dst.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			url := "http://" + netip.AddrPortFrom(dst, 80).String() + "/big"
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			start := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("GET %s: %v", url, err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("GET %s: body: %v", url, err)
			}
			if !bytes.Equal(got, body) {
				t.Fatalf("GET %s: body of %d bytes differs from the %d sent", url, len(got), len(body))
			}
			t.Logf("GET %s: %d bytes in %v", url, len(got), time.Since(start))
		})
	}
	st := s.Stats()
	if st.Delivered == 0 || st.Sent < st.Delivered {
		t.Errorf("stats %+v: want Sent >= Delivered > 0", st)
	}
	assertNoViolations(t, s)
}

func TestUDPRequestResponse(t *testing.T) {
	s := reflectedSim(t, nil)
	ten := s.AddTenant(testEndpoint, testAttachment)
	client, server := addClientServer(t, ten)

	pc, err := server.ListenUDP(53)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("re: "), buf[:n]...), from)
		}
	}()
	for _, dst := range []netip.Addr{serverV4, serverV6} {
		t.Run(dst.String(), func(t *testing.T) {
			c, err := client.DialUDP(netip.AddrPortFrom(dst, 53))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte("hello " + dst.String())); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2048)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if want := "re: hello " + dst.String(); string(buf[:n]) != want {
				t.Fatalf("got %q, want %q", buf[:n], want)
			}
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			if _, ok := s.FlowCookie(ten, 17, netip.AddrPortFrom(dst, 53), local); !ok {
				t.Errorf("FlowCookie(%v, %v): no flow", local, dst)
			}
		})
	}
	assertNoViolations(t, s)
}

func TestTenantsWithSameAddresses(t *testing.T) {
	s := reflectedSim(t, nil)
	var clients []*http.Client
	for i := range 2 {
		ten := s.AddTenant(testEndpoint+uint64(i), testAttachment+uint64(i))
		client, server := addClientServer(t, ten)
		name := fmt.Sprintf("tenant %d", i)
		serveHTTP(t, server, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, name)
		}))
		clients = append(clients, client.HTTPClient())
	}
	for i, hc := range clients {
		for _, dst := range []netip.Addr{serverV4, serverV6} {
			url := "http://" + netip.AddrPortFrom(dst, 80).String() + "/"
			resp, err := hc.Get(url)
			if err != nil {
				t.Fatalf("tenant %d: GET %s: %v", i, url, err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("tenant %d", i); string(got) != want {
				t.Errorf("tenant %d: GET %s = %q, want %q", i, url, got, want)
			}
		}
	}
	assertNoViolations(t, s)
}

func TestViolations(t *testing.T) {
	tests := []struct {
		kind   string
		mutate func(*Sim, *reply) bool
	}{
		{KindWrongEnvelope, func(_ *Sim, r *reply) bool {
			r.payload[HeaderLen-1] ^= 0x5a // last cookie byte: a cookie the flow never had
			return true
		}},
		{KindWrongEnvelope, func(_ *Sim, r *reply) bool {
			r.payload[31] ^= 1 // attachment id: another tenant's envelope
			return true
		}},
		{KindStaleCookie, func(s *Sim, r *reply) bool {
			s.ReassignCookies() // the reply now carries the previous cookie
			return true
		}},
		{KindWrongSourcePort, func(_ *Sim, r *reply) bool {
			r.srcPort++
			return true
		}},
		{KindWrongDestinationPort, func(_ *Sim, r *reply) bool {
			r.dstPort = r.srcPort
			return true
		}},
		{KindUnknownFlow, func(_ *Sim, r *reply) bool {
			r.payload[HeaderLen+19] ^= 1 // inner IPv4 destination's last byte
			return true
		}},
		{KindOversize, func(_ *Sim, r *reply) bool {
			r.payload = append(r.payload, make([]byte, MaxInner)...)
			return true
		}},
		{KindMalformed, func(_ *Sim, r *reply) bool {
			r.payload = r.payload[:HeaderLen-2] // options cut short
			return true
		}},
		{KindMalformed, func(_ *Sim, r *reply) bool {
			r.payload[0] |= 0x40 // Geneve version 1
			return true
		}},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", i, tt.kind), func(t *testing.T) {
			s := reflectedSim(t, tt.mutate)
			ten := s.AddTenant(testEndpoint, testAttachment)
			client, server := addClientServer(t, ten)
			pc, err := server.ListenUDP(53)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			c, err := client.DialUDP(netip.AddrPortFrom(serverV4, 53))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for s.Stats().Violations[tt.kind] == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			st := s.Stats()
			if st.Violations[tt.kind] != 1 || st.ViolationCount() != 1 {
				t.Fatalf("violations %v, want exactly one %s; recent: %v", st.Violations, tt.kind, s.Violations())
			}
			if st.Delivered != 0 {
				t.Errorf("delivered %d, want 0", st.Delivered)
			}
			pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, _, err := pc.ReadFrom(make([]byte, 64)); err == nil {
				t.Errorf("server got %d bytes of a violating reply", n)
			}
			if v := s.Violations(); len(v) != 1 || v[0].Kind != tt.kind || v[0].Desc == "" {
				t.Errorf("Violations() = %v", v)
			}
			t.Log(s.Violations()[0])
		})
	}
}

// sink is an appliance that only receives: for tests of what GWLB sends,
// which need no root.
type sink struct {
	conn *net.UDPConn
	addr netip.AddrPort
}

func newSink(t *testing.T) *sink {
	t.Helper()
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &sink{conn: conn, addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// next returns the next datagram whose inner packet is UDP, skipping
// anything else.
func (k *sink) next(t *testing.T) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 1<<16)
	k.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, from, err := k.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("sink: %v", err)
		}
		if g, err := decodeGeneve(buf[:n]); err == nil {
			if tu, err := parseInner(g.inner); err == nil && tu.proto == 17 {
				return append([]byte(nil), buf[:n]...), from
			}
		}
	}
}

func TestEnvelopeSent(t *testing.T) {
	k := newSink(t)
	s := newTestSim(t, k.addr, nil)
	ten := s.AddTenant(testEndpoint, testAttachment)
	client, server := addClientServer(t, ten)

	c, err := client.DialUDP(netip.AddrPortFrom(serverV6, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	c.Write([]byte("abc"))
	d, from := k.next(t)

	cookie, ok := s.FlowCookie(ten, 17, local, netip.AddrPortFrom(serverV6, 53))
	if !ok || cookie == 0 {
		t.Fatalf("FlowCookie = %#x, %v", cookie, ok)
	}
	port, _ := s.FlowSourcePort(ten, 17, netip.AddrPortFrom(serverV6, 53), local)
	if from != netip.AddrPortFrom(s.GWLBAddr(), port) {
		t.Errorf("sent from %v, want %v:%d", from, s.GWLBAddr(), port)
	}
	want := []byte{
		0x08, 0x00, 0x86, 0xdd, // version 0, 8 words of options; O/C clear; IPv6
		0, 0, 0, 0, // VNI 0, reserved
		0x01, 0x08, 1, 2, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, // endpoint id
		0x01, 0x08, 2, 2, 0x0a, 0x77, 0xac, 0x40, 0, 0, 0, 0x01, // attachment id
		0x01, 0x08, 3, 1, 0, 0, 0, 0, // cookie, filled below
	}
	binary.BigEndian.PutUint32(want[36:], cookie)
	if !bytes.Equal(d[:HeaderLen], want) {
		t.Errorf("header\n got %x\nwant %x", d[:HeaderLen], want)
	}
	if got := d[HeaderLen:]; len(got) != 40+8+3 || got[0]>>4 != 6 || !bytes.Equal(got[48:], []byte("abc")) {
		t.Errorf("inner packet %x", got)
	}

	// The other direction of the flow shares cookie and source port.
	pc, err := server.ListenUDP(53)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("back"), net.UDPAddrFromAddrPort(local)); err != nil {
		t.Fatal(err)
	}
	d2, from2 := k.next(t)
	if from2 != from || !bytes.Equal(d2[:HeaderLen], d[:HeaderLen]) {
		t.Errorf("reverse direction: from %v header %x, want %v %x", from2, d2[:HeaderLen], from, d[:HeaderLen])
	}
}

func TestCookieReassignment(t *testing.T) {
	k := newSink(t)
	s := newTestSim(t, k.addr, func(c *Config) { c.UDPIdleTimeout = 200 * time.Millisecond })
	ten := s.AddTenant(testEndpoint, testAttachment)
	client, _ := addClientServer(t, ten)
	dst := netip.AddrPortFrom(serverV4, 53)
	c, err := client.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	send := func() uint32 {
		t.Helper()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		d, _ := k.next(t)
		return binary.BigEndian.Uint32(d[cookieOffset:])
	}
	cookie := func() uint32 {
		t.Helper()
		v, ok := s.FlowCookie(ten, 17, dst, local)
		if !ok {
			t.Fatal("FlowCookie: no flow")
		}
		return v
	}

	c1 := send()
	if got := cookie(); got != c1 {
		t.Fatalf("FlowCookie %#x, sent %#x", got, c1)
	}
	if c := send(); c != c1 {
		t.Errorf("cookie changed within idle timeout: %#x -> %#x", c1, c)
	}
	s.ReassignCookies()
	c2 := cookie()
	if c2 == c1 || c2 == 0 {
		t.Errorf("ReassignCookies: %#x -> %#x", c1, c2)
	}
	if c := send(); c != c2 {
		t.Errorf("sent cookie %#x after ReassignCookies, want %#x", c, c2)
	}
	time.Sleep(300 * time.Millisecond)
	c3 := send()
	if c3 == c2 || c3 != cookie() {
		t.Errorf("after idle: sent %#x, previous %#x, FlowCookie %#x", c3, c2, cookie())
	}
	if _, ok := s.FlowCookie(ten, 6, dst, local); ok {
		t.Error("FlowCookie found a TCP flow that was never sent")
	}
}

func TestSendRaw(t *testing.T) {
	k := newSink(t)
	s := newTestSim(t, k.addr, nil)
	if err := s.SendRaw([]byte{0xde, 0xad}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	k.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := k.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], []byte{0xde, 0xad}) || from.Port() != s.SourcePorts()[0] {
		t.Errorf("got %x from %v", buf[:n], from)
	}
}

func TestHostErrors(t *testing.T) {
	k := newSink(t)
	s := newTestSim(t, k.addr, nil)
	ten := s.AddTenant(testEndpoint, testAttachment)
	if s.AddTenant(testEndpoint, testAttachment) != ten {
		t.Error("AddTenant with the same ids made a second tenant")
	}
	if _, err := ten.AddHost(clientV4); err != nil {
		t.Fatal(err)
	}
	if _, err := ten.AddHost(clientV4); err == nil {
		t.Error("AddHost accepted an address twice")
	}
	if _, err := s.AddTenant(1, 2).AddHost(clientV4); err != nil {
		t.Errorf("another tenant cannot reuse the address: %v", err)
	}
	if _, err := ten.AddHost(); err == nil {
		t.Error("AddHost accepted no address")
	}
}

func TestDialTimeoutAndClose(t *testing.T) {
	// The sink never answers: a dial must honour its context, and Close
	// must not wait for it.
	k := newSink(t)
	s := newTestSim(t, k.addr, nil)
	client, err := s.AddTenant(testEndpoint, testAttachment).AddHost(clientV4)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := client.DialTCP(ctx, netip.AddrPortFrom(serverV4, 80)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("DialTCP = %v, want deadline exceeded", err)
	}
	l, err := client.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
	if _, err := s.AddTenant(9, 9).AddHost(clientV4); err == nil {
		t.Error("AddHost after Close succeeded")
	}
}

func TestFreeLoopbackAddr(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for range 5 {
		a, err := FreeLoopbackAddr()
		if err != nil {
			t.Fatal(err)
		}
		if !a.Is4() || a.As4()[0] != 127 || a.As4()[1] == 0 || seen[a] {
			t.Errorf("FreeLoopbackAddr = %v", a)
		}
		seen[a] = true
	}
}

func TestTCPTupleReuse(t *testing.T) {
	gw, err := FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	r := startReflector(t, gw, nil)
	s, err := New(Config{GWLBAddr: gw, ApplianceAddr: r.addr, TCPIdleTimeout: 200 * time.Millisecond, TCPTimeWait: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ten := s.AddTenant(testEndpoint, testAttachment)
	client, server := addClientServer(t, ten)
	l, err := server.ListenTCP(7)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()

	for _, tc := range []struct{ src, dst netip.AddrPort }{
		{netip.AddrPortFrom(clientV4, 40000), netip.AddrPortFrom(serverV4, 7)},
		{netip.AddrPortFrom(clientV6, 40000), netip.AddrPortFrom(serverV6, 7)},
	} {
		var cookies []uint32
		for round := range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := client.DialTCPFrom(ctx, tc.src, tc.dst)
			cancel()
			if err != nil {
				t.Fatalf("%v round %d: dial: %v", tc.src, round, err)
			}
			if got := c.LocalAddr().String(); got != tc.src.String() {
				t.Errorf("local address %s, want %v", got, tc.src)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := fmt.Sprintf("round %d", round)
			io.WriteString(c, msg)
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
				t.Fatalf("%v round %d: echo %q, %v", tc.src, round, buf, err)
			}
			cookie, _ := s.FlowCookie(ten, 6, tc.src, tc.dst)
			cookies = append(cookies, cookie)
			c.Close()
			// Idle longer than the timeout but shorter than TIME-WAIT, which
			// DialTCPFrom waits out.
			time.Sleep(300 * time.Millisecond)
		}
		if cookies[0] == cookies[1] || cookies[1] == cookies[2] {
			t.Errorf("%v: cookies %#x: want a new one per reuse", tc.src, cookies)
		}
	}
	assertNoViolations(t, s)
}

func TestCloseEndsGoroutines(t *testing.T) {
	k := newSink(t)
	before := runtime.NumGoroutine()
	gw, err := FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{GWLBAddr: gw, ApplianceAddr: k.addr})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		client, _ := addClientServer(t, s.AddTenant(uint64(i), uint64(i)))
		if _, err := client.ListenTCP(80); err != nil {
			t.Fatal(err)
		}
		c, err := client.DialUDP(netip.AddrPortFrom(serverV4, 53))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
