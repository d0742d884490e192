package cff

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/dop251/goja"
)

// Function is a compiled CloudFront function, safe for concurrent use.
type Function struct {
	cfg       FunctionConfig
	prog      *goja.Program
	kvs       map[string]string
	kvsLoaded string
	pool      sync.Pool // of *vmState; sync.Pool keeps a cache per P
	metrics   [2]*metrics
}

// Compile checks and compiles a function: the 10 KB limit, the syntax of
// its runtime (const and let refused in 1.0), and an entry point
// `handler(event)` (`onRequest` is accepted as an alias in viewer-request
// functions). The function's top-level code runs once here, so that a
// function that cannot start fails now rather than on every request.
func Compile(cfg FunctionConfig) (*Function, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	f := &Function{cfg: cfg, kvsLoaded: time.Now().UTC().Format(time.RFC3339)}
	if cfg.KVS != nil || cfg.KVSFile != "" {
		if cfg.Runtime != Runtime20 {
			return nil, ErrKVSUnavailable
		}
		f.kvs = map[string]string{}
		for k, v := range cfg.KVS {
			f.kvs[k] = v
		}
		if cfg.KVSFile != "" {
			m, err := LoadKVSFile(cfg.KVSFile)
			if err != nil {
				return nil, err
			}
			for k, v := range m {
				f.kvs[k] = v
			}
		}
		if err := checkKVS(f.kvs); err != nil {
			return nil, err
		}
	}
	prog, err := compileSource(cfg.Name, cfg.Code, cfg.Runtime)
	if err != nil {
		return nil, fmt.Errorf("cff: %s: %w", cfg.Name, err)
	}
	f.prog = prog
	f.metrics[0] = newMetrics(cfg.Registerer, cfg.Name, ViewerRequestEvent)
	f.metrics[1] = newMetrics(cfg.Registerer, cfg.Name, ViewerResponseEvent)

	s, err := f.newVMState()
	if err != nil {
		return nil, err
	}
	s.arm(cfg.EventType)
	entries, err := s.wrapper(goja.Undefined())
	s.disarm()
	if err != nil {
		return nil, fmt.Errorf("cff: %s: the top-level code failed: %v", cfg.Name, err)
	}
	if _, err := s.entryPoint(entries, cfg.EventType); err != nil {
		return nil, fmt.Errorf("%w (%s)", ErrNoHandler, cfg.Name)
	}
	f.pool.Put(s)
	return f, nil
}

// Name is the function's name.
func (f *Function) Name() string { return f.cfg.Name }

// Runtime is the function's runtime.
func (f *Function) Runtime() Runtime { return f.cfg.Runtime }

// EventType is the event the function is associated with.
func (f *Function) EventType() EventType { return f.cfg.EventType }

func (s *vmState) entryPoint(entries goja.Value, et EventType) (goja.Callable, error) {
	arr, ok := entries.(*goja.Object)
	if !ok {
		return nil, ErrNoHandler
	}
	h, ok := goja.AssertFunction(arr.Get("0"))
	if !ok && et == ViewerRequestEvent {
		h, ok = goja.AssertFunction(arr.Get("1"))
	}
	if !ok {
		return nil, ErrNoHandler
	}
	return h, nil
}

// outcome is what one invocation produced.
type outcome struct {
	req         *request  // the request goes on (viewer-request)
	resp        *response // the response to send
	logs        []string
	utilization int
	err         error // *ExecutionError or *ValidationError
}

// invoke runs the function on ev. It never panics.
func (f *Function) invoke(ev *event) (out outcome) {
	m := f.metrics[0]
	if ev.eventType == ViewerResponseEvent {
		m = f.metrics[1]
	}
	m.invocations.Inc()
	var s *vmState
	if v := f.pool.Get(); v != nil {
		s = v.(*vmState)
	} else {
		var err error
		if s, err = f.newVMState(); err != nil {
			out.err = &ExecutionError{Function: f.cfg.Name, Reason: err.Error()}
			m.executionErrors.Inc()
			return out
		}
	}
	s.arm(ev.eventType)
	t0 := time.Now()
	func() {
		defer func() {
			// A getter of the returned object runs JavaScript while the
			// result is read: its exception or interrupt panics out of
			// goja's Get.
			if r := recover(); r != nil {
				if err, ok := r.(error); ok {
					out.err = s.execError(err)
				} else if v, ok := r.(goja.Value); ok {
					out.err = &ExecutionError{Reason: v.String()}
				} else {
					out.err = &ExecutionError{Reason: fmt.Sprintf("internal error: %v", r)}
				}
			}
		}()
		out.req, out.resp, out.err = s.run(ev)
	}()
	elapsed := time.Since(t0)
	s.disarm()

	out.utilization = utilization(elapsed, f.cfg.Budget)
	m.utilization.Observe(float64(out.utilization) / 100)
	if len(s.logs) > 0 {
		out.logs = append([]string(nil), s.logs...)
	}
	for _, o := range s.origins {
		f.cfg.Logger.Info("cff: origin helper called", "function", f.cfg.Name, "call", o, "request_id", ev.requestID)
	}
	var ee *ExecutionError
	var ve *ValidationError
	switch {
	case errors.As(out.err, &ee):
		ee.Function = f.cfg.Name
		m.executionErrors.Inc()
		if ee.Budget {
			m.throttles.Inc()
		}
		f.cfg.Logger.Warn("cff: function execution error", "function", f.cfg.Name, "event_type", string(ev.eventType), "reason", ee.Reason, "request_id", ev.requestID)
		return out // the runtime is dropped: its state is unknown
	case errors.As(out.err, &ve):
		ve.Function = f.cfg.Name
		m.validationErrors.Inc()
		f.cfg.Logger.Warn("cff: function validation error", "function", f.cfg.Name, "event_type", string(ev.eventType), "reason", ve.Reason, "request_id", ev.requestID)
	}
	f.pool.Put(s)
	return out
}

