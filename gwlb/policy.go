package gwlb

import (
	"fmt"
	"net/netip"

	"github.com/flowdog/flowdog/gwlb/packet"
	"github.com/flowdog/flowdog/internal/config"
)

// Verdict is what happens to a flow's packets.
type Verdict uint8

// Verdicts. Pending is internal: the flow waits for an acceptor.
const (
	Fast Verdict = iota
	Drop
	Intercept
	Pending
)

var verdictNames = [...]string{"fast", "drop", "intercept", "pending"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Policy maps the first packet of a new flow to a verdict; the first rule
// that matches wins.
type Policy struct {
	Default Verdict
	// DropReset answers the SYN of a dropped TCP flow with a RST.
	DropReset bool
	Rules     []Rule
}

// Rule matches flows. A nil or empty list matches everything.
type Rule struct {
	Name         string
	Verdict      Verdict
	Protocols    []uint8
	Sources      []netip.Prefix
	Destinations []netip.Prefix
	Ports        []PortRange
	Endpoints    []uint64
	Attachments  []uint64
}

// PortRange is an inclusive destination port range.
type PortRange struct{ Lo, Hi uint16 }

// PolicyFromConfig builds the policy; cfg must have been validated.
func PolicyFromConfig(cfg config.Policy) (*Policy, error) {
	p := &Policy{DropReset: cfg.DropReset}
	var err error
	if p.Default, err = verdictOf(cfg.Default); err != nil {
		return nil, fmt.Errorf("policy.default: %w", err)
	}
	for i, rc := range cfg.Rules {
		r := Rule{Name: rc.Name}
		if r.Name == "" {
			r.Name = fmt.Sprintf("rule%d", i)
		}
		if r.Verdict, err = verdictOf(rc.Action); err != nil {
			return nil, fmt.Errorf("policy.rules[%d].action: %w", i, err)
		}
		for _, s := range rc.Protocols {
			v, err := config.ParseProtocol(s)
			if err != nil {
				return nil, fmt.Errorf("policy.rules[%d].protocols: %w", i, err)
			}
			r.Protocols = append(r.Protocols, v)
		}
		for _, s := range rc.Sources {
			v, err := config.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("policy.rules[%d].sources: %w", i, err)
			}
			r.Sources = append(r.Sources, v)
		}
		for _, s := range rc.Destinations {
			v, err := config.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("policy.rules[%d].destinations: %w", i, err)
			}
			r.Destinations = append(r.Destinations, v)
		}
		for _, s := range rc.Ports {
			lo, hi, err := config.ParsePortRange(s)
			if err != nil {
				return nil, fmt.Errorf("policy.rules[%d].ports: %w", i, err)
			}
			r.Ports = append(r.Ports, PortRange{lo, hi})
		}
		for _, s := range rc.Endpoints {
			v, err := config.ParseEndpointID(s)
			if err != nil {
				return nil, fmt.Errorf("policy.rules[%d].endpoints: %w", i, err)
			}
			r.Endpoints = append(r.Endpoints, v)
		}
		for _, s := range rc.Attachments {
			v, err := config.ParseHexID(s)
			if err != nil {
				return nil, fmt.Errorf("policy.rules[%d].attachments: %w", i, err)
			}
			r.Attachments = append(r.Attachments, v)
		}
		p.Rules = append(p.Rules, r)
	}
	return p, nil
}

func verdictOf(s string) (Verdict, error) {
	a, err := config.ParseAction(s)
	if err != nil {
		return 0, err
	}
	switch a {
	case config.ActionDrop:
		return Drop, nil
	case config.ActionIntercept:
		return Intercept, nil
	}
	return Fast, nil
}

// Decide returns the verdict for a flow whose first packet is t (t.Src is the
// initiator) and the rule that decided ("" for the default). A packet without
// ports (a non-first fragment) never matches a rule that lists ports.
func (p *Policy) Decide(tenant packet.Tenant, t packet.Tuple, hasPorts bool) (Verdict, string) {
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.match(tenant, t, hasPorts) {
			return r.Verdict, r.Name
		}
	}
	return p.Default, ""
}

func (r *Rule) match(tenant packet.Tenant, t packet.Tuple, hasPorts bool) bool {
	if len(r.Protocols) > 0 && !containsU8(r.Protocols, t.Proto) {
		return false
	}
	if len(r.Endpoints) > 0 && !containsU64(r.Endpoints, tenant.EndpointID) {
		return false
	}
	if len(r.Attachments) > 0 && !containsU64(r.Attachments, tenant.AttachmentID) {
		return false
	}
	if len(r.Sources) > 0 && !inPrefixes(r.Sources, t.Src) {
		return false
	}
	if len(r.Destinations) > 0 && !inPrefixes(r.Destinations, t.Dst) {
		return false
	}
	if len(r.Ports) > 0 {
		if !hasPorts {
			return false
		}
		ok := false
		for _, pr := range r.Ports {
			if t.DstPort >= pr.Lo && t.DstPort <= pr.Hi {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func containsU8(s []uint8, v uint8) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func containsU64(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
