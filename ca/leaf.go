package ca

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrNoNames is returned by Leaf for a spec without a name.
var ErrNoNames = errors.New("ca: leaf spec has no names")

// maxCommonName is the upper bound of a CN (RFC 5280, ub-common-name).
const maxCommonName = 64

// LeafSpec names a leaf: DNS names and IPs for SANs and the CN.
type LeafSpec struct {
	CommonName string
	DNSNames   []string
	IPs        []netip.Addr
}

// SpecFromUpstream mirrors an upstream server certificate the way mitmproxy
// does: its SANs (DNS and IP) and its CN (also added as a SAN when it is a
// host name or an IP, as mitmproxy does for certificates without SANs); plus
// sni when it is not empty and not already covered (exactly or by a
// wildcard), and, when there is no SNI, the destination IP dst. With a nil
// upstream (passthrough decisions, tests) the spec is sni, or dst when there
// is no SNI. An SNI that is an IP literal is treated as an IP. The CN is the
// upstream's, or else the first name.
func SpecFromUpstream(upstream *x509.Certificate, sni string, dst netip.Addr) LeafSpec {
	var s LeafSpec
	if upstream != nil {
		s.DNSNames = slices.Clone(upstream.DNSNames)
		for _, ip := range upstream.IPAddresses {
			if a, ok := netip.AddrFromSlice(ip); ok {
				s.addIP(a)
			}
		}
		if cn := upstream.Subject.CommonName; cn != "" {
			s.CommonName = cn
			s.addName(cn)
		}
	}
	sni = strings.TrimSuffix(sni, ".")
	switch {
	case sni != "":
		s.addName(sni)
	case dst.IsValid():
		s.addIP(dst)
	}
	if s.CommonName == "" {
		switch {
		case len(s.DNSNames) > 0:
			s.CommonName = s.DNSNames[0]
		case len(s.IPs) > 0:
			s.CommonName = s.IPs[0].String()
		}
	}
	return s
}

// addName adds name as an IP SAN when it is an IP literal, as a DNS SAN when
// it is a host name not yet covered, and not at all otherwise (a CN such as
// "Example Corp").
func (s *LeafSpec) addName(name string) {
	if a, err := netip.ParseAddr(name); err == nil {
		s.addIP(a)
		return
	}
	if !isHostname(name) {
		return
	}
	for _, n := range s.DNSNames {
		if matchName(n, name) {
			return
		}
	}
	s.DNSNames = append(s.DNSNames, name)
}

func (s *LeafSpec) addIP(a netip.Addr) {
	a = a.Unmap()
	if !slices.Contains(s.IPs, a) {
		s.IPs = append(s.IPs, a)
	}
}

