// Command bench-intercept measures what interception costs: the same HTTP
// and HTTPS traffic through flowdog, once on the fast path (FAST) and once
// terminated and proxied (INTERCEPT), side by side in one run, reported
// with their ratio (DESIGN.md, "Testing levels").
//
// flowdog runs as a child process with a generated configuration that
// intercepts TCP ports 80 and 443 and fast-paths every other port. This
// process runs the GWLB simulator (gwlbsim) with a client host and a server
// host, both gVisor netstacks; the server host serves the same handler on
// 80 and 8080 (HTTP) and on 443 and 8443 (HTTPS, certificate from a CA this
// program creates and flowdog trusts), so FAST and INTERCEPT differ only in
// the port. Real net/http clients on the client host generate the load.
// flowdog and this process are pinned to different CPUs, as GWLB and the
// appliance are different machines.
//
// Scenarios: HTTP/1.1 keep-alive requests/s with p50/p99 latency (plain
// HTTP, and HTTPS: TLS end to end on the fast path, intercepted with
// flowdog's CA otherwise; and HTTP/2 over TLS), new TLS connections/s (handshake and one GET per
// connection), and flowdog's resident memory per idle intercepted HTTPS
// connection with -conns open (a fresh flowdog each for FAST and
// INTERCEPT).
//
// Scenario cff (not in the default list; -scenarios cff) measures what a
// CloudFront function costs on an intercepted flow: a second flowdog, whose
// configuration adds the cloudfront_functions interceptor with one trivial
// viewer-request function attached to the host cff.bench, serves keep-alive
// HTTP and HTTPS on the intercepted ports with Host www.example.com (no
// function) and Host cff.bench (the function runs on every request).
//
// BENCHMARKS.md explains how to read the output. It needs root or
// CAP_NET_RAW (flowdog's raw reply sockets).
//
//	go run ./cmd/bench-intercept [-duration 5s] [-clients 8] [-conns 10000] [-runs 1] [-scenarios http,https,https-h2,tls,memory,memory-h2,cff]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/internal/benchutil"
)

type options struct {
	flowdogBin       string
	duration, warmup time.Duration
	clients          int
	bodySize         int
	conns, connPar   int
	settle           time.Duration
	runs             int
	scenarios        map[string]bool
	pin              bool
	cpuprofile       string
	heapprofile      string
	keep             bool

	tmp         string
	benchCPU    int   // -1: not pinned
	flowdogCPUs []int // empty: not pinned
}

func main() {
	// SIGINT and SIGTERM cancel ctx: every phase stops, connections close
	// and flowdog is stopped before the program exits.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-intercept:", err)
		os.Exit(1)
	}
}

// allScenarios run by default. knownScenarios adds cff: it needs a flowdog
// of its own and answers a different question (a function or not, both
// intercepted), so make bench-intercept does not pay for it.
var (
	allScenarios   = []string{"http", "https", "https-h2", "tls", "memory", "memory-h2"}
	knownScenarios = append(slices.Clone(allScenarios), "cff")
)

