package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSpecFromUpstream(t *testing.T) {
	dst4 := netip.MustParseAddr("192.0.2.10")
	up := func(cn string, dns []string, ips ...string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
		for _, s := range ips {
			c.IPAddresses = append(c.IPAddresses, net.ParseIP(s))
		}
		return c
	}
	tests := []struct {
		name     string
		upstream *x509.Certificate
		sni      string
		dst      netip.Addr
		want     LeafSpec
	}{
		{"nil upstream, sni", nil, "example.com", dst4,
			LeafSpec{CommonName: "example.com", DNSNames: []string{"example.com"}}},
		{"nil upstream, no sni", nil, "", dst4,
			LeafSpec{CommonName: "192.0.2.10", IPs: []netip.Addr{dst4}}},
		{"nil upstream, v4-mapped dst", nil, "", netip.MustParseAddr("::ffff:192.0.2.10"),
			LeafSpec{CommonName: "192.0.2.10", IPs: []netip.Addr{dst4}}},
		{"nil upstream, nothing", nil, "", netip.Addr{}, LeafSpec{}},
		{"sni already a SAN", up("example.com", []string{"example.com", "www.example.com"}), "WWW.example.com", dst4,
			LeafSpec{CommonName: "example.com", DNSNames: []string{"example.com", "www.example.com"}}},
		{"sni covered by wildcard", up("*.example.com", []string{"*.example.com", "example.com"}), "api.example.com", dst4,
			LeafSpec{CommonName: "*.example.com", DNSNames: []string{"*.example.com", "example.com"}}},
		{"wildcard covers one label only", up("*.example.com", []string{"*.example.com"}), "a.b.example.com", dst4,
			LeafSpec{CommonName: "*.example.com", DNSNames: []string{"*.example.com", "a.b.example.com"}}},
		{"sni not covered is added", up("example.com", []string{"example.com"}), "other.test", dst4,
			LeafSpec{CommonName: "example.com", DNSNames: []string{"example.com", "other.test"}}},
		{"no sni adds the destination", up("example.com", []string{"example.com"}), "", dst4,
			LeafSpec{CommonName: "example.com", DNSNames: []string{"example.com"}, IPs: []netip.Addr{dst4}}},
		{"upstream IP SAN and dst dedup", up("", nil, "192.0.2.10", "2001:db8::1"), "", dst4,
			LeafSpec{CommonName: "192.0.2.10", IPs: []netip.Addr{dst4, netip.MustParseAddr("2001:db8::1")}}},
		{"CN without SANs becomes a SAN", up("legacy.example", nil), "legacy.example", dst4,
			LeafSpec{CommonName: "legacy.example", DNSNames: []string{"legacy.example"}}},
		{"CN that is not a host name stays out of SANs", up("Example Corp Server", []string{"example.com"}), "example.com", dst4,
			LeafSpec{CommonName: "Example Corp Server", DNSNames: []string{"example.com"}}},
		{"CN that is an IP", up("198.51.100.1", nil), "", dst4,
			LeafSpec{CommonName: "198.51.100.1", IPs: []netip.Addr{netip.MustParseAddr("198.51.100.1"), dst4}}},
		{"IP literal sni", nil, "198.51.100.2", dst4,
			LeafSpec{CommonName: "198.51.100.2", IPs: []netip.Addr{netip.MustParseAddr("198.51.100.2")}}},
		{"trailing dot sni", nil, "example.com.", dst4,
			LeafSpec{CommonName: "example.com", DNSNames: []string{"example.com"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SpecFromUpstream(tt.upstream, tt.sni, tt.dst)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
	// The upstream's slices are not aliased.
	u := up("example.com", []string{"example.com"})
	s := SpecFromUpstream(u, "new.test", dst4)
	s.DNSNames[0] = "changed"
	if u.DNSNames[0] != "example.com" {
		t.Error("SpecFromUpstream modified the upstream certificate")
	}
}

func TestLeafVerifies(t *testing.T) {
	a := newTestAuthority(t, Options{})
	dst := netip.MustParseAddr("192.0.2.7")
	tests := []struct {
		name     string
		upstream *x509.Certificate
		sni      string
		dst      netip.Addr
		hosts    []string // each must verify
	}{
		{"DNS names", &x509.Certificate{Subject: pkix.Name{CommonName: "example.com"}, DNSNames: []string{"example.com", "www.example.com"}},
			"www.example.com", dst, []string{"example.com", "www.example.com"}},
		{"wildcard upstream SAN", &x509.Certificate{Subject: pkix.Name{CommonName: "*.example.org"}, DNSNames: []string{"*.example.org"}},
			"api.example.org", dst, []string{"api.example.org", "www.example.org"}},
		{"IP, no SNI", nil, "", dst, []string{"192.0.2.7"}},
		{"IPv6, no SNI", nil, "", netip.MustParseAddr("2001:db8::7"), []string{"2001:db8::7"}},
		{"SNI only", nil, "only.example.net", dst, []string{"only.example.net"}},
	}
	inter := a.Intermediate()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := a.Leaf(SpecFromUpstream(tt.upstream, tt.sni, tt.dst))
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Certificate) != 2 {
				t.Fatalf("chain has %d certificates, want leaf + intermediate", len(c.Certificate))
			}
			if !bytes.Equal(c.Certificate[1], inter.Raw) {
				t.Error("second certificate is not the intermediate")
			}
			for _, h := range tt.hosts {
				chains := verifyLeaf(t, c.Certificate, a.Root(), h, time.Now())
				if len(chains) != 1 || len(chains[0]) != 3 || !chains[0][2].Equal(a.Root()) {
					t.Errorf("%s: chains = %v, want leaf -> intermediate -> root", h, chains)
				}
			}
			leaf := c.Leaf
			if leaf == nil {
				t.Fatal("Leaf not set")
			}
			if leaf.NotAfter.After(inter.NotAfter) {
				t.Errorf("leaf NotAfter %v after intermediate's %v", leaf.NotAfter, inter.NotAfter)
			}
			if d := time.Until(leaf.NotBefore); d > -59*time.Minute || d < -61*time.Minute {
				t.Errorf("NotBefore is %v from now, want -1h", d)
			}
			if d := time.Until(leaf.NotAfter); d < 23*time.Hour || d > 24*time.Hour {
				t.Errorf("NotAfter is %v from now, want 24h", d)
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("KeyUsage = %v, want DigitalSignature only (EC key)", leaf.KeyUsage)
			}
			if !reflect.DeepEqual(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
				t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
			}
			if leaf.IsCA {
				t.Error("leaf is a CA")
			}
			if len(leaf.AuthorityKeyId) == 0 || !bytes.Equal(leaf.AuthorityKeyId, inter.SubjectKeyId) {
				t.Errorf("AuthorityKeyId %x, want the intermediate's SubjectKeyId %x", leaf.AuthorityKeyId, inter.SubjectKeyId)
			}
			if n := leaf.SerialNumber.BitLen(); leaf.SerialNumber.Sign() <= 0 || n > 128 || n < 100 {
				t.Errorf("serial %v is not random 128-bit", leaf.SerialNumber)
			}
			if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
				t.Errorf("leaf key %T, want ECDSA P-256", leaf.PublicKey)
			}
			if !c.PrivateKey.(*ecdsa.PrivateKey).PublicKey.Equal(leaf.PublicKey) {
				t.Error("PrivateKey does not match the leaf")
			}
			if leaf.Subject.CommonName == "" {
				t.Error("empty CN")
			}
		})
	}
}

