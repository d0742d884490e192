// Command bench-fastpath measures flowdog's fast path (packets/s and Gbps
// of inner packets reflected to GWLB) against a bare reflector measured in
// the same run on the same machine, and prints both and their ratio.
//
// For each inner packet size it runs internal/loadgen (a closed-loop,
// batched GWLB on loopback, in a child process pinned to the last CPU; see
// child.go) first against the bare reflector in reflector.go, then against
// gwlb.Datapath with an everything-FAST policy (the order alternates between
// runs). Both appliances run in this process, pinned to the other CPUs, with
// the same worker count and socket buffers. It needs root or CAP_NET_RAW
// (raw reply sockets). BENCHMARKS.md explains how to read the output.
//
//	go run ./cmd/bench-fastpath [-duration 3s] [-sizes 64,512,1400,8500] [-workers 0] [-window 256] [-runs 1]
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/internal/benchutil"
	"github.com/flowdog/flowdog/internal/loadgen"
)

type options struct {
	duration, warmup time.Duration
	sizes            []int
	workers          int
	window           int
	runs             int
	flows, sockets   int
	rcvbuf           int
	cpuprofile       string
	minRatio         float64
	pin              bool
	genCPU           int // the generator's CPU, -1 when not pinned
}

func main() {
	if js := os.Getenv(childEnv); js != "" {
		os.Exit(childMain(js))
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-fastpath:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	sizes := flag.String("sizes", "64,512,1400,8500", "inner IPv4 packet sizes in bytes, comma-separated")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "measured time per size and target")
	flag.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured time before each measurement")
	// One worker per appliance CPU: more workers than cores measures
	// scheduling, not the fast path.
	flag.IntVar(&o.workers, "workers", 0, "socket workers of both flowdog and the reflector (0: one per appliance CPU)")
	flag.BoolVar(&o.pin, "pin", true, "pin the generator to the last CPU and the appliance to the others")
	flag.IntVar(&o.window, "window", 256, "datagrams in flight (closed loop)")
	flag.IntVar(&o.runs, "runs", 1, "measurements per size and target; the median is reported")
	flag.IntVar(&o.flows, "flows", 1024, "distinct inner 5-tuples")
	flag.IntVar(&o.sockets, "sockets", 32, "GWLB source ports the flows are spread over")
	flag.IntVar(&o.rcvbuf, "rcvbuf", 8<<20, "SO_RCVBUF of the appliance's and the generator's sockets")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write CPU profiles of the first run to `prefix`.{reflector,flowdog}-SIZE.pprof")
	flag.Float64Var(&o.minRatio, "min-ratio", 0, "exit non-zero when flowdog/reflector packets/s is below this fraction (e.g. 0.9) for any size (0: never)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < loadgen.MinInnerSize || n > 8500 {
			return fmt.Errorf("-sizes: %q is not a size in %d..8500", s, loadgen.MinInnerSize)
		}
		o.sizes = append(o.sizes, n)
	}
	if o.runs < 1 || o.window < 1 || o.duration <= 0 {
		return errors.New("-runs, -window and -duration must be positive")
	}

	if o.pin && runtime.NumCPU() < 2 {
		o.pin = false
	}
	o.genCPU = -1
	if o.pin {
		// The last CPU is the generator's (GWLB's), the others the
		// appliance's; GOMAXPROCS as Go would set it for that mask.
		var cpus []int
		for c := 0; c < runtime.NumCPU()-1; c++ {
			cpus = append(cpus, c)
		}
		if err := benchutil.Pin(0, cpus...); err != nil {
			return err
		}
		runtime.GOMAXPROCS(len(cpus))
		o.genCPU = runtime.NumCPU() - 1
	}
	if o.workers <= 0 {
		o.workers = runtime.GOMAXPROCS(0)
	}
	printMachine(o)
	targets := []target{{"reflector", startBare}, {"flowdog", startFlowdog}}
	// results[size index][target index] holds one sample per run.
	results := make([][2][]sample, len(o.sizes))
	for r := 0; r < o.runs; r++ {
		for si, size := range o.sizes {
			order := []int{0, 1}
			if r%2 == 1 { // alternate so that neither always runs on a warmer machine
				order = []int{1, 0}
			}
			for _, ti := range order {
				res, err := measure(o, targets[ti], size, r == 0)
				if err != nil {
					return fmt.Errorf("%s, %d-byte packets, run %d: %w", targets[ti].name, size, r+1, err)
				}
				results[si][ti] = append(results[si][ti], res)
				if o.runs > 1 {
					fmt.Printf("  run %d  %-9s %5d B  %9.0f pps  %6.2f Gbps  loss %.3f%%  %4.1f per recvmmsg  %d replies verified\n",
						r+1, targets[ti].name, size, res.PPS(), res.InnerGbps(), 100*res.LossRatio(), res.batch, res.Verified)
				}
			}
		}
	}
	return report(o, results)
}

// target starts an appliance on 127.0.0.1.
type target struct {
	name  string
	start func(o options) (appliance, error)
}

// appliance is a running target. Stop ends it and returns the mean number
// of datagrams its workers got per recvmmsg (how well batching works).
type appliance interface {
	Addr() netip.AddrPort
	Stop() (float64, error)
}

var listen = netip.MustParseAddrPort("127.0.0.1:0")

func startBare(o options) (appliance, error) {
	r, err := startReflector(listen, o.workers, o.rcvbuf)
	if err != nil {
		return nil, err // not r: a nil *reflector is a non-nil appliance
	}
	return r, nil
}

