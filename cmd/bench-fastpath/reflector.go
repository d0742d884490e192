package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// The bare reflector is the baseline: the least code that does what the
// fast path does with the same syscalls and batching as gwlb's workers
// (SO_REUSEPORT sockets, recvmmsg of 64 through the netpoller, the outer
// IPv4+UDP header written into the headroom, sendmmsg on an IPPROTO_RAW
// socket), and nothing else: no decoding, no flow table, no metrics.

const (
	reflHeadroom = packet.OuterHeaderLen
	reflSlot     = 9216 // as gwlb's: the largest GWLB datagram plus headroom
	reflBatch    = 64
)

type reflector struct {
	addr  netip.AddrPort
	conns []*net.UDPConn
	raws  []*os.File
	wg    sync.WaitGroup
	errc  chan error
	// closing tells a worker that an error on a closed socket is shutdown:
	// RawConn on an *os.File reports it as an unexported poll error.
	closing atomic.Bool
	workers []*reflWorker
}

// startReflector binds workers SO_REUSEPORT sockets to listen (port 0: the
// first one picks it) and starts one goroutine per socket.
func startReflector(listen netip.AddrPort, workers, rcvbuf int) (_ *reflector, err error) {
	r := &reflector{errc: make(chan error, workers)}
	defer func() {
		if err != nil {
			r.closeSockets()
		}
	}()
	for i := 0; i < workers; i++ {
		c, err := reflListen(listen, rcvbuf)
		if err != nil {
			return nil, fmt.Errorf("reflector: listen %v: %w", listen, err)
		}
		r.conns = append(r.conns, c)
		if i == 0 {
			listen = c.LocalAddr().(*net.UDPAddr).AddrPort()
			r.addr = listen
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return nil, fmt.Errorf("reflector: raw socket (needs CAP_NET_RAW): %w", err)
		}
		r.raws = append(r.raws, os.NewFile(uintptr(fd), "raw-ipv4"))
	}
	for i := range r.conns {
		crc, err := r.conns[i].SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("reflector: %w", err)
		}
		rrc, err := r.raws[i].SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("reflector: %w", err)
		}
		w := newReflWorker(crc, rrc, r.addr.Addr().As4())
		r.workers = append(r.workers, w)
		r.wg.Go(func() {
			if err := w.run(); err != nil && !r.closing.Load() {
				r.errc <- err
			}
		})
	}
	return r, nil
}

func reflListen(addr netip.AddrPort, rcvbuf int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				return
			}
			if rcvbuf > 0 && unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func (r *reflector) Addr() netip.AddrPort { return r.addr }

func (r *reflector) closeSockets() {
	for _, c := range r.conns {
		c.Close()
	}
	for _, f := range r.raws {
		f.Close()
	}
}

// Stop stops the workers, waits for them and returns the mean number of
// datagrams per recvmmsg and the first error a worker hit.
func (r *reflector) Stop() (float64, error) {
	r.closing.Store(true)
	r.closeSockets()
	r.wg.Wait()
	var calls, pkts uint64
	for _, w := range r.workers {
		calls, pkts = calls+w.calls, pkts+w.pkts
	}
	var err error
	select {
	case err = <-r.errc:
	default:
	}
	return float64(pkts) / float64(max(calls, 1)), err
}

type reflWorker struct {
	crc, rrc syscall.RawConn
	local    [4]byte
	ipID     uint16
	// calls and pkts count recvmmsg calls and datagrams, read after Stop.
	calls, pkts uint64

	rxHdrs  []unix.Mmsghdr
	rxIovs  []unix.Iovec
	rxNames []unix.RawSockaddrInet4
	slots   []byte
	rxN     int
	rxErr   error

	txHdrs  []unix.Mmsghdr
	txIovs  []unix.Iovec
	txNames []unix.RawSockaddrInet4
	txN     int
	txOff   int
	txSent  int
	txErr   error

	recvFn, sendFn func(uintptr) bool // made once: method values allocate
}

func newReflWorker(crc, rrc syscall.RawConn, local [4]byte) *reflWorker {
	w := &reflWorker{
		crc: crc, rrc: rrc, local: local,
		rxHdrs: make([]unix.Mmsghdr, reflBatch), rxIovs: make([]unix.Iovec, reflBatch),
		rxNames: make([]unix.RawSockaddrInet4, reflBatch), slots: make([]byte, reflBatch*reflSlot),
		txHdrs: make([]unix.Mmsghdr, reflBatch), txIovs: make([]unix.Iovec, reflBatch),
		txNames: make([]unix.RawSockaddrInet4, reflBatch),
	}
	for i := range w.rxIovs {
		w.rxIovs[i].Base = &w.slots[i*reflSlot+reflHeadroom]
		w.rxIovs[i].SetLen(reflSlot - reflHeadroom)
		w.txNames[i].Family = unix.AF_INET
		h := &w.txHdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.txNames[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &w.txIovs[i]
		h.SetIovlen(1)
	}
	w.recvFn, w.sendFn = w.recv, w.send
	return w
}

func (w *reflWorker) run() error {
	for {
		for i := range w.rxHdrs {
			h := &w.rxHdrs[i].Hdr
			h.Name = (*byte)(unsafe.Pointer(&w.rxNames[i]))
			h.Namelen = unix.SizeofSockaddrInet4
			h.Iov = &w.rxIovs[i]
			h.SetIovlen(1)
			h.Flags = 0
		}
		if err := w.crc.Read(w.recvFn); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reflector: recvmmsg: %w", err)
		}
		if w.rxErr != nil {
			return fmt.Errorf("reflector: recvmmsg: %w", w.rxErr)
		}
		w.calls++
		w.pkts += uint64(w.rxN)
		w.txN = 0
		for i := 0; i < w.rxN; i++ {
			size := int(w.rxHdrs[i].Len)
			sa := &w.rxNames[i]
			pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
			slot := w.slots[i*reflSlot : i*reflSlot+reflHeadroom+size]
			w.ipID++
			packet.PutOuter(slot, w.local, sa.Addr, uint16(pb[0])<<8|uint16(pb[1]), packet.GenevePort, w.ipID, size, false)
			w.txIovs[w.txN].Base = &slot[0]
			w.txIovs[w.txN].SetLen(len(slot))
			w.txNames[w.txN].Addr = sa.Addr
			w.txN++
		}
		if err := w.flush(); err != nil {
			return err
		}
	}
}

func (w *reflWorker) recv(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&w.rxHdrs[0])), uintptr(len(w.rxHdrs)),
		unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	w.rxN, w.rxErr = int(n), nil
	if e != 0 {
		w.rxN, w.rxErr = 0, e
	}
	return true
}

func (w *reflWorker) send(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.txHdrs[w.txOff])), uintptr(w.txN-w.txOff),
		unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	w.txSent, w.txErr = int(n), nil
	if e != 0 {
		w.txSent, w.txErr = 0, e
	}
	return true
}

// flush sends the batch; as in gwlb, a packet the kernel refuses is skipped
// (it shows up as loss) rather than holding up the rest.
func (w *reflWorker) flush() error {
	for w.txOff = 0; w.txOff < w.txN; {
		if err := w.rrc.Write(w.sendFn); err != nil {
			return fmt.Errorf("reflector: sendmmsg: %w", err)
		}
		if w.txErr != nil {
			w.txOff++
			continue
		}
		w.txOff += w.txSent
	}
	return nil
}