// isHostname reports whether name looks like a DNS name (letters, digits,
// '-', '_', '.', and a leading "*." wildcard), so that a CN that is not one
// stays out of the SANs.
func isHostname(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	name = strings.TrimPrefix(name, "*.")
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// matchName reports whether the SAN pattern covers host, case-insensitively;
// a "*." pattern covers exactly one label (RFC 6125 6.4.3, as crypto/x509).
func matchName(pattern, host string) bool {
	pattern = strings.TrimSuffix(pattern, ".")
	if strings.EqualFold(pattern, host) {
		return true
	}
	rest, ok := strings.CutPrefix(pattern, "*.")
	if !ok {
		return false
	}
	i := strings.IndexByte(host, '.')
	return i > 0 && strings.EqualFold(host[i+1:], rest)
}

// names is the normalized form of a spec's SANs: lower-case DNS names
// without a trailing dot (IP literals moved to ips), unmapped IPs, each
// sorted and deduplicated.
type names struct {
	dns []string
	ips []netip.Addr
}

// normalize appends spec's normalized names to dnsBuf and ipBuf (which may
// be backed by the caller's arrays).
func normalize(spec LeafSpec, dnsBuf []string, ipBuf []netip.Addr) names {
	n := names{dns: dnsBuf[:0], ips: ipBuf[:0]}
	for _, d := range spec.DNSNames {
		d = strings.TrimSuffix(d, ".")
		if d == "" {
			continue
		}
		if c := d[0]; '0' <= c && c <= '9' || strings.IndexByte(d, ':') >= 0 {
			if a, err := netip.ParseAddr(d); err == nil {
				n.ips = append(n.ips, a.Unmap())
				continue
			}
		}
		n.dns = append(n.dns, strings.ToLower(d)) // no allocation when already lower-case
	}
	for _, a := range spec.IPs {
		if a.IsValid() {
			n.ips = append(n.ips, a.Unmap())
		}
	}
	slices.Sort(n.dns)
	n.dns = slices.Compact(n.dns)
	slices.SortFunc(n.ips, netip.Addr.Compare)
	n.ips = slices.Compact(n.ips)
	return n
}

// appendKey appends the cache key of the names, or of cn when there are no
// names, to b.
func (n names) appendKey(b []byte, cn string) []byte {
	if len(n.dns) == 0 && len(n.ips) == 0 {
		return append(append(b, "cn\x00"...), cn...)
	}
	for _, d := range n.dns {
		b = append(append(b, d...), 0)
	}
	b = append(b, 0)
	for _, a := range n.ips {
		b = append(a.AppendTo(b), 0)
	}
	return b
}

// call is a leaf being minted; concurrent requests for its key wait on done.
type call struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// Leaf returns a certificate for spec: the leaf and the intermediate (the
// chain the client sees; not the root) with the leaf's PrivateKey, and Leaf
// set to the parsed leaf. It is served from the LRU cache when a leaf for
// the same names, signed by the current intermediate, is there and not near
// expiry; otherwise it is minted, once however many goroutines ask for the
// same names concurrently.
//
// The cache key is the normalized (lower-cased, sorted, deduplicated) set of
// SANs. The CN does not take part in it (clients match SANs, RFC 6125): a
// cached leaf carries the CN of the spec that minted it. A spec without SANs
// is keyed by its CN. All leaves of one intermediate share one ECDSA P-256
// key. The returned certificate is shared: the caller must not modify it.
func (a *Authority) Leaf(spec LeafSpec) (*tls.Certificate, error) {
	var (
		dnsArr [8]string
		ipArr  [4]netip.Addr
		keyArr [256]byte
	)
	n := normalize(spec, dnsArr[:0], ipArr[:0])
	if len(n.dns) == 0 && len(n.ips) == 0 && spec.CommonName == "" {
		a.m.mintErrors.Inc()
		return nil, ErrNoNames
	}
	key := n.appendKey(keyArr[:0], spec.CommonName)
	now := a.opts.Now()
	g := a.gen.Load()

	a.mu.Lock()
	if e := a.cache.get(string(key)); e != nil && a.fresh(e, g, now) {
		a.mu.Unlock()
		a.m.hits.Inc()
		return e.cert, nil
	}
	a.m.misses.Inc()
	if c := a.inflight[string(key)]; c != nil {
		a.mu.Unlock()
		<-c.done
		return c.cert, c.err
	}
	c := &call{done: make(chan struct{})}
	skey := string(key)
	a.inflight[skey] = c
	a.mu.Unlock()

	defer func() {
		a.mu.Lock()
		delete(a.inflight, skey)
		if c.err == nil && a.gen.Load() == g {
			ev := a.cache.add(&entry{key: skey, cert: c.cert, gen: g, notAfter: c.cert.Leaf.NotAfter})
			if ev > 0 {
				a.m.evictions.Add(float64(ev))
				if !a.fullLogged {
					a.fullLogged = true
					a.log.Warn("ca: leaf cache full; evicting least recently used leaves", "max", a.opts.CacheSize)
				}
			}
			a.m.entries.Set(float64(a.cache.len()))
		}
		a.mu.Unlock()
		close(c.done)
	}()
	if a.mintHook != nil {
		a.mintHook()
	}
	c.cert, c.err = a.mint(g, now, spec.CommonName, slices.Clone(n.dns), slices.Clone(n.ips))
	if c.err != nil {
		a.m.mintErrors.Inc()
		return nil, c.err
	}
	a.m.minted.Inc()
	return c.cert, nil
}

// fresh reports whether the cached entry e may be served at now: signed by
// the current generation g, and not within the renewal margin of its
// NotAfter unless a new leaf could not outlive it (its NotAfter is the
// intermediate's).
func (a *Authority) fresh(e *entry, g *generation, now time.Time) bool {
	if e.gen != g || !now.Before(e.notAfter) {
		return false
	}
	margin := min(clockSkew, a.opts.LeafLifetime/4)
	return now.Add(margin).Before(e.notAfter) || !e.notAfter.Before(g.cert.NotAfter)
}

// mint signs a leaf with generation g's intermediate for the leaf key of g.
func (a *Authority) mint(g *generation, now time.Time, cn string, dns []string, ips []netip.Addr) (*tls.Certificate, error) {
	if g == nil || !now.Before(g.cert.NotAfter) {
		_, err := a.current(now)
		return nil, err
	}
	if cn == "" {
		if len(dns) > 0 {
			cn = dns[0]
		} else {
			cn = ips[0].String()
		}
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: leaf: %w", err)
	}
	notBefore := now.Add(-clockSkew)
	if notBefore.Before(g.cert.NotBefore) {
		notBefore = g.cert.NotBefore
	}
	notAfter := now.Add(a.opts.LeafLifetime)
	if notAfter.After(g.cert.NotAfter) {
		notAfter = g.cert.NotAfter
	}
	pub := g.leafKey.Public()
	ku := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment // RSA key exchange; never for EC keys
	}
	var ipAddrs []net.IP
	if len(ips) > 0 {
		ipAddrs = make([]net.IP, len(ips))
		for i, ip := range ips {
			ipAddrs[i] = ip.AsSlice()
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: truncate(cn, maxCommonName)},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ipAddrs,
		// AuthorityKeyId is taken from the intermediate's SubjectKeyId.
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, g.cert, pub, g.key)
	if err != nil {
		return nil, fmt.Errorf("ca: signing leaf for %q: %w", cn, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing leaf for %q: %w", cn, err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, g.cert.Raw},
		PrivateKey:  g.leafKey,
		Leaf:        leaf,
	}, nil
}

// truncate cuts s to at most n bytes on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
