package main

import (
	"context"
	"crypto/x509"
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
	root, err := loadRoot(cfg, log)
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
	chain, err := interceptors.NewChain(ctx, chainCfgs, log)
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

func loadRoot(cfg *config.Config, log *slog.Logger) (*ca.Root, error) {
	if cfg.CA.CertFile != "" {
		root, err := ca.LoadPEM(cfg.CA.CertFile, cfg.CA.KeyFile)
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
