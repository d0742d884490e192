package cff

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestErrorMapping(t *testing.T) {
	const vresp = `{"context":{"eventType":"viewer-response"},"request":{"method":"GET","uri":"/","querystring":{"a":{"value":"1"}}},
		"response":{"statusCode":200,"headers":{"via":{"value":"1.1 x"}}}}`
	tests := []struct {
		name   string
		et     EventType
		code   string
		want   string // prefix of FunctionErrorMessage
		status int
	}{
		{"exception", ViewerRequestEvent, `function handler(e) { return e.request.headers.nope.value; }`, "FunctionExecutionError: TypeError", 503},
		{"thrown string", ViewerRequestEvent, `function handler(e) { throw 'x'; }`, "FunctionExecutionError: x", 503},
		{"returns undefined", ViewerRequestEvent, `function handler(e) { }`, "FunctionValidationError: the function must return", 502},
		{"returns string", ViewerRequestEvent, `function handler(e) { return 'hi'; }`, "FunctionValidationError", 502},
		{"method changed", ViewerRequestEvent, `function handler(e) { e.request.method = 'POST'; return e.request; }`, "FunctionValidationError: request.method is read-only", 502},
		{"host changed", ViewerRequestEvent, `function handler(e) { e.request.headers.host = {value: 'evil'}; return e.request; }`, "FunctionValidationError: request.headers: the host header is read-only", 502},
		{"via added", ViewerRequestEvent, `function handler(e) { e.request.headers.via = {value: '1.1 x'}; return e.request; }`, "FunctionValidationError: request.headers: the via header is read-only", 502},
		{"disallowed header", ViewerRequestEvent, `function handler(e) { e.request.headers['x-amz-cf-id'] = {value: 'x'}; return e.request; }`, "FunctionValidationError: request.headers: the x-amz-cf-id header is disallowed", 502},
		{"disallowed connection", ViewerRequestEvent, `function handler(e) { e.request.headers.connection = {value: 'close'}; return e.request; }`, "FunctionValidationError", 502},
		{"header value with newline", ViewerRequestEvent, `function handler(e) { e.request.headers.x = {value: 'a\r\nb: c'}; return e.request; }`, "FunctionValidationError", 502},
		{"query with space", ViewerRequestEvent, `function handler(e) { e.request.querystring.q = {value: 'a b'}; return e.request; }`, "FunctionValidationError: request.querystring", 502},
		{"query string with #", ViewerRequestEvent, `function handler(e) { e.request.querystring = 'a=1#x'; return e.request; }`, "FunctionValidationError: request.querystring", 502},
		{"query control char", ViewerRequestEvent, `function handler(e) { e.request.querystring = {a: {value: '\x01'}}; return e.request; }`, "FunctionValidationError: request.querystring", 502},
		{"uri without slash", ViewerRequestEvent, `function handler(e) { e.request.uri = 'index.html'; return e.request; }`, "FunctionValidationError: request.uri", 502},
		{"uri too long", ViewerRequestEvent, `function handler(e) { e.request.uri = '/' + 'a'.repeat(9000); return e.request; }`, "FunctionValidationError: the URI", 502},
		{"header not an object", ViewerRequestEvent, `function handler(e) { e.request.headers.x = 'y'; return e.request; }`, "FunctionValidationError", 502},
		{"bad status", ViewerRequestEvent, `function handler(e) { return {statusCode: '302'}; }`, "FunctionValidationError: response.statusCode", 502},
		{"bad base64 body", ViewerRequestEvent, `function handler(e) { return {statusCode: 200, body: {data: '***', encoding: 'base64'}}; }`, "FunctionValidationError: response.body.data is not valid base64", 502},
		{"bad body encoding", ViewerRequestEvent, `function handler(e) { return {statusCode: 200, body: {data: 'x', encoding: 'gzip'}}; }`, "FunctionValidationError", 502},
		{"body too large", ViewerRequestEvent, `function handler(e) { return {statusCode: 200, body: 'x'.repeat(50000)}; }`, "FunctionValidationError: response.body is 50000 bytes", 502},
		{"viewer-response returns request", ViewerResponseEvent, `function handler(e) { return e.request; }`, "FunctionValidationError: a viewer-response function must return a response", 502},
		{"viewer-response changes query", ViewerResponseEvent, `function handler(e) { e.request.querystring.a.value = '2'; return e.response; }`, "FunctionValidationError: a viewer-response function may not change the query string", 502},
		{"viewer-response changes via", ViewerResponseEvent, `function handler(e) { e.response.headers.via = {value: '1.1 y'}; return e.response; }`, "FunctionValidationError: response.headers: the via header is read-only", 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := compile(t, Runtime20, tt.et, tt.code)
			ev := minimalRequestEvent
			if tt.et == ViewerResponseEvent {
				ev = vresp
			}
			res := f.Test([]byte(ev))
			if !strings.HasPrefix(res.FunctionErrorMessage, tt.want) || res.FunctionOutput != "" {
				t.Fatalf("got %q, output %q; want prefix %q", res.FunctionErrorMessage, res.FunctionOutput, tt.want)
			}
			// The same through the HTTP API, with the status CloudFront gives the viewer.
			var err error
			r := httptest.NewRequest("GET", "http://example.org/a?q=1", nil)
			if tt.et == ViewerRequestEvent {
				_, _, err = f.ViewerRequest(r, netip.MustParseAddr("192.0.2.1"), "id")
			} else {
				r = httptest.NewRequest("GET", "http://example.org/?a=1", nil)
				resp := &http.Response{StatusCode: 200, Header: http.Header{"Via": {"1.1 x"}}}
				err = f.ViewerResponse(r, resp, netip.MustParseAddr("192.0.2.1"), "id")
			}
			if StatusCode(err) != tt.status {
				t.Fatalf("HTTP: err %v, status %d, want %d", err, StatusCode(err), tt.status)
			}
			var ee *ExecutionError
			var ve *ValidationError
			if tt.status == 503 && (!errors.As(err, &ee) || ee.Function != f.Name()) {
				t.Fatalf("want *ExecutionError naming the function, got %#v", err)
			}
			if tt.status == 502 && (!errors.As(err, &ve) || ve.Function != f.Name()) {
				t.Fatalf("want *ValidationError naming the function, got %#v", err)
			}
		})
	}
}

