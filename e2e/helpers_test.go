//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowdog/flowdog/gwlbsim"
	"github.com/flowdog/flowdog/internal/promtext"
)

// The local VPC, as e2e/vpc.sh builds it.
const (
	clientV4     = "192.0.2.10"
	serverV4     = "198.51.100.10"
	serverV6     = "2001:db8:2::10"
	endpointID   = "vpce-0123456789abcdef0"
	attachmentID = "0a77ac4000000001"
	webName      = "www.example"
	passName     = "passthrough.example" // in flowdog's tls.passthrough_sni
	fastPort     = "8000"                // nginx, outside every policy rule
	dropPort     = "8081"                // nginx, behind the DROP rule
	echoPort     = "7007"                // e2e-servers TCP echo
	udpEchoPort  = "53"                  // e2e-servers UDP echo
)

var (
	repoDir, runDir, binDir string
	// flowdogRoot is what clients trust to accept intercepted TLS; testCA
	// signed nginx's certificate and is trusted only by flowdog (and by
	// curl when it checks that passthrough shows nginx's own certificate).
	flowdogRoot, testCA string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		const why = "e2e: needs root (network namespaces, a TUN device, flowdog's raw sockets): run `sudo make e2e`"
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, why+" (CI is set, so this is a failure)")
			return 1
		}
		fmt.Fprintln(os.Stderr, why+"; skipping")
		return 0
	}
	for _, tool := range []string{"ip", "nginx", "curl", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s not found (apt-get install -y nginx curl iproute2): %v\n", tool, err)
			return 1
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	repoDir = filepath.Dir(wd) // go test runs in the package directory, e2e/
	runDir = os.Getenv("E2E_RUN_DIR")
	if runDir == "" {
		runDir = "/tmp/flowdog-e2e"
	}
	flowdogRoot = filepath.Join(runDir, "state", "root.pem")
	testCA = filepath.Join(runDir, "pki", "ca.pem")

	// Fresh binaries of the tree under test, whatever bin/ holds.
	binDir, err = os.MkdirTemp("", "flowdog-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	build := exec.Command("go", "build", "-trimpath", "-o", binDir+"/", "./cmd/flowdog", "./cmd/gwlbsim", "./e2e/cmd/e2e-servers")
	build.Dir, build.Env = repoDir, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build: %v\n%s", err, out)
		return 1
	}

	// Interrupted (Ctrl-C, CI timeout): the VPC goes away all the same.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "e2e: %v: tearing the VPC down\n", s)
		vpc("down")
		os.Exit(130)
	}()

	start := time.Now()
	if out, err := vpc("up"); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: vpc.sh up: %v\n%s", err, out)
		vpc("down")
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: local VPC up in %v (run dir %s)\n", time.Since(start).Round(time.Millisecond), runDir)
	code := m.Run()
	if code != 0 {
		for _, l := range []string{"flowdog", "gwlbsim", "nginx-error"} {
			fmt.Fprintf(os.Stderr, "--- last lines of %s.log\n%s\n", l, tail(filepath.Join(runDir, "logs", l+".log"), 20))
		}
	}
	if os.Getenv("E2E_KEEP") != "" {
		fmt.Fprintln(os.Stderr, "e2e: E2E_KEEP is set: the VPC stays up; `make e2e-down` removes it")
		return code
	}
	if out, err := vpc("down"); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: vpc.sh down: %v\n%s", err, out)
		return 1
	}
	return code
}

