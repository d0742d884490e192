// Package loadgen is a batched Geneve load generator that plays AWS Gateway
// Load Balancer on loopback, for fast-path benchmarks.
//
// It owns a GWLB address (a free 127.x.y.z): one socket bound to addr:6081
// (SO_REUSEPORT, so that it coexists with an appliance on 0.0.0.0:6081)
// receives the reflected datagrams, and Sockets UDP sockets bound to addr:0
// are GWLB's per-flow source ports. Every datagram is built before the run:
// a Geneve header with the AWS options (one tenant, the flow cookie is the
// flow's index + 1) around a valid inner IPv4 UDP packet of InnerSize bytes,
// one per flow, the flows spread over the source ports so that the
// appliance's SO_REUSEPORT group spreads them over its workers.
//
// The generator is closed-loop: it sends with sendmmsg while fewer than
// Window datagrams are in flight (sent and not yet reflected) and reaps
// replies with recvmmsg. It therefore measures the reflector's throughput
// rather than how fast the kernel can drop what an open-loop sender
// overruns, which matters when generator and appliance share two cores.
// Run uses the calling goroutine only and starts no other.
package loadgen

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// GeneveLen is the length of the Geneve header the generator sends (the
// fixed header and the three AWS options); the UDP payload is GeneveLen
// bytes longer than the inner packet.
const GeneveLen = 8 + 32

// MinInnerSize is an IPv4 header and a UDP header.
const MinInnerSize = 20 + 8

// slotSize fits the largest reply (8,500-byte inner packet + Geneve).
const slotSize = 9216

// Tenant is the GWLB endpoint + attachment every generated datagram carries.
var Tenant = packet.Tenant{EndpointID: 0x0be1c0de0be1c0de, AttachmentID: 0xa77ac4}

// Config describes one run. Zero values take the documented defaults.
type Config struct {
	Target      netip.AddrPort // the appliance's Geneve socket; required
	InnerSize   int            // bytes of each inner IPv4 packet, MinInnerSize..8500; required
	Flows       int            // distinct inner 5-tuples; default 1024
	Sockets     int            // GWLB source ports (one UDP socket each); default 32
	Batch       int            // datagrams per sendmmsg and recvmmsg; default 64
	Window      int            // most datagrams in flight; default 256
	Warmup      time.Duration  // run but not measured; default 500ms (negative: none)
	Duration    time.Duration  // measured; default 3s
	VerifyEvery int            // byte-compare one reply in this many with what was sent; default 1024, negative: never
	RcvBuf      int            // SO_RCVBUF of the reply socket; default 8 MiB
	// StallTimeout is how long a full window may go without a reply before
	// its datagrams are written off as lost (so that loss cannot stop the
	// closed loop); default 50ms.
	StallTimeout time.Duration
	GWLBAddr     netip.Addr // default a random 127.x.y.z
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Flows, 1024)
	def(&c.Sockets, 32)
	def(&c.Batch, 64)
	def(&c.Window, 256)
	def(&c.VerifyEvery, 1024)
	def(&c.RcvBuf, 8<<20)
	if c.Warmup == 0 {
		c.Warmup = 500 * time.Millisecond
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.Duration <= 0 {
		c.Duration = 3 * time.Second
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 50 * time.Millisecond
	}
}

func (c *Config) check() error {
	switch {
	case !c.Target.IsValid() || !c.Target.Addr().Is4():
		return fmt.Errorf("target %v: want an IPv4 address and port", c.Target)
	case c.InnerSize < MinInnerSize || c.InnerSize > packet.MaxInnerLen:
		return fmt.Errorf("inner size %d: want %d..%d", c.InnerSize, MinInnerSize, packet.MaxInnerLen)
	case c.Flows < 1 || c.Flows > 1<<16:
		return fmt.Errorf("flows %d: want 1..65536", c.Flows)
	case c.Sockets < 1 || c.Sockets > c.Flows:
		return fmt.Errorf("sockets %d: want 1..flows (%d)", c.Sockets, c.Flows)
	case c.Batch < 1 || c.Batch > 1024:
		return fmt.Errorf("batch %d: want 1..1024", c.Batch)
	case c.Window < 1:
		return fmt.Errorf("window %d: want at least 1", c.Window)
	case c.GWLBAddr.IsValid() && !c.GWLBAddr.Is4():
		return fmt.Errorf("GWLB address %v: want IPv4", c.GWLBAddr)
	}
	return nil
}

