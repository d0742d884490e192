package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowdog/flowdog/ca"
	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/interceptors"
	"github.com/flowdog/flowdog/internal/config"
	"github.com/flowdog/flowdog/kmssigner"
	"github.com/flowdog/flowdog/netstackx"
	"github.com/flowdog/flowdog/proxy"
)

// interception is the INTERCEPT side of the daemon: CA, interceptor chain,
// proxy and the per-tenant stacks.
type interception struct {
	ca     *ca.Authority
	chain  *interceptors.Chain
	proxy  *proxy.Proxy
	engine *netstackx.Engine
	log    *slog.Logger
}

// newInterception builds everything INTERCEPT needs. It fails at start-up,
// naming what is wrong, rather than at the first intercepted flow.
func newInterception(ctx context.Context, cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) (*interception, error) {
	root, err := loadRoot(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	auth, err := ca.New(root, ca.Options{
		IntermediateLifetime: cfg.CA.IntermediateLifetime.D(),
		LeafLifetime:         cfg.CA.LeafLifetime.D(),
		CacheSize:            cfg.CA.LeafCache,
		Logger:               log,
		Registerer:           reg,
	})
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	chainCfgs := make([]interceptors.Config, len(cfg.Interceptors))
	for i, ic := range cfg.Interceptors {
		chainCfgs[i] = interceptors.Config{Name: ic.Name, Config: ic.Config}
	}
	chain, err := interceptors.NewChain(ctx, chainCfgs, log, reg)
	if err != nil {
		return nil, err
	}
	roots, err := upstreamRoots(cfg.TLS.UpstreamCAFile)
	if err != nil {
		chain.Cleanup()
		return nil, err
	}
	pt := proxy.Passthrough{SNI: append([]string(nil), cfg.TLS.PassthroughSNI...)}
	for _, s := range cfg.TLS.PassthroughDestinations {
		p, _ := config.ParsePrefix(s) // validated
		pt.Destinations = append(pt.Destinations, p)
	}
	px, err := proxy.New(proxy.Options{
		CA:                    auth,
		Chain:                 chain,
		Passthrough:           pt,
		UpstreamRoots:         roots,
		InsecureSkipVerify:    cfg.TLS.InsecureSkipVerify,
		AutoPassthrough:       cfg.TLS.AutoPassthrough,
		AutoPassthroughTTL:    cfg.TLS.AutoPassthroughTTL.D(),
		SniffTimeout:          cfg.Proxy.SniffTimeout.D(),
		TLSHandshakeTimeout:   cfg.Proxy.TLSHandshakeTimeout.D(),
		HeaderTimeout:         cfg.Proxy.HeaderTimeout.D(),
		ResponseHeaderTimeout: cfg.Proxy.ResponseHeaderTimeout.D(),
		IdleTimeout:           cfg.Proxy.IdleTimeout.D(),
		MaxWebSocketMessage:   cfg.Proxy.MaxWebSocketMessage,
		DisableHTTP2:          !cfg.Proxy.HTTP2,
		Logger:                log,
		Registerer:            reg,
	})
	if err != nil {
		chain.Cleanup()
		return nil, err
	}
	in := &interception{ca: auth, chain: chain, proxy: px, log: log}
	in.engine = netstackx.New(netstackx.Config{
		MTU:         cfg.Netstack.MTU,
		DialTimeout: cfg.Proxy.DialTimeout.D(),
		MaxInFlight: cfg.Netstack.MaxInFlight,
		TenantIdle:  cfg.Netstack.TenantIdle.D(),
		Logger:      log,
		Registerer:  reg,
	}, in.serve)
	return in, nil
}

// serve hands an intercepted connection to the proxy.
func (in *interception) serve(ctx context.Context, c *netstackx.Conn) {
	in.proxy.Serve(ctx, proxy.ConnInfo{
		EndpointID:   c.Tenant.EndpointString(),
		AttachmentID: c.Tenant.AttachmentString(),
		FlowCookie:   c.Flow.Envelope().Cookie,
		Client:       c.ClientAddr,
		Server:       c.ServerAddr,
		Detach:       c.Detach,
	}, c.Client, c.Upstream)
}

// acceptor returns the gwlb.Acceptor of the chain's FlowAcceptors, or nil.
func (in *interception) acceptor(timeout time.Duration) gwlb.Acceptor {
	if !in.chain.HasAcceptors() {
		return nil
	}
	return &chainAcceptor{chain: in.chain, timeout: timeout, log: in.log}
}

type chainAcceptor struct {
	chain   *interceptors.Chain
	timeout time.Duration
	log     *slog.Logger
}

// Accept runs the FlowAcceptors off the packet path.
func (a *chainAcceptor) Accept(f *gwlb.Flow, done func(gwlb.Verdict)) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
		defer cancel()
		t := f.Initiator
		info := &interceptors.Flow{
			EndpointID: f.Tenant().EndpointString(), AttachmentID: f.Tenant().AttachmentString(),
			FlowCookie: f.Envelope().Cookie, Protocol: "tcp",
		}
		info.Client, info.Server = addrPort(t.Src, t.SrcPort), addrPort(t.Dst, t.DstPort)
		d, err := a.chain.AcceptFlow(ctx, info)
		if err != nil {
			a.log.Warn("flow acceptor failed; flow dropped", "err", err, "client", info.Client.String(), "server", info.Server.String())
			done(gwlb.Drop)
			return
		}
		switch d {
		case interceptors.Pass:
			done(gwlb.Fast)
		case interceptors.Drop:
			done(gwlb.Drop)
		default:
			done(gwlb.Intercept)
		}
	}()
}

