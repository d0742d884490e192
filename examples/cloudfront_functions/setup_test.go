package cloudfront_functions

import (
	"context"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/flowdog/flowdog/interceptors"
)

func chainFrom(t *testing.T, config string) (*interceptors.Chain, error) {
	t.Helper()
	var cfg interceptors.Config
	if err := yaml.Unmarshal([]byte("name: cloudfront_functions\nconfig:\n"+config), &cfg); err != nil {
		t.Fatal(err)
	}
	return interceptors.NewChain(context.Background(), []interceptors.Config{cfg}, nil, nil)
}

func TestSetup(t *testing.T) {
	cases := []struct {
		name, config, shouldErr string
	}{
		{"rick from file", "  functions:\n    - name: rick\n      file: rick.js\n      hosts: [www.youtube.com]\n", ""},
		{"inline 1.0", "  functions:\n    - name: r\n      runtime: cloudfront-js-1.0\n      code: 'function handler(e) { return e.request; }'\n", ""},
		{"no functions", "  budget: 5ms\n", "none configured"},
		{"no name", "  functions:\n    - file: rick.js\n", "functions[0].name"},
		{"file and code", "  functions:\n    - name: x\n      file: rick.js\n      code: x\n", "not both"},
		{"missing file", "  functions:\n    - name: x\n      file: nope.js\n", "functions[0].file"},
		{"bad event type", "  functions:\n    - name: x\n      file: rick.js\n      event_type: origin-request\n", "event_type"},
		{"bad glob", "  functions:\n    - name: x\n      file: rick.js\n      hosts: ['[']\n", "hosts[0]"},
		{"let in 1.0", "  functions:\n    - name: x\n      runtime: cloudfront-js-1.0\n      code: 'let a = 1; function handler(e) { return e.request; }'\n", "x"},
		{"syntax error", "  functions:\n    - name: broken\n      code: 'function handler(e) {'\n", "broken"},
		{"unknown field", "  functions:\n    - name: x\n      file: rick.js\n      host: a\n", "host"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := chainFrom(t, c.config)
			if c.shouldErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.shouldErr) {
				t.Fatalf("error %v, want one containing %q", err, c.shouldErr)
			}
		})
	}
}