func run(ctx context.Context) (err error) {
	var o options
	flag.StringVar(&o.flowdogBin, "flowdog", "", "flowdog binary (default: go build ./cmd/flowdog into a temporary directory)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured time per scenario and target")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured time before each measurement")
	flag.IntVar(&o.clients, "clients", 8, "concurrent clients (one connection at a time each)")
	flag.IntVar(&o.bodySize, "body", 1024, "response body size in bytes")
	flag.IntVar(&o.conns, "conns", 10000, "idle HTTPS connections held open for the memory scenario")
	flag.IntVar(&o.connPar, "conn-parallel", 64, "connections opened at a time for the memory scenario")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "wait after flowdog's GC before reading its memory")
	flag.IntVar(&o.runs, "runs", 1, "measurements per scenario and target (order alternates); medians are reported")
	scen := flag.String("scenarios", strings.Join(allScenarios, ","), "scenarios to run, comma-separated: "+strings.Join(knownScenarios, ", "))
	flag.BoolVar(&o.pin, "pin", true, "pin this process (simulator, clients, servers) to the last CPU and flowdog to the others")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write flowdog CPU profiles of the first run's INTERCEPT phases (cff: the function's) to `prefix`-PHASE.pprof (http, https, https-h2, tls, cff-http, cff-https)")
	flag.StringVar(&o.heapprofile, "heapprofile", "", "write flowdog's heap profile with the memory scenario's INTERCEPT connections open to `file` (memory-h2: file.h2)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (flowdog's config, log and state)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if o.runs < 1 || o.clients < 1 || o.duration <= 0 || o.warmup < 0 || o.conns < 1 || o.connPar < 1 || o.bodySize < 0 {
		return errors.New("-runs, -clients, -duration, -conns and -conn-parallel must be positive, -warmup and -body not negative")
	}
	o.scenarios = map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(knownScenarios, s) {
			return fmt.Errorf("-scenarios: unknown %q (want some of %s)", s, strings.Join(knownScenarios, ", "))
		}
		o.scenarios[s] = true
	}
	if err := needRaw(); err != nil {
		return err
	}

	if o.tmp, err = os.MkdirTemp("", "bench-intercept-"); err != nil {
		return err
	}
	defer func() {
		if o.keep {
			fmt.Println("kept", o.tmp)
			return
		}
		err = errors.Join(err, os.RemoveAll(o.tmp))
	}()
	if o.flowdogBin == "" {
		if o.flowdogBin, err = buildFlowdog(ctx, o.tmp); err != nil {
			return err
		}
	}

	o.benchCPU = -1
	if o.pin && runtime.NumCPU() >= 2 {
		// The last CPU is this process's (GWLB and the hosts), the others
		// flowdog's; GOMAXPROCS as Go would set it for that mask.
		o.benchCPU = runtime.NumCPU() - 1
		for c := range o.benchCPU {
			o.flowdogCPUs = append(o.flowdogCPUs, c)
		}
		if err := benchutil.Pin(0, o.benchCPU); err != nil {
			return err
		}
		runtime.GOMAXPROCS(1)
	}
	p, err := newPKI(o.tmp)
	if err != nil {
		return err
	}
	printMachine(&o)

	// Two tables: FAST vs INTERCEPT, and (cff) INTERCEPT vs INTERCEPT
	// through a function. Whatever was measured is printed, even when a
	// later scenario fails.
	var rows, cffRows []row
	defer func() {
		report(rows, fastCols)
		report(cffRows, cffCols)
	}()
	if o.scenarios["http"] || o.scenarios["https"] || o.scenarios["https-h2"] || o.scenarios["tls"] {
		r, err := throughput(ctx, &o, p, phases, false)
		rows = append(rows, r...)
		if err != nil {
			return err
		}
	}
	for _, h2 := range []bool{false, true} {
		if !o.scenarios[map[bool]string{false: "memory", true: "memory-h2"}[h2]] {
			continue
		}
		r, err := memory(ctx, &o, p, h2)
		rows = append(rows, r...)
		if err != nil {
			return err
		}
	}
	if o.scenarios["cff"] {
		r, err := throughput(ctx, &o, p, cffPhases, true)
		cffRows = append(cffRows, r...)
		if err != nil {
			return err
		}
	}
	return nil
}

// needRaw fails early, with a reason, where flowdog could not send replies.
func needRaw() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("flowdog needs root or CAP_NET_RAW (raw reply sockets): %w", err)
	}
	unix.Close(fd)
	return nil
}

// phase is one throughput comparison.
type phase struct {
	scenario   string // the -scenarios name that selects it
	key, title string // key names its -cpuprofile file
	https      bool
	keepAlive  bool
	unit       string
	cff        bool // both targets intercepted, the second through the function
	h2         bool // HTTP/2 (one connection per client, one request at a time)
}

var phases = []phase{
	{"http", "http", "HTTP/1.1 keep-alive", false, true, "req/s", false, false},
	{"https", "https", "HTTPS keep-alive", true, true, "req/s", false, false},
	{"https-h2", "https-h2", "HTTP/2 (TLS) keep-alive", true, true, "req/s", false, true},
	{"tls", "tls", "new TLS connections", true, false, "conn/s", false, false},
}

