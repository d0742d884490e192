package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flowdog/flowdog/gwlbsim"
)

type tunOptions struct {
	device, endpointID, attachmentID, statsAddr string
}

// runTUN plays GWLB for the kernel behind a TUN device until ctx ends.
func runTUN(ctx context.Context, log *slog.Logger, sim *gwlbsim.Sim, o tunOptions) int {
	ep, err := parseEndpointID(o.endpointID)
	if err != nil {
		log.Error("bad --endpoint-id", "err", err)
		return 2
	}
	att, err := strconv.ParseUint(o.attachmentID, 16, 64)
	if err != nil {
		log.Error("bad --attachment-id: want 16 hex digits", "err", err)
		return 2
	}
	dev, err := gwlbsim.OpenTUN(o.device)
	if err != nil {
		log.Error("open TUN device", "err", err)
		return 1
	}
	ten := sim.AddTenant(ep, att)
	if err := ten.AttachDevice(dev); err != nil {
		dev.Close()
		log.Error("attach TUN device", "err", err)
		return 1
	}
	if o.statsAddr != "" {
		l, err := net.Listen("tcp", o.statsAddr)
		if err != nil {
			log.Error("stats listener", "err", err)
			return 1
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(sim.Report())
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("stats server", "err", err)
			}
		}()
		defer srv.Close()
	}
	log.Info("gwlbsim: TUN mode", "device", o.device, "tenant", ten, "gwlb", sim.GWLBAddr(),
		"source_ports", sim.SourcePorts(), "stats", o.statsAddr)
	<-ctx.Done()

	st := sim.Report()
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(st)
	if st.ViolationCount > 0 {
		log.Error("gwlbsim: the appliance broke GWLB's contract", "violations", st.Violations)
		return 1
	}
	return 0
}

// parseEndpointID reads a VPC endpoint id as AWS prints it
// (vpce-0123456789abcdef0) or as bare hex.
func parseEndpointID(s string) (uint64, error) {
	h := strings.TrimPrefix(s, "vpce-")
	if h == "" || len(h) > 17 {
		return 0, fmt.Errorf("%q: want vpce- and up to 17 hex digits", s)
	}
	v, err := strconv.ParseUint(h, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	return v, nil
}
