package cff

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTestCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kvs := write("kvs.json", `{"data":[{"key":"greeting","value":"hi"}]}`)
	ok := write("ok.js", "import cf from 'cloudfront';\nasync function handler(e) { console.log(await cf.kvs().get('greeting')); e.request.headers['x-a'] = {value: 'b'}; return e.request; }")
	bad := write("bad.js", "function handler(e) { return null; }")
	broken := write("broken.js", "function handler(e) {")
	event := write("event.json", minimalRequestEvent)

	run := func(args ...string) (int, map[string]any, string) {
		var stdout, stderr bytes.Buffer
		code := TestCommand(args, &stdout, &stderr)
		var out map[string]any
		if code == 0 {
			if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
				t.Fatalf("stdout %q: %v", stdout.String(), err)
			}
			out = out["TestResult"].(map[string]any)
		}
		return code, out, stderr.String()
	}
	code, out, _ := run("--function", ok, "--runtime", "cloudfront-js-2.0", "--event", event, "--kvs", kvs)
	if code != 0 || out["FunctionErrorMessage"] != "" || !strings.Contains(out["FunctionOutput"].(string), `"x-a":{"value":"b"}`) ||
		out["FunctionExecutionLogs"].([]any)[0] != "hi" || out["ComputeUtilization"] == nil {
		t.Fatalf("ok: %d %v", code, out)
	}
	// A function that returns something invalid still ran: exit 0.
	code, out, _ = run("--function", bad, "--runtime", "cloudfront-js-1.0", "--event", event)
	if code != 0 || !strings.HasPrefix(out["FunctionErrorMessage"].(string), "FunctionValidationError") || out["FunctionOutput"] != "" {
		t.Fatalf("bad: %d %v", code, out)
	}
	if code, _, stderr := run("--function", broken, "--event", event); code != 1 || !strings.Contains(stderr, "syntax") {
		t.Fatalf("broken: %d %q", code, stderr)
	}
	if code, _, _ := run("--event", event); code != 2 {
		t.Fatalf("usage: %d", code)
	}
}
