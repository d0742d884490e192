package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flowdog/flowdog/gwlbsim"
	"github.com/flowdog/flowdog/internal/config"
	"github.com/flowdog/flowdog/internal/testutil"
)

var (
	clientV4 = netip.MustParseAddr("10.0.0.10")
	clientV6 = netip.MustParseAddr("fd00::10")
	serverV4 = netip.MustParseAddr("198.51.100.10")
	serverV6 = netip.MustParseAddr("2001:db8::10")
)

// lab is a running flowdog behind a simulated GWLB.
type lab struct {
	d   *daemon
	sim *gwlbsim.Sim
}

func newLab(t *testing.T, cfg *config.Config, simCfg gwlbsim.Config) *lab {
	t.Helper()
	d, _, _, _ := startDaemon(t, cfg)
	gw, err := gwlbsim.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	simCfg.GWLBAddr = gw
	simCfg.ApplianceAddr = d.dp.Addr()
	sim, err := gwlbsim.New(simCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return &lab{d: d, sim: sim}
}

// noViolations fails the test when the simulator saw flowdog break GWLB's contract.
func (l *lab) noViolations(t *testing.T) {
	t.Helper()
	if st := l.sim.Stats(); st.ViolationCount() != 0 {
		t.Errorf("contract violations: %v", st.Violations)
		for _, v := range l.sim.Violations() {
			t.Log(v)
		}
	}
}

func (l *lab) metric(t *testing.T, name, labels string) float64 {
	return testutil.Metric(t, l.d.reg, name, labels)
}

// hosts adds a client and a server host to tenant.
func hosts(t *testing.T, tn *gwlbsim.Tenant) (client, server *gwlbsim.Host) {
	t.Helper()
	client, err := tn.AddHost(clientV4, clientV6)
	if err != nil {
		t.Fatal(err)
	}
	server, err = tn.AddHost(serverV4, serverV6)
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}

// serveHTTP runs a real net/http server on h, port 80.
func serveHTTP(t *testing.T, h *gwlbsim.Host, handler http.Handler) {
	t.Helper()
	ln, err := h.ListenTCP(80)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// body is deterministic pseudo-random content of n bytes.
func body(n int) []byte {
	r := rand.New(rand.NewPCG(1, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestSimFastPathHTTPAndUDP(t *testing.T) {
	l := newLab(t, fastConfig(t), gwlbsim.Config{})
	client, server := hosts(t, l.sim.AddTenant(0x0123456789abcdef, 0xa1))
	big := body(10 << 20)
	serveHTTP(t, server, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(big)
	}))
	pc, err := server.ListenUDP(53)
	if err != nil {
		t.Fatal(err)
	}
	go func() { // a DNS-like echo: answer = "re:" + query
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { pc.Close() })

	for _, dst := range []netip.Addr{serverV4, serverV6} {
		t.Run("http "+dst.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+netip.AddrPortFrom(dst, 80).String()+"/", nil)
			resp, err := client.HTTPClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != sha256.Sum256(big) {
				t.Fatalf("10 MB body differs (%d bytes)", len(got))
			}
		})
		t.Run("udp "+dst.String(), func(t *testing.T) {
			c, err := client.DialUDP(netip.AddrPortFrom(dst, 53))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			q := []byte("example.com A?")
			if _, err := c.Write(q); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2048)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if string(buf[:n]) != "re:"+string(q) {
				t.Fatalf("answer %q", buf[:n])
			}
		})
	}
	l.noViolations(t)
	// The connections' last segments may still be crossing: wait for the
	// counters to settle before comparing them.
	var in, out float64
	deadline := time.Now().Add(3 * time.Second)
	for {
		in = l.metric(t, "flowdog_gwlb_packets_total", "verdict=fast,direction=in")
		out = l.metric(t, "flowdog_gwlb_packets_total", "verdict=fast,direction=out")
		if in == out || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if in < 1000 || in != out {
		t.Errorf("fast packets in=%v out=%v: want many, and every one reflected", in, out)
	}
}

func TestSimTenantsWithOverlappingAddressesStayApart(t *testing.T) {
	l := newLab(t, fastConfig(t), gwlbsim.Config{})
	type tenant struct {
		name   string
		client *gwlbsim.Host
	}
	var ts []tenant
	for i, name := range []string{"A", "B"} {
		c, s := hosts(t, l.sim.AddTenant(0x0123456789abcde0+uint64(i), 0xb0+uint64(i)))
		serveHTTP(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "tenant %s server; you are %s", name, r.RemoteAddr)
		}))
		ts = append(ts, tenant{name, c})
	}
	for _, tn := range ts {
		for _, dst := range []netip.Addr{serverV4, serverV6} {
			resp, err := tn.client.HTTPClient().Get("http://" + netip.AddrPortFrom(dst, 80).String() + "/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.HasPrefix(string(b), "tenant "+tn.name+" server") {
				t.Errorf("tenant %s client reached %q", tn.name, b)
			}
		}
	}
	l.noViolations(t)
	if n := l.metric(t, "flowdog_gwlb_flows_active", ""); n < 4 {
		t.Errorf("flows = %v, want at least 4 (2 tenants x 2 families, kept apart)", n)
	}
}