// Result is what one run measured. Sent, Received and InnerBytes cover the
// measured interval only (warm-up excluded); the Total fields the whole run,
// including a drain of at most one second after the last send.
type Result struct {
	InnerSize  int
	Elapsed    time.Duration // length of the measured interval
	Sent       uint64        // datagrams sent in the interval
	Received   uint64        // replies received in the interval
	InnerBytes uint64        // inner-packet bytes of those replies

	TotalSent, TotalReceived uint64
	Stalls                   uint64 // times a full window was written off (see Config.StallTimeout)
	Verified                 uint64 // replies byte-compared with what was sent
}

// PPS is replies per second in the measured interval.
func (r Result) PPS() float64 { return float64(r.Received) / r.Elapsed.Seconds() }

// InnerGbps is the inner IP packets' bits per second (what GWLB's customers
// send) in the measured interval.
func (r Result) InnerGbps() float64 { return float64(r.InnerBytes) * 8 / r.Elapsed.Seconds() / 1e9 }

// UDPGbps is the outer UDP payload's bits per second: inner packets plus the
// Geneve header.
func (r Result) UDPGbps() float64 {
	return float64(r.InnerBytes+r.Received*GeneveLen) * 8 / r.Elapsed.Seconds() / 1e9
}

// Lost is the datagrams sent that never came back.
func (r Result) Lost() uint64 {
	if r.TotalReceived >= r.TotalSent {
		return 0
	}
	return r.TotalSent - r.TotalReceived
}

// LossRatio is Lost over TotalSent.
func (r Result) LossRatio() float64 {
	if r.TotalSent == 0 {
		return 0
	}
	return float64(r.Lost()) / float64(r.TotalSent)
}

// ErrNoReplies says the target reflected nothing at all.
var ErrNoReplies = errors.New("loadgen: no replies received")

// Run sends to cfg.Target for cfg.Warmup + cfg.Duration, or until ctx is
// done, and returns what it measured. A reply that differs from what was
// sent for its flow (bytes, or a source other than the target's address and
// the flow's GWLB source port) is an error, and so is receiving no reply.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg.setDefaults()
	if err := cfg.check(); err != nil {
		return Result{}, fmt.Errorf("loadgen: %w", err)
	}
	g, err := newGen(cfg)
	if err != nil {
		return Result{}, fmt.Errorf("loadgen: %w", err)
	}
	defer g.close()
	res, err := g.run(ctx)
	if err != nil {
		return res, fmt.Errorf("loadgen: %w", err)
	}
	if res.TotalReceived == 0 {
		return res, ErrNoReplies
	}
	return res, nil
}

// source is one GWLB source port: a connected UDP socket and a prebuilt
// sendmmsg vector over its flows' datagrams.
type source struct {
	fd   int
	port uint16
	// hdrs holds the socket's flows in order and then again the first
	// Batch-1 of them, so that any batch is the contiguous hdrs[off:off+n].
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	flows int
	off   int
}

type gen struct {
	cfg   Config
	addr  netip.Addr
	rxfd  int
	srcs  []*source
	dgram [][]byte // per flow: the UDP payload sent

	rxHdrs  []unix.Mmsghdr
	rxIovs  []unix.Iovec
	rxNames []unix.RawSockaddrInet4
	rxSlots []byte

	sent, recv, writtenOff uint64
	innerBytes             uint64
	verified, sinceVerify  uint64
	verifyErr              error

	pfd [1]unix.PollFd // for wait, kept here so that waiting does not allocate
}

