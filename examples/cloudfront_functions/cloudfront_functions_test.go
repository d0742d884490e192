package cloudfront_functions

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowdog/flowdog/interceptors"
)

var flow = &interceptors.Flow{Client: netip.MustParseAddrPort("192.0.2.10:40000"), Server: netip.MustParseAddrPort("198.51.100.10:443")}

const watch = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"

func rick(t *testing.T) *interceptors.Chain {
	t.Helper()
	c, err := chainFrom(t, "  functions:\n    - name: rick\n      file: rick.js\n      hosts: [www.youtube.com]\n")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRick(t *testing.T) {
	c := rick(t)
	cases := []struct {
		name, url, referer string
		redirect           bool
	}{
		{"home page", "https://www.youtube.com/", "", true},
		{"another video", "https://www.youtube.com/watch?v=9bZkp7q5VvJ", "", true},
		{"the video", "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "", false},
		{"the video, more parameters", "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=42", "", false},
		{"from the video's page", "https://www.youtube.com/youtubei/v1/player", watch, false},
		{"from another page", "https://www.youtube.com/youtubei/v1/player", "https://www.youtube.com/feed", true},
		{"other host", "https://m.youtube.com/", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", tc.url, nil)
			if tc.referer != "" {
				req.Header.Set("Referer", tc.referer)
			}
			resp, err := c.Request(flow, req)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.redirect {
				if resp != nil {
					t.Fatalf("answered %d, want the request to go on", resp.StatusCode)
				}
				return
			}
			if resp == nil || resp.StatusCode != 302 || resp.Header.Get("Location") != watch {
				t.Fatalf("got %+v, want a 302 to %s", resp, watch)
			}
		})
	}
}

func TestViewerResponseAndErrors(t *testing.T) {
	c, err := chainFrom(t, `  budget: 20ms
  functions:
    - name: tag
      event_type: viewer-response
      code: |
        function handler(event) {
          var r = event.response;
          r.headers['x-seen-by'] = {value: 'cff ' + event.context.eventType};
          return r;
        }
    - name: boom
      path_prefix: /boom
      code: 'function handler(event) { throw new Error("bad day"); }'
    - name: forbidden
      path_prefix: /forbidden
      code: |
        function handler(event) {
          event.request.headers['content-length'] = {value: '1'};
          return event.request;
        }
    - name: forever
      path_prefix: /loop
      code: 'function handler(event) { for (;;) {} }'
`)
	if err != nil {
		t.Fatal(err)
	}
	do := func(path string) *http.Response {
		req := httptest.NewRequest("GET", "https://www.example.com"+path, nil)
		resp, err := c.Request(flow, req)
		if err != nil {
			t.Fatal(err)
		}
		if resp == nil {
			resp = &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("upstream")), Request: req}
		}
		if err := c.Response(flow, resp); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if r := do("/ok"); r.StatusCode != 200 || r.Header.Get("X-Seen-By") != "cff viewer-response" {
		t.Errorf("viewer-response: %d %v", r.StatusCode, r.Header)
	}
	if r := do("/boom"); r.StatusCode != 503 {
		t.Errorf("exception: %d, want 503", r.StatusCode)
	}
	if r := do("/forbidden"); r.StatusCode != 502 {
		t.Errorf("read-only header changed: %d, want 502", r.StatusCode)
	}
	// A function that loops forever is stopped within its budget while
	// other requests keep flowing.
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		if r := do("/loop"); r.StatusCode != 503 {
			t.Errorf("endless loop: %d, want 503", r.StatusCode)
		}
	})
	for range 20 {
		if r := do("/ok"); r.StatusCode != 200 {
			t.Fatalf("a request beside the looping function: %d", r.StatusCode)
		}
	}
	wg.Wait()
	if el := time.Since(start); el > time.Second {
		t.Errorf("the loop ran %v with a 20ms budget", el)
	}
}
