package proxy

import (
	"fmt"
	"net/netip"
	"path"
	"strings"
	"sync"
	"time"
)

// Passthrough lists TLS connections that are spliced untouched.
type Passthrough struct {
	// SNI globs, e.g. "*.apple.com" or "bank.example" (path.Match syntax,
	// case-insensitive; "*.example.com" also matches "example.com").
	SNI []string
	// Destinations are CIDRs of servers never intercepted.
	Destinations []netip.Prefix
}

func (p *Passthrough) compile() error {
	for i, g := range p.SNI {
		g = strings.ToLower(g)
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("passthrough sni[%d] %q: %w", i, g, err)
		}
		p.SNI[i] = g
	}
	return nil
}

func (p *Passthrough) matchSNI(sni string) bool {
	if sni == "" {
		return false
	}
	for _, g := range p.SNI {
		if ok, _ := path.Match(g, sni); ok {
			return true
		}
		if rest, ok := strings.CutPrefix(g, "*."); ok && sni == rest {
			return true
		}
	}
	return false
}

func (p *Passthrough) matchAddr(a netip.Addr) bool {
	for _, d := range p.Destinations {
		if d.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// autoPassthrough remembers destinations whose clients rejected flowdog's
// certificate; bounded, entries expire.
type autoPassthrough struct {
	mu  sync.Mutex
	m   map[string]time.Time
	max int
}

func newAutoPassthrough(max int) *autoPassthrough {
	return &autoPassthrough{m: map[string]time.Time{}, max: max}
}

func (a *autoPassthrough) add(key string, ttl time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if len(a.m) >= a.max {
		for k, exp := range a.m {
			if now.After(exp) || len(a.m) >= a.max {
				delete(a.m, k)
			}
			if len(a.m) < a.max*9/10 {
				break
			}
		}
	}
	a.m[key] = now.Add(ttl)
}

func (a *autoPassthrough) has(key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.m[key]
	if ok && time.Now().After(exp) {
		delete(a.m, key)
		return false
	}
	return ok
}
