package cff

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// ViewerRequest runs a viewer-request function on r, the request as the
// client sent it; viewerIP is the TCP peer (never X-Forwarded-For) and
// requestID is shared with the exchange's ViewerResponse.
//
// When the function returns the request, r is modified in place (URI,
// query string, headers, cookies) and returned. When it returns a
// response, resp is that response (send it to the client; make no
// upstream request). err is an *ExecutionError (answer 503) or a
// *ValidationError (answer 502); StatusCode(err) says which.
func (f *Function) ViewerRequest(r *http.Request, viewerIP netip.Addr, requestID string) (out *http.Request, resp *http.Response, err error) {
	if f.cfg.EventType != ViewerRequestEvent {
		return r, nil, fmt.Errorf("cff: %s is a %s function", f.cfg.Name, f.cfg.EventType)
	}
	ev := f.newEvent(ViewerRequestEvent, viewerIP, requestID)
	ev.req = requestFromHTTP(r)
	o := f.invoke(ev)
	switch {
	case o.err != nil:
		return r, nil, o.err
	case o.resp != nil:
		return r, generatedResponse(o.resp, r), nil
	}
	applyRequest(r, ev.req, o.req)
	return r, nil, nil
}

// ViewerResponse runs a viewer-response function on resp, the response
// for r (the request as it went upstream), and modifies resp in place:
// status, headers, cookies and, when the function set one, the body (the
// upstream body is then closed). Like CloudFront it does not run the
// function when resp.StatusCode is 400 or more. err is as ViewerRequest's.
func (f *Function) ViewerResponse(r *http.Request, resp *http.Response, viewerIP netip.Addr, requestID string) error {
	if f.cfg.EventType != ViewerResponseEvent {
		return fmt.Errorf("cff: %s is a %s function", f.cfg.Name, f.cfg.EventType)
	}
	if resp.StatusCode >= 400 {
		return nil
	}
	ev := f.newEvent(ViewerResponseEvent, viewerIP, requestID)
	ev.req = requestFromHTTP(r)
	ev.resp = responseFromHTTP(resp)
	o := f.invoke(ev)
	if o.err != nil {
		return o.err
	}
	applyResponse(resp, ev.resp, o.resp)
	return nil
}

func (f *Function) newEvent(et EventType, ip netip.Addr, requestID string) *event {
	ev := &event{
		eventType:          et,
		requestID:          requestID,
		distributionID:     f.cfg.DistributionID,
		distributionDomain: f.cfg.DistributionDomain,
	}
	if ip.IsValid() {
		ev.viewerIP = ip.Unmap().String()
	}
	return ev
}

// parseQuery splits a raw query into fields, names and values exactly as
// sent (not percent-decoded); a parameter without '=' has value "".
func parseQuery(raw string) fields {
	var fs fields
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		if part == "" {
			continue
		}
		name, value, _ := strings.Cut(part, "=")
		fs = fs.add(name, fieldValue{value: value})
	}
	return fs
}

// parseCookieHeaders reads Cookie header lines into fields.
func parseCookieHeaders(lines []string) fields {
	var fs fields
	for _, line := range lines {
		for _, part := range strings.Split(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			name, value, _ := strings.Cut(part, "=")
			fs = fs.add(strings.TrimSpace(name), fieldValue{value: strings.TrimSpace(value)})
		}
	}
	return fs
}

// parseSetCookie reads one Set-Cookie line; the attributes after the
// first ';' are kept as they are.
func parseSetCookie(line string) (string, fieldValue) {
	nv, attrs, hasAttrs := strings.Cut(line, ";")
	name, value, _ := strings.Cut(nv, "=")
	fv := fieldValue{value: strings.TrimSpace(value)}
	if hasAttrs {
		fv.attributes, fv.hasAttr = strings.TrimLeft(attrs, " "), true
	}
	return strings.TrimSpace(name), fv
}

// headerFields turns an http.Header into event headers: lower-case names
// in sorted order, without skip and the disallowed headers.
func headerFields(h http.Header, skip string) fields {
	names := make([]string, 0, len(h))
	for name := range h {
		names = append(names, name)
	}
	sort.Strings(names)
	var fs fields
	for _, name := range names {
		lname := strings.ToLower(name)
		if lname == skip || isDisallowed(lname) {
			continue
		}
		for _, v := range h[name] {
			fs = fs.add(lname, fieldValue{value: v})
		}
	}
	return fs
}

func requestFromHTTP(r *http.Request) *request {
	req := &request{method: r.Method, uri: r.URL.EscapedPath()}
	if req.uri == "" {
		req.uri = "/"
	}
	req.rawQuery = r.URL.RawQuery
	req.hasRawQuery = r.URL.RawQuery != "" || r.URL.ForceQuery
	req.query = parseQuery(r.URL.RawQuery)
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	if host != "" {
		req.headers = append(req.headers, field{name: "host", fieldValue: fieldValue{value: host}})
	}
	for _, f := range headerFields(r.Header, "cookie") {
		if f.name != "host" {
			req.headers = append(req.headers, f)
		}
	}
	if r.ContentLength > 0 && req.headers.find("content-length") == nil {
		req.headers = append(req.headers, field{name: "content-length", fieldValue: fieldValue{value: strconv.FormatInt(r.ContentLength, 10)}})
	}
	if len(r.TransferEncoding) > 0 && req.headers.find("transfer-encoding") == nil {
		req.headers = append(req.headers, field{name: "transfer-encoding", fieldValue: fieldValue{value: strings.Join(r.TransferEncoding, ", ")}})
	}
	req.cookies = parseCookieHeaders(r.Header["Cookie"])
	return req
}

func responseFromHTTP(resp *http.Response) *response {
	out := &response{statusCode: resp.StatusCode}
	out.statusDescription = strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode)+" ")
	if out.statusDescription == "" || out.statusDescription == resp.Status {
		out.statusDescription = http.StatusText(resp.StatusCode)
	}
	out.headers = headerFields(resp.Header, "set-cookie")
	for _, line := range resp.Header["Set-Cookie"] {
		name, fv := parseSetCookie(line)
		out.cookies = out.cookies.add(name, fv)
	}
	return out
}

// canonicalName writes a header name with each hyphen-separated word
// capitalised, as CloudFront does ("example-header-name" becomes
// "Example-Header-Name").
func canonicalName(name string) string {
	b := []byte(name)
	upper := true
	for i, c := range b {
		if upper && c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		} else if !upper && c >= 'A' && c <= 'Z' {
			b[i] = c - 'A' + 'a'
		}
		upper = c == '-'
	}
	return string(b)
}

// applyHeaders writes the headers a function returned into h: removed
// ones are deleted, changed ones replaced. Read-only and never-shown
// headers are left alone.
func applyHeaders(h http.Header, orig, out fields, readOnly map[string]bool) {
	for _, of := range orig {
		if readOnly[of.name] || of.name == "host" {
			continue
		}
		if out.find(of.name) == nil {
			h.Del(of.name)
			delete(h, canonicalName(of.name))
		}
	}
	for _, f := range out {
		if readOnly[f.name] || f.name == "host" {
			continue
		}
		if of := orig.find(f.name); of != nil && equalValues(of.values(), f.values()) {
			continue
		}
		vals := f.values()
		line := make([]string, len(vals))
		for i, v := range vals {
			line[i] = v.value
		}
		h.Del(f.name)
		h[canonicalName(f.name)] = line
	}
}

func cookieHeader(fs fields) string { return joinFields(fs, "; ") }

func setCookieLines(fs fields) []string {
	var lines []string
	for _, f := range fs {
		for _, v := range f.values() {
			line := f.name + "=" + v.value
			if v.attributes != "" {
				line += "; " + v.attributes
			}
			lines = append(lines, line)
		}
	}
	return lines
}

func applyRequest(r *http.Request, orig, out *request) {
	if out.uri != orig.uri {
		if p, err := url.PathUnescape(out.uri); err == nil {
			r.URL.Path = p
		} else {
			r.URL.Path = out.uri
		}
		r.URL.RawPath = out.uri
	}
	if queryChanged(out, orig) {
		r.URL.RawQuery = queryOf(out)
		r.URL.ForceQuery = false
	}
	if r.RequestURI != "" {
		r.RequestURI = r.URL.RequestURI()
	}
	applyHeaders(r.Header, orig.headers, out.headers, readOnlyViewerRequest)
	if !out.cookies.equal(orig.cookies) {
		if len(out.cookies) == 0 {
			r.Header.Del("Cookie")
		} else {
			r.Header["Cookie"] = []string{cookieHeader(out.cookies)}
		}
	}
}

func statusLine(code int, desc string) string {
	if desc == "" {
		desc = http.StatusText(code)
	}
	return strconv.Itoa(code) + " " + desc
}

func setBody(resp *http.Response, b *body) {
	if resp.Body != nil {
		resp.Body.Close()
	}
	resp.Body = io.NopCloser(bytes.NewReader(b.bytes))
	resp.ContentLength = int64(len(b.bytes))
	resp.TransferEncoding = nil
	resp.Header.Del("Transfer-Encoding")
	resp.Header.Set("Content-Length", strconv.Itoa(len(b.bytes)))
}

func applyResponse(resp *http.Response, orig, out *response) {
	resp.StatusCode = out.statusCode
	resp.Status = statusLine(out.statusCode, out.statusDescription)
	if resp.Header == nil {
		resp.Header = http.Header{}
	}
	applyHeaders(resp.Header, orig.headers, out.headers, readOnlyViewerResponse)
	if !out.cookies.equal(orig.cookies) {
		resp.Header.Del("Set-Cookie")
		if lines := setCookieLines(out.cookies); len(lines) > 0 {
			resp.Header["Set-Cookie"] = lines
		}
	}
	if out.body != nil {
		setBody(resp, out.body)
	}
}

// generatedResponse is the response a viewer-request function returned.
func generatedResponse(out *response, r *http.Request) *http.Response {
	resp := &http.Response{
		StatusCode: out.statusCode,
		Status:     statusLine(out.statusCode, out.statusDescription),
		Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{},
		Body:    http.NoBody,
		Request: r,
	}
	applyHeaders(resp.Header, nil, out.headers, nil)
	if lines := setCookieLines(out.cookies); len(lines) > 0 {
		resp.Header["Set-Cookie"] = lines
	}
	if out.body != nil {
		setBody(resp, out.body)
	}
	return resp
}
