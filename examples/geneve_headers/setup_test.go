package geneve_headers

import (
	"context"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/flowdog/flowdog/interceptors"
)

func TestSetup(t *testing.T) {
	cases := []struct {
		config    string
		shouldErr string
		req, resp bool
	}{
		{"", "", true, true},
		{"requests: false", "", false, true},
		{"responses: false", "", true, false},
		{"requests: false\nresponses: false", "do nothing", false, false},
		{"request: true", "field request not found", false, false},
		{"requests: maybe", "cannot unmarshal", false, false},
	}
	for _, c := range cases {
		t.Run(c.config, func(t *testing.T) {
			var cfg interceptors.Config
			doc := "name: geneve_headers\n"
			if c.config != "" {
				doc += "config:\n  " + strings.ReplaceAll(c.config, "\n", "\n  ") + "\n"
			}
			if err := yaml.Unmarshal([]byte(doc), &cfg); err != nil {
				t.Fatal(err)
			}
			chain, err := interceptors.NewChain(context.Background(), []interceptors.Config{cfg}, nil, nil)
			if c.shouldErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.shouldErr) {
					t.Fatalf("error %v, want one containing %q", err, c.shouldErr)
				}
				if !strings.Contains(err.Error(), "interceptors[0]") {
					t.Errorf("error %q does not name the field", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ids := chain.IDs(); len(ids) != 1 || ids[0] != ID {
				t.Fatalf("chain %v", ids)
			}
		})
	}
}
