package gwlb

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/gwlb/packet"
	"github.com/flowdog/flowdog/internal/testutil"
)

var tenantA = packet.Tenant{EndpointID: 0x0123456789abcdef, AttachmentID: 0x1111}
var tenantB = packet.Tenant{EndpointID: 0x0fedcba987654321, AttachmentID: 0x2222}

type tcpSpec struct {
	src, dst           string
	sport, dport       uint16
	syn, ack, fin, rst bool
	seq, ackNum        uint32
	payload            []byte
}

// inner builds an IPv4 or IPv6 TCP packet with gopacket (an independent encoder).
func (s tcpSpec) inner(t testing.TB) []byte {
	t.Helper()
	src, dst := netip.MustParseAddr(s.src), netip.MustParseAddr(s.dst)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), SYN: s.syn, ACK: s.ack,
		FIN: s.fin, RST: s.rst, Seq: s.seq, Ack: s.ackNum, Window: 65535}
	return serialize(t, src, dst, layers.IPProtocolTCP, tcp, s.payload)
}

func udpPacket(t testing.TB, src, dst string, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	return serialize(t, netip.MustParseAddr(src), netip.MustParseAddr(dst), layers.IPProtocolUDP, udp, payload)
}

func serialize(t testing.TB, src, dst netip.Addr, proto layers.IPProtocol, l4 gopacket.SerializableLayer, payload []byte) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	var ip gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	if src.Is4() {
		v4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ip, nl = v4, v4
	} else {
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		ip, nl = v6, v6
	}
	switch l := l4.(type) {
	case *layers.TCP:
		_ = l.SetNetworkLayerForChecksum(nl)
	case *layers.UDP:
		_ = l.SetNetworkLayerForChecksum(nl)
	}
	if err := gopacket.SerializeLayers(buf, opts, ip, l4, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func geneve(tenant packet.Tenant, cookie uint32, inner []byte) []byte {
	proto := uint16(packet.EtherTypeIPv4)
	if inner[0]>>4 == 6 {
		proto = packet.EtherTypeIPv6
	}
	return append(packet.AppendGeneve(nil, proto, tenant, cookie, nil), inner...)
}

// fakeGWLB plays GWLB with plain sockets: it sends from its own source
// ports and receives replies on its address, port 6081.
type fakeGWLB struct {
	t    testing.TB
	addr netip.Addr
	rx   *net.UDPConn
	tx   []*net.UDPConn
}

func newFakeGWLB(t testing.TB) *fakeGWLB {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		_ = c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	for range 50 {
		a := netip.AddrFrom4([4]byte{127, byte(rand.IntN(254) + 1), byte(rand.IntN(254) + 1), byte(rand.IntN(254) + 1)})
		pc, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(a, packet.GenevePort).String())
		if err != nil {
			continue
		}
		g := &fakeGWLB{t: t, addr: a, rx: pc.(*net.UDPConn)}
		for range 2 {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
			if err != nil {
				t.Fatal(err)
			}
			g.tx = append(g.tx, c)
		}
		t.Cleanup(func() {
			g.rx.Close()
			for _, c := range g.tx {
				c.Close()
			}
		})
		return g
	}
	t.Fatal("no free loopback address for the fake GWLB")
	return nil
}

func (g *fakeGWLB) send(to netip.AddrPort, port int, dgram []byte) {
	g.t.Helper()
	if _, err := g.tx[port].WriteToUDPAddrPort(dgram, to); err != nil {
		g.t.Fatal(err)
	}
}

func (g *fakeGWLB) srcPort(port int) uint16 {
	return g.tx[port].LocalAddr().(*net.UDPAddr).AddrPort().Port()
}

// recv returns the next reply, or nil after timeout.
func (g *fakeGWLB) recv(timeout time.Duration) ([]byte, netip.AddrPort) {
	g.t.Helper()
	buf := make([]byte, 65536)
	_ = g.rx.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := g.rx.ReadFromUDPAddrPort(buf)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil, netip.AddrPort{}
		}
		g.t.Fatal(err)
	}
	return buf[:n], from
}

type testDP struct {
	*Datapath
	reg  *prometheus.Registry
	stop func()
}

func startDatapath(t testing.TB, opts Options) *testDP {
	t.Helper()
	needRaw(t)
	opts.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	if opts.Workers == 0 {
		opts.Workers = 2
	}
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for d.Healthy() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("data path not healthy: %v", d.Healthy())
		}
		time.Sleep(5 * time.Millisecond)
	}
	td := &testDP{Datapath: d, reg: reg}
	var stopped bool
	td.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(td.stop)
	return td
}

// metric returns the sum of the named metric over series whose labels include want ("k=v,k=v").
func (td *testDP) metric(t testing.TB, name, want string) float64 {
	return testutil.Metric(t, td.reg, name, want)
}

func needRaw(t testing.TB) { testutil.NeedRaw(t) }

// eventually polls cond for up to 5 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, what, cond)
}
