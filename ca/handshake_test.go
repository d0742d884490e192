package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestHandshake completes real TLS handshakes over net.Pipe: the server gets
// its certificate from Leaf in GetCertificate (as the proxy will), the client
// trusts only the root.
func TestHandshake(t *testing.T) {
	a := newTestAuthority(t, Options{})
	dst := netip.MustParseAddr("192.0.2.44")
	upstream := &x509.Certificate{Subject: pkix.Name{CommonName: "*.example.com"}, DNSNames: []string{"*.example.com", "example.com"}}
	pool := x509.NewCertPool()
	pool.AddCert(a.Root())

	tests := []struct {
		name       string
		upstream   *x509.Certificate
		serverName string // the client's; an IP literal sends no SNI
	}{
		{"sni, mirrored wildcard", upstream, "www.example.com"},
		{"sni, no upstream", nil, "plain.example.net"},
		{"IP, no SNI", nil, dst.String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc, sc := net.Pipe()
			defer cc.Close()
			defer sc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			gotSNI := make(chan string, 1)
			srv := tls.Server(sc, &tls.Config{
				GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
					gotSNI <- hello.ServerName
					return a.Leaf(SpecFromUpstream(tt.upstream, hello.ServerName, dst))
				},
			})
			srvErr := make(chan error, 1)
			go func() { srvErr <- srv.HandshakeContext(ctx) }()

			cli := tls.Client(cc, &tls.Config{RootCAs: pool, ServerName: tt.serverName})
			if err := cli.HandshakeContext(ctx); err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if err := <-srvErr; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			if _, err := netip.ParseAddr(tt.serverName); err == nil {
				if sni := <-gotSNI; sni != "" {
					t.Errorf("server saw SNI %q for an IP", sni)
				}
			}
			st := cli.ConnectionState()
			if len(st.PeerCertificates) != 2 {
				t.Errorf("client received %d certificates, want leaf + intermediate", len(st.PeerCertificates))
			} else if !st.PeerCertificates[1].Equal(a.Intermediate()) {
				t.Error("second certificate is not the intermediate")
			}
			if len(st.VerifiedChains) != 1 || len(st.VerifiedChains[0]) != 3 {
				t.Errorf("verified chains %v, want one of leaf, intermediate, root", st.VerifiedChains)
			}
		})
	}
}