// cffPhases are the cff scenario's, run against a flowdog whose
// configuration attaches the function (see cffInterceptor).
var cffPhases = []phase{
	{"cff", "cff-http", "CFF HTTP/1.1 keep-alive", false, true, "req/s", true, false},
	{"cff", "cff-https", "CFF HTTPS keep-alive", true, true, "req/s", true, false},
}

func (ph phase) targets() [2]target {
	if ph.cff {
		return cffTargets(ph.https)
	}
	return targets(ph.https)
}

// throughput runs the rate phases against one flowdog process (with the
// CloudFront function attached when withCFF): the two targets of each
// phase back to back, the order alternating between runs so that neither
// always runs on a warmer machine.
func throughput(ctx context.Context, o *options, p *pki, phases []phase, withCFF bool) (rows []row, err error) {
	l, err := newLab(ctx, o, p, withCFF)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cpus, err := cpusAllowed(l.fd.Pid()); err == nil {
			fmt.Printf("flowdog's threads were allowed on CPU(s) %s\n", cpus)
		}
		if n := l.fd.logLines(); n > 0 {
			fmt.Printf("flowdog logged %d line(s) at warn or above; the last ones:\n%s\n", n, l.fd.logTail())
		}
		err = errors.Join(err, l.Close())
	}()
	fmt.Printf("flowdog pid %d, GWLB %v -> flowdog %v\n", l.fd.Pid(), l.sim.GWLBAddr(), l.fd.geneve)
	for _, ph := range phases {
		if !o.scenarios[ph.scenario] {
			continue
		}
		tg := ph.targets()
		var res [2][]rateResult
		for r := range o.runs {
			order := []int{0, 1}
			if r%2 == 1 {
				order = []int{1, 0}
			}
			for _, ti := range order {
				t := tg[ti]
				var during func(time.Duration)
				var profErr error
				// The second target is the one under study (INTERCEPT, or
				// the function's).
				if ti == 1 && r == 0 && o.cpuprofile != "" {
					path := fmt.Sprintf("%s-%s.pprof", o.cpuprofile, ph.key)
					during = func(d time.Duration) { profErr = l.fd.profile(ctx, d, path) }
				}
				before, _ := l.fd.metrics(ctx)
				x := load(ctx, l, o, t, ph.keepAlive, ph.h2, during)
				if ctx.Err() != nil {
					return rows, ctx.Err()
				}
				after, _ := l.fd.metrics(ctx)
				n := float64(max(x.n, 1))
				fmt.Printf("  run %d  %-24s %-9s %7.0f %-6s p50 %7.3fms p99 %7.3fms  %6d measured, %5d dials; CPU flowdog %3.0f%% bench %3.0f%% (%.0f µs/%s); per %s: packets in %.1f out %.1f; %s\n",
					r+1, ph.title, t.name, x.rate(), ph.unit, ms(x.pct(50)), ms(x.pct(99)),
					x.n, x.dials, 100*x.fdCPU.Seconds()/o.duration.Seconds(), 100*x.benchCPU.Seconds()/o.duration.Seconds(),
					cpuPer(x), strings.TrimSuffix(ph.unit, "/s"), strings.TrimSuffix(ph.unit, "/s"),
					x.delta(`flowdog_gwlb_packets_total{direction="in"`)/n, x.delta(`flowdog_gwlb_packets_total{direction="out"`)/n,
					proxied(before, after))
				if ph.cff {
					fmt.Printf("         function invocations per req %.3f\n", x.delta(cffInvocations)/n)
					if err := checkInvocations(t, x, o.clients); err != nil {
						return rows, fmt.Errorf("%s, %s: %w", ph.title, t.name, err)
					}
				}
				if d := x.delta("flowdog_gwlb_dropped_packets_total"); d > 0 {
					fmt.Printf("         flowdog dropped %.0f packet(s) in the interval\n", d)
				}
				if x.errs > 0 {
					return rows, fmt.Errorf("%s, %s: %d error(s), the first: %w", ph.title, t.name, x.errs, x.firstErr)
				}
				if x.n == 0 {
					return rows, fmt.Errorf("%s, %s: nothing completed in %v", ph.title, t.name, o.duration)
				}
				if profErr != nil {
					return rows, fmt.Errorf("flowdog CPU profile: %w", profErr)
				}
				if err := l.fd.Alive(); err != nil {
					return rows, err
				}
				res[ti] = append(res[ti], x)
			}
		}
		rows = append(rows, rateRows(ph, res)...)
	}
	return rows, nil
}

