package netstackx

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// TestHandlePacketDoesNotBlock floods HandlePacket, as socket workers
// would, while the Handler of the flow is stuck: the calls return at once,
// the excess is dropped and counted, and other connections of the same
// tenant keep working.
func TestHandlePacketDoesNotBlock(t *testing.T) {
	stuck := make(chan struct{})
	var once sync.Once
	unstick := func() { once.Do(func() { close(stuck) }) }
	defer unstick()
	h := func(ctx context.Context, c *Conn) {
		if c.ServerAddr.Port() == 7 {
			select {
			case <-stuck:
			case <-ctx.Done():
			}
		}
		splice(nil)(ctx, c)
	}
	l := newLab(t, labOpts{cfg: Config{QueueLen: 64}, h: h})
	tn, client, server := l.hosts(0x1234, 0x99)
	echoServer(t, server, 7)
	echoServer(t, server, 8)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The handshake completes (upstream first), then the handler sits.
	c, err := client.DialTCP(ctx, netip.AddrPortFrom(serverV4, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := randBytes(4, 256<<10)
	writeDone := make(chan error, 1)
	go func() { _, err := c.Write(msg); writeDone <- err }()

	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	tup := packet.Tuple{Proto: 6, Src: local.Addr(), Dst: serverV4, SrcPort: local.Port(), DstPort: 7}
	f := l.dp.Lookup(packet.Tenant{EndpointID: tn.EndpointID, AttachmentID: tn.AttachmentID}, tup)
	if f == nil {
		t.Fatal("no flow in the data path for the stuck connection")
	}
	// Segments with a broken IP header checksum: the stack drops each one
	// once it gets to it, so the flood costs the connection nothing.
	bogus := ipv4TCP(tup, 1400)

	const workers, perWorker = 2, 100_000
	before := l.metric("flowdog_netstack_dropped_packets_total", "reason=queue_full")
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range perWorker {
				l.engine.HandlePacket(f, bogus)
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	drops := l.metric("flowdog_netstack_dropped_packets_total", "reason=queue_full") - before
	t.Logf("%d HandlePacket calls in %v (%v each); %v dropped as queue_full",
		workers*perWorker, d.Round(time.Millisecond), d/(workers*perWorker), drops)
	if d > 5*time.Second {
		t.Errorf("flooding took %v: HandlePacket blocks", d)
	}
	if drops == 0 {
		t.Error("no queue_full drops: the bounded queue never filled")
	}

	// Another connection of the same tenant, through the real workers.
	c2, err := client.DialTCP(ctx, netip.AddrPortFrom(serverV6, 8))
	if err != nil {
		t.Fatalf("a second connection while the handler is stuck: %v", err)
	}
	got, err := roundTrip(c2, []byte("not blocked"))
	c2.Close()
	if err != nil || string(got) != "not blocked" {
		t.Fatalf("second connection: %q, %v", got, err)
	}

	// Unstuck, the first connection delivers everything.
	unstick()
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	echo, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(echo, msg) {
		t.Fatalf("stuck connection after release: %d of %d bytes, %v", len(echo), len(msg), err)
	}
	l.noViolations()
}

// ipv4TCP builds an IPv4 TCP segment of tup with payload bytes and a
// deliberately wrong IP header checksum.
func ipv4TCP(tup packet.Tuple, payload int) []byte {
	b := make([]byte, 40+payload)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = 64
	b[9] = 6
	binary.BigEndian.PutUint16(b[10:], 0xdead) // wrong on purpose
	src, dst := tup.Src.As4(), tup.Dst.As4()
	copy(b[12:], src[:])
	copy(b[16:], dst[:])
	binary.BigEndian.PutUint16(b[20:], tup.SrcPort)
	binary.BigEndian.PutUint16(b[22:], tup.DstPort)
	b[32] = 5 << 4
	b[33] = packet.TCPAck
	return b
}
