package gwlb

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/flowdog/flowdog/gwlb/packet"
)

func TestFastPathReflectsByteForByte(t *testing.T) {
	td := startDatapath(t, Options{})
	g := newFakeGWLB(t)
	extra := []byte{0xff, 0xfe, 0x7f, 0x01, 0xde, 0xad, 0xbe, 0xef} // an unknown option, carried back untouched
	cases := []struct {
		name  string
		dgram []byte
	}{
		{"ipv4 tcp syn", geneve(tenantA, 7, tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 40000, dport: 443, syn: true}.inner(t))},
		{"ipv6 udp", geneve(tenantA, 8, udpPacket(t, "fd00::1", "2001:db8::1", 5353, 53, []byte("query")))},
		{"unknown option", append(packet.AppendGeneve(nil, packet.EtherTypeIPv4, tenantB, 9, extra),
			udpPacket(t, "10.0.0.2", "198.51.100.2", 1000, 2000, bytes.Repeat([]byte{'x'}, 1400))...)},
		{"8500-byte inner", geneve(tenantA, 10, udpPacket(t, "10.0.0.3", "198.51.100.3", 1, 2, make([]byte, 8500-28)))},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g.send(td.Addr(), i%2, c.dgram)
			got, from := g.recv(2 * time.Second)
			if got == nil {
				t.Fatal("no reply")
			}
			if !bytes.Equal(got, c.dgram) {
				t.Fatalf("reply differs from the datagram sent (%d vs %d bytes)", len(got), len(c.dgram))
			}
			if from.Port() != g.srcPort(i%2) {
				t.Errorf("reply from port %d, want GWLB's source port %d", from.Port(), g.srcPort(i%2))
			}
			if from.Addr() != td.Addr().Addr() {
				t.Errorf("reply from %s, want the address GWLB sent to (%s)", from.Addr(), td.Addr().Addr())
			}
		})
	}
	// Counters are added once a batch is flushed: the last reply may arrive
	// a moment before its worker counts it.
	eventually(t, "every reflected packet counted", func() bool {
		return td.metric(t, "flowdog_gwlb_packets_total", "verdict=fast,direction=out") == float64(len(cases))
	})
	if got := td.metric(t, "flowdog_gwlb_flows_active", ""); got != float64(len(cases)) {
		t.Errorf("flows active = %v, want %d", got, len(cases))
	}
}

func TestMalformedCountedAndDropped(t *testing.T) {
	td := startDatapath(t, Options{})
	g := newFakeGWLB(t)
	good := geneve(tenantA, 1, udpPacket(t, "10.0.0.1", "198.51.100.1", 1, 2, []byte("hi")))
	badVersion := bytes.Clone(good)
	badVersion[0] |= 0x40 // version 1
	overrun := bytes.Clone(good)
	overrun[0] = 0x3f // 63 words of options: more than the packet holds
	noCookie := append(packet.AppendGeneve(nil, packet.EtherTypeIPv4, tenantA, 1, nil)[:8+12+12], udpPacket(t, "10.0.0.1", "198.51.100.1", 1, 2, nil)...)
	noCookie[0] = 6 // 24 bytes of options: endpoint and attachment only
	wrongProto := bytes.Clone(good)
	wrongProto[2], wrongProto[3] = 0x86, 0xdd // says IPv6, carries IPv4
	shortInner := good[:len(good)-10]         // IPv4 total length beyond the bytes present

	cases := []struct {
		name, kind string
		dgram      []byte
	}{
		{"empty", "geneve_short", []byte{}},
		{"short", "geneve_short", good[:5]},
		{"version", "geneve_version", badVersion},
		{"option overrun", "geneve_option_overrun", overrun},
		{"missing cookie", "aws_missing_cookie", noCookie},
		{"protocol mismatch", "inner_version", wrongProto},
		{"truncated inner", "inner_total_length", shortInner},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := td.metric(t, "flowdog_gwlb_dropped_packets_total", "reason="+c.kind)
			g.send(td.Addr(), 0, c.dgram)
			if got, _ := g.recv(200 * time.Millisecond); got != nil {
				t.Fatalf("malformed datagram was answered (%d bytes)", len(got))
			}
			eventually(t, "drop counted under "+c.kind, func() bool {
				return td.metric(t, "flowdog_gwlb_dropped_packets_total", "reason="+c.kind) == before+1
			})
		})
	}
	// The process is still up and serving.
	g.send(td.Addr(), 0, good)
	if got, _ := g.recv(2 * time.Second); !bytes.Equal(got, good) {
		t.Fatal("a valid datagram after malformed ones was not reflected")
	}
	if td.FlowCount() != 1 {
		t.Errorf("flows = %d, want 1 (malformed packets must not create flows)", td.FlowCount())
	}
}