// cffInvocations is the cff package's invocation counter (CloudFront's
// FunctionInvocations), summed over its labels.
const cffInvocations = "flowdog_cff_function_invocations_total"

// checkInvocations holds the cff scenario to what it claims: the function
// ran once for each request of the function's target and never for the
// other. The counter is read at the interval's edges while requests are in
// flight, so it may differ from the completed requests by up to one
// request per client at each edge. Every response is also checked for the
// header the function adds (see lab.get), so this is the second witness.
func checkInvocations(t target, x rateResult, clients int) error {
	inv := x.delta(cffInvocations)
	if e := x.delta("flowdog_cff_function_execution_errors_total") + x.delta("flowdog_cff_function_validation_errors_total"); e > 0 {
		return fmt.Errorf("the function failed %.0f time(s) (flowdog's log says why)", e)
	}
	if !t.cff {
		if inv != 0 {
			return fmt.Errorf("the function ran %.0f time(s) for a host it is not attached to", inv)
		}
		return nil
	}
	if d := inv - float64(x.n); d < -2*float64(clients) || d > 2*float64(clients) {
		return fmt.Errorf("the function ran %.0f times for %d requests", inv, x.n)
	}
	return nil
}

// cpuPer is flowdog's CPU time per completed request (connection) in µs:
// what the rate would cost on a machine where nothing else limits it.
func cpuPer(x rateResult) float64 { return float64(x.fdCPU.Microseconds()) / float64(max(x.n, 1)) }

// proxied summarizes what flowdog's proxy did between two metric snapshots.
func proxied(before, after map[string]float64) string {
	var parts []string
	for k, v := range after {
		if strings.HasPrefix(k, "flowdog_proxy_connections_total{") {
			if d := v - before[k]; d > 0 {
				kind := strings.TrimSuffix(strings.TrimPrefix(k, `flowdog_proxy_connections_total{kind="`), `"}`)
				parts = append(parts, fmt.Sprintf("%s %.0f", kind, d))
			}
		}
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		return "flowdog proxied nothing"
	}
	return "flowdog proxied: " + strings.Join(parts, ", ")
}

