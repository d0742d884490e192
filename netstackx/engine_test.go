package netstackx

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/gwlb/packet"
	"github.com/flowdog/flowdog/gwlbsim"
)

func TestEchoThroughInterception(t *testing.T) {
	var seen handlerLog
	l := newLab(t, labOpts{h: seen.wrap(splice(upper))})
	tn, client, server := l.hosts(0x1234, 0x99)
	peers := echoServer(t, server, 7)

	for _, tc := range []struct {
		name           string
		client, server netip.Addr
	}{
		{"IPv4", clientV4, serverV4},
		{"IPv6", clientV6, serverV6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			dst := netip.AddrPortFrom(tc.server, 7)
			c, err := client.DialTCP(ctx, dst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			if local.Addr() != tc.client {
				t.Fatalf("client dialled from %v, want %v", local, tc.client)
			}
			msg := []byte("hello through flowdog, " + tc.name)
			got, err := roundTrip(c, msg)
			if err != nil {
				t.Fatal(err)
			}
			if want := bytes.ToUpper(msg); !bytes.Equal(got, want) {
				t.Fatalf("echo = %q, want %q (the handler uppercases client bytes)", got, want)
			}
			// Same 5-tuple: the server saw the client's own address and port.
			select {
			case p := <-peers:
				if p != local {
					t.Errorf("server saw peer %v, want the client's %v", p, local)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("server saw no connection")
			}
			var found bool
			for _, hc := range seen.all() {
				if hc.ClientAddr == local {
					found = true
					if hc.ServerAddr != dst {
						t.Errorf("handler ServerAddr = %v, want %v", hc.ServerAddr, dst)
					}
					if want := (packet.Tenant{EndpointID: tn.EndpointID, AttachmentID: tn.AttachmentID}); hc.Tenant != want {
						t.Errorf("handler Tenant = %v, want %v", hc.Tenant, want)
					}
					if hc.Flow == nil || hc.Flow.Initiator.Src != local.Addr() || hc.Flow.Initiator.SrcPort != local.Port() {
						t.Errorf("handler Flow = %+v, want the client's flow", hc.Flow)
					}
				}
			}
			if !found {
				t.Errorf("the handler never saw %v", local)
			}
		})
	}
	if st := l.engine.Stats(); st.Stacks != 1 {
		t.Errorf("Stacks = %d, want 1", st.Stacks)
	}
	if n := l.metric("flowdog_netstack_dials_total", "result=accepted"); n != 2 {
		t.Errorf("accepted dials = %v, want 2", n)
	}
	if l.sender.max.Load() <= 0 {
		t.Error("no packet went through the Sender")
	}
	l.noViolations()
}

func TestUpstreamRefusedAndSilent(t *testing.T) {
	const dialTimeout = 400 * time.Millisecond
	l := newLab(t, labOpts{cfg: Config{DialTimeout: dialTimeout}})
	_, client, _ := l.hosts(0x1234, 0x99)

	t.Run("refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		_, err := client.DialTCP(ctx, netip.AddrPortFrom(serverV4, 9)) // nobody listens
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial = %v, want connection refused", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("refusal took %v", d)
		}
		if n := l.metric("flowdog_netstack_dials_total", "result=refused"); n != 1 {
			t.Errorf("refused dials = %v, want 1", n)
		}
	})

	t.Run("silent", func(t *testing.T) {
		resets := client.Stack().Stats().TCP.ResetsReceived.Value()
		noHost := l.sim.Stats().NoHost
		// No host owns this address: GWLB forwards the upstream SYN and
		// nobody answers.
		ctx, cancel := context.WithTimeout(context.Background(), 3*dialTimeout)
		defer cancel()
		_, err := client.DialTCP(ctx, netip.AddrPortFrom(netip.MustParseAddr("198.51.100.99"), 80))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial = %v, want the client's own deadline (silence)", err)
		}
		if got := client.Stack().Stats().TCP.ResetsReceived.Value(); got != resets {
			t.Errorf("the client received %d RSTs, want none", got-resets)
		}
		if l.sim.Stats().NoHost == noHost {
			t.Error("the upstream SYN never reached GWLB")
		}
		eventually(t, 3*time.Second, "a timed-out dial", func() bool {
			return l.metric("flowdog_netstack_dials_total", "result=timeout") >= 1
		})
	})
	l.noViolations()
}

