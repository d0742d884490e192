package proxy

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connections       *prometheus.CounterVec
	requests          *prometheus.CounterVec
	upstreamTLSErrors *prometheus.CounterVec
	clientTLSErrors   *prometheus.CounterVec
	badGateway        *prometheus.CounterVec
	interceptorErrors *prometheus.CounterVec
	wsMessages        *prometheus.CounterVec
	panics            prometheus.Counter
	parked            prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_proxy_connections_total",
			Help: "Intercepted connections by how they were handled (http, tls_intercepted, tls_passthrough, tls_unparsed, raw).",
		}, []string{"kind"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_proxy_http_requests_total",
			Help: "HTTP requests by client protocol and response status class.",
		}, []string{"proto", "code"}),
		upstreamTLSErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_proxy_upstream_tls_errors_total",
			Help: "Failed TLS handshakes with servers, by kind (bad_server_certificate, timeout, ...).",
		}, []string{"kind"}),
		clientTLSErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_proxy_client_tls_errors_total",
			Help: "Failed TLS handshakes with clients, by kind (certificate_rejected: pinning or untrusted root).",
		}, []string{"kind"}),
		badGateway: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_proxy_bad_gateway_total",
			Help: "502 responses flowdog generated, by reason.",
		}, []string{"reason"}),
		interceptorErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_proxy_interceptor_errors_total",
			Help: "Requests failed by an interceptor's error or panic, by interceptor.",
		}, []string{"interceptor"}),
		wsMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowdog_proxy_websocket_messages_total",
			Help: "WebSocket data messages by direction and fate (forwarded, dropped).",
		}, []string{"direction", "fate"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_proxy_panics_total",
			Help: "Panics recovered in the proxy (each costs one connection).",
		}),
		parked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_proxy_parked_connections",
			Help: "Idle HTTP/1.1 client connections waiting for their next request without a goroutine or buffers.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.requests, m.upstreamTLSErrors, m.clientTLSErrors, m.badGateway,
			m.interceptorErrors, m.wsMessages, m.panics, m.parked)
	}
	return m
}

func (m *metrics) conns(kind string) prometheus.Counter { return m.connections.WithLabelValues(kind) }
