package gwlb

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// FlowKey identifies a flow: its tenant plus the direction-free 5-tuple.
// Tenants never share flows, even with identical addresses.
type FlowKey struct {
	Tenant packet.Tenant
	Tuple  packet.Tuple // canonical
}

func (k FlowKey) hash() uint64 {
	// A cheap multiplicative mix; maps inside a shard do their own hashing.
	a, b := k.Tuple.Src.As16(), k.Tuple.Dst.As16()
	h := k.Tenant.EndpointID*0x9e3779b97f4a7c15 ^ k.Tenant.AttachmentID
	for i := 0; i < 16; i += 8 {
		h = (h ^ le64(a[i:])) * 0xbf58476d1ce4e5b9
		h = (h ^ le64(b[i:])) * 0x94d049bb133111eb
	}
	h ^= uint64(k.Tuple.SrcPort)<<24 | uint64(k.Tuple.DstPort)<<8 | uint64(k.Tuple.Proto)
	h *= 0xbf58476d1ce4e5b9
	return h ^ h>>31
}

func le64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// Envelope is what a packet to GWLB on a flow must carry: the outer
// addresses and the Geneve header with options exactly as GWLB last sent
// them for the flow.
type Envelope struct {
	GWLB     netip.AddrPort // the GWLB node that sent the flow's latest packet
	Local    netip.Addr     // the address it was sent to
	Geneve   []byte         // Geneve header and options, byte for byte
	Cookie   uint32
	cookieAt int
}

func (e *Envelope) set(src netip.AddrPort, local netip.Addr, g *packet.Geneve) {
	e.GWLB, e.Local, e.Cookie = src, local, g.FlowCookie
	e.cookieAt = g.CookieOffset
	if cap(e.Geneve) < len(g.Raw) {
		e.Geneve = make([]byte, len(g.Raw))
	}
	e.Geneve = e.Geneve[:len(g.Raw)]
	copy(e.Geneve, g.Raw)
}

func (e *Envelope) same(src netip.AddrPort, local netip.Addr, g *packet.Geneve) bool {
	return e.GWLB == src && e.Local == local && string(e.Geneve) == string(g.Raw)
}

// Flow is one tracked flow. Its exported fields are set at creation and
// never change; the rest is guarded by its shard's lock.
type Flow struct {
	Key FlowKey
	// Initiator is the tuple of the flow's first packet (Src is the client).
	Initiator packet.Tuple
	Created   time.Time
	Rule      string // the policy rule that decided, "" for the default

	verdict  Verdict
	lastSeen int64 // unix nanos, from the worker's batch clock
	packets  [2]uint64
	bytes    [2]uint64
	finSeen  [2]bool
	rst      bool
	env      Envelope
	pending  *pendingQueue
	removed  bool
	shard    *shard
	// interceptSeen: the interception engine has seen this flow and must
	// hear when it goes.
	interceptSeen bool
	// dropReason says why a Drop flow drops (the metric's reason); only
	// policy drops answer SYNs with a RST.
	dropReason string
}

// Tenant returns the flow's tenant.
func (f *Flow) Tenant() packet.Tenant { return f.Key.Tenant }

// Verdict returns the flow's current verdict.
func (f *Flow) Verdict() Verdict {
	f.shard.mu.Lock()
	defer f.shard.mu.Unlock()
	return f.verdict
}

// Envelope returns a copy of the flow's latest envelope.
func (f *Flow) Envelope() Envelope {
	f.shard.mu.Lock()
	defer f.shard.mu.Unlock()
	e := f.env
	e.Geneve = append([]byte(nil), f.env.Geneve...)
	return e
}

// Stats returns packets and bytes seen from the initiator (0) and responder (1).
func (f *Flow) Stats() (packets, bytes [2]uint64) {
	f.shard.mu.Lock()
	defer f.shard.mu.Unlock()
	return f.packets, f.bytes
}

func (f *Flow) closed() bool { return f.rst || (f.finSeen[0] && f.finSeen[1]) }

const nShards = 256

type shard struct {
	mu sync.Mutex
	m  map[FlowKey]*Flow
	_  [40]byte // keep shards' locks on separate cache lines
}

// table is the sharded, bounded flow table.
type table struct {
	shards  [nShards]shard
	count   atomic.Int64
	pending atomic.Int64 // flows waiting for an acceptor
	max     int64

	tcpIdle, idle, tcpClosed int64 // nanoseconds
}

func newTable(max int, tcpIdle, idle, tcpClosed time.Duration) *table {
	t := &table{max: int64(max), tcpIdle: int64(tcpIdle), idle: int64(idle), tcpClosed: int64(tcpClosed)}
	for i := range t.shards {
		t.shards[i].m = make(map[FlowKey]*Flow)
	}
	return t
}

func (t *table) shardOf(k *FlowKey) *shard { return &t.shards[k.hash()%nShards] }

// timeout returns how long f may stay idle. Callers hold its shard's lock.
func (t *table) timeout(f *Flow) int64 {
	if f.Key.Tuple.Proto != 6 {
		return t.idle
	}
	if f.closed() {
		return t.tcpClosed
	}
	return t.tcpIdle
}

// removeLocked takes f out of its shard. Callers hold the shard's lock.
func (t *table) removeLocked(s *shard, f *Flow) {
	if f.removed {
		return
	}
	f.removed = true
	if f.verdict == Pending {
		f.verdict, f.pending = Drop, nil
		t.pending.Add(-1)
	}
	delete(s.m, f.Key)
	t.count.Add(-1)
}

// lookup finds a flow by key; for tests and the admin API.
func (t *table) lookup(k FlowKey) *Flow {
	s := t.shardOf(&k)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[k]
}

// expire removes flows idle beyond their timeout and pending flows waiting
// beyond pendingTimeout; it calls gone for each one outside the locks.
func (t *table) expire(now int64, pendingTimeout int64, gone func(*Flow, expireReason)) {
	var victims []*Flow
	var reasons []expireReason
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, f := range s.m {
			switch {
			case f.verdict == Pending && !f.pending.deciding && now-f.Created.UnixNano() > pendingTimeout:
				// Fail closed: an acceptor that never answers must not let a flow through.
				f.verdict, f.pending, f.dropReason = Drop, nil, reasonPendingTimeout
				t.pending.Add(-1)
				victims, reasons = append(victims, f), append(reasons, expirePendingTimeout)
			case now-f.lastSeen > t.timeout(f):
				t.removeLocked(s, f)
				victims, reasons = append(victims, f), append(reasons, expireIdle)
			}
		}
		s.mu.Unlock()
		for j, f := range victims {
			gone(f, reasons[j])
		}
		victims, reasons = victims[:0], reasons[:0]
	}
}

type expireReason uint8

const (
	expireIdle expireReason = iota
	expirePendingTimeout
	expireReplaced
	expireShutdown
)