func vpc(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(repoDir, "e2e", "vpc.sh"), args...)
	cmd.Env = append(os.Environ(), "E2E_RUN_DIR="+runDir, "E2E_BIN="+binDir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// result is what a command run in a namespace did.
type result struct {
	stdout, stderr string
	code           int // exit status; -1 if it did not exit by itself
	elapsed        time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %v\nstdout:\n%s\nstderr:\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

// nsRun runs a program in a namespace, as `ip netns exec` does for anyone.
func nsRun(t testing.TB, timeout time.Duration, ns string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		r.code = -1
		r.stderr += "\n(run: " + err.Error() + ")"
	}
	return r
}

// curl runs the client's curl, verbose (TLS details and response headers
// go to stderr).
func curl(t testing.TB, args ...string) result {
	t.Helper()
	return nsRun(t, 2*time.Minute, "client", append([]string{"curl", "-sS", "-v", "--max-time", "60"}, args...)...)
}

func mustCurl(t testing.TB, args ...string) result {
	t.Helper()
	r := curl(t, args...)
	if r.code != 0 {
		t.Fatalf("curl %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// resolve is curl's --resolve for name:port at addr (IPv6 in brackets).
func resolve(name, port, addr string) string {
	if strings.Contains(addr, ":") {
		addr = "[" + addr + "]"
	}
	return name + ":" + port + ":" + addr
}

// responseHeaders reads the response headers curl -v printed ("< name:
// value"), lower-cased names, the last response's values winning.
func responseHeaders(r result) map[string]string {
	h := map[string]string{}
	for _, l := range strings.Split(r.stderr, "\n") {
		l = strings.TrimRight(l, "\r")
		if !strings.HasPrefix(l, "< ") {
			continue
		}
		if k, v, ok := strings.Cut(l[2:], ":"); ok {
			h[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
	}
	return h
}

// checkGwlbHeaders asserts that the geneve_headers interceptor's headers
// are in h and returns the flow cookie.
func checkGwlbHeaders(t testing.TB, where string, h map[string]string) string {
	t.Helper()
	if got := h["x-gwlb-vpc-endpoint-id"]; got != endpointID {
		t.Errorf("%s: x-gwlb-vpc-endpoint-id = %q, want %q", where, got, endpointID)
	}
	if got := h["x-gwlb-attachment-id"]; got != attachmentID {
		t.Errorf("%s: x-gwlb-attachment-id = %q, want %q", where, got, attachmentID)
	}
	c := h["x-gwlb-flow-cookie"]
	if b, err := hex.DecodeString(c); err != nil || len(b) != 4 {
		t.Errorf("%s: x-gwlb-flow-cookie = %q, want 8 hex digits", where, c)
	}
	return c
}

func noGwlbHeaders(t testing.TB, where string, h map[string]string) {
	t.Helper()
	for k, v := range h {
		if strings.HasPrefix(k, "x-gwlb-") {
			t.Errorf("%s: %s: %s present, but this flow is not intercepted", where, k, v)
		}
	}
}

// headersBody parses nginx's /headers answer: what it received.
func headersBody(t testing.TB, body string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, f := range strings.Fields(body) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	if _, ok := m["proto"]; !ok {
		t.Fatalf("not an answer of nginx's /headers: %q", body)
	}
	return m
}

// accessLogLine waits for nginx's access log line that contains every
// needle (nginx logs after the response is sent).
func accessLogLine(t testing.TB, needles ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if l, ok := findLogLine(needles...); ok {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line with %q in nginx's access log; last lines:\n%s", needles, tail(accessLog(), 10))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func accessLog() string { return filepath.Join(runDir, "logs", "nginx-access.log") }

func findLogLine(needles ...string) (string, bool) {
	f, err := os.Open(accessLog())
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var found string
next:
	for sc.Scan() {
		for _, n := range needles {
			if !strings.Contains(sc.Text(), n) {
				continue next
			}
		}
		found = sc.Text()
	}
	return found, found != ""
}

// --- counters ------------------------------------------------------------

func getSimStats(t testing.TB) gwlbsim.Report {
	t.Helper()
	r := nsRun(t, 10*time.Second, "gateway", "curl", "-sSf", "http://127.0.0.1:9091/stats")
	if r.code != 0 {
		t.Fatalf("gwlbsim stats: %v", r)
	}
	var st gwlbsim.Report
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("gwlbsim stats %q: %v", r.stdout, err)
	}
	return st
}

// noViolations asserts that gwlbsim has seen flowdog break GWLB's contract
// in no way since the VPC came up.
func noViolations(t testing.TB) {
	t.Helper()
	st := getSimStats(t)
	if st.ViolationCount != 0 {
		t.Errorf("gwlbsim saw %d contract violations %v:\n%s", st.ViolationCount, st.Violations, strings.Join(st.RecentViolations, "\n"))
	}
	if st.DeviceErrors != 0 || st.SendErrors != 0 {
		t.Errorf("gwlbsim: %d send errors, %d TUN write errors", st.SendErrors, st.DeviceErrors)
	}
}

// metrics is one scrape of flowdog's /metrics: series name and labels
// (as written, e.g. `x{a="b"}`) to value.
type metrics map[string]float64

func getMetrics(t testing.TB) metrics {
	t.Helper()
	r := nsRun(t, 10*time.Second, "appliance", "curl", "-sSf", "http://127.0.0.1:9090/metrics")
	if r.code != 0 {
		t.Fatalf("flowdog metrics: %v", r)
	}
	m, err := promtext.Parse(strings.NewReader(r.stdout))
	if err != nil {
		t.Fatalf("flowdog metrics: %v", err)
	}
	return m
}

// sum adds the series of name whose labels include every label=value of
// match (e.g. `verdict="fast"`).
func (m metrics) sum(name string, match ...string) float64 {
	var s float64
next:
	for k, v := range m {
		n, labels, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		for _, want := range match {
			if !strings.Contains(","+strings.TrimSuffix(labels, "}")+",", ","+want+",") {
				continue next
			}
		}
		s += v
	}
	return s
}

// --- sockets in the client namespace --------------------------------------------

// inNetns runs fn on a thread moved into the network namespace ns: sockets
// fn creates live there for good (they keep their namespace wherever they
// are used later). The thread goes back to its own namespace afterwards;
// if it cannot, it stays locked and ends with the goroutine (the main
// thread would instead be parked, and `ip netns pids` would then list the
// whole test process as one of the namespace's).
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// dialClient dials from the client namespace.
func dialClient(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns("client", func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// --- the large file ---------------------------------------------------------------

var (
	bigOnce sync.Once
	bigPath string
	bigSum  string
	bigSize int64
	bigErr  error
)

// bigFile returns nginx's large file (E2E_BIG_MB, default 1024 MB of
// random bytes, made once) and its sha256.
func bigFile(t testing.TB) (path, sum string, size int64) {
	t.Helper()
	bigOnce.Do(func() {
		mb := 1024
		if s := os.Getenv("E2E_BIG_MB"); s != "" {
			if mb, bigErr = strconv.Atoi(s); bigErr != nil || mb < 1 {
				bigErr = fmt.Errorf("E2E_BIG_MB=%q: want a positive number", s)
				return
			}
		}
		bigSize = int64(mb) << 20
		bigPath = filepath.Join(runDir, "www", "big.bin")
		var fs unix.Statfs_t
		if bigErr = unix.Statfs(filepath.Dir(bigPath), &fs); bigErr != nil {
			return
		}
		if free := int64(fs.Bavail) * fs.Bsize; free < bigSize+(256<<20) {
			bigErr = fmt.Errorf("%s has %d MB free, the %d MB file needs more (set E2E_BIG_MB or E2E_RUN_DIR)", filepath.Dir(bigPath), free>>20, mb)
			return
		}
		var f *os.File
		if f, bigErr = os.Create(bigPath); bigErr != nil {
			return
		}
		h := sha256.New()
		// ChaCha8: random enough that nothing compresses it, fast
		// enough that 1 GB takes a second or two.
		rng := rand.NewChaCha8([32]byte{'f', 'l', 'o', 'w', 'd', 'o', 'g'})
		if _, bigErr = io.CopyN(io.MultiWriter(f, h), rng, bigSize); bigErr != nil {
			f.Close()
			return
		}
		if bigErr = f.Close(); bigErr != nil {
			return
		}
		bigSum = hex.EncodeToString(h.Sum(nil))
	})
	if bigErr != nil {
		t.Fatalf("large file: %v", bigErr)
	}
	return bigPath, bigSum, bigSize
}

// countingHash hashes and counts what curl writes.
type countingHash struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (c *countingHash) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return c.h.Write(b)
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }
