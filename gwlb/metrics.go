package gwlb

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowdog/flowdog/gwlb/packet"
)

// Drop reasons besides the codec's malformed kinds.
const (
	reasonPolicy         = "policy"
	reasonAcceptor       = "acceptor"
	reasonTableFull      = "table_full"
	reasonQueueFull      = "queue_full"
	reasonPendingFull    = "pending_full"
	reasonPendingTimeout = "pending_timeout"
	reasonSendError      = "send_error"
	reasonTruncated      = "truncated"
	reasonShutdown       = "shutdown"
)

// metrics are the data path's Prometheus collectors. Per-packet counts are
// summed per batch in the workers and added once a batch, so workers do not
// fight over counter cache lines.
type metrics struct {
	packets        *prometheus.CounterVec // verdict, direction
	bytes          *prometheus.CounterVec
	drops          *prometheus.CounterVec // reason
	flowsCreated   *prometheus.CounterVec // verdict
	flowsExpired   *prometheus.CounterVec // reason
	recvErrors     prometheus.Counter
	sendErrors     prometheus.Counter
	panics         prometheus.Counter
	workersRunning prometheus.Gauge
	batchSize      prometheus.Histogram

	// Bound children, looked up once: WithLabelValues allocates.
	in, out   [4]pair // by Verdict
	dropBy    map[string]prometheus.Counter
	createdBy [4]prometheus.Counter
	expiredBy [4]prometheus.Counter
}

type pair struct{ packets, bytes prometheus.Counter }

func newMetrics(reg prometheus.Registerer, d *Datapath) *metrics {
	m := &metrics{
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_gwlb_packets_total",
			Help: "Geneve packets by flow verdict and direction (in: from GWLB, out: to GWLB).",
		}, []string{"verdict", "direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_gwlb_bytes_total",
			Help: "Geneve UDP payload bytes by flow verdict and direction.",
		}, []string{"verdict", "direction"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_gwlb_dropped_packets_total",
			Help: "Packets dropped, by reason (malformed kinds, policy, table_full, queue_full, send_error, ...).",
		}, []string{"reason"}),
		flowsCreated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_gwlb_flows_created_total",
			Help: "Flows created, by initial verdict.",
		}, []string{"verdict"}),
		flowsExpired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_gwlb_flows_expired_total",
			Help: "Flows removed, by reason (idle, pending_timeout, replaced, shutdown).",
		}, []string{"reason"}),
		recvErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_gwlb_socket_receive_errors_total",
			Help: "Errors returned by recvmmsg.",
		}),
		sendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_gwlb_socket_send_errors_total",
			Help: "Errors returned by sendmmsg on the raw reply sockets.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_gwlb_worker_panics_total",
			Help: "Panics recovered in socket workers (each costs the batch being processed).",
		}),
		workersRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_gwlb_workers_running",
			Help: "Socket workers running.",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flowdog_gwlb_receive_batch_packets",
			Help:    "Datagrams returned per recvmmsg call.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		dropBy: map[string]prometheus.Counter{},
	}
	for v := Fast; v <= Pending; v++ {
		m.in[v] = pair{m.packets.WithLabelValues(v.String(), "in"), m.bytes.WithLabelValues(v.String(), "in")}
		m.out[v] = pair{m.packets.WithLabelValues(v.String(), "out"), m.bytes.WithLabelValues(v.String(), "out")}
		m.createdBy[v] = m.flowsCreated.WithLabelValues(v.String())
	}
	for i, r := range []string{"idle", "pending_timeout", "replaced", "shutdown"} {
		m.expiredBy[i] = m.flowsExpired.WithLabelValues(r)
	}
	reasons := append(packet.Kinds(), "other", reasonPolicy, reasonAcceptor, reasonTableFull, reasonQueueFull,
		reasonPendingFull, reasonPendingTimeout, reasonSendError, reasonTruncated, reasonShutdown)
	for _, r := range reasons {
		m.dropBy[r] = m.drops.WithLabelValues(r)
	}
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flowdog_gwlb_flows_active",
		Help: "Flows in the flow table.",
	}, func() float64 { return float64(d.table.count.Load()) })
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flowdog_gwlb_flows_pending",
		Help: "Flows waiting for an acceptor's decision.",
	}, func() float64 { return float64(d.table.pending.Load()) })
	kernelDrops := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "flowdog_gwlb_socket_receive_drops_total",
		Help: "Datagrams the kernel dropped because a worker socket's receive buffer was full (SO_RXQ_OVFL).",
	}, func() float64 { return float64(d.kernelDrops()) })
	maxFlows := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flowdog_gwlb_flows_max",
		Help: "The flow table's configured limit.",
	}, func() float64 { return float64(d.table.max) })
	if reg != nil {
		reg.MustRegister(m.packets, m.bytes, m.drops, m.flowsCreated, m.flowsExpired, m.recvErrors,
			m.sendErrors, m.panics, m.workersRunning, m.batchSize, active, pending, kernelDrops, maxFlows)
	}
	return m
}

// drop returns the counter for reason, falling back to "other".
func (m *metrics) drop(reason string) prometheus.Counter {
	if c, ok := m.dropBy[reason]; ok {
		return c
	}
	return m.dropBy["other"]
}
