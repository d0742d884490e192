package cff

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names follow CloudFront's (FunctionInvocations,
// FunctionExecutionErrors, FunctionValidationErrors, FunctionThrottles,
// FunctionComputeUtilization) in flowdog's naming scheme.
var (
	invocationsOpts = prometheus.CounterOpts{
		Name: "flowdog_cff_function_invocations_total",
		Help: "CloudFront function invocations (CloudFront's FunctionInvocations).",
	}
	executionErrorsOpts = prometheus.CounterOpts{
		Name: "flowdog_cff_function_execution_errors_total",
		Help: "Invocations that threw or exceeded their budget; the viewer got a 503 (CloudFront's FunctionExecutionErrors).",
	}
	validationErrorsOpts = prometheus.CounterOpts{
		Name: "flowdog_cff_function_validation_errors_total",
		Help: "Invocations whose result was invalid; the viewer got a 502 (CloudFront's FunctionValidationErrors).",
	}
	throttlesOpts = prometheus.CounterOpts{
		Name: "flowdog_cff_function_throttles_total",
		Help: "Invocations stopped for exceeding their time budget (CloudFront's FunctionThrottles).",
	}
	utilizationOpts = prometheus.HistogramOpts{
		Name:    "flowdog_cff_function_compute_utilization_ratio",
		Help:    "Share of the time budget an invocation used, 0 to 1 (CloudFront's FunctionComputeUtilization / 100).",
		Buckets: []float64{0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85, 1},
	}
	metricLabels = []string{"function", "event_type"}
)

type metrics struct {
	invocations, executionErrors, validationErrors, throttles prometheus.Counter
	utilization                                               prometheus.Observer
}

// register registers c, or returns the collector already registered under
// its name, so that several functions share the vectors.
func register[C prometheus.Collector](r prometheus.Registerer, c C) C {
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

func newMetrics(r prometheus.Registerer, name string, et EventType) *metrics {
	inv := prometheus.NewCounterVec(invocationsOpts, metricLabels)
	exe := prometheus.NewCounterVec(executionErrorsOpts, metricLabels)
	val := prometheus.NewCounterVec(validationErrorsOpts, metricLabels)
	thr := prometheus.NewCounterVec(throttlesOpts, metricLabels)
	utl := prometheus.NewHistogramVec(utilizationOpts, metricLabels)
	if r != nil {
		inv = register(r, inv)
		exe = register(r, exe)
		val = register(r, val)
		thr = register(r, thr)
		utl = register(r, utl)
	}
	l := prometheus.Labels{"function": name, "event_type": string(et)}
	return &metrics{
		invocations:      inv.With(l),
		executionErrors:  exe.With(l),
		validationErrors: val.With(l),
		throttles:        thr.With(l),
		utilization:      utl.With(l),
	}
}
