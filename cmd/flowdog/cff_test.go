package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/flowdog/flowdog/internal/config"
)

func TestCFFTestCommandWithRick(t *testing.T) {
	event := filepath.Join(t.TempDir(), "event.json")
	os.WriteFile(event, []byte(`{"version":"1.0","context":{"eventType":"viewer-request"},"viewer":{"ip":"192.0.2.10"},
		"request":{"method":"GET","uri":"/feed/trending","querystring":{},"headers":{"host":{"value":"www.youtube.com"}},"cookies":{}}}`), 0o644)
	code, out, errOut := runMain("cff", "test", "--function", "../../examples/cloudfront_functions/rick.js",
		"--runtime", "cloudfront-js-2.0", "--event", event)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var wrapped struct {
		TestResult struct {
			FunctionOutput       string
			FunctionErrorMessage string
			ComputeUtilization   string
		}
	}
	err := json.Unmarshal([]byte(out), &wrapped)
	res := wrapped.TestResult
	if err != nil {
		t.Fatalf("output is not a TestResult: %v\n%s", err, out)
	}
	if res.FunctionErrorMessage != "" || !strings.Contains(res.FunctionOutput, `"statusCode":302`) ||
		!strings.Contains(res.FunctionOutput, "watch?v=dQw4w9WgXcQ") {
		t.Errorf("result %+v", res)
	}
}

// cffConfig attaches functions to the intercept lab's flowdog.
func cffConfig(t *testing.T, functions string) func(*config.Config) {
	return func(c *config.Config) {
		var n yaml.Node
		doc := "budget: 20ms\nfunctions:\n" + functions
		if err := yaml.Unmarshal([]byte(doc), &n); err != nil {
			t.Fatal(err)
		}
		c.Interceptors = append(c.Interceptors, config.InterceptorConfig{Name: "cloudfront_functions", Config: *n.Content[0]})
	}
}

func TestCloudFrontFunctionsThroughTheSimulator(t *testing.T) {
	rick, _ := filepath.Abs("../../examples/cloudfront_functions/rick.js")
	l := newInterceptLab(t, cffConfig(t, fmt.Sprintf(`  - name: rick
    file: %s
    hosts: [www.youtube.com]
  - name: tag
    event_type: viewer-response
    hosts: [www.example.com]
    code: |
      function handler(event) {
        event.response.headers['x-cff'] = {value: event.context.eventType};
        return event.response;
      }
  - name: boom
    hosts: [www.example.com]
    path_prefix: /boom
    code: 'function handler(event) { throw new Error("bad day"); }'
  - name: forbidden
    hosts: [www.example.com]
    path_prefix: /forbidden
    code: |
      function handler(event) {
        event.request.headers['transfer-encoding'] = {value: 'chunked'};
        return event.request;
      }
  - name: forever
    hosts: [www.example.com]
    path_prefix: /loop
    code: 'function handler(event) { while (true) {} }'
`, rick)))
	client, server := hosts(t, l.sim.AddTenant(0x0123456789abcdef, 0x77))
	startWeb(t, server, l.pki.cert, true, nil)
	cl := l.httpsClient(client, true, false)
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	get := func(host, path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+host+path, nil)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("%s%s: %v", host, path, err)
		}
		resp.Body.Close()
		return resp
	}
	// The test server's certificate also names www.youtube.com (newPKI).
	t.Run("rick redirects an intercepted HTTPS request", func(t *testing.T) {
		r := get("www.youtube.com", "/feed")
		if r.StatusCode != 302 || r.Header.Get("Location") != "https://www.youtube.com/watch?v=dQw4w9WgXcQ" {
			t.Errorf("%d %v", r.StatusCode, r.Header)
		}
	})
	t.Run("viewer-response adds a header", func(t *testing.T) {
		if r := get(serverName, "/x"); r.StatusCode != 200 || r.Header.Get("X-Cff") != "viewer-response" {
			t.Errorf("%d %v", r.StatusCode, r.Header)
		}
	})
	t.Run("exception gives 503", func(t *testing.T) {
		if r := get(serverName, "/boom"); r.StatusCode != 503 {
			t.Errorf("%d", r.StatusCode)
		}
	})
	t.Run("forbidden header gives 502", func(t *testing.T) {
		if r := get(serverName, "/forbidden"); r.StatusCode != 502 {
			t.Errorf("%d", r.StatusCode)
		}
	})
	t.Run("endless loop stopped within budget while others flow", func(t *testing.T) {
		var wg sync.WaitGroup
		start := time.Now()
		wg.Go(func() {
			if r := get(serverName, "/loop"); r.StatusCode != 503 {
				t.Errorf("loop: %d, want 503", r.StatusCode)
			}
		})
		for range 10 {
			if r := get(serverName, "/ok"); r.StatusCode != 200 {
				t.Errorf("beside the loop: %d", r.StatusCode)
			}
		}
		wg.Wait()
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("took %v", el)
		}
	})
	if n := l.metric(t, "flowdog_cff_function_execution_errors_total", ""); n < 2 {
		t.Errorf("execution errors counted %v, want the exception and the loop", n)
	}
	if n := l.metric(t, "flowdog_cff_function_validation_errors_total", ""); n < 1 {
		t.Errorf("validation errors counted %v, want the forbidden header", n)
	}
	l.noViolations(t)
}
