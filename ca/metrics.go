package ca

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the authority's Prometheus collectors.
type metrics struct {
	minted         prometheus.Counter
	mintErrors     prometheus.Counter
	hits           prometheus.Counter
	misses         prometheus.Counter
	evictions      prometheus.Counter
	entries        prometheus.Gauge
	entriesMax     prometheus.Gauge
	rotations      prometheus.Counter
	rotationFails  prometheus.Counter
	intermediateNA prometheus.Gauge
	rootNA         prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		minted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_ca_leaves_minted_total",
			Help: "Leaf certificates signed by the intermediate.",
		}),
		mintErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_ca_leaf_mint_errors_total",
			Help: "Leaf certificates that could not be minted (no valid intermediate, bad names).",
		}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_ca_leaf_cache_hits_total",
			Help: "Leaf requests served from the cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_ca_leaf_cache_misses_total",
			Help: "Leaf requests not served from the cache (absent, near expiry or of an older intermediate); concurrent misses for the same names share one mint.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_ca_leaf_cache_evictions_total",
			Help: "Leaves evicted from the full cache, least recently used first.",
		}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_ca_leaf_cache_entries",
			Help: "Leaves in the cache.",
		}),
		entriesMax: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_ca_leaf_cache_entries_max",
			Help: "The leaf cache's configured limit.",
		}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_ca_rotations_total",
			Help: "Intermediate CA certificates signed by the root after start-up.",
		}),
		rotationFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowdog_ca_rotation_failures_total",
			Help: "Intermediate rotations that failed (the current intermediate kept serving; retried).",
		}),
		intermediateNA: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_ca_intermediate_expiry_timestamp_seconds",
			Help: "NotAfter of the current intermediate CA certificate, in Unix seconds.",
		}),
		rootNA: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowdog_ca_root_expiry_timestamp_seconds",
			Help: "NotAfter of the root CA certificate, in Unix seconds.",
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.minted, m.mintErrors, m.hits, m.misses, m.evictions, m.entries,
		m.entriesMax, m.rotations, m.rotationFails, m.intermediateNA, m.rootNA}
}

// register registers every collector with reg, or none: on an error the
// ones already registered are unregistered again.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	cs := m.collectors()
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return fmt.Errorf("ca: metrics already registered (one Authority per registry): %w", err)
			}
			return fmt.Errorf("ca: registering metrics: %w", err)
		}
	}
	return nil
}