// TestBudget: a runaway function is stopped near its budget, while another
// function on another goroutine keeps serving.
func TestBudget(t *testing.T) {
	reg := prometheus.NewRegistry()
	budget := 20 * time.Millisecond
	spin, err := Compile(FunctionConfig{Name: "spin", Code: []byte(`function handler(e) { while (true) {} }`), Budget: budget, Registerer: reg, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	quick, err := Compile(FunctionConfig{Name: "quick", Code: []byte(`function handler(e) { e.request.headers.x = {value: 'y'}; return e.request; }`), Budget: time.Second, Registerer: reg, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if res := quick.Test([]byte(minimalRequestEvent)); res.FunctionErrorMessage != "" {
				t.Errorf("quick failed: %s", res.FunctionErrorMessage)
				return
			}
			served.Add(1)
		}
	}()
	time.Sleep(5 * time.Millisecond)
	before := served.Load()
	start := time.Now()
	res := spin.Test([]byte(minimalRequestEvent))
	took := time.Since(start)
	during := served.Load() - before
	close(stop)
	wg.Wait()

	if !strings.HasPrefix(res.FunctionErrorMessage, "FunctionExecutionError: the function exceeded its time budget") || res.ComputeUtilization != "100" {
		t.Fatalf("got %+v", res)
	}
	if took < budget || took > budget+200*time.Millisecond {
		t.Fatalf("stopped after %v, budget %v", took, budget)
	}
	if during == 0 {
		t.Fatalf("the other function served nothing while the runaway ran")
	}
	// The runtime that was interrupted is not reused: the next run works.
	r := httptest.NewRequest("GET", "http://example.org/", nil)
	if _, _, err := spin.ViewerRequest(r, netip.Addr{}, ""); StatusCode(err) != 503 {
		t.Fatalf("second run: %v", err)
	}
	if got := testutil.ToFloat64(prometheus.Collector(mustVec(t, reg, "flowdog_cff_function_throttles_total", "spin"))); got != 2 {
		t.Fatalf("throttles = %v", got)
	}
	if got := testutil.ToFloat64(prometheus.Collector(mustVec(t, reg, "flowdog_cff_function_execution_errors_total", "spin"))); got != 2 {
		t.Fatalf("execution errors = %v", got)
	}
	if got := testutil.ToFloat64(prometheus.Collector(mustVec(t, reg, "flowdog_cff_function_invocations_total", "quick"))); got < 2 {
		t.Fatalf("quick invocations = %v", got)
	}
}

// mustVec finds one labelled counter of a registry.
func mustVec(t *testing.T, reg *prometheus.Registry, name, fn string) prometheus.Counter {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "function" && l.GetValue() == fn {
					sum += m.GetCounter().GetValue()
				}
			}
		}
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
		c.Add(sum)
		return c
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func TestValidationMetricsAndLog(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs strings.Builder
	f, err := Compile(FunctionConfig{Name: "bad", Code: []byte(`function handler(e) { return 1; }`), Registerer: reg, Logger: newTextLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	f.Test([]byte(minimalRequestEvent))
	if got := testutil.ToFloat64(prometheus.Collector(mustVec(t, reg, "flowdog_cff_function_validation_errors_total", "bad"))); got != 1 {
		t.Fatalf("validation errors = %v", got)
	}
	if !strings.Contains(logs.String(), "function=bad") || !strings.Contains(logs.String(), "validation error") {
		t.Fatalf("log: %s", logs.String())
	}
	// A second function with the same registry shares the vectors.
	if _, err := Compile(FunctionConfig{Name: "bad2", Code: []byte(`function handler(e) { return 1; }`), Registerer: reg}); err != nil {
		t.Fatal(err)
	}
}