func TestIntermediate(t *testing.T) {
	// A root that expires in 10h caps the 72h intermediate.
	root := newTestRoot(t, 10*time.Hour)
	a, err := New(root, Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	in := a.Intermediate()
	if !in.IsCA || !in.BasicConstraintsValid || in.MaxPathLen != 0 || !in.MaxPathLenZero {
		t.Errorf("IsCA=%v MaxPathLen=%d MaxPathLenZero=%v, want a CA with path length 0", in.IsCA, in.MaxPathLen, in.MaxPathLenZero)
	}
	if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature; in.KeyUsage != want {
		t.Errorf("KeyUsage = %v, want %v", in.KeyUsage, want)
	}
	if !in.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("NotAfter %v, want capped at the root's %v", in.NotAfter, root.Cert.NotAfter)
	}
	if !strings.HasPrefix(in.Subject.CommonName, "flowdog intermediate CA 20") {
		t.Errorf("CN = %q", in.Subject.CommonName)
	}
	if pub, ok := in.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", in.PublicKey)
	}
	if err := in.CheckSignatureFrom(root.Cert); err != nil {
		t.Errorf("not signed by the root: %v", err)
	}
	if !bytes.Equal(in.AuthorityKeyId, root.Cert.SubjectKeyId) {
		t.Error("intermediate AuthorityKeyId is not the root's SubjectKeyId")
	}

	// Uncapped: 72h from now.
	b := newTestAuthority(t, Options{})
	if d := time.Until(b.Intermediate().NotAfter); d < 71*time.Hour || d > 72*time.Hour {
		t.Errorf("intermediate valid for %v, want 72h", d)
	}
	if !bytes.Contains(b.RootPEM(), []byte("BEGIN CERTIFICATE")) || b.Root() == nil {
		t.Error("RootPEM/Root")
	}
	if err := b.Ready(); err != nil {
		t.Errorf("Ready: %v", err)
	}
}