func newGen(cfg Config) (g *gen, err error) {
	g = &gen{cfg: cfg, rxfd: -1}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	if err := g.openReplySocket(); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.Sockets; i++ {
		s, err := g.openSource()
		if err != nil {
			return nil, err
		}
		g.srcs = append(g.srcs, s)
	}
	g.build()

	n := cfg.Batch
	g.rxHdrs = make([]unix.Mmsghdr, n)
	g.rxIovs = make([]unix.Iovec, n)
	g.rxNames = make([]unix.RawSockaddrInet4, n)
	g.rxSlots = make([]byte, n*slotSize)
	for i := range g.rxHdrs {
		g.rxIovs[i].Base = &g.rxSlots[i*slotSize]
		g.rxIovs[i].SetLen(slotSize)
	}
	return g, nil
}

// openReplySocket binds GWLB's address, port 6081. Without a configured
// address it tries random 127.x.y.z until one binds.
func (g *gen) openReplySocket() error {
	var lastErr error
	for range 50 {
		a := g.cfg.GWLBAddr
		if !a.IsValid() {
			a = netip.AddrFrom4([4]byte{127, byte(rand.IntN(254) + 1), byte(rand.IntN(254) + 1), byte(rand.IntN(254) + 1)})
		}
		fd, err := udpSocket()
		if err != nil {
			return err
		}
		// SO_REUSEPORT on both sides lets this more specific bind coexist
		// with an appliance listening on 0.0.0.0:6081.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			unix.Close(fd)
			return fmt.Errorf("SO_REUSEPORT: %w", err)
		}
		// FORCE passes net.core.rmem_max as root: a full window of 8,500-byte
		// packets must fit, or the generator measures its own drops.
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, g.cfg.RcvBuf) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, g.cfg.RcvBuf)
		}
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(a, packet.GenevePort))); err != nil {
			unix.Close(fd)
			lastErr = fmt.Errorf("bind %v:%d: %w", a, packet.GenevePort, err)
			if g.cfg.GWLBAddr.IsValid() {
				return lastErr
			}
			continue
		}
		g.rxfd, g.addr = fd, a
		return nil
	}
	return lastErr
}

func (g *gen) openSource() (*source, error) {
	fd, err := udpSocket()
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(g.addr, 0))); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %v:0: %w", g.addr, err)
	}
	// Connected: sendmmsg needs no per-message address.
	if err := unix.Connect(fd, sockaddr(g.cfg.Target)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connect %v: %w", g.cfg.Target, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	return &source{fd: fd, port: uint16(sa.(*unix.SockaddrInet4).Port)}, nil
}

func udpSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("udp socket: %w", err)
	}
	return fd, nil
}

func sockaddr(ap netip.AddrPort) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
}

// build makes every flow's datagram and every source's send vector. Flow f
// goes out of source f % Sockets.
func (g *gen) build() {
	cfg := g.cfg
	g.dgram = make([][]byte, cfg.Flows)
	for f := range g.dgram {
		b := make([]byte, 0, GeneveLen+cfg.InnerSize)
		b = packet.AppendGeneve(b, packet.EtherTypeIPv4, Tenant, uint32(f)+1, nil)
		g.dgram[f] = appendInner(b, f, cfg.InnerSize)
	}
	for i, s := range g.srcs {
		var mine []int
		for f := i; f < cfg.Flows; f += cfg.Sockets {
			mine = append(mine, f)
		}
		s.flows = len(mine)
		n := s.flows + cfg.Batch - 1
		s.hdrs = make([]unix.Mmsghdr, n)
		s.iovs = make([]unix.Iovec, n)
		for j := range s.hdrs {
			d := g.dgram[mine[j%s.flows]]
			s.iovs[j].Base = &d[0]
			s.iovs[j].SetLen(len(d))
			s.hdrs[j].Hdr.Iov = &s.iovs[j]
			s.hdrs[j].Hdr.SetIovlen(1)
		}
	}
}

