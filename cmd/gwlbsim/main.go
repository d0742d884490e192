// Command gwlbsim plays AWS Gateway Load Balancer in front of a local
// appliance: per tenant it runs a client host and an HTTP server host as
// userspace netstacks, sends HTTP GETs between them through the appliance
// (IPv4 and IPv6), checks every reply against GWLB's contract and exits
// non-zero on any failed request or contract violation.
//
//	gwlbsim --appliance 127.0.0.1:6081 --gwlb 127.0.0.2 --tenants 2 --requests 10 --size 1048576
//
// With --tun it instead plays GWLB for real kernels: every packet the
// kernel routes into the TUN device goes to the appliance in the tenant's
// envelope (--endpoint-id, --attachment-id), and every valid reply is
// written back into the device for the kernel to deliver. It runs until
// SIGINT or SIGTERM, serves its counters as JSON on --stats-listen, prints
// them on exit and exits non-zero if the appliance broke the contract.
// e2e/vpc.sh runs it this way between network namespaces:
//
//	gwlbsim --tun tun0 --gwlb 203.0.113.1 --appliance 203.0.113.2:6081 --stats-listen 127.0.0.1:9091
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flowdog/flowdog/gwlbsim"
)

const (
	baseEndpointID   = 0x123456789abcdef0 // reads like vpce-0123456789abcdef0
	baseAttachmentID = 0x0a77ac4000000000
	serverPort       = 80
)

var (
	clientAddrs = []netip.Addr{netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::10")}
	serverAddrs = []netip.Addr{netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("2001:db8::10")}
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		appliance = flag.String("appliance", "127.0.0.1:6081", "appliance `address:port` (IPv4)")
		gwlb      = flag.String("gwlb", "127.0.0.2", "GWLB's own IPv4 `address`; replies must go to it on port 6081")
		tenants   = flag.Int("tenants", 1, "number of tenants (VPC endpoints), each with identical host addresses")
		requests  = flag.Int("requests", 10, "HTTP GETs per tenant and address family")
		size      = flag.Int("size", 1<<20, "response body size in `bytes`")
		timeout   = flag.Duration("timeout", 30*time.Second, "timeout of one request")
		verbose   = flag.Bool("v", false, "debug logging")

		tunName    = flag.String("tun", "", "TUN mode: the TUN `device` whose packets go through the appliance")
		endpointID = flag.String("endpoint-id", fmt.Sprintf("vpce-%017x", uint64(baseEndpointID)), "TUN mode: the tenant's VPC endpoint `id` (vpce-<17 hex digits>)")
		attachID   = flag.String("attachment-id", fmt.Sprintf("%016x", uint64(baseAttachmentID)), "TUN mode: the tenant's attachment `id` (16 hex digits)")
		statsAddr  = flag.String("stats-listen", "", "TUN mode: serve counters and violations as JSON on http://`address`/stats")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	app, err := netip.ParseAddrPort(*appliance)
	if err != nil {
		log.Error("bad --appliance", "err", err)
		return 2
	}
	gw, err := netip.ParseAddr(*gwlb)
	if err != nil {
		log.Error("bad --gwlb", "err", err)
		return 2
	}
	if *tenants < 1 || *requests < 0 || *size < 0 {
		log.Error("--tenants must be at least 1, --requests and --size not negative")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	sim, err := gwlbsim.New(gwlbsim.Config{GWLBAddr: gw, ApplianceAddr: app, Logger: log})
	if err != nil {
		log.Error("start simulator", "err", err)
		return 1
	}
	defer sim.Close()

	if *tunName != "" {
		return runTUN(ctx, log, sim, tunOptions{device: *tunName, endpointID: *endpointID, attachmentID: *attachID, statsAddr: *statsAddr})
	}

	body := make([]byte, *size)
	for i := range body {
		body[i] = byte(i*31 + i>>13)
	}
	var res result
	start := time.Now()
	var wg sync.WaitGroup
	for i := range *tenants {
		ten := sim.AddTenant(baseEndpointID+uint64(i), baseAttachmentID+uint64(i))
		client, err := ten.AddHost(clientAddrs...)
		if err != nil {
			log.Error("add client host", "tenant", ten, "err", err)
			return 1
		}
		server, err := ten.AddHost(serverAddrs...)
		if err != nil {
			log.Error("add server host", "tenant", ten, "err", err)
			return 1
		}
		stopServer, err := serve(server, body)
		if err != nil {
			log.Error("start HTTP server", "tenant", ten, "err", err)
			return 1
		}
		defer stopServer()
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := client.HTTPClient()
			for r := range *requests {
				for _, dst := range serverAddrs {
					if ctx.Err() != nil {
						return
					}
					url := "http://" + netip.AddrPortFrom(dst, serverPort).String() + "/bytes"
					n, err := get(ctx, hc, url, body, *timeout)
					res.bytes.Add(uint64(n))
					if err != nil {
						res.failed.Add(1)
						log.Error("request failed", "tenant", ten, "request", r, "url", url, "err", err)
						continue
					}
					res.ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	st := sim.Stats()
	fmt.Printf("requests: %d ok, %d failed, %d bytes in %v\n", res.ok.Load(), res.failed.Load(), res.bytes.Load(), elapsed.Round(time.Millisecond))
	fmt.Printf("gwlb: sent %d, received %d, delivered %d, no host %d, filtered %d, send errors %d\n",
		st.Sent, st.Received, st.Delivered, st.NoHost, st.Filtered, st.SendErrors)
	if st.ViolationCount() == 0 {
		fmt.Println("violations: none")
	} else {
		fmt.Printf("violations: %v\n", st.Violations)
		for _, v := range sim.Violations() {
			fmt.Printf("  %s\n", v)
		}
	}
	switch {
	case ctx.Err() != nil:
		fmt.Println("interrupted")
		return 1
	case res.failed.Load() > 0 || st.ViolationCount() > 0:
		return 1
	}
	return 0
}

type result struct {
	ok, failed, bytes atomic.Uint64
}

// serve runs an HTTP server on the host that answers every GET with body.
func serve(h *gwlbsim.Host, body []byte) (stop func(), err error) {
	l, err := h.ListenTCP(serverPort)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	return func() {
		srv.Close()
		<-done
	}, nil
}

// get fetches url and checks that the body is want. It returns the number
// of body bytes read.
func get(ctx context.Context, hc *http.Client, url string, want []byte, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("request: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("get: %w", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return len(got), fmt.Errorf("body after %d bytes: %w", len(got), err)
	}
	if resp.StatusCode != http.StatusOK {
		return len(got), fmt.Errorf("status %s", resp.Status)
	}
	if !bytes.Equal(got, want) {
		return len(got), errors.New("body differs from what the server sent")
	}
	return len(got), nil
}
