package cloudfront_functions

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	"github.com/flowdog/flowdog/cff"
	"github.com/flowdog/flowdog/interceptors"
)

// Functions attaches CloudFront functions to intercepted requests.
type Functions struct {
	// DistributionID and DistributionDomain fill event.context, as
	// CloudFront would for a distribution.
	DistributionID     string `yaml:"distribution_id"`
	DistributionDomain string `yaml:"distribution_domain"`
	// Budget is the time one invocation may take (default 5ms).
	Budget time.Duration `yaml:"budget"`
	// Functions run in order: every viewer-request function whose match
	// fits, until one answers; then every viewer-response function.
	Functions []Function `yaml:"functions"`

	log *slog.Logger
	fns []*attached
}

// Function is one CloudFront function and the requests it sees.
type Function struct {
	Name string `yaml:"name"`
	// File holds the JavaScript (or Code, inline).
	File string `yaml:"file"`
	Code string `yaml:"code"`
	// Runtime: cloudfront-js-1.0 or cloudfront-js-2.0 (default).
	Runtime string `yaml:"runtime"`
	// EventType: viewer-request (default) or viewer-response.
	EventType string `yaml:"event_type"`
	// Hosts are globs matched against the request's host (no port),
	// e.g. "*.example.com"; empty matches every host.
	Hosts []string `yaml:"hosts"`
	// PathPrefix limits the function to URIs that start with it.
	PathPrefix string `yaml:"path_prefix"`
	// KVSFile is the JSON key value store of cf.kvs() (2.0).
	KVSFile string `yaml:"kvs_file"`
}

type attached struct {
	fn     *cff.Function
	hosts  []string
	prefix string
}

// Provision compiles every function once.
func (c *Functions) Provision(ctx interceptors.Context) error {
	c.log = ctx.Logger
	if len(c.Functions) == 0 {
		return errors.New("functions: none configured")
	}
	for i, f := range c.Functions {
		field := fmt.Sprintf("functions[%d]", i)
		if f.Name == "" {
			return fmt.Errorf("%s.name: is empty", field)
		}
		code := []byte(f.Code)
		switch {
		case f.File != "" && f.Code != "":
			return fmt.Errorf("%s: give file or code, not both", field)
		case f.File != "":
			b, err := os.ReadFile(f.File)
			if err != nil {
				return fmt.Errorf("%s.file: %w", field, err)
			}
			code = b
		case f.Code == "":
			return fmt.Errorf("%s: needs file or code", field)
		}
		rt := cff.Runtime(f.Runtime)
		if rt == "" {
			rt = "cloudfront-js-2.0"
		}
		et := cff.EventType(f.EventType)
		if et == "" {
			et = "viewer-request"
		}
		if et != "viewer-request" && et != "viewer-response" {
			return fmt.Errorf("%s.event_type: %q is not viewer-request or viewer-response", field, f.EventType)
		}
		for j, h := range f.Hosts {
			if _, err := path.Match(strings.ToLower(h), ""); err != nil || h == "" {
				return fmt.Errorf("%s.hosts[%d]: %q is not a glob", field, j, h)
			}
		}
		fn, err := cff.Compile(cff.FunctionConfig{
			Name: f.Name, Runtime: rt, EventType: et, Code: code, KVSFile: f.KVSFile,
			Budget: c.Budget, DistributionID: c.DistributionID, DistributionDomain: c.DistributionDomain,
			Logger: c.log, Registerer: ctx.Registerer,
		})
		if err != nil {
			return fmt.Errorf("%s (%s): %w", field, f.Name, err)
		}
		hosts := make([]string, len(f.Hosts))
		for j, h := range f.Hosts {
			hosts[j] = strings.ToLower(h)
		}
		c.fns = append(c.fns, &attached{fn: fn, hosts: hosts, prefix: f.PathPrefix})
	}
	return nil
}

func (a *attached) matches(r *http.Request) bool {
	if a.prefix != "" && !strings.HasPrefix(r.URL.EscapedPath(), a.prefix) {
		return false
	}
	if len(a.hosts) == 0 {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(host)
	for _, g := range a.hosts {
		if ok, _ := path.Match(g, host); ok {
			return true
		}
	}
	return false
}

type exchangeKey struct{}

// exchange is what the two events of one request/response share.
type exchange struct {
	requestID string
	answered  bool // a viewer-request function answered: no viewer-response run
}

// Request runs the viewer-request functions.
func (c *Functions) Request(f *interceptors.Flow, req *http.Request) (*http.Response, error) {
	ex := &exchange{requestID: newRequestID()}
	// The response hook sees this request (resp.Request): carry the
	// exchange in its context.
	*req = *req.WithContext(context.WithValue(req.Context(), exchangeKey{}, ex))
	viewer := f.Client.Addr()
	for _, a := range c.fns {
		if a.fn.EventType() != "viewer-request" || !a.matches(req) {
			continue
		}
		_, resp, err := a.fn.ViewerRequest(req, viewer, ex.requestID)
		if err != nil {
			ex.answered = true
			return errorResponse(req, err), nil
		}
		if resp != nil {
			ex.answered = true
			return resp, nil
		}
	}
	return nil, nil
}

// Response runs the viewer-response functions.
func (c *Functions) Response(f *interceptors.Flow, resp *http.Response) error {
	req := resp.Request
	if req == nil {
		return nil
	}
	ex, _ := req.Context().Value(exchangeKey{}).(*exchange)
	if ex == nil {
		ex = &exchange{requestID: newRequestID()}
	}
	if ex.answered {
		return nil
	}
	for _, a := range c.fns {
		if a.fn.EventType() != "viewer-response" || !a.matches(req) {
			continue
		}
		if err := a.fn.ViewerResponse(req, resp, f.Client.Addr(), ex.requestID); err != nil {
			if resp.Body != nil {
				resp.Body.Close()
			}
			*resp = *errorResponse(req, err)
			return nil
		}
	}
	return nil
}

// errorResponse is what CloudFront sends when a function fails: 503 for an
// execution error, 502 for a validation error. The reason is logged by cff.
func errorResponse(req *http.Request, err error) *http.Response {
	code := cff.StatusCode(err)
	cache := "FunctionValidationError from cloudfront"
	var ee *cff.ExecutionError
	if errors.As(err, &ee) {
		cache = "FunctionExecutionError from cloudfront"
	}
	body := fmt.Sprintf("%d %s (flowdog: CloudFront function failed)\n", code, http.StatusText(code))
	return &http.Response{
		StatusCode:    code,
		Status:        fmt.Sprintf("%d %s", code, http.StatusText(code)),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Cache": {cache}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// newRequestID looks like CloudFront's: 56 URL-safe base64 characters.
func newRequestID() string {
	b := make([]byte, 42)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

var (
	_ interceptors.Provisioner  = (*Functions)(nil)
	_ interceptors.RequestHook  = (*Functions)(nil)
	_ interceptors.ResponseHook = (*Functions)(nil)
)
