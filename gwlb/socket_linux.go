package gwlb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// headroom is reserved in front of every received datagram so that the
// fast path writes the outer IPv4+UDP header in place and sends the same
// buffer back: no copy.
const headroom = 28

// slotSize fits the largest datagram GWLB sends (8,500-byte inner packet,
// Geneve header with up to 252 bytes of options) plus headroom; anything
// larger arrives truncated and is dropped.
const slotSize = 9216

const oobSize = 64 // IP_PKTINFO (32) + SO_RXQ_OVFL (24), aligned

// listenUDP opens one SO_REUSEPORT worker socket with IP_PKTINFO (to learn
// which local address GWLB sent to) and SO_RXQ_OVFL (kernel drop counter).
func listenUDP(ctx context.Context, addr netip.AddrPort, rcvbuf int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			s := int(fd)
			if serr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				serr = fmt.Errorf("SO_REUSEPORT: %w", serr)
				return
			}
			if serr = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); serr != nil {
				serr = fmt.Errorf("IP_PKTINFO: %w", serr)
				return
			}
			if serr = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1); serr != nil {
				serr = fmt.Errorf("SO_RXQ_OVFL: %w", serr)
				return
			}
			if rcvbuf > 0 {
				// FORCE passes net.core.rmem_max when we have CAP_NET_ADMIN.
				if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
					_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// ErrNoRawSocket says flowdog lacks CAP_NET_RAW.
var ErrNoRawSocket = errors.New("opening a raw IPv4 socket failed: flowdog needs CAP_NET_RAW to reply to GWLB " +
	"from the source ports GWLB uses (run as root, or `setcap cap_net_raw+ep` the binary, or grant " +
	"AmbientCapabilities=CAP_NET_RAW in its systemd unit)")

// rawSocket is an IPPROTO_RAW socket (IP_HDRINCL implied) for replies.
type rawSocket struct {
	f  *os.File
	rc syscall.RawConn
}

func openRaw(sndbuf int) (*rawSocket, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("%w: %v", ErrNoRawSocket, err)
		}
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	if sndbuf > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndbuf) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
		}
	}
	f := os.NewFile(uintptr(fd), "raw-ipv4")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	return &rawSocket{f: f, rc: rc}, nil
}

func (r *rawSocket) Close() error { return r.f.Close() }

// rxBatch is a reusable recvmmsg vector over preallocated slots.
type rxBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	oob   []byte
	slots []byte // len(hdrs) * slotSize
	n     int
	err   error
	read  func(fd uintptr) bool // made once: a method value per call would allocate
}

func newRxBatch(n int) *rxBatch {
	b := &rxBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet4, n),
		oob:   make([]byte, n*oobSize),
		slots: make([]byte, n*slotSize),
	}
	for i := range b.hdrs {
		b.iovs[i].Base = &b.slots[i*slotSize+headroom]
		b.iovs[i].SetLen(slotSize - headroom)
	}
	b.read = b.recv
	return b
}

// slot returns the whole buffer of message i, headroom included.
func (b *rxBatch) slot(i int) []byte { return b.slots[i*slotSize : (i+1)*slotSize] }

func (b *rxBatch) reset() {
	for i := range b.hdrs {
		h := &b.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		h.Control = &b.oob[i*oobSize]
		h.SetControllen(oobSize)
		h.Flags = 0
		b.hdrs[i].Len = 0
	}
}

func (b *rxBatch) recv(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)),
		unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	if e != 0 {
		b.n, b.err = 0, e
		return true
	}
	b.n, b.err = int(n), nil
	return true
}

// readFrom fills the batch; it blocks in the netpoller until data arrives
// or the socket is closed.
func (b *rxBatch) readFrom(rc syscall.RawConn) (int, error) {
	b.reset()
	if err := rc.Read(b.read); err != nil {
		return 0, err
	}
	return b.n, b.err
}

// source returns the sender of message i.
func (b *rxBatch) source(i int) netip.AddrPort {
	sa := &b.names[i]
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]))
}

// control parses message i's control data: the local address the datagram
// was sent to (IP_PKTINFO) and the socket's kernel drop counter.
func (b *rxBatch) control(i int) (local netip.Addr, drops uint32, haveDrops bool) {
	oob := b.oob[i*oobSize : i*oobSize+int(b.hdrs[i].Hdr.Controllen)]
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			break
		}
		data := oob[unix.SizeofCmsghdr:l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			local = netip.AddrFrom4(pi.Addr)
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			drops, haveDrops = *(*uint32)(unsafe.Pointer(&data[0])), true
		}
		al := (l + unix.SizeofPtr - 1) &^ (unix.SizeofPtr - 1)
		if al > len(oob) {
			break
		}
		oob = oob[al:]
	}
	return
}

// txBatch is a reusable sendmmsg vector. Packets are referenced, not copied.
type txBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	n     int
	// results of the last write call
	sent  int
	err   error
	off   int
	write func(fd uintptr) bool
}

func newTxBatch(n int) *txBatch {
	t := &txBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet4, n),
	}
	for i := range t.hdrs {
		t.names[i].Family = unix.AF_INET
		h := &t.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&t.names[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &t.iovs[i]
		h.SetIovlen(1)
	}
	t.write = t.send
	return t
}

func (t *txBatch) full() bool { return t.n == len(t.hdrs) }

// add queues pkt (a whole IPv4 packet) to dst. pkt must stay untouched until flush.
func (t *txBatch) add(pkt []byte, dst [4]byte) {
	t.iovs[t.n].Base = &pkt[0]
	t.iovs[t.n].SetLen(len(pkt))
	t.names[t.n].Addr = dst
	t.n++
}

func (t *txBatch) send(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&t.hdrs[t.off])), uintptr(t.n-t.off),
		unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	if e != 0 {
		t.sent, t.err = 0, e
		return true
	}
	t.sent, t.err = int(n), nil
	return true
}

// flush writes every queued packet. A packet the kernel refuses is counted
// in failed and skipped, so one bad packet never holds up the batch.
func (t *txBatch) flush(rs *rawSocket) (sent, failed int, firstErr error) {
	for t.off = 0; t.off < t.n; {
		if err := rs.rc.Write(t.write); err != nil {
			failed += t.n - t.off
			if firstErr == nil {
				firstErr = err
			}
			break
		}
		if t.err != nil {
			failed++
			if firstErr == nil {
				firstErr = t.err
			}
			t.off++
			continue
		}
		sent += t.sent
		t.off += t.sent
	}
	t.n, t.off = 0, 0
	return sent, failed, firstErr
}
