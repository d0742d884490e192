package netstackx

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons (label values of flowdog_netstack_dropped_packets_total).
const (
	dropQueueFull   = "queue_full"  // a stack's inbound queue was full
	dropSendFailed  = "send_failed" // the Sender refused an emitted packet (GWLB's send queue full)
	dropNoFlow      = "no_flow"     // an emitted packet matches no tracked flow (e.g. a late segment of a closed one)
	dropOversize    = "oversize"    // an emitted packet exceeds the MTU (never expected)
	dropMalformed   = "malformed"   // not a decodable IPv4/IPv6 packet
	dropUnsupported = "unsupported" // not TCP: only TCP is terminated
	dropClosed      = "closed"      // the engine is closed or not started
	dropStackError  = "stack_error" // the tenant's stack could not be created
)

// Dial results (label values of flowdog_netstack_dials_total).
const (
	dialAccepted = "accepted" // upstream connected, client handshake completed
	dialRefused  = "refused"  // upstream refused or reset: the client got a RST
	dialTimeout  = "timeout"  // upstream silent: the client got nothing
	dialError    = "error"    // other failures (unreachable, cancelled, client gone)
)

type metrics struct {
	stacks  prometheus.Gauge
	conns   prometheus.Gauge
	dials   *prometheus.CounterVec
	packets *prometheus.CounterVec
	drops   *prometheus.CounterVec

	// Bound children, looked up once: WithLabelValues allocates.
	in, out prometheus.Counter
	dialBy  map[string]prometheus.Counter
	dropBy  map[string]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, e *Engine) *metrics {
	m := &metrics{
		stacks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_netstack_stacks",
			Help: "Tenant netstacks running.",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_netstack_connections_active",
			Help: "Intercepted TCP connections open (served, or idle and detached from their handler).",
		}),
		dials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_netstack_dials_total",
			Help: "Upstream dials for intercepted SYNs, by result (accepted, refused, timeout, error).",
		}, []string{"result"}),
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_netstack_packets_total",
			Help: "Inner packets into the netstacks (in) and emitted to GWLB (out).",
		}, []string{"direction"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_netstack_dropped_packets_total",
			Help: "Packets dropped by the netstack engine, by reason (queue_full, send_failed, no_flow, oversize, ...).",
		}, []string{"reason"}),
		dialBy: map[string]prometheus.Counter{},
		dropBy: map[string]prometheus.Counter{},
	}
	m.in = m.packets.WithLabelValues("in")
	m.out = m.packets.WithLabelValues("out")
	for _, r := range []string{dialAccepted, dialRefused, dialTimeout, dialError} {
		m.dialBy[r] = m.dials.WithLabelValues(r)
	}
	for _, r := range []string{dropQueueFull, dropSendFailed, dropNoFlow, dropOversize, dropMalformed,
		dropUnsupported, dropClosed, dropStackError} {
		m.dropBy[r] = m.drops.WithLabelValues(r)
	}
	flows := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flowdog_netstack_flows",
		Help: "Intercepted flows tracked by the netstacks.",
	}, func() float64 { return float64(e.flowCount()) })
	if reg != nil {
		reg.MustRegister(m.stacks, m.conns, m.dials, m.packets, m.drops, flows)
	}
	return m
}

func (m *metrics) drop(reason string) { m.dropBy[reason].Inc() }

func (m *metrics) dial(result string) { m.dialBy[result].Inc() }