// utilization is elapsed as a percentage of budget, 0 to 100, rounded up
// as a run that took any time used some of it.
func utilization(elapsed, budget time.Duration) int {
	u := int((elapsed*100 + budget - 1) / budget)
	if u > 100 {
		u = 100
	}
	if u < 0 {
		u = 0
	}
	return u
}

// run calls the handler and reads back its result.
func (s *vmState) run(ev *event) (*request, *response, error) {
	entries, err := s.wrapper(goja.Undefined())
	if err != nil {
		return nil, nil, s.execError(err)
	}
	h, err := s.entryPoint(entries, ev.eventType)
	if err != nil {
		return nil, nil, &ExecutionError{Reason: "ReferenceError: handler is not defined"}
	}
	evObj := s.eventToJS(ev)
	ret, err := h(goja.Undefined(), evObj)
	if err != nil {
		return nil, nil, s.execError(err)
	}
	if p, ok := ret.Export().(*goja.Promise); ok {
		switch p.State() {
		case goja.PromiseStateFulfilled:
			ret = p.Result()
		case goja.PromiseStateRejected:
			return nil, nil, &ExecutionError{Reason: "Uncaught (in promise) " + s.format(p.Result())}
		default:
			return nil, nil, &ExecutionError{Reason: "the handler's Promise never settled"}
		}
	}
	obj, ok := ret.(*goja.Object)
	if !ok || obj.ClassName() == "Function" {
		return nil, nil, invalid("the function must return a request or a response object, not %s", describe(ret))
	}
	isResponse := !isAbsent(obj.Get("statusCode"))
	if ev.eventType == ViewerResponseEvent {
		if !isResponse {
			return nil, nil, invalid("a viewer-response function must return a response object (with a statusCode)")
		}
		if rq, ok := evObj.Get("request").(*goja.Object); ok {
			q, err := s.fieldsFromJS(rq.Get("querystring"), "request.querystring", ev.req.query, false, false)
			if err != nil || !q.equal(ev.req.query) {
				return nil, nil, invalid("a viewer-response function may not change the query string")
			}
		}
		resp, err := s.responseFromJS(obj, ev.resp)
		if err != nil {
			return nil, nil, err
		}
		if err := validateResponse(resp, ev.resp); err != nil {
			return nil, nil, err
		}
		return nil, resp, nil
	}
	if isResponse {
		resp, err := s.responseFromJS(obj, nil)
		if err != nil {
			return nil, nil, err
		}
		if err := validateResponse(resp, nil); err != nil {
			return nil, nil, err
		}
		return nil, resp, nil
	}
	req, err := s.requestFromJS(obj, ev.req)
	if err != nil {
		return nil, nil, err
	}
	if err := validateRequest(req, ev.req); err != nil {
		return nil, nil, err
	}
	return req, nil, nil
}

func describe(v goja.Value) string {
	switch {
	case v == nil || goja.IsUndefined(v):
		return "undefined"
	case goja.IsNull(v):
		return "null"
	}
	if _, ok := v.(*goja.Object); ok {
		return "a function"
	}
	return fmt.Sprintf("%s %s", v.ExportType(), v.String())
}

// execError turns a goja error into an *ExecutionError.
func (s *vmState) execError(err error) error {
	var ie *goja.InterruptedError
	if errors.As(err, &ie) {
		return &ExecutionError{Budget: true, Reason: "the function exceeded its time budget of " + s.f.cfg.Budget.String()}
	}
	var ex *goja.Exception
	if errors.As(err, &ex) {
		return &ExecutionError{Reason: ex.Error()}
	}
	return &ExecutionError{Reason: err.Error()}
}

// TestResult is what `aws cloudfront test-function` returns, with the AWS
// CLI's names.
type TestResult struct {
	// FunctionOutput is the JSON text of {"request": …} or
	// {"response": …}, as CloudFront applies it; empty on error.
	FunctionOutput string `json:"FunctionOutput"`
	// FunctionErrorMessage is empty on success; otherwise it starts with
	// FunctionExecutionError or FunctionValidationError.
	FunctionErrorMessage string `json:"FunctionErrorMessage"`
	// FunctionExecutionLogs are the console.log lines.
	FunctionExecutionLogs []string `json:"FunctionExecutionLogs"`
	// ComputeUtilization is 0 to 100, as a string as AWS gives it.
	ComputeUtilization string `json:"ComputeUtilization"`
}

// Test runs the function against an event in CloudFront's JSON shape, as
// test-function does. The event's context.eventType chooses the event
// (the function's EventType when absent).
func (f *Function) Test(eventJSON []byte) TestResult {
	res := TestResult{FunctionExecutionLogs: []string{}, ComputeUtilization: "0"}
	ev, err := parseEvent(eventJSON, f.cfg.EventType)
	if err != nil {
		res.FunctionErrorMessage = "InvalidArgument: " + err.Error()
		return res
	}
	if ev.distributionID == "" {
		ev.distributionID = f.cfg.DistributionID
	}
	if ev.distributionDomain == "" {
		ev.distributionDomain = f.cfg.DistributionDomain
	}
	out := f.invoke(ev)
	res.ComputeUtilization = strconv.Itoa(out.utilization)
	if out.logs != nil {
		res.FunctionExecutionLogs = out.logs
	}
	if out.err != nil {
		res.FunctionErrorMessage = out.err.Error()
		return res
	}
	res.FunctionOutput = outputJSON(out.req, out.resp)
	return res
}
