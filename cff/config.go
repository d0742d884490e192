package cff

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Runtime is a CloudFront Functions JavaScript runtime.
type Runtime string

// The runtimes CloudFront offers.
const (
	Runtime10 Runtime = "cloudfront-js-1.0"
	Runtime20 Runtime = "cloudfront-js-2.0"
)

// EventType is where a function runs.
type EventType string

// The events CloudFront Functions can be associated with.
const (
	ViewerRequestEvent  EventType = "viewer-request"
	ViewerResponseEvent EventType = "viewer-response"
)

// Defaults for FunctionConfig's zero fields.
const (
	// DefaultBudget is the time an invocation may take. CloudFront does not
	// publish its own (it reports a share of it as ComputeUtilization);
	// goja is slower than CloudFront's engine, so this is a few
	// milliseconds rather than CloudFront's one.
	DefaultBudget = 5 * time.Millisecond
	// DefaultMaxBodySize bounds a body a function sets: 40 KB, the size of
	// a response CloudFront lets a viewer-event edge function generate.
	DefaultMaxBodySize = 40 * 1024
	// DefaultMaxAlloc bounds one string, array or buffer that a guarded
	// built-in creates: 2 MiB, CloudFront's function memory quota.
	DefaultMaxAlloc = 2 << 20
	// MaxLogBytes is where CloudFront truncates a run's logs: 10 KB.
	MaxLogBytes = 10 * 1024
	// MaxURILength bounds the URI with its query string (CloudFront: less
	// than 8,192 characters).
	MaxURILength = 8192
	// MaxEventSize bounds the event object Test accepts (TestFunction's
	// EventObject is at most 40,960 bytes).
	MaxEventSize = 40960
)

// FunctionConfig describes one CloudFront function.
type FunctionConfig struct {
	// Name names the function in logs, metrics and errors.
	Name string
	// Runtime is cloudfront-js-1.0 or cloudfront-js-2.0 (default 2.0).
	Runtime Runtime
	// EventType is viewer-request or viewer-response. ViewerRequest and
	// ViewerResponse refuse the other; Test follows the event's
	// context.eventType and falls back to this.
	EventType EventType
	// Code is the function's JavaScript source, at most 10 KB.
	Code []byte
	// KVS is the key value store that cf.kvs() reads (2.0 only). KVSFile,
	// when set, is read at Compile and its keys are added to KVS; it is a
	// JSON object of string values, or CloudFront's import format
	// {"data":[{"key":…,"value":…}]}.
	KVS     map[string]string
	KVSFile string
	// Budget is the time one invocation may take (default DefaultBudget);
	// past it the function is stopped with an execution error.
	Budget time.Duration
	// MaxBodySize bounds a body the function sets (default
	// DefaultMaxBodySize); past it the result is a validation error.
	MaxBodySize int
	// MaxAlloc bounds one allocation by a guarded built-in (default
	// DefaultMaxAlloc); past it the built-in throws a RangeError.
	MaxAlloc int
	// DistributionID and DistributionDomain fill event.context.
	DistributionID, DistributionDomain string
	// EdgeLocation, EdgeServerIP and EdgeRegion fill the cloudfront
	// module's edgeLocation in viewer-request functions.
	EdgeLocation, EdgeServerIP, EdgeRegion string
	// Logger receives errors and origin-helper calls (nil: slog.Default()).
	Logger *slog.Logger
	// Registerer receives the metrics (nil: none are registered).
	Registerer prometheus.Registerer
	// Now is the clock that Date reads at the start of each invocation
	// (nil: time.Now). Tests use it to pin time.
	Now func() time.Time
}

// LoadKVSFile reads a key value store from a JSON file: an object of
// string values, or CloudFront's import format {"data":[{"key","value"}]}.
func LoadKVSFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cff: kvs: %w", err)
	}
	return parseKVS(b)
}

// KVS quotas: key 512 bytes, value 1 KB, store 5 MB.
const (
	maxKVSKey   = 512
	maxKVSValue = 1024
	maxKVSTotal = 5 << 20
)

func parseKVS(b []byte) (map[string]string, error) {
	var imp struct {
		Data []struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"data"`
	}
	out := map[string]string{}
	if err := json.Unmarshal(b, &imp); err == nil && imp.Data != nil {
		for _, kv := range imp.Data {
			out[kv.Key] = kv.Value
		}
	} else if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("cff: kvs: want a JSON object of strings or {\"data\":[{\"key\",\"value\"}]}: %w", err)
	}
	return out, checkKVS(out)
}

func checkKVS(m map[string]string) error {
	total := 0
	for k, v := range m {
		if len(k) == 0 || len(k) > maxKVSKey {
			return fmt.Errorf("cff: kvs: key %.40q: keys are 1 to %d bytes", k, maxKVSKey)
		}
		if len(v) > maxKVSValue {
			return fmt.Errorf("cff: kvs: key %.40q: values are at most %d bytes", k, maxKVSValue)
		}
		total += len(k) + len(v)
	}
	if total > maxKVSTotal {
		return fmt.Errorf("cff: kvs: %d bytes, over the %d byte quota", total, maxKVSTotal)
	}
	return nil
}

func (c *FunctionConfig) setDefaults() error {
	if c.Runtime == "" {
		c.Runtime = Runtime20
	}
	if c.Runtime != Runtime10 && c.Runtime != Runtime20 {
		return fmt.Errorf("%w %q (want %s or %s)", ErrBadRuntime, c.Runtime, Runtime10, Runtime20)
	}
	if c.EventType == "" {
		c.EventType = ViewerRequestEvent
	}
	if c.EventType != ViewerRequestEvent && c.EventType != ViewerResponseEvent {
		return fmt.Errorf("%w %q", ErrBadEventType, c.EventType)
	}
	if c.Name == "" {
		c.Name = "function"
	}
	if c.Budget <= 0 {
		c.Budget = DefaultBudget
	}
	if c.MaxBodySize <= 0 {
		c.MaxBodySize = DefaultMaxBodySize
	}
	if c.MaxAlloc <= 0 {
		c.MaxAlloc = DefaultMaxAlloc
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}
