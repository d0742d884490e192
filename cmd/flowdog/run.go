package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/internal/config"
)

// runFlags are the common settings that override the config file.
type runFlags struct {
	fs     *flag.FlagSet
	config string
	set    map[string]func(*config.Config, string) error
}

func newRunFlags(stderr io.Writer) *runFlags {
	f := &runFlags{fs: flag.NewFlagSet("flowdog run", flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.StringVar(&f.config, "config", "", "YAML configuration file (default: built-in defaults; see `flowdog config default`)")
	f.set = map[string]func(*config.Config, string) error{}
	str := func(name, usage string, dst func(*config.Config) *string) {
		f.fs.String(name, "", usage)
		f.set[name] = func(c *config.Config, v string) error { *dst(c) = v; return nil }
	}
	num := func(name, usage string, dst func(*config.Config) *int) {
		f.fs.String(name, "", usage)
		f.set[name] = func(c *config.Config, v string) error {
			var n int
			if _, err := fmt.Sscan(v, &n); err != nil {
				return fmt.Errorf("-%s: %q is not a whole number", name, v)
			}
			*dst(c) = n
			return nil
		}
	}
	dur := func(name, usage string, dst func(*config.Config) *config.Duration) {
		f.fs.String(name, "", usage)
		f.set[name] = func(c *config.Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("-%s: %w", name, err)
			}
			*dst(c) = config.Duration(d)
			return nil
		}
	}
	str("listen", "Geneve listen address (gwlb.listen, default 0.0.0.0:6081)", func(c *config.Config) *string { return &c.GWLB.Listen })
	num("workers", "socket workers, 0 = one per CPU (gwlb.workers)", func(c *config.Config) *int { return &c.GWLB.Workers })
	str("health-listen", "health check address (health.listen, default :8080)", func(c *config.Config) *string { return &c.Health.Listen })
	str("admin-listen", "metrics and pprof address, empty = off (admin.listen, default 127.0.0.1:9090)", func(c *config.Config) *string { return &c.Admin.Listen })
	str("log-level", "debug, info, warn or error (log.level)", func(c *config.Config) *string { return &c.Log.Level })
	str("log-format", "text or json (log.format)", func(c *config.Config) *string { return &c.Log.Format })
	num("max-flows", "flow table limit (flows.max_flows)", func(c *config.Config) *int { return &c.Flows.MaxFlows })
	dur("drain", "how long flows are served after SIGTERM (shutdown.drain)", func(c *config.Config) *config.Duration { return &c.Shutdown.Drain })
	str("state-dir", "state directory, holds the generated root CA (state_dir)", func(c *config.Config) *string { return &c.StateDir })
	str("policy-default", "verdict of flows no rule matches: fast, drop or intercept (policy.default)", func(c *config.Config) *string { return &c.Policy.Default })
	return f
}

// load parses args, reads the config file and applies the flags over it.
func (f *runFlags) load(args []string) (*config.Config, error) {
	if err := f.fs.Parse(args); err != nil {
		return nil, err
	}
	if f.fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", f.fs.Args())
	}
	c, err := config.Load(f.config)
	if err != nil {
		return nil, err
	}
	var ferr error
	f.fs.Visit(func(fl *flag.Flag) {
		if set, ok := f.set[fl.Name]; ok && ferr == nil {
			ferr = set(c, fl.Value.String())
		}
	})
	if ferr != nil {
		return nil, ferr
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("configuration (file and flags): %w", err)
	}
	return c, nil
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	rf := newRunFlags(stderr)
	cfg, err := rf.load(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "flowdog:", err)
		return 2
	}
	log := newLogger(cfg.Log, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// After the first signal starts the drain, a second one ends flowdog at once.
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("flowdog stopped", "err", err)
		return 1
	}
	return 0
}

// daemon is a running flowdog, for tests to observe.
type daemon struct {
	dp     *gwlb.Datapath
	health *gwlb.Health
	admin  net.Addr
	reg    *prometheus.Registry
	in     *interception // nil when nothing is intercepted
}