func loadRoot(ctx context.Context, cfg *config.Config, log *slog.Logger) (*ca.Root, error) {
	switch {
	case cfg.CA.KMSKeyID != "":
		return loadKMSRoot(ctx, cfg, log)
	case cfg.CA.KeyFile != "":
		certFile := cfg.CA.CertFile
		if cfg.CA.CertPEM != "" {
			// LoadPEM reads files; an inline certificate goes through a temp file.
			f, err := os.CreateTemp("", "flowdog-root-*.pem")
			if err != nil {
				return nil, err
			}
			defer os.Remove(f.Name())
			f.WriteString(cfg.CA.CertPEM)
			f.Close()
			certFile = f.Name()
		}
		root, err := ca.LoadPEM(certFile, cfg.CA.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("ca.cert_file/ca.key_file: %w", err)
		}
		log.Info("root CA loaded", "cert", cfg.CA.CertFile, "subject", root.Cert.Subject.String())
		return root, nil
	}
	root, created, err := ca.LoadOrCreate(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state_dir %s: root CA: %w", cfg.StateDir, err)
	}
	verb := "loaded"
	if created {
		verb = "created"
	}
	log.Info("root CA "+verb+"; install this certificate in clients' trust stores",
		"cert", ca.RootCertPath(cfg.StateDir), "subject", root.Cert.Subject.String())
	return root, nil
}

// loadKMSRoot pairs the configured root certificate with its KMS key,
// refusing a certificate whose public key is not the key's.
func loadKMSRoot(ctx context.Context, cfg *config.Config, log *slog.Logger) (*ca.Root, error) {
	cert, src, err := rootCert(cfg)
	if err != nil {
		return nil, err
	}
	signer, err := kmssigner.NewFromEnv(ctx, cfg.CA.KMSKeyID, kmssigner.Options{Timeout: cfg.CA.KMSTimeout.D()})
	if err != nil {
		return nil, fmt.Errorf("ca.kms_key_id: %w", err)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("ca: the root certificate %s (%s, sha256 %X) was not made for KMS key %s (%s, %s): "+
			"its public keys differ; make the certificate with `flowdog ca init --kms-key-id %s`",
			src, cert.Subject, sha256.Sum256(cert.Raw), cfg.CA.KMSKeyID, signer.KeyARN(), signer.KeySpec(), cfg.CA.KMSKeyID)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("ca: the root certificate %s is not a CA certificate", src)
	}
	log.Info("root CA key in AWS KMS", "key", signer.KeyARN(), "spec", signer.KeySpec(), "region", signer.Region(),
		"cert", src, "subject", cert.Subject.String())
	return &ca.Root{Cert: cert, Signer: signer}, nil
}

// rootCert reads the configured root certificate (file or inline PEM).
func rootCert(cfg *config.Config) (*x509.Certificate, string, error) {
	src, data := "ca.cert_pem", []byte(cfg.CA.CertPEM)
	if cfg.CA.CertFile != "" {
		src = cfg.CA.CertFile
		b, err := os.ReadFile(cfg.CA.CertFile)
		if err != nil {
			return nil, "", fmt.Errorf("ca.cert_file: %w", err)
		}
		data = b
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, "", fmt.Errorf("ca: %s holds no PEM certificate", src)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("ca: %s: %w", src, err)
	}
	return cert, src, nil
}

// upstreamRoots is the system roots plus the configured extra bundle.
func upstreamRoots(extra string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if extra == "" {
		return pool, nil
	}
	b, err := os.ReadFile(extra)
	if err != nil {
		return nil, fmt.Errorf("tls.upstream_ca_file: %w", err)
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("tls.upstream_ca_file: " + extra + " holds no PEM certificate")
	}
	return pool, nil
}

func addrPort(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }
