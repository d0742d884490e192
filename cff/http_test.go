package cff

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

const echoEvent = `function handler(e) { e.rawQS = e.request.rawQueryString(); return {statusCode: 200, body: JSON.stringify(e)}; }`

// eventOf runs an echoing viewer-request function on r and returns the
// event the function saw.
func eventOf(t *testing.T, r *http.Request, ip string) map[string]any {
	t.Helper()
	f, err := Compile(FunctionConfig{Name: "echo", Code: []byte(echoEvent), DistributionID: "EDFDVBD6EXAMPLE", DistributionDomain: "d111111abcdef8.cloudfront.net", Budget: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, resp, err := f.ViewerRequest(r, netip.MustParseAddr(ip), "req-1")
	if err != nil || resp == nil {
		t.Fatalf("ViewerRequest: %v %v", resp, err)
	}
	b, _ := io.ReadAll(resp.Body)
	var ev map[string]any
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return ev
}

func TestRequestToEvent(t *testing.T) {
	r := httptest.NewRequest("GET", "http://video.example.com/media/a%20b/index.mpd?ID=42&Exp=1%2B2&NoValue&querymv=val1&querymv=val2,val3&e=", nil)
	r.Header.Add("Accept", "application/json")
	r.Header.Add("Accept", "application/xml")
	r.Header.Set("User-Agent", "Mozilla/5.0")
	r.Header.Set("X-Forwarded-For", "203.0.113.9")
	r.Header.Set("Connection", "keep-alive")
	r.Header.Set("X-Amz-Cf-Id", "hidden")
	r.Header.Add("Cookie", "Cookie1=value1; cookiemv=value3")
	r.Header.Add("Cookie", "cookiemv=value4")
	ev := eventOf(t, r, "::ffff:198.51.100.11")

	want := mustJSON(t, `{
	"version": "1.0",
	"context": {"distributionDomainName": "d111111abcdef8.cloudfront.net", "distributionId": "EDFDVBD6EXAMPLE", "eventType": "viewer-request", "requestId": "req-1"},
	"viewer": {"ip": "198.51.100.11"},
	"request": {
		"method": "GET",
		"uri": "/media/a%20b/index.mpd",
		"querystring": {
			"ID": {"value": "42"}, "Exp": {"value": "1%2B2"}, "NoValue": {"value": ""},
			"querymv": {"value": "val1", "multiValue": [{"value": "val1"}, {"value": "val2,val3"}]},
			"e": {"value": ""}
		},
		"headers": {
			"host": {"value": "video.example.com"},
			"accept": {"value": "application/json", "multiValue": [{"value": "application/json"}, {"value": "application/xml"}]},
			"user-agent": {"value": "Mozilla/5.0"},
			"x-forwarded-for": {"value": "203.0.113.9"}
		},
		"cookies": {
			"Cookie1": {"value": "value1"},
			"cookiemv": {"value": "value3", "multiValue": [{"value": "value3"}, {"value": "value4"}]}
		}
	},
	"rawQS": "ID=42&Exp=1%2B2&NoValue&querymv=val1&querymv=val2,val3&e="
	}`)
	if !reflect.DeepEqual(any(ev), want) {
		g, _ := json.MarshalIndent(ev, "", " ")
		t.Fatalf("event:\n%s", g)
	}
	// The query string's order is the URL's.
	f, _ := Compile(FunctionConfig{Code: []byte(`function handler(e) { return {statusCode: 200, body: Object.keys(e.request.querystring).join(',')}; }`)})
	_, resp, _ := f.ViewerRequest(httptest.NewRequest("GET", "/?z=1&a=2&m=3&a=4", nil), netip.Addr{}, "")
	if b, _ := io.ReadAll(resp.Body); string(b) != "z,a,m" {
		t.Fatalf("order %q", b)
	}
}

func TestRawQueryStringForms(t *testing.T) {
	for _, tt := range []struct{ url, want string }{
		{"/page?name=John&age=25", `"name=John&age=25"`},
		{"/page?", `""`},
		{"/page", `null`},
	} {
		f, _ := Compile(FunctionConfig{Code: []byte(`function handler(e) { var q = e.request.rawQueryString(); return {statusCode: 200, body: q === undefined ? 'null' : JSON.stringify(q)}; }`)})
		_, resp, err := f.ViewerRequest(httptest.NewRequest("GET", tt.url, nil), netip.Addr{}, "")
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != tt.want {
			t.Errorf("%s: got %s, want %s", tt.url, b, tt.want)
		}
	}
}

func TestRequestBackToHTTP(t *testing.T) {
	tests := []struct {
		name  string
		code  string // body of handler(e), returning e.request
		check func(t *testing.T, r *http.Request)
	}{
		{"unchanged", `return e.request;`, func(t *testing.T, r *http.Request) {
			if r.URL.RawQuery != "a=1&a=2&flag&b=x%20y" || r.URL.EscapedPath() != "/p/a%20b" {
				t.Errorf("url %s", r.URL)
			}
			if got := r.Header["Accept"]; !reflect.DeepEqual(got, []string{"a", "b", "c"}) {
				t.Errorf("accept %q", got)
			}
			if r.Header.Get("Connection") != "keep-alive" || r.Header.Get("Cookie") != "c1=v1; c2=v2" {
				t.Errorf("headers %v", r.Header)
			}
		}},
		{"multiValue wins", `e.request.headers.accept.value = 'ignored'; e.request.headers.accept.multiValue = [{value: 'x'}, {value: 'y'}]; return e.request;`, func(t *testing.T, r *http.Request) {
			if got := r.Header["Accept"]; !reflect.DeepEqual(got, []string{"x", "y"}) {
				t.Errorf("accept %q", got)
			}
		}},
		{"value replaces the first", `e.request.headers.accept.value = 'z'; e.request.querystring.a.value = '9'; return e.request;`, func(t *testing.T, r *http.Request) {
			if got := r.Header["Accept"]; !reflect.DeepEqual(got, []string{"z", "b", "c"}) {
				t.Errorf("accept %q", got)
			}
			if r.URL.RawQuery != "a=9&a=2&flag=&b=x%20y" {
				t.Errorf("query %q", r.URL.RawQuery)
			}
		}},
		{"new headers capitalised, deleted removed", `e.request.headers['x-example-header-name'] = {value: 'v'}; delete e.request.headers.accept; return e.request;`, func(t *testing.T, r *http.Request) {
			if got := r.Header["X-Example-Header-Name"]; !reflect.DeepEqual(got, []string{"v"}) {
				t.Errorf("header %v", r.Header)
			}
			if _, ok := r.Header["Accept"]; ok {
				t.Errorf("accept not deleted")
			}
			if r.Header.Get("Connection") != "keep-alive" {
				t.Errorf("a header never shown was touched")
			}
		}},
		{"querystring as a string, uri", `e.request.querystring = '?x=1&y'; e.request.uri = '/new/p%C3%A9'; return e.request;`, func(t *testing.T, r *http.Request) {
			if r.URL.RawQuery != "x=1&y" || r.URL.Path != "/new/pé" || r.URL.EscapedPath() != "/new/p%C3%A9" || r.RequestURI != "/new/p%C3%A9?x=1&y" {
				t.Errorf("url %q %q %q", r.URL.RawQuery, r.URL.Path, r.RequestURI)
			}
		}},
		{"querystring object replaced", `e.request.querystring = {n: {value: 'v'}, m: {multiValue: [{value: '1'}, {value: '2'}]}}; return e.request;`, func(t *testing.T, r *http.Request) {
			if r.URL.RawQuery != "n=v&m=1&m=2" {
				t.Errorf("query %q", r.URL.RawQuery)
			}
		}},
		{"cookies", `e.request.cookies.c1.value = 'new'; e.request.cookies.c3 = {value: 'v3'}; return e.request;`, func(t *testing.T, r *http.Request) {
			if got := r.Header["Cookie"]; !reflect.DeepEqual(got, []string{"c1=new; c2=v2; c3=v3"}) {
				t.Errorf("cookie %q", got)
			}
		}},
		{"host may be deleted but stays", `delete e.request.headers.host; return e.request;`, func(t *testing.T, r *http.Request) {
			if r.Host != "example.org" {
				t.Errorf("host %q", r.Host)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := compile(t, Runtime20, ViewerRequestEvent, "function handler(e) {"+tt.code+"}")
			r := httptest.NewRequest("GET", "http://example.org/p/a%20b?a=1&a=2&flag&b=x%20y", nil)
			r.Header["Accept"] = []string{"a", "b", "c"}
			r.Header.Set("Connection", "keep-alive")
			r.Header.Set("Cookie", "c1=v1; c2=v2")
			out, resp, err := f.ViewerRequest(r, netip.MustParseAddr("192.0.2.1"), "")
			if err != nil || resp != nil || out != r {
				t.Fatalf("ViewerRequest: %v %v", resp, err)
			}
			tt.check(t, r)
		})
	}
}

func TestGeneratedResponse(t *testing.T) {
	f := compile(t, Runtime10, ViewerRequestEvent, `function handler(e) {
		return {statusCode: 302, statusDescription: 'Found',
			headers: {location: {value: 'https://example.com/'}, 'cache-control': {value: 'no-store'}},
			cookies: {a: {value: '1', attributes: 'Path=/; Secure'}, b: {value: '2', multiValue: [{value: '2'}, {value: '3', attributes: 'HttpOnly'}]}},
			body: {data: 'aGk=', encoding: 'base64'}};
	}`)
	r := httptest.NewRequest("GET", "http://example.org/", nil)
	_, resp, err := f.ViewerRequest(r, netip.Addr{}, "")
	if err != nil || resp == nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 302 || resp.Status != "302 Found" || string(b) != "hi" || resp.ContentLength != 2 || resp.Request != r {
		t.Fatalf("resp %+v body %q", resp, b)
	}
	want := http.Header{
		"Location": {"https://example.com/"}, "Cache-Control": {"no-store"}, "Content-Length": {"2"},
		"Set-Cookie": {"a=1; Path=/; Secure", "b=2", "b=3; HttpOnly"},
	}
	if !reflect.DeepEqual(resp.Header, want) {
		t.Fatalf("header %v", resp.Header)
	}
}

func upstreamResponse() *http.Response {
	return &http.Response{
		StatusCode: 200, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{
			"Content-Type":   {"text/html"},
			"Server":         {"gunicorn"},
			"Connection":     {"close"},
			"Set-Cookie":     {"ID=id1234; Expires=Wed, 05 Apr 2021 07:28:00 GMT", "Cookie1=val1; Secure; Path=/; Domain=example.com", "Cookie1=val2;Path=/cat", "plain=v"},
			"Content-Length": {"5"},
		},
		Body: io.NopCloser(strings.NewReader("hello")), ContentLength: 5,
	}
}

func TestResponseToEvent(t *testing.T) {
	f := compile(t, Runtime20, ViewerResponseEvent, `function handler(e) {
		e.response.headers['x-seen'] = {value: JSON.stringify({status: e.response.statusCode, type: typeof e.response.statusCode,
			desc: e.response.statusDescription, headers: e.response.headers, cookies: e.response.cookies, body: e.response.body,
			et: e.context.eventType, id: e.context.requestId})};
		return e.response;
	}`)
	resp := upstreamResponse()
	r := httptest.NewRequest("GET", "http://example.org/", nil)
	if err := f.ViewerResponse(r, resp, netip.MustParseAddr("192.0.2.1"), "req-7"); err != nil {
		t.Fatal(err)
	}
	got := mustJSON(t, resp.Header.Get("X-Seen"))
	want := mustJSON(t, `{"status": 200, "type": "number", "desc": "OK",
		"headers": {"content-length": {"value": "5"}, "content-type": {"value": "text/html"}, "server": {"value": "gunicorn"}},
		"cookies": {
			"ID": {"value": "id1234", "attributes": "Expires=Wed, 05 Apr 2021 07:28:00 GMT"},
			"Cookie1": {"value": "val1", "attributes": "Secure; Path=/; Domain=example.com",
				"multiValue": [{"value": "val1", "attributes": "Secure; Path=/; Domain=example.com"}, {"value": "val2", "attributes": "Path=/cat"}]},
			"plain": {"value": "v"}
		}, "et": "viewer-response", "id": "req-7"}`)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("event response:\n%v\nwant\n%v", got, want)
	}
	// Untouched parts pass through unchanged; the body stays upstream's.
	if b, _ := io.ReadAll(resp.Body); string(b) != "hello" || resp.Header.Get("Connection") != "close" || len(resp.Header["Set-Cookie"]) != 4 {
		t.Fatalf("resp %v %q", resp.Header, b)
	}
}

func TestResponseBackToHTTP(t *testing.T) {
	f := compile(t, Runtime20, ViewerResponseEvent, `function handler(e) {
		var res = e.response;
		res.statusCode = 201; res.statusDescription = 'Made';
		res.headers['content-type'] = {value: 'text/plain'};
		delete res.headers.server;
		res.cookies.Cookie1.multiValue = [{value: 'new', attributes: 'Path=/'}];
		delete res.cookies.plain;
		res.body = 'replaced';
		return res;
	}`)
	resp := upstreamResponse()
	if err := f.ViewerResponse(httptest.NewRequest("GET", "/", nil), resp, netip.Addr{}, ""); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	want := http.Header{
		"Content-Type": {"text/plain"}, "Connection": {"close"}, "Content-Length": {"8"},
		"Set-Cookie": {"ID=id1234; Expires=Wed, 05 Apr 2021 07:28:00 GMT", "Cookie1=new; Path=/"},
	}
	if resp.StatusCode != 201 || resp.Status != "201 Made" || string(b) != "replaced" || resp.ContentLength != 8 || !reflect.DeepEqual(resp.Header, want) {
		t.Fatalf("resp %d %q %v %q", resp.StatusCode, resp.Status, resp.Header, b)
	}
}

func TestViewerResponseSkipsErrors(t *testing.T) {
	f := compile(t, Runtime20, ViewerResponseEvent, `function handler(e) { throw new Error('must not run'); }`)
	for _, code := range []int{400, 404, 500, 503} {
		resp := &http.Response{StatusCode: code, Header: http.Header{}}
		if err := f.ViewerResponse(httptest.NewRequest("GET", "/", nil), resp, netip.Addr{}, ""); err != nil {
			t.Fatalf("%d: %v", code, err)
		}
	}
	resp := &http.Response{StatusCode: 304, Header: http.Header{}}
	if err := f.ViewerResponse(httptest.NewRequest("GET", "/", nil), resp, netip.Addr{}, ""); StatusCode(err) != 503 {
		t.Fatalf("304: %v", err)
	}
}

func TestViewerIPIsThePeer(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-Forwarded-For", "203.0.113.9")
	r.Header.Set("X-Real-IP", "203.0.113.10")
	ev := eventOf(t, r, "2001:db8::1")
	if ip := ev["viewer"].(map[string]any)["ip"]; ip != "2001:db8::1" {
		t.Fatalf("viewer.ip %v", ip)
	}
	if _, ok := ev["request"].(map[string]any)["headers"].(map[string]any)["x-real-ip"]; ok {
		t.Fatalf("x-real-ip is disallowed and must not be shown")
	}
}

func TestCanonicalName(t *testing.T) {
	for in, want := range map[string]string{"example-header-name": "Example-Header-Name", "x": "X", "www-authenticate": "Www-Authenticate", "x--y": "X--Y", "a_b": "A_b"} {
		if got := canonicalName(in); got != want {
			t.Errorf("%s: %s", in, got)
		}
	}
}

func TestWrongEventType(t *testing.T) {
	vr := compile(t, Runtime20, ViewerRequestEvent, `function handler(e) { return e.request; }`)
	if err := vr.ViewerResponse(httptest.NewRequest("GET", "/", nil), &http.Response{StatusCode: 200}, netip.Addr{}, ""); err == nil {
		t.Fatal("viewer-request function ran as viewer-response")
	}
}
