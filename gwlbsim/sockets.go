package gwlbsim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenUDP binds a UDP socket on addr, with SO_REUSEPORT when reusePort
// is set (needed to share port 6081 with an appliance on 0.0.0.0:6081).
func listenUDP(addr netip.AddrPort, reusePort bool) (*net.UDPConn, error) {
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("SO_REUSEPORT: %w", serr)
			}
			return nil
		}
	}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// setRcvBuf asks for n bytes of receive buffer: SO_RCVBUFFORCE ignores
// net.core.rmem_max but needs CAP_NET_ADMIN, so SO_RCVBUF is the fallback.
func setRcvBuf(c *net.UDPConn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("receive buffer: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	}); err != nil {
		return fmt.Errorf("receive buffer: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("receive buffer %d bytes: %w", n, serr)
	}
	return nil
}

var (
	freeMu    sync.Mutex
	freeGiven = map[netip.Addr]bool{}
)

// FreeLoopbackAddr picks a random loopback address 127.x.y.z (outside
// 127.0.0.0/24) whose port 6081 can be bound, for a Sim's GWLBAddr when
// several Sims run on one machine. Within a process it never returns the
// same address twice.
func FreeLoopbackAddr() (netip.Addr, error) {
	freeMu.Lock()
	defer freeMu.Unlock()
	var lastErr error
	for range 100 {
		a := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
		if freeGiven[a] {
			continue
		}
		// Bind as the Sim will (SO_REUSEPORT), so that an appliance on
		// 0.0.0.0:6081 with SO_REUSEPORT does not make every try fail.
		c, err := listenUDP(netip.AddrPortFrom(a, GenevePort), true)
		if err != nil {
			lastErr = err
			continue
		}
		c.Close()
		freeGiven[a] = true
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("gwlbsim: no free loopback address: %w", errors.Join(lastErr, errors.New("100 tries failed")))
}
