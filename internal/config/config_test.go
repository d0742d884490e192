package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultsMatchTheDocumentedFile(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"gwlb.listen", c.GWLB.Listen, "0.0.0.0:6081"},
		{"health.listen", c.Health.Listen, ":8080"},
		{"admin.listen", c.Admin.Listen, "127.0.0.1:9090"},
		{"flows.tcp_idle_timeout", c.Flows.TCPIdleTimeout.D(), 350 * time.Second},
		{"flows.idle_timeout", c.Flows.IdleTimeout.D(), 120 * time.Second},
		{"policy.default", c.Policy.Default, "fast"},
		{"gwlb.batch_size", c.GWLB.BatchSize, 64},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	// Every top-level section of the struct is documented in the file.
	for _, key := range []string{"log:", "gwlb:", "flows:", "policy:", "health:", "admin:", "shutdown:"} {
		if !strings.Contains(string(DefaultYAML()), "\n"+key) {
			t.Errorf("default.yaml lacks %s", key)
		}
	}
}

func TestParseOverridesOnlyWhatItNames(t *testing.T) {
	c, err := Parse([]byte("gwlb:\n  workers: 3\npolicy:\n  rules:\n    - action: drop\n      protocols: [udp]\n      ports: [\"443\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.GWLB.Workers != 3 || c.GWLB.Listen != "0.0.0.0:6081" || len(c.Policy.Rules) != 1 {
		t.Fatalf("unexpected result: %+v", c.GWLB)
	}
}

func TestBadConfigNamesFieldAndProblem(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"unknown key", "gwlb:\n  listn: x\n", []string{"gwlb.listn: unknown field", "line 2"}},
		{"unknown section", "nope: 1\n", []string{"nope: unknown field"}},
		{"unknown rule key", "policy:\n  rules:\n    - action: drop\n      port: [\"1\"]\n", []string{"policy.rules[].port: unknown field", "line 4"}},
		{"wrong type", "gwlb:\n  workers: many\n", []string{"line 2", "many"}},
		{"bad duration", "flows:\n  idle_timeout: soon\n", []string{"line 2", "soon"}},
		{"timeout range", "flows:\n  tcp_idle_timeout: 2h\n", []string{"flows.tcp_idle_timeout", "6000s"}},
		{"listen", "gwlb:\n  listen: nowhere\n", []string{"gwlb.listen", "host:port"}},
		{"listen v6", "gwlb:\n  listen: \"[::1]:6081\"\n", []string{"gwlb.listen", "IPv4"}},
		{"action", "policy:\n  rules:\n    - action: allow\n", []string{"policy.rules[0].action", "allow"}},
		{"cidr", "policy:\n  rules:\n    - action: drop\n      sources: [10.0.0.0/33]\n", []string{"policy.rules[0].sources[0]"}},
		{"port", "policy:\n  rules:\n    - action: drop\n      ports: [\"90-80\"]\n", []string{"policy.rules[0].ports[0]", "90-80"}},
		{"protocol", "policy:\n  rules:\n    - action: drop\n      protocols: [tcpp]\n", []string{"policy.rules[0].protocols[0]", "tcpp"}},
		{"endpoint", "policy:\n  rules:\n    - action: drop\n      endpoints: [vpce-xyz]\n", []string{"policy.rules[0].endpoints[0]"}},
		{"log level", "log:\n  level: loud\n", []string{"log.level", "loud"}},
		{"batch", "gwlb:\n  batch_size: 0\n", []string{"gwlb.batch_size"}},
		{"two documents", "log:\n  level: info\n---\nlog:\n  level: debug\n", []string{"more than one"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.yaml")
	if err := os.WriteFile(p, []byte("shutdown:\n  drain: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Shutdown.Drain.D() != 5*time.Second {
		t.Errorf("drain = %v", c.Shutdown.Drain.D())
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestParseHelpers(t *testing.T) {
	// AWS prints 17 hex digits; the leading zero still fits in 64 bits.
	if v, err := ParseEndpointID("vpce-0123456789abcdef0"); err != nil || v != 0x123456789abcdef0 {
		t.Errorf("endpoint = %x %v", v, err)
	}
	if lo, hi, err := ParsePortRange("8000-8100"); err != nil || lo != 8000 || hi != 8100 {
		t.Errorf("range = %d-%d %v", lo, hi, err)
	}
	if p, err := ParseProtocol("ICMPv6"); err != nil || p != 58 {
		t.Errorf("icmpv6 = %d %v", p, err)
	}
	if p, err := ParsePrefix("10.1.2.3"); err != nil || p.Bits() != 32 {
		t.Errorf("prefix = %v %v", p, err)
	}
	if a, err := ParseListen(":8080"); err != nil || a.Port() != 8080 || !a.Addr().IsUnspecified() {
		t.Errorf("listen = %v %v", a, err)
	}
}