type flowdog struct {
	d      *gwlb.Datapath
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startFlowdog(o options) (appliance, error) {
	reg := prometheus.NewRegistry()
	d, err := gwlb.New(gwlb.Options{Listen: listen, Workers: o.workers, ReadBuffer: o.rcvbuf, Registerer: reg})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &flowdog{d: d, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { f.done <- d.Run(ctx) }()
	// Healthy means every socket worker runs: measure nothing before.
	for deadline := time.Now().Add(5 * time.Second); d.Healthy() != nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			herr := d.Healthy()
			_, serr := f.Stop()
			return nil, errors.Join(fmt.Errorf("flowdog not healthy after 5s: %w", herr), serr)
		}
	}
	return f, nil
}

func (f *flowdog) Addr() netip.AddrPort { return f.d.Addr() }

func (f *flowdog) Stop() (float64, error) {
	f.cancel()
	err := <-f.done
	mean := 0.0
	if mfs, gerr := f.reg.Gather(); gerr == nil {
		for _, mf := range mfs {
			if mf.GetName() == "flowdog_gwlb_receive_batch_packets" && len(mf.GetMetric()) > 0 {
				h := mf.GetMetric()[0].GetHistogram()
				mean = h.GetSampleSum() / float64(max(h.GetSampleCount(), 1))
			}
		}
	}
	return mean, err
}

// sample is one measurement: the generator's result and the target's batching.
type sample struct {
	loadgen.Result
	batch float64 // mean datagrams per recvmmsg in the target
}

func measure(o options, t target, size int, profile bool) (s sample, err error) {
	if profile && o.cpuprofile != "" {
		stopProf, err := startProfile(fmt.Sprintf("%s.%s-%d.pprof", o.cpuprofile, t.name, size))
		if err != nil {
			return s, err
		}
		defer func() { err = errors.Join(err, stopProf()) }()
	}
	warmup := o.warmup
	if warmup == 0 {
		warmup = -1 // loadgen: zero is its default, negative is none
	}
	a, err := t.start(o)
	if err != nil {
		return s, fmt.Errorf("start: %w", err)
	}
	s.Result, err = runGenerator(context.Background(), loadgen.Config{
		Target: a.Addr(), InnerSize: size, Flows: o.flows, Sockets: o.sockets, Window: o.window,
		Warmup: warmup, Duration: o.duration, RcvBuf: o.rcvbuf,
	}, o.genCPU)
	b, serr := a.Stop()
	if serr != nil {
		err = errors.Join(err, fmt.Errorf("stop: %w", serr))
	}
	s.batch = b
	return s, err
}

func startProfile(path string) (func() error, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpuprofile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		return nil
	}, nil
}

// median returns the sample with the median packets/s.
func median(ss []sample) sample {
	s := slices.Clone(ss)
	slices.SortFunc(s, func(a, b sample) int { return cmp.Compare(a.PPS(), b.PPS()) })
	return s[len(s)/2]
}

// medianRatio pairs the runs (measured back to back) and returns the
// median of flowdog/reflector packets/s: steadier than a ratio of medians
// when the machine drifts between runs.
func medianRatio(refl, fd []sample) float64 {
	r := make([]float64, len(refl))
	for i := range refl {
		r[i] = fd[i].PPS() / refl[i].PPS()
	}
	slices.Sort(r)
	return r[len(r)/2]
}

func report(o options, results [][2][]sample) error {
	fmt.Println()
	fmt.Printf("| inner B | reflector pps | reflector Gbps | flowdog pps | flowdog Gbps | flowdog/reflector | loss refl. | loss flowdog | batch refl. | batch flowdog |\n")
	fmt.Printf("|--------:|--------------:|---------------:|------------:|-------------:|------------------:|-----------:|-------------:|------------:|--------------:|\n")
	var below []string
	for si, size := range o.sizes {
		b, f := median(results[si][0]), median(results[si][1])
		ratio := medianRatio(results[si][0], results[si][1])
		fmt.Printf("| %7d | %13.0f | %14.2f | %11.0f | %12.2f | %16.1f%% | %9.3f%% | %11.3f%% | %11.1f | %13.1f |\n",
			size, b.PPS(), b.InnerGbps(), f.PPS(), f.InnerGbps(), 100*ratio, 100*b.LossRatio(), 100*f.LossRatio(),
			b.batch, f.batch)
		if o.minRatio > 0 && ratio < o.minRatio {
			below = append(below, strconv.Itoa(size))
		}
	}
	fmt.Println()
	fmt.Println("pps: replies received per second; Gbps: inner IP packet bits (the UDP payload adds a 40-byte Geneve header);")
	fmt.Println("flowdog/reflector: median over runs of the paired packets/s ratio;")
	fmt.Println("loss: sent but never reflected, over the whole run; batch: mean datagrams per recvmmsg in the appliance.")
	fmt.Println("Aim: flowdog at least 90% of the reflector.")
	if len(below) > 0 {
		return fmt.Errorf("flowdog below %.0f%% of the reflector for %s-byte packets", 100*o.minRatio, strings.Join(below, ", "))
	}
	return nil
}

func printMachine(o options) {
	fmt.Printf("machine: %s\n", benchutil.Machine())
	pin := "not pinned"
	if o.genCPU >= 0 {
		pin = fmt.Sprintf("appliance on CPUs 0-%d, generator (child process) on CPU %d", o.genCPU-1, o.genCPU)
	}
	fmt.Printf("setup: loopback, %s, %d worker(s) each, GOMAXPROCS %d,\n", pin, o.workers, runtime.GOMAXPROCS(0))
	fmt.Printf("       closed loop with %d datagrams in flight, %d flows over %d GWLB source ports,\n",
		o.window, o.flows, o.sockets)
	fmt.Printf("       %v measured after %v warm-up, median of %d run(s)\n", o.duration, o.warmup, o.runs)
}