func TestTenantsAreIsolated(t *testing.T) {
	l := newLab(t, labOpts{})
	type tenantHosts struct {
		banner string
		client interface {
			DialTCP(context.Context, netip.AddrPort) (net.Conn, error)
		}
	}
	var ts []tenantHosts
	for i, ids := range [][2]uint64{{0xa, 1}, {0xb, 2}} {
		_, client, server := l.hosts(ids[0], ids[1])
		banner := fmt.Sprintf("tenant %d", i)
		ln, err := server.ListenTCP(80)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, banner)
				c.Close()
			}
		}()
		ts = append(ts, tenantHosts{banner, client})
	}
	for round := range 2 {
		for _, th := range ts {
			for _, dst := range []netip.Addr{serverV4, serverV6} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c, err := th.client.DialTCP(ctx, netip.AddrPortFrom(dst, 80))
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(c)
				c.Close()
				if err != nil || string(got) != th.banner {
					t.Errorf("round %d: %s's client got %q, %v from %v; want %q", round, th.banner, got, err, dst, th.banner)
				}
			}
		}
	}
	if st := l.engine.Stats(); st.Stacks != 2 {
		t.Errorf("Stacks = %d, want one per tenant (2)", st.Stacks)
	}
	l.noViolations()
}

func TestLargeTransferBothWays(t *testing.T) {
	const size = 20 << 20
	l := newLab(t, labOpts{})
	_, client, server := l.hosts(0x1234, 0x99)
	up, down := randBytes(1, size), randBytes(2, size)

	ln, err := server.ListenTCP(5001)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverGot := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Write(down)
			c.(*gonet.TCPConn).CloseWrite()
			wrote <- err
		}()
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("server read: %v", err)
		}
		if err := <-wrote; err != nil {
			t.Errorf("server write: %v", err)
		}
		serverGot <- [32]byte(h.Sum(nil))
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	c, err := client.DialTCP(ctx, netip.AddrPortFrom(serverV4, 5001))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := c.Write(up); err != nil {
			t.Errorf("client write: %v", err)
		}
		c.(*gonet.TCPConn).CloseWrite()
	})
	h := sha256.New()
	if n, err := io.Copy(h, c); err != nil || n != size {
		t.Fatalf("client read %d of %d bytes: %v", n, size, err)
	}
	wg.Wait()
	if got, want := [32]byte(h.Sum(nil)), sha256.Sum256(down); got != want {
		t.Error("download: sha256 differs")
	}
	select {
	case got := <-serverGot:
		if got != sha256.Sum256(up) {
			t.Error("upload: sha256 differs")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server never finished reading")
	}
	d := time.Since(start)
	t.Logf("2 x %d MB in %v (%.0f Mbit/s each way); largest emitted packet %d bytes",
		size>>20, d.Round(time.Millisecond), float64(size*8)/d.Seconds()/1e6, l.sender.max.Load())
	if l.sender.max.Load() <= 1500 {
		t.Errorf("largest emitted packet %d bytes: jumbo frames (MTU 8500) unused", l.sender.max.Load())
	}
	if t.Failed() {
		l.diag(t)
	}
	l.noViolations()
}

func TestConfiguredMTU(t *testing.T) {
	const mtu = 1500
	l := newLab(t, labOpts{cfg: Config{MTU: mtu}})
	_, client, server := l.hosts(0x1234, 0x99)
	echoServer(t, server, 7)
	for _, dst := range []netip.Addr{serverV4, serverV6} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := client.DialTCP(ctx, netip.AddrPortFrom(dst, 7))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		msg := randBytes(3, 1<<20)
		got, err := roundTrip(c, msg)
		c.Close()
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo via %v: %d bytes, %v", dst, len(got), err)
		}
	}
	// newLab's cleanup fails the test if any packet exceeded mtu.
	if m := l.sender.max.Load(); m < mtu-100 {
		t.Errorf("largest emitted packet %d bytes; want full-sized segments near %d", m, mtu)
	}
	l.noViolations()
}