// rateRows turns the runs of one phase into table rows: medians, and the
// median of the ratios paired by run.
func rateRows(ph phase, res [2][]rateResult) []row {
	med := func(i int, f func(rateResult) float64) float64 {
		v := make([]float64, len(res[i]))
		for k, x := range res[i] {
			v[k] = f(x)
		}
		return median(v)
	}
	ratio := func(f func(rateResult) float64) float64 {
		v := make([]float64, len(res[0]))
		for k := range res[0] {
			v[k] = f(res[1][k]) / f(res[0][k])
		}
		return median(v)
	}
	rate := func(x rateResult) float64 { return x.rate() }
	p50 := func(x rateResult) float64 { return ms(x.pct(50)) }
	p99 := func(x rateResult) float64 { return ms(x.pct(99)) }
	cpu := cpuPer
	rateAim := aim{}
	if ph.keepAlive && !ph.cff {
		// The aim: intercepted keep-alive HTTP at least 50% of FAST.
		rateAim = aim{text: "INTERCEPT >= 50% of FAST", met: ratio(rate) >= 0.5}
	}
	rows := []row{
		{ph.title + ", " + ph.unit, fmt.Sprintf("%.0f", med(0, rate)), fmt.Sprintf("%.0f", med(1, rate)), ratio(rate), rateAim},
		{ph.title + ", p50 ms", fmt.Sprintf("%.2f", med(0, p50)), fmt.Sprintf("%.2f", med(1, p50)), ratio(p50), aim{}},
		{ph.title + ", p99 ms", fmt.Sprintf("%.2f", med(0, p99)), fmt.Sprintf("%.2f", med(1, p99)), ratio(p99), aim{}},
		{ph.title + ", flowdog CPU µs per " + strings.TrimSuffix(ph.unit, "/s"), fmt.Sprintf("%.0f", med(0, cpu)), fmt.Sprintf("%.0f", med(1, cpu)), ratio(cpu), aim{}},
	}
	if ph.cff {
		// The per-invocation overhead as flowdog pays it: the function's
		// requests cost this much more CPU than the same intercepted
		// requests without it (one invocation each, checkInvocations),
		// paired by run so that both sides share the machine's drift.
		diff := make([]float64, len(res[0]))
		for k := range res[0] {
			diff[k] = cpu(res[1][k]) - cpu(res[0][k])
		}
		inv := func(x rateResult) float64 { return x.delta(cffInvocations) / float64(max(x.n, 1)) }
		rows = append(rows,
			row{ph.title + ", function invocations per req", fmt.Sprintf("%.2f", med(0, inv)), fmt.Sprintf("%.2f", med(1, inv)), 0, aim{}},
			row{ph.title + ", flowdog CPU µs per invocation (CFF − INTERCEPT)", "—", fmt.Sprintf("%.0f", median(diff)), 0, aim{}})
	}
	return rows
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// aim is a target a row is held to; the zero aim means none.
type aim struct {
	text string
	met  bool
}

type row struct {
	name            string
	fast, intercept string
	ratio           float64 // INTERCEPT / FAST; 0: none
	aim             aim
}

// The two columns a table compares, and the ratio's heading.
var (
	fastCols = [2]string{"FAST", "INTERCEPT"}
	cffCols  = [2]string{"INTERCEPT", "CFF"}
)

func report(rows []row, cols [2]string) {
	if len(rows) == 0 {
		return
	}
	fmt.Println()
	fmt.Printf("| scenario | %s | %s | %s/%s | aim | met |\n", cols[0], cols[1], cols[1], cols[0])
	fmt.Println("|---|---:|---:|---:|---|---|")
	for _, r := range rows {
		ratio := "—"
		switch {
		case r.ratio >= 10:
			ratio = fmt.Sprintf("%.0f×", r.ratio)
		case r.ratio > 0:
			ratio = fmt.Sprintf("%.1f%%", 100*r.ratio)
		}
		a, met := "—", "—"
		if r.aim.text != "" {
			a, met = r.aim.text, "no"
			if r.aim.met {
				met = "yes"
			}
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", r.name, r.fast, r.intercept, ratio, a, met)
	}
	fmt.Println()
	if cols == cffCols {
		fmt.Println("Both columns are intercepted keep-alive requests on the same ports of one flowdog: INTERCEPT with Host")
		fmt.Println("www.example.com (no function attached), CFF with Host cff.bench (the viewer-request function runs once per")
		fmt.Println("request). The last row is the difference of the CPU rows, paired by run. With -runs > 1: medians, and the")
		fmt.Println("median of the ratios (differences) paired by run.")
		return
	}
	fmt.Println("Rates are completed requests (connections) per second over the measured interval; latencies are per request")
	fmt.Println("(per connection: dial, handshake, GET) as the client sees them. INTERCEPT/FAST of a rate: higher is better;")
	fmt.Println("of a latency or memory: lower is better. With -runs > 1: medians, and the median of the ratios paired by run.")
}

func printMachine(o *options) {
	fmt.Printf("machine: %s\n", benchutil.Machine())
	pin := "not pinned"
	if o.benchCPU >= 0 {
		pin = fmt.Sprintf("flowdog on CPU(s) %v, simulator + hosts + clients + servers on CPU %d, GOMAXPROCS 1 each", o.flowdogCPUs, o.benchCPU)
	}
	fmt.Printf("setup: loopback, %s;\n", pin)
	fmt.Printf("       %d clients, %d-byte bodies, %v measured after %v warm-up, %d run(s); %d idle connections for memory\n",
		o.clients, o.bodySize, o.duration, o.warmup, o.runs, o.conns)
}
