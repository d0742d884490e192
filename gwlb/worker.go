package gwlb

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// rstRoom is scratch space per batch slot for a TCP RST in its envelope.
const rstRoom = headroom + packet.MaxGeneveHeaderLen + 60 + 20

// worker owns one SO_REUSEPORT socket, one raw reply socket and the
// buffers of one batch; nothing in its loop allocates for a known flow.
type worker struct {
	d           *Datapath
	id          int
	rc          syscall.RawConn
	raw         *rawSocket
	rx          *rxBatch
	tx          *txBatch
	pkt         packet.Packet
	scratch     []byte
	ipID        uint16
	kernelDrops atomic.Uint32

	in, out [4]struct{ packets, bytes uint64 }
}

func newWorker(d *Datapath, id int, rc syscall.RawConn, raw *rawSocket) *worker {
	n := d.opts.BatchSize
	return &worker{
		d: d, id: id, rc: rc, raw: raw,
		rx:      newRxBatch(n),
		tx:      newTxBatch(n),
		scratch: make([]byte, n*rstRoom),
		ipID:    uint16(id) << 12,
	}
}

func (w *worker) run() error {
	for {
		n, err := w.rx.readFrom(w.rc)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EBADF) {
				return nil
			}
			w.d.m.recvErrors.Inc()
			if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOBUFS) {
				time.Sleep(time.Millisecond)
				continue
			}
			return fmt.Errorf("recvmmsg: %w", err)
		}
		w.d.m.batchSize.Observe(float64(n))
		w.batch(n)
	}
}

// batch processes n received datagrams and flushes the replies. A panic
// costs this batch only.
func (w *worker) batch(n int) {
	defer func() {
		if r := recover(); r != nil {
			w.d.m.panics.Inc()
			w.d.log.Error("socket worker recovered from a panic", "worker", w.id, "panic", r)
			w.tx.n = 0
		}
	}()
	now := time.Now().UnixNano()
	for i := 0; i < n; i++ {
		w.one(now, i)
	}
	if w.tx.n > 0 {
		_, failed, err := w.tx.flush(w.raw)
		if failed > 0 {
			w.d.m.sendErrors.Add(float64(failed))
			w.d.m.drop(reasonSendError).Add(float64(failed))
			if w.d.logSend.allow() {
				w.d.log.Warn("sending to GWLB failed", "worker", w.id, "packets", failed, "err", err)
			}
		}
	}
	m := w.d.m
	for v := range w.in {
		if c := &w.in[v]; c.packets > 0 {
			m.in[v].packets.Add(float64(c.packets))
			m.in[v].bytes.Add(float64(c.bytes))
			*c = struct{ packets, bytes uint64 }{}
		}
		if c := &w.out[v]; c.packets > 0 {
			m.out[v].packets.Add(float64(c.packets))
			m.out[v].bytes.Add(float64(c.bytes))
			*c = struct{ packets, bytes uint64 }{}
		}
	}
}

// one handles datagram i of the batch.
func (w *worker) one(now int64, i int) {
	d := w.d
	rx := w.rx
	size := int(rx.hdrs[i].Len)
	slot := rx.slot(i)
	src := rx.source(i)
	local, drops, ok := rx.control(i)
	if ok {
		w.kernelDrops.Store(drops)
	}
	if rx.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
		d.m.drop(reasonTruncated).Inc()
		d.malformed(src, "truncated", errTruncated)
		return
	}
	dgram := slot[headroom : headroom+size]
	if err := w.pkt.Decode(dgram); err != nil {
		kind := packet.KindOf(err)
		d.m.drop(kind).Inc()
		d.malformed(src, kind, err)
		return
	}
	if !local.IsValid() {
		local = d.addr.Addr()
	}
	v, f, reason := d.classify(now, src, local, &w.pkt, dgram)
	w.in[v].packets++
	w.in[v].bytes += uint64(size)
	switch v {
	case Fast:
		// Reflect in place: the outer header goes into the headroom.
		w.ipID++
		packet.PutOuter(slot[:headroom], local.As4(), src.Addr().As4(), src.Port(), packet.GenevePort,
			w.ipID, size, d.opts.UDPChecksum)
		w.tx.add(slot[:headroom+size], src.Addr().As4())
		w.out[Fast].packets++
		w.out[Fast].bytes += uint64(size)
	case Drop:
		d.m.drop(reason).Inc()
		if f != nil && reason == reasonPolicy && d.opts.Policy.DropReset && w.pkt.Inner.IsSYN() {
			w.reset(i, src, local)
		}
	case Intercept:
		d.opts.Intercept.HandlePacket(f, w.pkt.Inner.Raw)
	case Pending:
		if reason != "" {
			d.m.drop(reason).Inc()
		}
	}
}

// reset answers the decoded TCP SYN with a RST in the same envelope.
func (w *worker) reset(i int, src netip.AddrPort, local netip.Addr) {
	buf := w.scratch[i*rstRoom : i*rstRoom : (i+1)*rstRoom]
	buf = append(buf[:headroom], w.pkt.Geneve.Raw...)
	buf, err := packet.AppendReset(buf, &w.pkt.Inner)
	if err != nil {
		return
	}
	w.ipID++
	payload := len(buf) - headroom
	packet.PutOuter(buf[:headroom], local.As4(), src.Addr().As4(), src.Port(), packet.GenevePort,
		w.ipID, payload, w.d.opts.UDPChecksum)
	w.tx.add(buf, src.Addr().As4())
	w.out[Drop].packets++
	w.out[Drop].bytes += uint64(payload)
}

var errTruncated = errors.New("datagram larger than the receive buffer")

func (d *Datapath) malformed(src netip.AddrPort, kind string, err error) {
	if d.logMalformed.allow() {
		d.log.Warn("malformed packet dropped (rate-limited log)", "from", src.String(), "kind", kind, "err", err)
	}
}