// run starts everything and blocks until ctx is done (SIGTERM), then turns
// health to 503, keeps serving for the drain period and stops. ready, when
// not nil, receives the daemon once it serves.
func run(ctx context.Context, cfg *config.Config, log *slog.Logger, ready chan<- *daemon) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "flowdog_build_info", Help: "Build information.",
		ConstLabels: prometheus.Labels{"version": versionString()},
	})
	build.Set(1)
	reg.MustRegister(build)

	policy, err := gwlb.PolicyFromConfig(cfg.Policy)
	if err != nil {
		return err
	}
	// Everything below stops when serveCtx ends: after the drain period.
	serveCtx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var in *interception
	var intercept gwlb.InterceptHandler
	var acceptor gwlb.Acceptor
	checks := []func() error{}
	if cfg.Intercepts() {
		if in, err = newInterception(serveCtx, cfg, log, reg); err != nil {
			return err
		}
		defer in.chain.Cleanup()
		intercept, acceptor = in.engine, in.acceptor(cfg.Flows.PendingTimeout.D())
		checks = append(checks, in.ca.Ready)
	}
	listen, _ := config.ParseListen(cfg.GWLB.Listen)
	dp, err := gwlb.New(gwlb.Options{
		Listen:           listen,
		Workers:          cfg.GWLB.Workers,
		BatchSize:        cfg.GWLB.BatchSize,
		ReadBuffer:       cfg.GWLB.ReadBuffer,
		WriteBuffer:      cfg.GWLB.WriteBuffer,
		UDPChecksum:      cfg.GWLB.UDPChecksum,
		MaxFlows:         cfg.Flows.MaxFlows,
		TCPIdleTimeout:   cfg.Flows.TCPIdleTimeout.D(),
		IdleTimeout:      cfg.Flows.IdleTimeout.D(),
		TCPClosedTimeout: cfg.Flows.TCPClosedTimeout.D(),
		MaxPending:       cfg.Flows.MaxPending,
		PendingPackets:   cfg.Flows.PendingPackets,
		PendingTimeout:   cfg.Flows.PendingTimeout.D(),
		Policy:           policy,
		Acceptor:         acceptor,
		Intercept:        intercept,
		Logger:           log,
		Registerer:       reg,
	})
	if err != nil {
		return err
	}
	health, err := gwlb.NewHealth(cfg.Health.Listen, log, append([]func() error{dp.Healthy}, checks...)...)
	if err != nil {
		return err
	}
	var adminLn net.Listener
	if cfg.Admin.Listen != "" {
		if adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
			return fmt.Errorf("admin: %w", err)
		}
	}

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	if in != nil {
		// Before the data path runs: it hands the engine packets at once.
		in.engine.Start(serveCtx, dp)
		wg.Go(func() { in.ca.Run(serveCtx) })
	}
	wg.Go(func() {
		if err := dp.Run(serveCtx); err != nil {
			errc <- err
		}
	})
	wg.Go(func() {
		if err := health.Serve(serveCtx); err != nil {
			errc <- err
		}
	})
	if adminLn != nil {
		wg.Go(func() {
			if err := serveAdmin(serveCtx, adminLn, reg, log); err != nil {
				errc <- err
			}
		})
	}
	attrs := []any{"version", versionString(), "geneve", dp.Addr().String(), "health", health.Addr().String()}
	if adminLn != nil {
		attrs = append(attrs, "admin", adminLn.Addr().String())
	}
	log.Info("flowdog running", attrs...)
	if ready != nil {
		d := &daemon{dp: dp, health: health, reg: reg, in: in}
		if adminLn != nil {
			d.admin = adminLn.Addr()
		}
		ready <- d
	}

	var runErr error
	select {
	case <-ctx.Done():
		health.SetDraining()
		drain := cfg.Shutdown.Drain.D()
		log.Info("draining: health checks now fail; serving existing flows (a second signal stops at once)", "drain", drain.String())
		t := time.NewTimer(drain)
		select {
		case <-t.C:
		case runErr = <-errc:
		}
		t.Stop()
	case runErr = <-errc:
		health.SetDraining()
	}
	cancel()
	wg.Wait()
	if in != nil {
		in.engine.Close()
	}
	if runErr == nil {
		select {
		case runErr = <-errc:
		default:
		}
	}
	if runErr == nil {
		log.Info("flowdog stopped cleanly")
	}
	return runErr
}

func serveAdmin(ctx context.Context, ln net.Listener, reg *prometheus.Registry, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "flowdog admin: /metrics /debug/pprof/\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		defer c()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	}
}
