package cff

import (
	"testing"
	"time"
)

// FuzzTest feeds arbitrary event objects to Test: it must never panic and
// always answer with an output or an error message.
func FuzzTest(f *testing.F) {
	f.Add([]byte(minimalRequestEvent))
	f.Add([]byte(`{"context":{"eventType":"viewer-response"},"request":{},"response":{"statusCode":200,"cookies":{"a":{"value":"1","attributes":"Path=/","multiValue":[{"value":"1"},{"value":2}]}}}}`))
	f.Add([]byte(`{"request":{"headers":{"__proto__":{"value":"x"}},"querystring":{"a":{"multiValue":"nope"}}}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"context":{"eventType":"origin-request"}}`))
	fn, err := Compile(FunctionConfig{Name: "fuzz", Budget: time.Second, Logger: quietLogger, Code: []byte(`function handler(e) {
		if (e.response) { e.response.headers['x-f'] = {value: 'y'}; return e.response; }
		e.request.headers['x-f'] = {value: 'y'}; return e.request; }`)})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, event []byte) {
		res := fn.Test(event)
		if (res.FunctionOutput == "") == (res.FunctionErrorMessage == "") {
			t.Fatalf("want exactly one of output and error: %+v", res)
		}
	})
}

func TestGetterInResult(t *testing.T) {
	f, err := Compile(FunctionConfig{Name: "getter", Budget: 20 * time.Millisecond, Logger: quietLogger,
		Code: []byte(`function handler(e) { var r = e.request; Object.defineProperty(r, 'uri', {get: function () { while (true) {} }}); return r; }`)})
	if err != nil {
		t.Fatal(err)
	}
	res := f.Test([]byte(minimalRequestEvent))
	if res.FunctionErrorMessage != "FunctionExecutionError: the function exceeded its time budget of 20ms" {
		t.Fatalf("got %+v", res)
	}
	f, _ = Compile(FunctionConfig{Name: "getter2", Logger: quietLogger,
		Code: []byte(`function handler(e) { var r = e.request; Object.defineProperty(r, 'uri', {get: function () { throw new RangeError('g'); }}); return r; }`)})
	if res := f.Test([]byte(minimalRequestEvent)); res.FunctionErrorMessage == "" || res.FunctionOutput != "" {
		t.Fatalf("got %+v", res)
	}
}