func TestDropPolicyAnswersSYNWithReset(t *testing.T) {
	pol := &Policy{DropReset: true, Rules: []Rule{{Name: "no-telnet", Verdict: Drop, Protocols: []uint8{6}, Ports: []PortRange{{23, 23}}}}}
	td := startDatapath(t, Options{Policy: pol})
	g := newFakeGWLB(t)
	syn := tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 40000, dport: 23, syn: true, seq: 1000}.inner(t)
	dgram := geneve(tenantA, 42, syn)
	g.send(td.Addr(), 0, dgram)
	got, from := g.recv(2 * time.Second)
	if got == nil {
		t.Fatal("no RST for a dropped SYN")
	}
	if from.Port() != g.srcPort(0) {
		t.Errorf("RST from port %d, want %d", from.Port(), g.srcPort(0))
	}
	var p packet.Packet
	if err := p.Decode(got); err != nil {
		t.Fatal(err)
	}
	var sent packet.Geneve
	_ = sent.Decode(dgram)
	if !bytes.Equal(p.Geneve.Raw, sent.Raw) {
		t.Error("RST not in the flow's envelope")
	}
	in := p.Inner
	if in.TCPFlags&packet.TCPRst == 0 || in.Src != netip.MustParseAddr("198.51.100.1") || in.SrcPort != 23 || in.DstPort != 40000 {
		t.Errorf("not a RST from the server: %+v", in.Tuple())
	}
	// Non-SYN packets of the dropped flow vanish silently.
	g.send(td.Addr(), 0, geneve(tenantA, 42, tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 40000, dport: 23, ack: true}.inner(t)))
	if got, _ := g.recv(200 * time.Millisecond); got != nil {
		t.Fatal("a dropped flow's packet came back")
	}
	// Another port is on the fast path.
	ok := geneve(tenantA, 43, tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 40000, dport: 22, syn: true}.inner(t))
	g.send(td.Addr(), 0, ok)
	if got, _ := g.recv(2 * time.Second); !bytes.Equal(got, ok) {
		t.Fatal("fast flow not reflected")
	}
	if n := td.metric(t, "flowdog_gwlb_dropped_packets_total", "reason=policy"); n != 2 {
		t.Errorf("policy drops = %v, want 2", n)
	}
}

func TestSYNWithNewCookieStartsNewFlow(t *testing.T) {
	td := startDatapath(t, Options{})
	g := newFakeGWLB(t)
	spec := tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 40000, dport: 80, syn: true}
	for _, cookie := range []uint32{100, 200} {
		g.send(td.Addr(), 0, geneve(tenantA, cookie, spec.inner(t)))
		if got, _ := g.recv(2 * time.Second); got == nil {
			t.Fatal("no reply")
		}
	}
	if n := td.metric(t, "flowdog_gwlb_flows_created_total", ""); n != 2 {
		t.Errorf("flows created = %v, want 2", n)
	}
	if n := td.metric(t, "flowdog_gwlb_flows_expired_total", "reason=replaced"); n != 1 {
		t.Errorf("flows replaced = %v, want 1", n)
	}
	var in packet.Inner
	_ = in.Decode(spec.inner(t))
	f := td.Lookup(tenantA, in.Tuple())
	if f == nil {
		t.Fatal("flow not found")
	}
	if c := f.Envelope().Cookie; c != 200 {
		t.Errorf("flow cookie = %d, want the latest (200)", c)
	}
	// An appliance-originated packet carries the latest cookie.
	if err := td.Send(f, tcpSpec{src: "198.51.100.1", dst: "10.0.0.1", sport: 80, dport: 40000, rst: true}.inner(t)); err != nil {
		t.Fatal(err)
	}
	got, _ := g.recv(2 * time.Second)
	var p packet.Packet
	if got == nil || p.Decode(got) != nil {
		t.Fatal("Send produced no decodable packet")
	}
	if p.Geneve.FlowCookie != 200 {
		t.Errorf("sent with cookie %d, want 200", p.Geneve.FlowCookie)
	}
}

// delayedAcceptor decides after a delay, like a Lambda call.
type delayedAcceptor struct {
	delay   time.Duration
	verdict Verdict
	mu      sync.Mutex
	asked   int
}

