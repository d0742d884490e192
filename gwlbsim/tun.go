package gwlbsim

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
)

// PacketDevice carries one IP packet per Read and per Write, as a TUN
// device opened with IFF_TUN|IFF_NO_PI does. Close must make a blocked Read
// return.
type PacketDevice interface {
	io.ReadWriteCloser
}

// device is a PacketDevice attached to a tenant.
type device struct {
	sim    *Sim
	tenant *Tenant
	dev    PacketDevice
	// wmu serialises writes: a TUN device takes one packet per write(2),
	// and fakes used by tests may not be safe for concurrent use.
	wmu       sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

// AttachDevice makes dev a part of the tenant's network: every packet read
// from dev goes to the appliance in the tenant's envelope, exactly like a
// packet a Host emits, and every valid reply whose inner destination no
// Host of the tenant owns is written to dev. This is how real kernels take
// part: with a TUN device in a network namespace and routes into it, the
// kernel's own sockets talk through the appliance (see OpenTUN). The Sim
// closes dev on Close. A tenant has at most one device.
func (t *Tenant) AttachDevice(dev PacketDevice) error {
	s := t.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("gwlbsim: AttachDevice: %w", net.ErrClosed)
	}
	if t.dev != nil {
		return fmt.Errorf("gwlbsim: AttachDevice: tenant %v already has a device", t)
	}
	d := &device{sim: s, tenant: t, dev: dev}
	t.dev = d
	// Closed with the listeners, before the Sim waits for its goroutines:
	// closing is what ends the blocked Read of readLoop.
	s.listeners = append(s.listeners, d)
	s.wg.Add(1)
	go d.readLoop()
	return nil
}

// readLoop sends every packet the device yields through GWLB until the
// device is closed.
func (d *device) readLoop() {
	defer d.sim.wg.Done()
	// One buffer, reused: emit sends synchronously and keeps nothing. The
	// room in front takes the Geneve header, so the inner packet is never
	// copied.
	buf := make([]byte, HeaderLen+1<<16)
	for {
		n, err := d.dev.Read(buf[HeaderLen:])
		if err != nil {
			if d.sim.ctx.Err() != nil || errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			d.sim.log.Warn("gwlbsim: read from device", "tenant", d.tenant, "err", err)
			continue
		}
		if n == 0 {
			continue
		}
		if n > d.sim.cfg.MTU {
			// A kernel never hands a TUN device more than its MTU; a
			// larger packet means the device's MTU exceeds GWLB's limit,
			// which GWLB would not carry either.
			d.sim.filtered.Add(1)
			d.sim.log.Debug("gwlbsim: device packet above MTU", "tenant", d.tenant, "bytes", n, "mtu", d.sim.cfg.MTU)
			continue
		}
		d.sim.emitFor(d.tenant, buf[:HeaderLen+n])
	}
}

// write hands a valid reply's inner packet to the device.
func (d *device) write(inner []byte) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	_, err := d.dev.Write(inner)
	return err
}

// Close implements io.Closer.
func (d *device) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.dev.Close() })
	return d.closeErr
}
