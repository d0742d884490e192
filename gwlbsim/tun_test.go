package gwlbsim

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// fakeDevice is a PacketDevice made of channels: what the test puts into
// in the Sim reads, what the Sim writes arrives on out.
type fakeDevice struct {
	in, out chan []byte
	done    chan struct{}
	once    sync.Once
}

func newFakeDevice() *fakeDevice {
	return &fakeDevice{in: make(chan []byte, 16), out: make(chan []byte, 16), done: make(chan struct{})}
}

func (d *fakeDevice) Read(b []byte) (int, error) {
	select {
	case p := <-d.in:
		return copy(b, p), nil
	case <-d.done:
		return 0, os.ErrClosed
	}
}

func (d *fakeDevice) Write(b []byte) (int, error) {
	select {
	case <-d.done:
		return 0, os.ErrClosed
	default:
	}
	select {
	case d.out <- bytes.Clone(b):
		return len(b), nil
	case <-d.done:
		return 0, os.ErrClosed
	}
}

func (d *fakeDevice) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}

func (d *fakeDevice) next(t *testing.T) []byte {
	t.Helper()
	select {
	case p := <-d.out:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("nothing written to the device")
		return nil
	}
}

func udp4Packet(t *testing.T, src, dst net.IP, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src, DstIP: dst}
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	u.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, u, gopacket.Payload(payload))
}

// A device's packets go through the appliance in the tenant's envelope and
// come back out of the device; hosts keep receiving their own replies.
func TestDeviceThroughReflector(t *testing.T) {
	s := reflectedSim(t, nil)
	ten := s.AddTenant(testEndpoint, testAttachment)
	dev := newFakeDevice()
	if err := ten.AttachDevice(dev); err != nil {
		t.Fatal(err)
	}
	if err := ten.AttachDevice(newFakeDevice()); err == nil {
		t.Error("a second device was accepted")
	}
	pkt := udp4Packet(t, net.IP{192, 0, 2, 10}, net.IP{198, 51, 100, 10}, 40000, 53, []byte("query"))
	dev.in <- pkt
	if got := dev.next(t); !bytes.Equal(got, pkt) {
		t.Errorf("device got\n%x\nwant\n%x", got, pkt)
	}
	// The reply direction shares the flow.
	back := udp4Packet(t, net.IP{198, 51, 100, 10}, net.IP{192, 0, 2, 10}, 53, 40000, []byte("answer"))
	dev.in <- back
	if got := dev.next(t); !bytes.Equal(got, back) {
		t.Errorf("device got\n%x\nwant\n%x", got, back)
	}
	// Multicast never reaches GWLB.
	dev.in <- udp4Packet(t, net.IP{192, 0, 2, 10}, net.IP{224, 0, 0, 251}, 5353, 5353, []byte("mdns"))
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Filtered == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := s.Stats()
	if st.Sent != 2 || st.Delivered != 2 || st.Filtered != 1 || st.DeviceErrors != 0 {
		t.Errorf("stats %+v, want 2 sent, 2 delivered, 1 filtered", st)
	}
	assertNoViolations(t, s)
}

// Close ends the device's reader and closes the device.
func TestDeviceClose(t *testing.T) {
	k := newSink(t)
	s, err := New(Config{GWLBAddr: mustFreeLoopback(t), ApplianceAddr: k.addr})
	if err != nil {
		t.Fatal(err)
	}
	dev := newFakeDevice()
	if err := s.AddTenant(testEndpoint, testAttachment).AttachDevice(dev); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on the device reader")
	}
	if _, err := dev.Write([]byte{0x45}); err == nil {
		t.Error("device still open after Close")
	}
	if err := s.AddTenant(testEndpoint+1, testAttachment).AttachDevice(newFakeDevice()); err == nil {
		t.Error("AttachDevice after Close succeeded")
	}
}

func mustFreeLoopback(t *testing.T) netip.Addr {
	t.Helper()
	a, err := FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// OpenTUN creates and attaches a TUN device, here in a network namespace
// of its own so that the test leaves nothing behind.
func TestOpenTUN(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root to create a network namespace and a TUN device (CI is set, so this is a failure)")
		}
		t.Skip("needs root to create a network namespace and a TUN device")
	}
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread, now in a namespace of its own, dies
		// with the goroutine instead of running other goroutines there.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		f, err := OpenTUN("gwlbsimtest0")
		ch <- result{f, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if _, err := OpenTUN("a-name-far-too-long-for-linux"); err == nil {
		t.Error("OpenTUN accepted a name longer than IFNAMSIZ")
	}
	// The link is down: the reader must still end when the Sim closes.
	k := newSink(t)
	s, err := New(Config{GWLBAddr: mustFreeLoopback(t), ApplianceAddr: k.addr})
	if err != nil {
		r.f.Close()
		t.Fatal(err)
	}
	if err := s.AddTenant(testEndpoint, testAttachment).AttachDevice(r.f); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on the TUN reader")
	}
	if _, err := r.f.Read(make([]byte, 10)); err == nil || err == io.EOF {
		t.Errorf("read after Close: %v, want closed", err)
	}
}