func (a *delayedAcceptor) Accept(f *Flow, done func(Verdict)) {
	a.mu.Lock()
	a.asked++
	a.mu.Unlock()
	if a.delay < 0 {
		return // never answers
	}
	time.AfterFunc(a.delay, func() { done(a.verdict) })
}

type recordingIntercept struct {
	mu     sync.Mutex
	pkts   [][]byte
	closed int
}

func (r *recordingIntercept) HandlePacket(f *Flow, pkt []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pkts = append(r.pkts, bytes.Clone(pkt))
}

func (r *recordingIntercept) FlowClosed(f *Flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed++
}

func (r *recordingIntercept) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pkts)
}

func TestAcceptorHoldsFirstPacketsWithoutBlocking(t *testing.T) {
	acc := &delayedAcceptor{delay: 50 * time.Millisecond, verdict: Fast}
	pol := &Policy{Rules: []Rule{{Verdict: Intercept, Protocols: []uint8{6}}}}
	td := startDatapath(t, Options{Policy: pol, Acceptor: acc, Intercept: &recordingIntercept{}, PendingPackets: 3})
	g := newFakeGWLB(t)
	base := tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 40000, dport: 80}
	var sent [][]byte
	for i := range 4 {
		s := base
		s.syn, s.ack, s.seq = i == 0, i > 0, uint32(i)
		d := geneve(tenantA, 5, s.inner(t))
		sent = append(sent, d)
		g.send(td.Addr(), 0, d)
	}
	// Meanwhile another flow is served at once: the worker is not blocked.
	other := geneve(tenantA, 6, udpPacket(t, "10.0.0.9", "198.51.100.9", 1, 2, []byte("x")))
	start := time.Now()
	g.send(td.Addr(), 1, other)
	if got, _ := g.recv(2 * time.Second); !bytes.Equal(got, other) {
		t.Fatal("an unrelated flow waited for the acceptor")
	}
	if time.Since(start) > 40*time.Millisecond {
		t.Log("unrelated flow took", time.Since(start))
	}
	// The first three come back in order once the acceptor says FAST; the
	// fourth overflowed the 3-packet queue.
	for i := range 3 {
		got, _ := g.recv(2 * time.Second)
		if !bytes.Equal(got, sent[i]) {
			t.Fatalf("released packet %d differs or is missing", i)
		}
	}
	if got, _ := g.recv(200 * time.Millisecond); got != nil {
		t.Fatal("the packet beyond the queue limit was not dropped")
	}
	if n := td.metric(t, "flowdog_gwlb_dropped_packets_total", "reason=queue_full"); n != 1 {
		t.Errorf("queue_full drops = %v, want 1", n)
	}
	// After the decision the flow is plain FAST.
	g.send(td.Addr(), 0, sent[3])
	if got, _ := g.recv(2 * time.Second); !bytes.Equal(got, sent[3]) {
		t.Fatal("flow not FAST after the decision")
	}
	if n := td.metric(t, "flowdog_gwlb_flows_pending", ""); n != 0 {
		t.Errorf("pending flows = %v, want 0", n)
	}
}

func TestAcceptorTimeoutFailsClosed(t *testing.T) {
	acc := &delayedAcceptor{delay: -1}
	// DropReset is on: a flow dropped because its decision timed out must
	// still drop silently (only policy drops answer with a RST).
	pol := &Policy{Default: Intercept, DropReset: true}
	td := startDatapath(t, Options{Policy: pol, Acceptor: acc, Intercept: &recordingIntercept{},
		PendingTimeout: 100 * time.Millisecond, SweepInterval: 20 * time.Millisecond})
	g := newFakeGWLB(t)
	d := geneve(tenantA, 5, tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 1, dport: 80, syn: true}.inner(t))
	g.send(td.Addr(), 0, d)
	eventually(t, "pending timeout", func() bool {
		return td.metric(t, "flowdog_gwlb_dropped_packets_total", "reason=pending_timeout") == 1
	})
	g.send(td.Addr(), 0, d)
	if got, _ := g.recv(200 * time.Millisecond); got != nil {
		t.Fatal("a flow whose decision timed out was let through")
	}
	if n := td.metric(t, "flowdog_gwlb_flows_pending", ""); n != 0 {
		t.Errorf("pending = %v, want 0", n)
	}
}

