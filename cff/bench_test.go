package cff

import (
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkViewerRequestTrivial is one viewer-request invocation of a
// function that adds a header, through the HTTP API.
func BenchmarkViewerRequestTrivial(b *testing.B) {
	f, err := Compile(FunctionConfig{Name: "bench", Runtime: Runtime10, Budget: time.Second,
		Code: []byte(`function handler(event) { var request = event.request; request.headers['x-bench'] = {value: '1'}; return request; }`)})
	if err != nil {
		b.Fatal(err)
	}
	ip := netip.MustParseAddr("192.0.2.1")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := httptest.NewRequest("GET", "http://example.org/index.html?a=1&b=2", nil)
		r.Header.Set("Accept", "text/html")
		r.Header.Set("User-Agent", "bench")
		if _, _, err := f.ViewerRequest(r, ip, "id"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewRuntime is the cost of building a runtime when the pool is
// empty (never a compile).
func BenchmarkNewRuntime(b *testing.B) {
	f, err := Compile(FunctionConfig{Name: "bench", Code: []byte(`function handler(event) { return event.request; }`)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := f.newVMState(); err != nil {
			b.Fatal(err)
		}
	}
}
