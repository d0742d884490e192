package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flowdog/flowdog/ca"
	"github.com/flowdog/flowdog/internal/benchutil"
	"github.com/flowdog/flowdog/internal/promtext"
)

// flowdogProc is flowdog running as a child process. A separate process
// (rather than the daemon in this one) keeps its memory apart from the
// simulator's gVisor hosts, so /proc/<pid>/status measures flowdog alone,
// and lets it be pinned to a CPU of its own, as GWLB and the appliance are
// different machines.
type flowdogProc struct {
	cmd      *exec.Cmd
	dir      string // state_dir, config and log
	logPath  string
	geneve   netip.AddrPort
	admin    string // host:port of /metrics and /debug/pprof
	rootPath string // flowdog's root CA, what clients trust
	exited   chan struct{}
	waitErr  error // valid once exited is closed
}

// flowdogConfig is the generated configuration: loopback only, everything
// else the defaults (geneve_headers on, so interception does real work).
// Ports 80 and 443 are intercepted and every other port is on the fast
// path, so that FAST (8080, 8443) and INTERCEPT (80, 443) run through the
// same flowdog process, side by side.
const flowdogConfig = `log:
  level: warn
gwlb:
  listen: %s
flows:
  max_pending: 20000
health:
  listen: %s
admin:
  listen: %s
shutdown:
  drain: 0s
state_dir: %s
tls:
  upstream_ca_file: %s
policy:
  default: fast
  rules:
    - name: web
      action: intercept
      protocols: [tcp]
      ports: ["80", "443"]
interceptors:
  - name: geneve_headers
    config: {requests: true, responses: true}
%s`

// cffHost is the only host the cff scenario's function is attached to.
const cffHost = "cff.bench"

// cffInterceptor is appended to flowdogConfig's interceptors for the cff
// scenario: one viewer-request function, attached to cffHost only, so that
// the same intercepted ports serve requests with and without it. It is
// listed after geneve_headers, as the README advises, so the function sees
// (and the event carries) the headers geneve_headers adds, as it would in
// production. The function is as trivial as one can check: it adds one
// request header, which the server echoes (lab.serve), so every response
// proves whether the function ran; it has the shape of the cff package's
// BenchmarkViewerRequestTrivial. The budget is wall-clock time and flowdog
// runs on one P that its proxy goroutines share: on a loaded machine a
// descheduled invocation could overrun CloudFront's 5 ms, answer 503 and
// fail the run. The budget's size costs nothing (the timer is reset on
// every invocation whatever it is).
const cffInterceptor = `  - name: cloudfront_functions
    config:
      budget: 100ms
      functions:
        - name: bench
          runtime: cloudfront-js-2.0
          event_type: viewer-request
          hosts: ["` + cffHost + `"]
          code: "function handler(event) { var request = event.request; request.headers['` + cffHeader + `'] = {value: '1'}; return request; }"
`

// cffHeader is the request header the function adds; lab.serve echoes it.
const cffHeader = "x-cff"

// buildFlowdog compiles ./cmd/flowdog into dir; it needs the module root
// as the working directory (make and go run from the root provide it).
func buildFlowdog(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "flowdog")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/flowdog")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/flowdog (run from the module root, or pass -flowdog): %w\n%s", err, out.String())
	}
	return bin, nil
}

// freePort returns a port that was free a moment ago on 127.0.0.1. Another
// process may take it before flowdog binds it; start then fails loudly.
func freePort(network string) (int, error) {
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	default:
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
}

