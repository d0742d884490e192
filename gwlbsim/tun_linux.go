package gwlbsim

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenTUN attaches to the TUN device name in the caller's network namespace
// (creating it if it does not exist; a device made with `ip tuntap add mode
// tun` keeps its addresses and routes while nobody holds it) and returns
// it as a PacketDevice for Tenant.AttachDevice. The device carries bare IP
// packets (IFF_NO_PI), the framing of `ip tuntap`'s default. Needs
// CAP_NET_ADMIN.
func OpenTUN(name string) (*os.File, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("gwlbsim: TUN device name %q: must be 1 to %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("gwlbsim: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("gwlbsim: TUN device %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("gwlbsim: TUNSETIFF %q: %w", name, err)
	}
	// Non-blocking, so that the os.File goes through Go's poller: a
	// blocked Read then returns when the file is closed, which is how the
	// Sim stops its reader.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("gwlbsim: TUN device %q: non-blocking: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
