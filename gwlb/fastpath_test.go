package gwlb

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/gwlb/packet"
	"github.com/flowdog/flowdog/internal/testutil"
)

// offlineWorker is a worker without sockets: the receive batch is filled by
// hand so the per-packet path can be measured and pinned alone.
func offlineWorker(t testing.TB, opts Options) *worker {
	t.Helper()
	d, err := newDatapath(opts)
	if err != nil {
		t.Fatal(err)
	}
	d.addr = netip.MustParseAddrPort("127.0.0.1:6081")
	return newWorker(d, 0, nil, nil)
}

// load puts dgram into slot i as if recvmmsg had delivered it from src.
func (w *worker) load(i int, src netip.AddrPort, dgram []byte) {
	copy(w.rx.slot(i)[headroom:], dgram)
	w.rx.hdrs[i].Len = uint32(len(dgram))
	w.rx.hdrs[i].Hdr.Controllen = 0
	w.rx.hdrs[i].Hdr.Flags = 0
	w.rx.names[i].Family = unix.AF_INET
	w.rx.names[i].Addr = src.Addr().As4()
	p := src.Port()
	w.rx.names[i].Port = p>>8 | p<<8
}

func TestFastPathDoesNotAllocate(t *testing.T) {
	if testutil.Race {
		t.Skip("allocation counts are not meaningful under -race; the plain test run checks them")
	}
	w := offlineWorker(t, Options{})
	src := netip.MustParseAddrPort("127.9.9.9:50000")
	for i, inner := range [][]byte{
		tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 40000, dport: 443, ack: true, payload: make([]byte, 1400)}.inner(t),
		udpPacket(t, "fd00::1", "2001:db8::1", 5353, 53, make([]byte, 64)),
	} {
		w.load(i, src, geneve(tenantA, 7, inner))
	}
	now := time.Now().UnixNano()
	for i := range 2 {
		w.one(now, i) // creates the flows: allowed to allocate
	}
	w.tx.n = 0
	for i := range 2 {
		allocs := testing.AllocsPerRun(1000, func() {
			w.one(now, i)
			w.tx.n = 0
		})
		if allocs != 0 {
			t.Errorf("packet %d: %v allocations per packet on the fast path, want 0", i, allocs)
		}
	}
	if w.in[Fast].packets == 0 || w.out[Fast].packets == 0 {
		t.Fatal("packets did not take the fast path")
	}
	// The reply was written in place: the outer header precedes the datagram.
	reply := w.rx.slot(0)[:headroom+int(w.rx.hdrs[0].Len)]
	if reply[0] != 0x45 || reply[9] != 17 {
		t.Fatalf("no outer IPv4/UDP header in the headroom: % x", reply[:headroom])
	}
}

// BenchmarkFastPathPerPacket is the per-packet cost of a known FAST flow:
// decode, flow lookup and update, outer header, queueing for sendmmsg.
func BenchmarkFastPathPerPacket(b *testing.B) {
	for _, size := range []int{64, 1400, 8500} {
		b.Run(sizeName(size), func(b *testing.B) {
			w := offlineWorker(b, Options{})
			inner := udpPacket(b, "10.0.0.1", "198.51.100.1", 1000, 2000, make([]byte, size-28))
			w.load(0, netip.MustParseAddrPort("127.9.9.9:50000"), geneve(tenantA, 7, inner))
			now := time.Now().UnixNano()
			w.one(now, 0)
			w.tx.n = 0
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for b.Loop() {
				w.one(now, 0)
				w.tx.n = 0
			}
		})
	}
}

func sizeName(n int) string {
	switch n {
	case 64:
		return "64B"
	case 1400:
		return "1400B"
	}
	return "8500B"
}

// FuzzWorkerPacket drives whole datagrams through a worker's per-packet
// path (decode, flow table, policy, RST building): nothing may panic, and a
// datagram that does not decode must never be queued for sending.
func FuzzWorkerPacket(f *testing.F) {
	f.Add(geneve(tenantA, 1, tcpSpec{src: "10.0.0.1", dst: "198.51.100.1", sport: 1, dport: 23, syn: true}.inner(f)))
	f.Add(geneve(tenantA, 1, udpPacket(f, "fd00::1", "2001:db8::1", 1, 2, []byte("x"))))
	f.Add([]byte{0, 0, 8, 0})
	pol := &Policy{DropReset: true, Rules: []Rule{{Verdict: Drop, Ports: []PortRange{{23, 23}}}}}
	w := offlineWorker(f, Options{Policy: pol, MaxFlows: 1000})
	src := netip.MustParseAddrPort("127.9.9.9:50000")
	f.Fuzz(func(t *testing.T, dgram []byte) {
		if len(dgram) > slotSize-headroom {
			return
		}
		w.load(0, src, dgram)
		w.one(time.Now().UnixNano(), 0)
		var p packet.Packet
		if p.Decode(dgram) != nil && w.tx.n != 0 {
			t.Fatal("an undecodable datagram was queued for GWLB")
		}
		w.tx.n = 0
	})
}