// startFlowdog runs bin with a config in a new directory under tmp, pinned
// to cpus (none: not pinned), and waits until its health check answers 200
// (every socket worker runs and the CA is ready). interceptors is YAML
// appended to the config's interceptor list ("" for none).
func startFlowdog(ctx context.Context, bin, tmp, serverCA string, cpus []int, interceptors string) (*flowdogProc, error) {
	dir, err := os.MkdirTemp(tmp, "flowdog-")
	if err != nil {
		return nil, err
	}
	var ports [3]int
	for i, n := range []string{"udp", "tcp", "tcp"} {
		if ports[i], err = freePort(n); err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
	}
	geneve := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(ports[0]))
	health := fmt.Sprintf("127.0.0.1:%d", ports[1])
	admin := fmt.Sprintf("127.0.0.1:%d", ports[2])
	state := filepath.Join(dir, "state")
	cfgPath := filepath.Join(dir, "flowdog.yaml")
	cfg := fmt.Sprintf(flowdogConfig, geneve, health, admin, state, serverCA, interceptors)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "flowdog.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = os.Environ()
	if len(cpus) > 0 {
		// Fixed, so that Go neither sizes it from the mask flowdog starts
		// with (before pinning) nor changes it later.
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(len(cpus)))
	}
	// Should this process die without cleaning up (SIGKILL), flowdog dies
	// too instead of holding its ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start flowdog: %w", err)
	}
	f := &flowdogProc{cmd: cmd, dir: dir, logPath: logPath, geneve: geneve, admin: admin,
		rootPath: ca.RootCertPath(state), exited: make(chan struct{})}
	go func() {
		f.waitErr = cmd.Wait()
		close(f.exited)
	}()
	if len(cpus) > 0 {
		if err := benchutil.Pin(cmd.Process.Pid, cpus...); err != nil {
			return nil, errors.Join(err, f.Stop())
		}
	}
	if err := f.waitHealthy(ctx, "http://"+health+"/healthz", 20*time.Second); err != nil {
		return nil, errors.Join(err, f.Stop())
	}
	return f, nil
}

func (f *flowdogProc) waitHealthy(ctx context.Context, url string, timeout time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-f.exited:
			return fmt.Errorf("flowdog exited at start-up (%v): %s", f.waitErr, f.logTail())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := hc.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("flowdog not healthy after %v: %s", timeout, f.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pid is flowdog's process id.
func (f *flowdogProc) Pid() int { return f.cmd.Process.Pid }

// Stop ends flowdog: SIGTERM (drain is 0s), SIGKILL after 5s. It is safe
// to call more than once.
func (f *flowdogProc) Stop() error {
	select {
	case <-f.exited:
		return nil
	default:
	}
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.exited:
		return nil
	case <-time.After(5 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.exited
		return errors.New("flowdog did not stop within 5s of SIGTERM; killed")
	}
}

// Alive reports an error when flowdog has exited.
func (f *flowdogProc) Alive() error {
	select {
	case <-f.exited:
		return fmt.Errorf("flowdog exited (%v): %s", f.waitErr, f.logTail())
	default:
		return nil
	}
}

// logTail is the end of flowdog's log, for error messages.
func (f *flowdogProc) logTail() string {
	b, _ := os.ReadFile(f.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// logLines counts the lines flowdog logged (warn and above).
func (f *flowdogProc) logLines() int {
	b, _ := os.ReadFile(f.logPath)
	return bytes.Count(b, []byte("\n"))
}

// rssBytes is flowdog's resident set size (VmRSS) from /proc.
func (f *flowdogProc) rssBytes() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", f.Pid()))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc/<pid>/status")
}

// gc makes flowdog collect garbage now (pprof's heap endpoint with gc=1),
// so that a memory reading after it does not count dead objects.
func (f *flowdogProc) gc(ctx context.Context) error {
	return f.adminGet(ctx, "/debug/pprof/heap?gc=1", io.Discard)
}

// metrics returns flowdog's Prometheus metrics as name{labels} -> value
// (only the samples, no help or type lines).
func (f *flowdogProc) metrics(ctx context.Context) (map[string]float64, error) {
	var b bytes.Buffer
	if err := f.adminGet(ctx, "/metrics", &b); err != nil {
		return nil, err
	}
	return promtext.Parse(&b)
}

// profile writes a CPU profile of the next d to path.
func (f *flowdogProc) profile(ctx context.Context, d time.Duration, path string) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	err = f.adminGet(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), out)
	return errors.Join(err, out.Close())
}

// saveHeapProfile writes flowdog's heap profile to path.
func (f *flowdogProc) saveHeapProfile(ctx context.Context, path string) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	err = f.adminGet(ctx, "/debug/pprof/heap", out)
	return errors.Join(err, out.Close())
}

// cpuTime is the CPU time (user and system) process pid has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are fields 14 and 15 of the line.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc/<pid>/stat")
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 13 {
		return 0, errors.New("unexpected /proc/<pid>/stat")
	}
	var ticks int64
	for _, s := range fs[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

func (f *flowdogProc) adminGet(ctx context.Context, path string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.admin+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("flowdog admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("flowdog admin %s: %s", path, resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}