// appendInner appends a valid IPv4 UDP packet of size bytes for flow f:
// 10.1.x.y:(1024+f) -> 10.2.0.1:443, checksums correct, payload a pattern.
func appendInner(b []byte, f, size int) []byte {
	start := len(b)
	b = append(b, make([]byte, size)...)
	p := b[start:]
	src := [4]byte{10, 1, byte(f >> 8), byte(f)}
	dst := [4]byte{10, 2, 0, 1}
	ip := p[:20]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size))
	binary.BigEndian.PutUint16(ip[4:], uint16(f))
	ip[6] = 0x40 // DF
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], packet.Checksum(ip, 0))

	udp := p[20:]
	binary.BigEndian.PutUint16(udp[0:], uint16(1024+f))
	binary.BigEndian.PutUint16(udp[2:], 443)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	for i := 8; i < len(udp); i++ {
		udp[i] = byte(f + i)
	}
	pseudo := uint32(binary.BigEndian.Uint16(src[:2])) + uint32(binary.BigEndian.Uint16(src[2:])) +
		uint32(binary.BigEndian.Uint16(dst[:2])) + uint32(binary.BigEndian.Uint16(dst[2:])) +
		17 + uint32(len(udp))
	c := packet.Checksum(udp, pseudo)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return b
}

func (g *gen) close() {
	if g.rxfd >= 0 {
		unix.Close(g.rxfd)
		g.rxfd = -1
	}
	for _, s := range g.srcs {
		unix.Close(s.fd)
	}
	g.srcs = nil
}

func (g *gen) inFlight() uint64 {
	if g.recv+g.writtenOff >= g.sent {
		return 0
	}
	return g.sent - g.recv - g.writtenOff
}

func (g *gen) run(ctx context.Context) (Result, error) {
	cfg := g.cfg
	res := Result{InnerSize: cfg.InnerSize}
	start := time.Now()
	measureAt := start.Add(cfg.Warmup)
	var t0 time.Time
	var sent0, recv0, bytes0 uint64
	measuring := false
	lastReply := start
	next := 0 // round-robin over sources
	window := uint64(cfg.Window)
	batch := uint64(min(cfg.Batch, cfg.Window))

	for iter := 0; ; iter++ {
		now := time.Now()
		if !measuring && !now.Before(measureAt) {
			measuring, t0 = true, now
			sent0, recv0, bytes0 = g.sent, g.recv, g.innerBytes
		}
		if measuring && now.Sub(t0) >= cfg.Duration {
			res.Elapsed = now.Sub(t0)
			res.Sent, res.Received, res.InnerBytes = g.sent-sent0, g.recv-recv0, g.innerBytes-bytes0
			break
		}
		if iter&1023 == 0 && ctx.Err() != nil {
			return res, ctx.Err()
		}

		// Reap first, everything that is there: the window opens by whole
		// batches rather than one reply at a time.
		got := 0
		for {
			n, err := g.receive()
			if err != nil {
				return res, err
			}
			got += n
			if n < cfg.Batch {
				break
			}
		}
		if g.verifyErr != nil {
			return res, g.verifyErr
		}
		if got > 0 {
			lastReply = now
		}

		// Send only whole batches (or the whole window when it is smaller):
		// refilling a reply at a time would degrade into one-packet
		// sendmmsg calls and measure syscall overhead.
		sentNow, blocked := 0, false
		for room := window - g.inFlight(); room >= batch; room = window - g.inFlight() {
			n, err := g.send(g.srcs[next], int(batch))
			if err != nil {
				return res, err
			}
			if n == 0 {
				blocked = true
				break
			}
			sentNow += n
			next++
			if next == len(g.srcs) {
				next = 0
			}
		}
		if sentNow > 0 && !blocked {
			continue
		}
		// No room for a batch: sleep until a reply comes.
		if err := g.wait(time.Millisecond); err != nil {
			return res, err
		}
		if time.Since(lastReply) > cfg.StallTimeout {
			res.Stalls++
			g.writtenOff += g.inFlight()
			lastReply = time.Now()
		}
	}

	// Drain: the replies of what is still in flight count towards loss.
	drainUntil := time.Now().Add(time.Second)
	for g.recv < g.sent && time.Now().Before(drainUntil) {
		got, err := g.receive()
		if err != nil {
			return res, err
		}
		if got == 0 {
			if err := g.wait(10 * time.Millisecond); err != nil {
				return res, err
			}
		}
	}
	res.TotalSent, res.TotalReceived = g.sent, g.recv
	res.Verified = g.verified
	return res, g.verifyErr
}

