package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/flowdog/flowdog/gwlbsim"
	"golang.org/x/net/http2"
)

var (
	clientAddr = netip.MustParseAddr("10.0.0.10")
	serverAddr = netip.MustParseAddr("198.51.100.10")
)

// serverName is the name in the server's certificate and in every HTTPS
// request (SNI and Host).
const serverName = "www.example.com"

// Ports of the server host: flowdog's policy intercepts 80 and 443 and
// fast-paths the rest, so the same server answers both ways.
const (
	portHTTPIntercept  = 80
	portHTTPSIntercept = 443
	portHTTPFast       = 8080
	portHTTPSFast      = 8443
)

// pki is the server's CA (flowdog trusts it through tls.upstream_ca_file)
// and the server's certificate.
type pki struct {
	caCert *x509.Certificate
	caFile string
	cert   tls.Certificate
}

// newPKI creates an ECDSA P-256 CA and a leaf for serverName and the
// server's address: the kind of certificate flowdog mints too, so that
// FAST and INTERCEPT handshakes use the same algorithms.
func newPKI(dir string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench-intercept server CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: serverName},
		DNSNames: []string{serverName, cffHost}, IPAddresses: []net.IP{serverAddr.AsSlice()},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	p := &pki{caCert: caCert, caFile: filepath.Join(dir, "server-ca.pem"),
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
	if err := os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

// lab is one flowdog process behind one simulated GWLB with one tenant: a
// client host and a server host that serves HTTP and HTTPS on the
// intercepted and the fast-path ports.
type lab struct {
	fd       *flowdogProc
	sim      *gwlbsim.Sim
	client   *gwlbsim.Host
	server   *gwlbsim.Host
	servers  []*http.Server
	roots    *x509.CertPool // the server CA and flowdog's root: clients trust both
	fdRoot   *x509.Certificate
	body     []byte
	closeErr error
}

// newLab starts flowdog (see startFlowdog), with the cff scenario's
// function when withCFF, and the simulator around it.
func newLab(ctx context.Context, o *options, p *pki, withCFF bool) (l *lab, err error) {
	l = &lab{body: bytes.Repeat([]byte("flowdog!"), o.bodySize/8+1)[:o.bodySize]}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
			l = nil
		}
	}()
	extra := ""
	if withCFF {
		extra = cffInterceptor
	}
	if l.fd, err = startFlowdog(ctx, o.flowdogBin, o.tmp, p.caFile, o.flowdogCPUs, extra); err != nil {
		return l, err
	}
	rootPEM, err := os.ReadFile(l.fd.rootPath)
	if err != nil {
		return l, fmt.Errorf("flowdog's root CA: %w", err)
	}
	blk, _ := pem.Decode(rootPEM)
	if blk == nil {
		return l, fmt.Errorf("flowdog's root CA %s: no PEM block", l.fd.rootPath)
	}
	if l.fdRoot, err = x509.ParseCertificate(blk.Bytes); err != nil {
		return l, fmt.Errorf("flowdog's root CA: %w", err)
	}
	l.roots = x509.NewCertPool()
	l.roots.AddCert(p.caCert)
	l.roots.AddCert(l.fdRoot)

	gw, err := gwlbsim.FreeLoopbackAddr()
	if err != nil {
		return l, err
	}
	if l.sim, err = gwlbsim.New(gwlbsim.Config{GWLBAddr: gw, ApplianceAddr: l.fd.geneve}); err != nil {
		return l, err
	}
	tn := l.sim.AddTenant(0x0123456789abcdef, 0x1)
	if l.client, err = tn.AddHost(clientAddr); err != nil {
		return l, err
	}
	if l.server, err = tn.AddHost(serverAddr); err != nil {
		return l, err
	}
	h := http.HandlerFunc(l.serve)
	// HTTP/2 for clients that offer it (the memory-h2 scenario's); the
	// others offer HTTP/1.1 only.
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{p.cert}, NextProtos: []string{"h2", "http/1.1"}}
	for _, port := range []uint16{portHTTPIntercept, portHTTPFast, portHTTPSIntercept, portHTTPSFast} {
		ln, err := l.server.ListenTCP(port)
		if err != nil {
			return l, err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, ErrorLog: discardLog}
		l.servers = append(l.servers, srv)
		if port == portHTTPSIntercept || port == portHTTPSFast {
			if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
				return l, err
			}
			ln = tls.NewListener(ln, tlsCfg)
		}
		go srv.Serve(ln) // returns when Close closes the listener
	}
	return l, nil
}

// serve answers every request with the same small body. It echoes the
// header the cff scenario's function adds, so that the client sees whether
// the function ran on its request.
func (l *lab) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	if v := r.Header.Get(cffHeader); v != "" {
		w.Header().Set(cffHeader, v)
	}
	w.Write(l.body)
}

// Close stops the servers, the simulator and flowdog.
func (l *lab) Close() error {
	var errs []error
	for _, s := range l.servers {
		errs = append(errs, s.Close())
	}
	if l.sim != nil {
		if st := l.sim.Stats(); st.ViolationCount() > 0 {
			errs = append(errs, fmt.Errorf("simulator: flowdog broke GWLB's contract: %v", st.Violations))
		}
		errs = append(errs, l.sim.Close())
	}
	if l.fd != nil {
		errs = append(errs, l.fd.Stop())
	}
	return errors.Join(errs...)
}

// discardLog silences the servers' per-connection errors (clients that
// close mid-handshake when a phase ends).
var discardLog = log.New(io.Discard, "", 0)

// dialer returns a DialContext for http.Transport that connects from the
// client host to the server's address on the URL's port (hosts have no
// resolver; the URL's name is only for Host and SNI).
func (l *lab) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, addr string) (net.Conn, error) {
		_, ps, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var port uint16
		if _, err := fmt.Sscan(ps, &port); err != nil {
			return nil, fmt.Errorf("port %q: %w", ps, err)
		}
		return l.client.DialTCP(ctx, netip.AddrPortFrom(serverAddr, port))
	}
}

// tlsConfig is the clients' TLS configuration for a server name (SNI, and
// the name checked in the certificate): HTTP/1.1 offered by ALPN, as a
// browser would, and no session cache, so every new connection is a full
// handshake.
func (l *lab) tlsConfig(name string, protos ...string) *tls.Config {
	if len(protos) == 0 {
		protos = []string{"http/1.1"}
	}
	return &tls.Config{RootCAs: l.roots, ServerName: name, NextProtos: protos}
}
