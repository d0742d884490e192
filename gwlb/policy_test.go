package gwlb

import (
	"net/netip"
	"testing"

	"github.com/flowdog/flowdog/gwlb/packet"
	"github.com/flowdog/flowdog/internal/config"
)

func TestPolicyFirstMatchWins(t *testing.T) {
	cfg := config.Policy{Default: "fast", Rules: []config.Rule{
		{Name: "tenant-b-all", Action: "drop", Endpoints: []string{"vpce-0fedcba987654321"}},
		{Name: "web", Action: "intercept", Protocols: []string{"tcp"}, Ports: []string{"80", "443"}, Destinations: []string{"198.51.100.0/24", "2001:db8::/32"}},
		{Name: "quic", Action: "drop", Protocols: []string{"udp"}, Ports: []string{"443"}},
		{Name: "lab", Action: "drop", Sources: []string{"10.9.0.0/16"}, Attachments: []string{"1111"}},
	}}
	p, err := PolicyFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tup := func(proto uint8, src, dst string, dport uint16) packet.Tuple {
		return packet.Tuple{Proto: proto, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SrcPort: 40000, DstPort: dport}
	}
	cases := []struct {
		name     string
		tenant   packet.Tenant
		t        packet.Tuple
		hasPorts bool
		want     Verdict
		rule     string
	}{
		{"tenant rule first", tenantB, tup(6, "10.0.0.1", "198.51.100.1", 443), true, Drop, "tenant-b-all"},
		{"https intercepted", tenantA, tup(6, "10.0.0.1", "198.51.100.1", 443), true, Intercept, "web"},
		{"ipv6 http intercepted", tenantA, tup(6, "fd00::1", "2001:db8::5", 80), true, Intercept, "web"},
		{"other destination", tenantA, tup(6, "10.0.0.1", "203.0.113.1", 443), true, Fast, ""},
		{"quic dropped", tenantA, tup(17, "10.0.0.1", "203.0.113.1", 443), true, Drop, "quic"},
		{"fragment never matches port rules", tenantA, tup(17, "10.0.0.1", "203.0.113.1", 0), false, Fast, ""},
		{"source and attachment", tenantA, tup(1, "10.9.1.1", "203.0.113.1", 0), false, Drop, "lab"},
		{"default", tenantA, tup(17, "10.0.0.1", "203.0.113.1", 53), true, Fast, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, rule := p.Decide(c.tenant, c.t, c.hasPorts)
			if v != c.want || rule != c.rule {
				t.Errorf("got %v by %q, want %v by %q", v, rule, c.want, c.rule)
			}
		})
	}
}

func TestNewRefusesInterceptWithoutEngine(t *testing.T) {
	_, err := newDatapath(Options{Policy: &Policy{Rules: []Rule{{Verdict: Intercept}}}})
	if err == nil {
		t.Fatal("intercept rules without an engine were accepted")
	}
}