func TestLeafNotAfterCapped(t *testing.T) {
	a := newTestAuthority(t, Options{IntermediateLifetime: 2 * time.Hour, LeafLifetime: 24 * time.Hour})
	c, err := a.Leaf(LeafSpec{DNSNames: []string{"example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Leaf.NotAfter.Equal(a.Intermediate().NotAfter) {
		t.Errorf("leaf NotAfter %v, want the intermediate's %v", c.Leaf.NotAfter, a.Intermediate().NotAfter)
	}
}

func TestLeafCommonName(t *testing.T) {
	a := newTestAuthority(t, Options{})
	long := strings.Repeat("a", 60) + ".example.com"
	for _, tt := range []struct {
		spec LeafSpec
		want string
	}{
		{LeafSpec{DNSNames: []string{long}}, long[:64]},
		{LeafSpec{CommonName: "Example Corp", DNSNames: []string{"x.example"}}, "Example Corp"},
		{LeafSpec{IPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}, "192.0.2.1"},
		{LeafSpec{CommonName: strings.Repeat("é", 40), DNSNames: []string{"y.example"}}, strings.Repeat("é", 32)},
	} {
		c, err := a.Leaf(tt.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Leaf.Subject.CommonName; got != tt.want {
			t.Errorf("CN = %q, want %q", got, tt.want)
		}
	}
	if _, err := a.Leaf(LeafSpec{}); !errors.Is(err, ErrNoNames) {
		t.Errorf("empty spec: err = %v, want ErrNoNames", err)
	}
}

func TestLeafCache(t *testing.T) {
	a := newTestAuthority(t, Options{})
	ip := netip.MustParseAddr("192.0.2.1")
	first, err := a.Leaf(LeafSpec{DNSNames: []string{"a.example", "b.example"}, IPs: []netip.Addr{ip}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		spec LeafSpec
		hit  bool
	}{
		{"same", LeafSpec{DNSNames: []string{"a.example", "b.example"}, IPs: []netip.Addr{ip}}, true},
		{"order, case, duplicates, trailing dot", LeafSpec{DNSNames: []string{"B.Example.", "a.EXAMPLE", "b.example"}, IPs: []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.1"), ip}}, true},
		{"IP given as a DNS name", LeafSpec{DNSNames: []string{"b.example", "192.0.2.1", "a.example"}}, true},
		{"different CN, same names", LeafSpec{CommonName: "other", DNSNames: []string{"a.example", "b.example"}, IPs: []netip.Addr{ip}}, true},
		{"one name fewer", LeafSpec{DNSNames: []string{"a.example", "b.example"}}, false},
		{"another name", LeafSpec{DNSNames: []string{"a.example", "c.example"}, IPs: []netip.Addr{ip}}, false},
		{"another IP", LeafSpec{DNSNames: []string{"a.example", "b.example"}, IPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hits, minted := metricValue(t, a.m.hits), metricValue(t, a.m.minted)
			c, err := a.Leaf(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			gotHit := metricValue(t, a.m.hits) == hits+1
			gotMint := metricValue(t, a.m.minted) == minted+1
			if gotHit != tt.hit || gotMint == tt.hit {
				t.Errorf("hit=%v minted=%v, want hit=%v", gotHit, gotMint, tt.hit)
			}
			if (c == first) != tt.hit {
				t.Errorf("same certificate = %v, want %v", c == first, tt.hit)
			}
		})
	}
	if got := metricValue(t, a.m.entries); got != 4 {
		t.Errorf("cache entries = %v, want 4", got)
	}
}

func TestLeafCacheEviction(t *testing.T) {
	a := newTestAuthority(t, Options{CacheSize: 3})
	spec := func(i int) LeafSpec { return LeafSpec{DNSNames: []string{fmt.Sprintf("h%d.example", i)}} }
	leaf := func(i int) {
		t.Helper()
		if _, err := a.Leaf(spec(i)); err != nil {
			t.Fatal(err)
		}
	}
	leaf(1)
	leaf(2)
	leaf(3)
	leaf(1) // 1 is now the most recently used; 2 the least
	leaf(4) // evicts 2
	if got := metricValue(t, a.m.evictions); got != 1 {
		t.Errorf("evictions = %v, want 1", got)
	}
	if got := metricValue(t, a.m.entries); got != 3 {
		t.Errorf("entries = %v, want 3", got)
	}
	minted := metricValue(t, a.m.minted)
	leaf(1)
	leaf(3)
	leaf(4)
	if got := metricValue(t, a.m.minted); got != minted {
		t.Errorf("1, 3, 4 were minted again (%v mints): wrong entry evicted", got-minted)
	}
	leaf(2)
	if got := metricValue(t, a.m.minted); got != minted+1 {
		t.Errorf("2 was not evicted")
	}
	if got := metricValue(t, a.m.evictions); got != 2 {
		t.Errorf("evictions = %v, want 2", got)
	}
	if a.cache.len() != 3 {
		t.Errorf("cache holds %d, want 3", a.cache.len())
	}
}

func TestLeafConcurrentMintOnce(t *testing.T) {
	a := newTestAuthority(t, Options{})
	release := make(chan struct{})
	a.mintHook = func() { <-release }
	const n = 32
	var wg sync.WaitGroup
	certs := make([]any, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Same names, different order and case each time.
			names := []string{"x.example", "Y.example"}
			if i%2 == 1 {
				names = []string{"y.example", "X.EXAMPLE"}
			}
			certs[i], errs[i] = a.Leaf(LeafSpec{DNSNames: names})
		}()
	}
	// Every goroutine has missed the cache: one is minting, the others wait.
	eventually(t, "all requests to miss", func() bool { return metricValue(t, a.m.misses) == n })
	close(release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if certs[i] != certs[0] {
			t.Fatalf("request %d got a different certificate", i)
		}
	}
	if got := metricValue(t, a.m.minted); got != 1 {
		t.Errorf("minted %v leaves, want 1", got)
	}
	if len(a.inflight) != 0 {
		t.Errorf("%d calls left in flight", len(a.inflight))
	}
}

func TestLeafRenewedNearExpiry(t *testing.T) {
	clk := newFakeClock()
	a := newTestAuthority(t, Options{Now: clk.Now, LeafLifetime: 4 * time.Hour})
	spec := LeafSpec{DNSNames: []string{"renew.example"}}
	first, err := a.Leaf(spec)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(2*time.Hour + 59*time.Minute) // 1h01m left: beyond the 1h margin
	if c, _ := a.Leaf(spec); c != first {
		t.Error("leaf re-minted while not near expiry")
	}
	clk.Advance(2 * time.Minute) // 59m left
	c, err := a.Leaf(spec)
	if err != nil {
		t.Fatal(err)
	}
	if c == first {
		t.Fatal("leaf near expiry served from the cache")
	}
	if !c.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Error("renewed leaf does not expire later")
	}
	verifyLeaf(t, c.Certificate, a.Root(), "renew.example", clk.Now())
}

func BenchmarkLeaf(b *testing.B) {
	b.Run("hit", func(b *testing.B) {
		a := newTestAuthority(b, Options{})
		spec := SpecFromUpstream(&x509.Certificate{Subject: pkix.Name{CommonName: "example.com"},
			DNSNames: []string{"example.com", "www.example.com", "cdn.example.com"}}, "www.example.com", netip.Addr{})
		if _, err := a.Leaf(spec); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := a.Leaf(spec); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		a := newTestAuthority(b, Options{CacheSize: 1000})
		specs := make([]LeafSpec, 4096)
		for i := range specs {
			specs[i] = SpecFromUpstream(nil, fmt.Sprintf("host%d.example.com", i), netip.Addr{})
		}
		b.ReportAllocs()
		b.ResetTimer()
		i := 0
		for b.Loop() {
			// 4096 names cycled through a 1000-leaf cache: every call mints.
			if _, err := a.Leaf(specs[i%len(specs)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