// TestTupleReuse reconnects on the same 5-tuple right after each close, so
// the new SYN finds the old connection's endpoints still there (TIME-WAIT on
// the side that closed first): the dialled one when the client closes
// first, the accepted one when the server does.
func TestTupleReuse(t *testing.T) {
	// The client host's own TIME-WAIT (the sim waits it out) kept short.
	l := newLab(t, labOpts{sim: gwlbsim.Config{TCPTimeWait: 100 * time.Millisecond}})
	_, client, server := l.hosts(0x1234, 0x99)
	echoServer(t, server, 7)
	ln, err := server.ListenTCP(80)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "banner")
			c.Close() // the server closes first
		}
	}()
	for _, tc := range []struct {
		name           string
		client, server netip.Addr
		port           uint16
	}{
		{"IPv4 client closes first", clientV4, serverV4, 7},
		{"IPv6 client closes first", clientV6, serverV6, 7},
		{"IPv4 server closes first", clientV4, serverV4, 80},
		{"IPv6 server closes first", clientV6, serverV6, 80},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := netip.AddrPortFrom(tc.client, 40000+tc.port)
			for round := range 3 {
				// Well under the engine's TIME-WAIT (5s): a SYN that a
				// lingering endpoint swallowed would only get through
				// once TIME-WAIT ends.
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				c, err := client.DialTCPFrom(ctx, src, netip.AddrPortFrom(tc.server, tc.port))
				cancel()
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				msg, want := fmt.Appendf(nil, "round %d", round), []byte("banner")
				if tc.port == 7 {
					want = msg
				}
				var got []byte
				if tc.port == 7 {
					got, err = roundTrip(c, msg)
				} else {
					got, err = io.ReadAll(c) // and only then close
				}
				c.Close()
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("round %d: got %q, %v; want %q", round, got, err, want)
				}
			}
		})
	}
	l.noViolations()
}

// TestOnlyInterceptedFlowsReachAStack checks that SYNs of flows the policy
// fast-paths never reach the engine.
func TestOnlyInterceptedFlowsReachAStack(t *testing.T) {
	policy := &gwlb.Policy{Default: gwlb.Fast, Rules: []gwlb.Rule{
		{Name: "echo", Verdict: gwlb.Intercept, Protocols: []uint8{6}, Ports: []gwlb.PortRange{{Lo: 7, Hi: 7}}},
	}}
	var seen handlerLog
	l := newLab(t, labOpts{gwlb: gwlb.Options{Policy: policy}, h: seen.wrap(splice(upper))})
	_, client, server := l.hosts(0x1234, 0x99)
	echoServer(t, server, 7)
	echoServer(t, server, 8)

	for _, tc := range []struct {
		port        uint16
		intercepted bool
	}{{8, false}, {7, true}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := client.DialTCP(ctx, netip.AddrPortFrom(serverV4, tc.port))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		got, err := roundTrip(c, []byte("abc"))
		c.Close()
		want := "abc"
		if tc.intercepted {
			want = "ABC"
		}
		if err != nil || string(got) != want {
			t.Errorf("port %d: echo %q, %v; want %q", tc.port, got, err, want)
		}
		if n := len(seen.all()); (n > 0) != tc.intercepted {
			t.Errorf("port %d: the handler saw %d connections", tc.port, n)
		}
		if st := l.engine.Stats(); (st.Stacks > 0) != tc.intercepted {
			t.Errorf("port %d: %d stacks", tc.port, st.Stacks)
		}
	}
	if n := l.metric("flowdog_netstack_packets_total", "direction=in"); n == 0 {
		t.Error("the intercepted flow's packets never reached the engine")
	}
	l.noViolations()
}

// TestCloseEndsHandlers closes the engine under a live connection whose
// handler waits for ctx: Close cancels it, resets both legs and returns
// with nothing left running.
func TestCloseEndsHandlers(t *testing.T) {
	entered := make(chan struct{})
	h := func(ctx context.Context, c *Conn) {
		defer c.Client.Close()
		defer c.Upstream.Close()
		close(entered)
		<-ctx.Done()
	}
	l := newLab(t, labOpts{h: h})
	_, client, server := l.hosts(0x1234, 0x99)
	echoServer(t, server, 7)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.DialTCP(ctx, netip.AddrPortFrom(serverV6, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-entered
	if st := l.engine.Stats(); st.Conns != 1 || st.Stacks != 1 || st.Endpoints < 2 {
		t.Fatalf("Stats with one connection = %+v", st)
	}
	start := time.Now()
	if err := l.engine.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	if st := l.engine.Stats(); st != (Stats{}) {
		t.Errorf("Stats after Close = %+v, want zero", st)
	}
	// The client's leg ended: closed by the returning handler (FIN) or
	// aborted with the stack (RST), whichever came first.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read after Close: %v, want EOF or a reset", err)
	}
	// HandlePacket after Close drops and counts. (The data path may hand
	// over late packets of the closed connection meanwhile: at least one.)
	before := l.metric("flowdog_netstack_dropped_packets_total", "reason=closed")
	l.engine.HandlePacket(&gwlb.Flow{}, benchSegment())
	if l.metric("flowdog_netstack_dropped_packets_total", "reason=closed") < before+1 {
		t.Error("a packet after Close was not counted as dropped")
	}
}