func TestSimCookieReassignedWhenTupleReused(t *testing.T) {
	l := newLab(t, fastConfig(t), gwlbsim.Config{TCPTimeWait: 100 * time.Millisecond})
	tn := l.sim.AddTenant(0x0123456789abcdef, 0xc1)
	client, server := hosts(t, tn)
	ln, err := server.ListenTCP(7)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go testutil.Echo(ln)
	src := netip.AddrPortFrom(clientV4, 40000)
	dst := netip.AddrPortFrom(serverV4, 7)
	var cookies []uint32
	for i := range 2 {
		if i == 1 {
			// GWLB reassigns after the tuple has been idle: let the first
			// connection's last segments (and TIME-WAIT) pass first.
			time.Sleep(300 * time.Millisecond)
			l.sim.ReassignCookies()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := client.DialTCPFrom(ctx, src, dst)
		cancel()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte(fmt.Sprintf("hello %d", i))
		c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("connection %d echo: %q %v", i, got, err)
		}
		c.Close()
		ck, ok := l.sim.FlowCookie(tn, 6, src, dst)
		if !ok {
			t.Fatal("simulator has no cookie for the flow")
		}
		cookies = append(cookies, ck)
	}
	if cookies[0] == cookies[1] {
		t.Fatal("the simulator did not reassign the cookie")
	}
	l.noViolations(t) // every reply carried the cookie current at the time
	if n := l.metric(t, "flowdog_gwlb_flows_created_total", ""); n < 2 {
		t.Errorf("flows created = %v, want the reused tuple to start a new flow", n)
	}
}

func TestSimDropPolicyBlocksFlow(t *testing.T) {
	cfg := fastConfig(t)
	cfg.Policy.Rules = []config.Rule{{Name: "no-8080", Action: "drop", Protocols: []string{"tcp"}, Ports: []string{"8080"}}}
	l := newLab(t, cfg, gwlbsim.Config{})
	client, server := hosts(t, l.sim.AddTenant(0x0123456789abcdef, 0xd1))
	ln, err := server.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = client.DialTCP(ctx, netip.AddrPortFrom(serverV4, 8080))
	if err == nil {
		t.Fatal("a dropped flow connected")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !strings.Contains(err.Error(), "refused") {
		t.Errorf("dial error %v, want connection refused (RST)", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("refusal took %v; the RST should make it quick", el)
	}
	if accepted.Load() != 0 {
		t.Error("the server accepted a connection the policy drops")
	}
	l.noViolations(t) // the RST went back in the flow's envelope
	if n := l.metric(t, "flowdog_gwlb_dropped_packets_total", "reason=policy"); n < 1 {
		t.Error("policy drop not counted")
	}
}

func TestSimMalformedFloodLeavesFlowdogServing(t *testing.T) {
	l := newLab(t, fastConfig(t), gwlbsim.Config{})
	client, server := hosts(t, l.sim.AddTenant(0x0123456789abcdef, 0xe1))
	serveHTTP(t, server, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "alive") }))
	r := rand.New(rand.NewPCG(7, 7))
	const flood = 20000
	for i := range flood {
		n := r.IntN(200)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if i%3 == 0 && n > 8 {
			b[0], b[2], b[3] = 0x00, 0x08, 0x00 // a plausible header with garbage options
		}
		if err := l.sim.SendRaw(b); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := client.HTTPClient().Get("http://" + netip.AddrPortFrom(serverV4, 80).String() + "/")
	if err != nil {
		t.Fatalf("after the flood: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "alive" {
		t.Fatalf("after the flood: %q", b)
	}
	if healthCode(t, l.d) != 200 {
		t.Error("unhealthy after the flood")
	}
	dropped := l.metric(t, "flowdog_gwlb_dropped_packets_total", "")
	kdrops := l.metric(t, "flowdog_gwlb_socket_receive_drops_total", "")
	if dropped+kdrops < flood*0.9 {
		t.Errorf("dropped %v + kernel drops %v of %d malformed datagrams", dropped, kdrops, flood)
	}
	l.noViolations(t)
}

func TestSimDrainServesExistingFlows(t *testing.T) {
	cfg := fastConfig(t)
	cfg.Shutdown.Drain = config.Duration(2 * time.Second)
	d, sigterm, done, _ := startDaemon(t, cfg)
	gw, _ := gwlbsim.FreeLoopbackAddr()
	sim, err := gwlbsim.New(gwlbsim.Config{GWLBAddr: gw, ApplianceAddr: d.dp.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	client, server := hosts(t, sim.AddTenant(0x0123456789abcdef, 0xf1))
	serveHTTP(t, server, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	get := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+netip.AddrPortFrom(serverV4, 80).String()+"/", nil)
		resp, err := client.HTTPClient().Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	if healthCode(t, d) != 200 {
		t.Fatal("not healthy")
	}
	sigterm()
	time.Sleep(50 * time.Millisecond)
	if c := healthCode(t, d); c != 503 {
		t.Errorf("health %d after SIGTERM, want 503", c)
	}
	if err := get(); err != nil {
		t.Errorf("request during the drain failed: %v", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after the drain")
	}
}
