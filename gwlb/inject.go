package gwlb

import (
	"context"
	"errors"
	"net/netip"
	"sync"

	"github.com/flowdog/flowdog/gwlb/packet"
)

const (
	injectQueue = 4096
	injectBuf   = headroom + packet.MaxGeneveHeaderLen + packet.MaxInnerLen
)

type outPacket struct {
	buf  []byte // outer header room + Geneve + inner
	dst  [4]byte
	v    Verdict
	done chan struct{} // a barrier (buf nil): closed once what came before is sent
}

// injector sends packets that do not come straight from a worker's batch
// (netstack segments, released pending packets) through its own raw socket,
// batching whatever has queued up meanwhile into one sendmmsg.
type injector struct {
	d    *Datapath
	raw  *rawSocket
	ch   chan outPacket
	tx   *txBatch
	pool sync.Pool
	ipID uint16
}

func newInjector(d *Datapath, raw *rawSocket) *injector {
	in := &injector{d: d, raw: raw, ch: make(chan outPacket, injectQueue), tx: newTxBatch(d.opts.BatchSize)}
	in.pool.New = func() any { b := make([]byte, 0, injectBuf); return &b }
	return in
}

func (in *injector) get() []byte { return (*in.pool.Get().(*[]byte))[:0] }

func (in *injector) put(b []byte) {
	b = b[:0]
	in.pool.Put(&b)
}

var errQueueFull = errors.New("gwlb: send queue full")

// enqueue takes buf (headroom, then Geneve and inner packet), writes the
// outer header and queues it; it never blocks.
func (in *injector) enqueue(buf []byte, local netip.Addr, gwlb netip.AddrPort, v Verdict) error {
	// The outer header is finished by the sender goroutine (it owns ipID).
	putOuterPending(buf, local, gwlb)
	select {
	case in.ch <- outPacket{buf: buf, dst: gwlb.Addr().As4(), v: v}:
		return nil
	default:
		in.put(buf)
		in.d.m.drop(reasonQueueFull).Inc()
		if in.d.logFull.allow() {
			in.d.log.Warn("send queue to GWLB full; packet dropped", "queue", injectQueue)
		}
		return errQueueFull
	}
}

// putOuterPending records addresses in the headroom; run fills in the rest.
func putOuterPending(buf []byte, local netip.Addr, gwlb netip.AddrPort) {
	l, g := local.As4(), gwlb.Addr().As4()
	copy(buf[12:16], l[:])
	copy(buf[16:20], g[:])
	buf[20], buf[21] = byte(gwlb.Port()>>8), byte(gwlb.Port())
}

func (in *injector) sendDatagram(src netip.AddrPort, local netip.Addr, dgram []byte, v Verdict) {
	buf := in.get()
	buf = append(buf[:headroom], dgram...)
	_ = in.enqueue(buf, local, src, v)
}

func (in *injector) run(ctx context.Context) {
	var held []outPacket
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-in.ch:
			held = append(held[:0], p)
		}
	drain:
		for len(held) < len(in.tx.hdrs) {
			select {
			case p := <-in.ch:
				held = append(held, p)
			default:
				break drain
			}
		}
		m := in.d.m
		for _, p := range held {
			if p.done != nil {
				continue
			}
			var local, gwlb [4]byte
			copy(local[:], p.buf[12:16])
			copy(gwlb[:], p.buf[16:20])
			port := uint16(p.buf[20])<<8 | uint16(p.buf[21])
			in.ipID++
			packet.PutOuter(p.buf[:headroom], local, gwlb, port, packet.GenevePort, in.ipID,
				len(p.buf)-headroom, in.d.opts.UDPChecksum)
			in.tx.add(p.buf, p.dst)
			m.out[p.v].packets.Inc()
			m.out[p.v].bytes.Add(float64(len(p.buf) - headroom))
		}
		if _, failed, err := in.tx.flush(in.raw); failed > 0 {
			m.sendErrors.Add(float64(failed))
			m.drop(reasonSendError).Add(float64(failed))
			if in.d.logSend.allow() {
				in.d.log.Warn("sending to GWLB failed", "packets", failed, "err", err)
			}
		}
		for _, p := range held {
			if p.done != nil {
				close(p.done)
				continue
			}
			in.put(p.buf)
		}
	}
}

// barrier returns a channel closed once every packet queued before it has
// been handed to the kernel, or nil when the queue has no room (then the
// caller cannot wait for order, and does not).
func (in *injector) barrier() <-chan struct{} {
	done := make(chan struct{})
	select {
	case in.ch <- outPacket{done: done}:
		return done
	default:
		return nil
	}
}
