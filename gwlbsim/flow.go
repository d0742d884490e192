package gwlbsim

import (
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"time"
)

// flowKey identifies a flow as GWLB does: tenant plus canonical 5-tuple, so
// both directions share it.
type flowKey struct {
	tenant int
	t      tuple
}

// flow is GWLB's state for one flow. Guarded by Sim.mu.
type flow struct {
	key    flowKey
	tenant *Tenant
	port   int // index into Sim.src
	cookie uint32
	old    []uint32 // previous cookies, newest last, for stale detection
	hdr    []byte   // the Geneve header last sent; replaced, never mutated
	last   time.Time
}

var portSeed = maphash.MakeSeed()

// flowFor returns the header and source port index for a packet of t sent
// by a host of tenant, creating the flow or renewing its cookie after idle.
func (s *Sim) flowFor(tenant *Tenant, t tuple) ([]byte, int) {
	k := flowKey{tenant: tenant.id, t: t.canonical()}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flows[k]
	switch {
	case f == nil:
		if len(s.flows) >= maxFlows {
			s.expireFlowsLocked(now)
		}
		f = &flow{
			key:    k,
			tenant: tenant,
			port:   int(maphash.Comparable(portSeed, k) % uint64(len(s.src))),
		}
		f.newCookie()
		s.flows[k] = f
	case now.Sub(f.last) > s.idleTimeout(k.t.proto):
		f.newCookie()
		s.log.Debug("gwlbsim: flow reused after idle, new cookie", "tenant", tenant, "flow", t, "cookie", f.cookie)
	}
	f.last = now
	return f.hdr, f.port
}

func (s *Sim) idleTimeout(proto uint8) time.Duration {
	if proto == ipProtoTCP {
		return s.cfg.TCPIdleTimeout
	}
	return s.cfg.UDPIdleTimeout
}

// expireFlowsLocked forgets idle flows so the table stays bounded. A late
// reply for a forgotten flow counts as unknown_flow, as it would at GWLB.
func (s *Sim) expireFlowsLocked(now time.Time) {
	for k, f := range s.flows {
		if now.Sub(f.last) > s.idleTimeout(k.t.proto) {
			delete(s.flows, k)
		}
	}
	if len(s.flows) >= maxFlows {
		s.log.Warn("gwlbsim: flow table full of active flows", "flows", len(s.flows))
	}
}

// newCookie gives f a fresh random non-zero cookie, keeping the old one for
// stale detection, and rebuilds its header.
func (f *flow) newCookie() {
	if f.cookie != 0 {
		f.old = append(f.old, f.cookie)
		if len(f.old) > maxOldCookies {
			f.old = slices.Delete(f.old, 0, len(f.old)-maxOldCookies)
		}
	}
	c := rand.Uint32()
	for c == 0 || c == f.cookie || slices.Contains(f.old, c) {
		c = rand.Uint32()
	}
	f.cookie = c
	f.hdr = buildHeader(envelope{
		endpointID:   f.tenant.EndpointID,
		attachmentID: f.tenant.AttachmentID,
		cookie:       c,
	}, f.key.t.src.Addr().Is6())
}