func TestInterceptOnlyFromSYN(t *testing.T) {
	rec := &recordingIntercept{}
	pol := &Policy{Rules: []Rule{{Verdict: Intercept, Protocols: []uint8{6}, Ports: []PortRange{{80, 80}}}}}
	td := startDatapath(t, Options{Policy: pol, Intercept: rec})
	g := newFakeGWLB(t)
	// Mid-stream (no SYN): fast path, never intercepted.
	mid := geneve(tenantA, 1, tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 1000, dport: 80, ack: true, payload: []byte("GET")}.inner(t))
	g.send(td.Addr(), 0, mid)
	if got, _ := g.recv(2 * time.Second); !bytes.Equal(got, mid) {
		t.Fatal("mid-stream flow not reflected")
	}
	syn := tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 1001, dport: 80, syn: true}.inner(t)
	g.send(td.Addr(), 0, geneve(tenantA, 2, syn))
	eventually(t, "SYN handed to the interceptor", func() bool { return rec.count() == 1 })
	if got, _ := g.recv(100 * time.Millisecond); got != nil {
		t.Fatal("an intercepted packet was reflected")
	}
	rec.mu.Lock()
	if !bytes.Equal(rec.pkts[0], syn) {
		t.Error("interceptor got a different packet")
	}
	rec.mu.Unlock()
}

func TestTableFullDropsNewFlows(t *testing.T) {
	td := startDatapath(t, Options{MaxFlows: 2})
	g := newFakeGWLB(t)
	for i := range 3 {
		d := geneve(tenantA, 1, udpPacket(t, "10.0.0.1", "198.51.100.1", uint16(1000+i), 53, nil))
		g.send(td.Addr(), 0, d)
		got, _ := g.recv(300 * time.Millisecond)
		if (got != nil) != (i < 2) {
			t.Fatalf("flow %d: reflected=%v", i, got != nil)
		}
	}
	if n := td.metric(t, "flowdog_gwlb_dropped_packets_total", "reason=table_full"); n != 1 {
		t.Errorf("table_full drops = %v, want 1", n)
	}
}

func TestFlowsExpire(t *testing.T) {
	td := startDatapath(t, Options{IdleTimeout: time.Second, TCPIdleTimeout: 30 * time.Second,
		TCPClosedTimeout: 100 * time.Millisecond, SweepInterval: 50 * time.Millisecond})
	g := newFakeGWLB(t)
	send := func(d []byte) {
		g.send(td.Addr(), 0, d)
		if got, _ := g.recv(time.Second); got == nil {
			t.Fatal("no reply")
		}
	}
	send(geneve(tenantA, 1, udpPacket(t, "10.0.0.1", "198.51.100.1", 1, 2, nil)))
	c := tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 3, dport: 4, ack: true}
	send(geneve(tenantA, 2, c.inner(t)))
	if td.FlowCount() != 2 {
		t.Fatalf("flows = %d, want 2", td.FlowCount())
	}
	// FIN from both sides shortens the TCP flow's timeout.
	c.fin = true
	send(geneve(tenantA, 2, c.inner(t)))
	s := tcpSpec{src: "198.51.100.1", dst: "10.0.0.1", sport: 4, dport: 3, ack: true, fin: true}
	send(geneve(tenantA, 2, s.inner(t)))
	eventually(t, "closed TCP flow expiry", func() bool { return td.FlowCount() == 1 })
	eventually(t, "idle UDP flow expiry", func() bool { return td.FlowCount() == 0 })
	if n := td.metric(t, "flowdog_gwlb_flows_expired_total", "reason=idle"); n != 2 {
		t.Errorf("expired = %v, want 2", n)
	}
}

func TestNonFirstFragmentFollowsAddresses(t *testing.T) {
	td := startDatapath(t, Options{})
	g := newFakeGWLB(t)
	// An IPv4 non-first fragment: offset 185 (1480 bytes), protocol UDP, no ports.
	frag := udpPacket(t, "10.0.0.1", "198.51.100.1", 1, 2, make([]byte, 100))
	frag[6], frag[7] = 0x00, 185 // MF clear, offset 185
	var in packet.Inner
	if err := in.Decode(frag); err != nil || !in.NonFirst {
		t.Fatalf("test packet is not a non-first fragment: %v %+v", err, in)
	}
	d := geneve(tenantA, 1, frag)
	g.send(td.Addr(), 0, d)
	if got, _ := g.recv(2 * time.Second); !bytes.Equal(got, d) {
		t.Fatal("fragment not reflected")
	}
	if f := td.Lookup(tenantA, in.Tuple()); f == nil || f.Key.Tuple.SrcPort != 0 || f.Key.Tuple.DstPort != 0 {
		t.Fatal("fragment not keyed by addresses and protocol")
	}
}
