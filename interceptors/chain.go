package interceptors

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// Config selects one interceptor and holds its configuration.
type Config struct {
	// Name is a registered interceptor id.
	Name string `yaml:"name"`
	// Config is decoded strictly into the interceptor's value.
	Config yaml.Node `yaml:"config"`
}

// Chain is the configured interceptors, in order.
type Chain struct {
	items []item
	log   *slog.Logger
}

type item struct {
	id string
	v  any
}

// Error is an interceptor's failure: it names the interceptor.
type Error struct {
	ID  string
	Err error
}

func (e *Error) Error() string { return "interceptor " + e.ID + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// NewChain builds, configures, provisions and validates the listed
// interceptors. log and reg (either may be nil) reach them through
// Provision's Context. On error, every interceptor provisioned so far is
// cleaned up.
func NewChain(ctx context.Context, cfgs []Config, log *slog.Logger, reg prometheus.Registerer) (*Chain, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Chain{log: log}
	for i, cfg := range cfgs {
		field := fmt.Sprintf("interceptors[%d]", i)
		info, ok := Lookup(cfg.Name)
		if !ok {
			c.Cleanup()
			return nil, fmt.Errorf("%s.name: unknown interceptor %q (compiled in: %s)", field, cfg.Name, strings.Join(IDs(), ", "))
		}
		v := info.New()
		if err := decodeStrict(&cfg.Config, v); err != nil {
			c.Cleanup()
			return nil, fmt.Errorf("%s.config (%s): %w", field, cfg.Name, err)
		}
		c.items = append(c.items, item{cfg.Name, v})
		if p, ok := v.(Provisioner); ok {
			if err := p.Provision(Context{Context: ctx, Logger: log.With("interceptor", cfg.Name), Registerer: reg}); err != nil {
				c.Cleanup()
				return nil, fmt.Errorf("%s (%s): provision: %w", field, cfg.Name, err)
			}
		}
		if vd, ok := v.(Validator); ok {
			if err := vd.Validate(); err != nil {
				c.Cleanup()
				return nil, fmt.Errorf("%s (%s): %w", field, cfg.Name, err)
			}
		}
	}
	return c, nil
}

// decodeStrict decodes n into v, refusing unknown fields (yaml.Node.Decode
// cannot, so the node goes through a strict decoder).
func decodeStrict(n *yaml.Node, v any) error {
	if n.Kind == 0 {
		return nil // no config given
	}
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), "\n ", ""))
	}
	return nil
}

// Cleanup calls every interceptor's Cleanup, last first.
func (c *Chain) Cleanup() error {
	var errs []error
	for i := len(c.items) - 1; i >= 0; i-- {
		if cu, ok := c.items[i].v.(CleanerUpper); ok {
			if err := cu.Cleanup(); err != nil {
				errs = append(errs, &Error{c.items[i].id, err})
			}
		}
	}
	return errors.Join(errs...)
}

// IDs returns the chain's interceptor ids in order.
func (c *Chain) IDs() []string {
	ids := make([]string, len(c.items))
	for i, it := range c.items {
		ids[i] = it.id
	}
	return ids
}

// hasHook reports whether any interceptor implements T.
func hasHook[T any](c *Chain) bool {
	if c == nil {
		return false
	}
	for _, it := range c.items {
		if _, ok := it.v.(T); ok {
			return true
		}
	}
	return false
}

// HasStreamHooks reports whether raw TCP must go through the hooks.
func (c *Chain) HasStreamHooks() bool { return hasHook[StreamHook](c) }

// HasWebSocketHooks reports whether WebSocket messages must be parsed.
func (c *Chain) HasWebSocketHooks() bool { return hasHook[WebSocketHook](c) }

// HasAcceptors reports whether any interceptor decides flows.
func (c *Chain) HasAcceptors() bool { return hasHook[FlowAcceptor](c) }

// call runs fn for interceptor it, turning a panic into an *Error.
func call(id string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &Error{id, fmt.Errorf("panic: %v\n%s", r, debug.Stack())}
		}
	}()
	if err := fn(); err != nil {
		var ie *Error
		if errors.As(err, &ie) {
			return err
		}
		return &Error{id, err}
	}
	return nil
}

// Request runs the RequestHooks in order. A non-nil response ends the run.
func (c *Chain) Request(f *Flow, req *http.Request) (*http.Response, error) {
	if c == nil {
		return nil, nil
	}
	for _, it := range c.items {
		h, ok := it.v.(RequestHook)
		if !ok {
			continue
		}
		var resp *http.Response
		if err := call(it.id, func() (err error) { resp, err = h.Request(f, req); return }); err != nil {
			return nil, err
		}
		if resp != nil {
			if resp.Request == nil {
				resp.Request = req
			}
			return resp, nil
		}
	}
	return nil, nil
}

// Response runs the ResponseHooks in order.
func (c *Chain) Response(f *Flow, resp *http.Response) error {
	if c == nil {
		return nil
	}
	for _, it := range c.items {
		if h, ok := it.v.(ResponseHook); ok {
			if err := call(it.id, func() error { return h.Response(f, resp) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// WebSocketMessage runs the WebSocketHooks in order until one drops m.
func (c *Chain) WebSocketMessage(f *Flow, req *http.Request, m *WebSocketMessage) error {
	if c == nil {
		return nil
	}
	for _, it := range c.items {
		if h, ok := it.v.(WebSocketHook); ok {
			if err := call(it.id, func() error { return h.WebSocketMessage(f, req, m) }); err != nil {
				return err
			}
			if m.Drop {
				return nil
			}
		}
	}
	return nil
}

// TCPMessage runs the StreamHooks in order until one drops m.
func (c *Chain) TCPMessage(f *Flow, m *TCPMessage) error {
	if c == nil {
		return nil
	}
	for _, it := range c.items {
		if h, ok := it.v.(StreamHook); ok {
			if err := call(it.id, func() error { return h.TCPMessage(f, m) }); err != nil {
				return err
			}
			if m.Drop {
				return nil
			}
		}
	}
	return nil
}

// AcceptFlow asks the FlowAcceptors in order; the first that does not say
// Intercept decides. An error (or a panic) drops the flow.
func (c *Chain) AcceptFlow(ctx context.Context, f *Flow) (Decision, error) {
	if c == nil {
		return Intercept, nil
	}
	for _, it := range c.items {
		a, ok := it.v.(FlowAcceptor)
		if !ok {
			continue
		}
		var d Decision
		if err := call(it.id, func() (err error) { d, err = a.AcceptFlow(ctx, f); return }); err != nil {
			return Drop, err
		}
		if d != Intercept {
			return d, nil
		}
	}
	return Intercept, nil
}
