package gwlbsim

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireRoot skips (or, in CI, fails) tests that need a raw socket.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const why = "needs root: the test reflector replies from each flow's GWLB source port through a raw IPPROTO_RAW socket"
	if os.Getenv("CI") == "" {
		t.Skip(why)
	}
	t.Fatal(why + " (CI is set, so this is a failure)")
}

// reply is one datagram the reflector is about to send back.
type reply struct {
	payload          []byte
	srcPort, dstPort uint16
}

// reflector is a minimal appliance: it sends every datagram back to GWLB
// unchanged, from the flow's source port to GWLB:6081, as a fast path does.
// mutate, when set, may change the reply (misbehaving variants) or drop it
// by returning false.
type reflector struct {
	conn   *net.UDPConn
	fd     int
	gwlb   netip.Addr
	addr   netip.AddrPort
	mutate func(*reply) bool
	wg     sync.WaitGroup
}

func startReflector(t *testing.T, gwlb netip.Addr, mutate func(*reply) bool) *reflector {
	t.Helper()
	requireRoot(t)
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatalf("reflector: %v", err)
	}
	if err := setRcvBuf(conn, rcvBufBytes); err != nil {
		t.Logf("reflector: %v", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		conn.Close()
		if os.Getenv("CI") == "" {
			t.Skipf("reflector: raw socket: %v", err)
		}
		t.Fatalf("reflector: raw socket: %v", err)
	}
	r := &reflector{
		conn:   conn,
		fd:     fd,
		gwlb:   gwlb,
		addr:   conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		mutate: mutate,
	}
	r.wg.Add(1)
	go r.loop(t)
	t.Cleanup(r.close)
	return r
}

func (r *reflector) close() {
	r.conn.Close()
	r.wg.Wait()
	unix.Close(r.fd)
}

func (r *reflector) loop(t *testing.T) {
	defer r.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("reflector: read: %v", err)
			}
			return
		}
		rp := reply{payload: append([]byte(nil), buf[:n]...), srcPort: from.Port(), dstPort: GenevePort}
		if r.mutate != nil && !r.mutate(&rp) {
			continue
		}
		if err := r.send(rp); err != nil {
			t.Errorf("reflector: send: %v", err)
			return
		}
	}
}

// send writes an IPv4+UDP packet by hand (zero UDP checksum, which IPv4
// allows) so the reply can come from any source port.
func (r *reflector) send(rp reply) error {
	pkt := make([]byte, 28+len(rp.payload))
	pkt[0] = 0x45                                         // version 4, IHL 5
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt))) // total length
	binary.BigEndian.PutUint16(pkt[6:], 0x4000)           // DF
	pkt[8] = 64                                           // TTL
	pkt[9] = unix.IPPROTO_UDP
	src, dst := r.addr.Addr().As4(), r.gwlb.As4()
	copy(pkt[12:], src[:])
	copy(pkt[16:], dst[:])
	binary.BigEndian.PutUint16(pkt[10:], ipChecksum(pkt[:20]))
	binary.BigEndian.PutUint16(pkt[20:], rp.srcPort)
	binary.BigEndian.PutUint16(pkt[22:], rp.dstPort)
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(rp.payload)))
	copy(pkt[28:], rp.payload)
	for {
		err := unix.Sendto(r.fd, pkt, 0, &unix.SockaddrInet4{Addr: dst})
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
			time.Sleep(time.Millisecond)
			continue
		}
		return err
	}
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
