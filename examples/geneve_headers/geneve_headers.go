package geneve_headers

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/flowdog/flowdog/interceptors"
)

// Header names.
const (
	HeaderEndpoint   = "X-Gwlb-Vpc-Endpoint-Id"
	HeaderAttachment = "X-Gwlb-Attachment-Id"
	HeaderCookie     = "X-Gwlb-Flow-Cookie"
)

// Headers adds the flow's GWLB identity to requests (seen by the server)
// and responses (seen by the client). Headers of the same names that the
// client or server sent are replaced, so neither end can forge them.
type Headers struct {
	// Requests adds the headers to requests sent upstream.
	Requests bool `yaml:"requests"`
	// Responses adds the headers to responses sent to the client.
	Responses bool `yaml:"responses"`
}

// Validate refuses a configuration that does nothing.
func (h *Headers) Validate() error {
	if !h.Requests && !h.Responses {
		return errors.New("requests and responses are both false: the interceptor would do nothing")
	}
	return nil
}

// Request adds the headers to the upstream request.
func (h *Headers) Request(f *interceptors.Flow, req *http.Request) (*http.Response, error) {
	if h.Requests {
		set(req.Header, f)
	}
	return nil, nil
}

// Response adds the headers to the client's response.
func (h *Headers) Response(f *interceptors.Flow, resp *http.Response) error {
	if h.Responses {
		set(resp.Header, f)
	}
	return nil
}

func set(h http.Header, f *interceptors.Flow) {
	h.Set(HeaderEndpoint, f.EndpointID)
	h.Set(HeaderAttachment, f.AttachmentID)
	h.Set(HeaderCookie, fmt.Sprintf("%08x", f.FlowCookie))
}

var (
	_ interceptors.RequestHook  = (*Headers)(nil)
	_ interceptors.ResponseHook = (*Headers)(nil)
	_ interceptors.Validator    = (*Headers)(nil)
)
