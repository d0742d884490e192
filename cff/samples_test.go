package cff

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"
)

type sampleConfig struct {
	Runtime    Runtime           `json:"runtime"`
	Source     string            `json:"source"`
	Now        string            `json:"now"`
	KVS        map[string]string `json:"kvs"`
	IgnoreLogs bool              `json:"ignoreLogs"`
}

// TestSamples runs AWS's published samples and compares their output with
// the test-function results their READMEs print. The samples are AWS's
// code, so they are not kept in this repository: CFF_SAMPLES names a
// directory with one folder per sample (function.js, event.json written from
// the README, expected.json with the printed TestResult, config.json with
// the runtime, clock and key value store).
func TestSamples(t *testing.T) {
	root := os.Getenv("CFF_SAMPLES")
	if root == "" {
		t.Skip("AWS's CloudFront Functions samples are not vendored; set CFF_SAMPLES to run them (see TestSamples)")
	}
	dirs, err := filepath.Glob(filepath.Join(root, "*", "function.js"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("CFF_SAMPLES=%s holds no samples: %v", root, err)
	}
	for _, fn := range dirs {
		dir := filepath.Dir(fn)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			t.Parallel()
			var cfg sampleConfig
			readJSON(t, filepath.Join(dir, "config.json"), &cfg)
			var want TestResult
			readJSON(t, filepath.Join(dir, "expected.json"), &want)
			code, _ := os.ReadFile(fn)
			event, _ := os.ReadFile(filepath.Join(dir, "event.json"))
			fc := FunctionConfig{Name: filepath.Base(dir), Runtime: cfg.Runtime, Code: code, KVS: cfg.KVS, Budget: time.Second}
			if cfg.Now != "" {
				now, err := time.Parse(time.RFC3339, cfg.Now)
				if err != nil {
					t.Fatal(err)
				}
				fc.Now = func() time.Time { return now }
			}
			f, err := Compile(fc)
			if err != nil {
				t.Fatal(err)
			}
			got := f.Test(event)
			if got.FunctionErrorMessage != want.FunctionErrorMessage {
				t.Fatalf("error %q, want %q", got.FunctionErrorMessage, want.FunctionErrorMessage)
			}
			if d := jsonDiff(t, got.FunctionOutput, want.FunctionOutput); d != "" {
				t.Errorf("FunctionOutput differs: %s\ngot  %s\nwant %s", d, got.FunctionOutput, want.FunctionOutput)
			}
			if !cfg.IgnoreLogs && !reflect.DeepEqual(got.FunctionExecutionLogs, want.FunctionExecutionLogs) {
				t.Errorf("logs %q, want %q", got.FunctionExecutionLogs, want.FunctionExecutionLogs)
			}
			if u, err := strconv.Atoi(got.ComputeUtilization); err != nil || u < 0 || u > 100 {
				t.Errorf("ComputeUtilization %q", got.ComputeUtilization)
			}
		})
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// jsonDiff compares two JSON texts as values (object key order aside) and
// returns "" when equal.
func jsonDiff(t *testing.T, got, want string) string {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		return "got is not JSON: " + err.Error()
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want is not JSON: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		return "values differ"
	}
	return ""
}
