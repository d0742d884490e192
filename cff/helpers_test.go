package cff

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// testNow is the clock the tests pin Date to.
var testNow = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

func compile(t testing.TB, rt Runtime, et EventType, code string) *Function {
	t.Helper()
	f, err := Compile(FunctionConfig{
		Name: strings.ReplaceAll(t.Name(), "/", "_"), Runtime: rt, EventType: et, Code: []byte(code),
		Budget: time.Second, Now: func() time.Time { return testNow }, Logger: quietLogger,
	})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return f
}

const minimalRequestEvent = `{"version":"1.0","context":{"eventType":"viewer-request"},"viewer":{"ip":"198.51.100.11"},
"request":{"method":"GET","uri":"/a","querystring":{"q":{"value":"1"}},"headers":{"host":{"value":"example.org"}},"cookies":{}}}`

// evalJS runs body (the statements of a function returning a value) in a
// viewer-request handler of runtime rt, and returns the value, which went
// back through JSON.
func evalJS(t *testing.T, rt Runtime, body string) any {
	t.Helper()
	code := "function handler(event) { var r = (function () {\n" + body + "\n})();\n" +
		"return {statusCode: 200, body: JSON.stringify(r === undefined ? null : r)}; }"
	res := compile(t, rt, ViewerRequestEvent, code).Test([]byte(minimalRequestEvent))
	return resultBody(t, res)
}

// resultBody decodes the JSON body of a response in a TestResult.
func resultBody(t *testing.T, res TestResult) any {
	t.Helper()
	if res.FunctionErrorMessage != "" {
		t.Fatalf("function failed: %s (logs %q)", res.FunctionErrorMessage, res.FunctionExecutionLogs)
	}
	var out struct {
		Response struct {
			Body struct{ Data string }
		}
	}
	if err := json.Unmarshal([]byte(res.FunctionOutput), &out); err != nil {
		t.Fatalf("output %q: %v", res.FunctionOutput, err)
	}
	var v any
	if err := json.Unmarshal([]byte(out.Response.Body.Data), &v); err != nil {
		t.Fatalf("body %q: %v", out.Response.Body.Data, err)
	}
	return v
}

func mustJSON(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return v
}

func newTextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}

// quietLogger keeps the expected errors out of the test output.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))
