package geneve_headers

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/flowdog/flowdog/interceptors"
)

var flow = &interceptors.Flow{EndpointID: "vpce-0123456789abcdef0", AttachmentID: "0a77ac4000000001", FlowCookie: 0x5c1e0a42}

func TestHeadersReplaceForgedOnes(t *testing.T) {
	h := New()
	req := httptest.NewRequest("GET", "http://example.com/", nil)
	req.Header.Set(HeaderEndpoint, "vpce-forged")
	resp, err := h.Request(flow, req)
	if err != nil || resp != nil {
		t.Fatalf("Request = %v, %v", resp, err)
	}
	want := map[string]string{HeaderEndpoint: "vpce-0123456789abcdef0", HeaderAttachment: "0a77ac4000000001", HeaderCookie: "5c1e0a42"}
	for k, v := range want {
		if got := req.Header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("request %s = %v, want [%s]", k, got, v)
		}
	}
	r := &http.Response{Header: http.Header{}}
	if err := h.Response(flow, r); err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		if got := r.Header.Get(k); got != v {
			t.Errorf("response %s = %q, want %q", k, got, v)
		}
	}
}

func TestDirectionsCanBeTurnedOff(t *testing.T) {
	h := &Headers{Requests: false, Responses: true}
	req := httptest.NewRequest("GET", "http://example.com/", nil)
	h.Request(flow, req)
	if req.Header.Get(HeaderEndpoint) != "" {
		t.Error("request header added with requests: false")
	}
}