// send writes up to n datagrams of s with one sendmmsg and returns how many
// the kernel took (0 when its buffer is full).
func (g *gen) send(s *source, n int) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.hdrs[s.off])), uintptr(n),
		unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
	case unix.EAGAIN, unix.EINTR, unix.ENOBUFS:
		return 0, nil
	case unix.ECONNREFUSED:
		// An ICMP port unreachable from an earlier datagram (target not
		// up yet or gone); what it refused shows up as loss.
		return 0, nil
	default:
		return 0, fmt.Errorf("sendmmsg: %w", e)
	}
	s.off = (s.off + int(r)) % s.flows
	g.sent += uint64(r)
	return int(r), nil
}

// receive reaps one batch of replies without blocking.
func (g *gen) receive() (int, error) {
	for i := range g.rxHdrs {
		h := &g.rxHdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&g.rxNames[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &g.rxIovs[i]
		h.SetIovlen(1)
		h.Flags = 0
	}
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(g.rxfd), uintptr(unsafe.Pointer(&g.rxHdrs[0])),
		uintptr(len(g.rxHdrs)), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
	case unix.EAGAIN, unix.EINTR:
		return 0, nil
	default:
		return 0, fmt.Errorf("recvmmsg: %w", e)
	}
	n := int(r)
	for i := 0; i < n; i++ {
		size := int(g.rxHdrs[i].Len)
		g.innerBytes += uint64(max(size-GeneveLen, 0))
		if g.cfg.VerifyEvery > 0 {
			if g.sinceVerify++; g.sinceVerify >= uint64(g.cfg.VerifyEvery) {
				g.sinceVerify = 0
				g.verify(i, size)
			}
		}
	}
	g.recv += uint64(n)
	return n, nil
}

// verify checks reply i against the datagram its cookie names: same bytes,
// from the target's address and the flow's GWLB source port.
func (g *gen) verify(i, size int) {
	if g.verifyErr != nil {
		return
	}
	g.verified++
	b := g.rxSlots[i*slotSize : i*slotSize+size]
	if g.rxHdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 || size < GeneveLen {
		g.verifyErr = fmt.Errorf("reply of %d bytes: truncated or too short", size)
		return
	}
	cookie := binary.BigEndian.Uint32(b[GeneveLen-4:])
	f := int(cookie) - 1
	if f < 0 || f >= len(g.dgram) {
		g.verifyErr = fmt.Errorf("reply with unknown flow cookie %#x", cookie)
		return
	}
	if !bytes.Equal(b, g.dgram[f]) {
		g.verifyErr = fmt.Errorf("reply for flow %d differs from the datagram sent (%d bytes, sent %d)", f, size, len(g.dgram[f]))
		return
	}
	sa := &g.rxNames[i]
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
	from := netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(pb[0])<<8|uint16(pb[1]))
	want := netip.AddrPortFrom(g.cfg.Target.Addr(), g.srcs[f%len(g.srcs)].port)
	if !g.cfg.Target.Addr().IsUnspecified() && from != want {
		g.verifyErr = fmt.Errorf("reply for flow %d from %v, want %v (the target's address, the flow's GWLB source port)", f, from, want)
	}
}

// wait blocks until the reply socket is readable or d has passed.
func (g *gen) wait(d time.Duration) error {
	g.pfd[0] = unix.PollFd{Fd: int32(g.rxfd), Events: unix.POLLIN}
	if _, err := unix.Poll(g.pfd[:], int(d.Milliseconds())); err != nil && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("poll: %w", err)
	}
	return nil
}
