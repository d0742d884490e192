// Package testutil holds what flowdog's tests share: the raw-socket gate,
// reading Prometheus metrics, and polling for a condition.
package testutil

import (
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

// NeedRaw skips the test outside CI when raw sockets (the data path's reply
// path) are not allowed; in CI (CI set) their absence fails the test, so a
// skipped test never counts as passing there.
func NeedRaw(t testing.TB) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err == nil {
		unix.Close(fd)
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("raw sockets are required in CI: %v", err)
	}
	t.Skipf("needs CAP_NET_RAW (run as root, or set CI to make this a failure): %v", err)
}

// Metric sums the counters and gauges called name in reg whose labels
// include every "k=v" of labels (comma-separated; "" matches all).
func Metric(t testing.TB, reg prometheus.Gatherer, name, labels string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want string) bool {
	if want == "" {
		return true
	}
	for _, kv := range strings.Split(want, ",") {
		k, v, _ := strings.Cut(kv, "=")
		found := false
		for _, lp := range m.GetLabel() {
			found = found || lp.GetName() == k && lp.GetValue() == v
		}
		if !found {
			return false
		}
	}
	return true
}

// Eventually polls cond every 10 ms until it holds, failing the test after d.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// HeapPeak samples the heap in use every 20 ms until the returned function
// is called, which returns the highest sample: streaming tests use it to
// show that a body is not buffered.
func HeapPeak() (stop func() uint64) {
	var peak uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		return peak
	}
}

// Echo serves ln until it is closed, echoing each connection back until
// its client half-closes.
func Echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			io.Copy(c, c)
			c.Close()
		}()
	}
}

// GoroutinesIn counts the goroutines whose stack has a frame of a function
// whose name starts with one of prefixes ("github.com/x/y.(*T).serve").
func GoroutinesIn(prefixes ...string) int {
	count := 0
	for _, g := range allStacks() {
		for _, line := range strings.Split(g, "\n") {
			if hasAnyPrefix(line, prefixes) {
				count++
				break
			}
		}
	}
	return count
}

// StacksIn returns the stacks of the goroutines GoroutinesIn counts, for
// a failure's message.
func StacksIn(prefixes ...string) string {
	var out []string
	for _, g := range allStacks() {
		for _, line := range strings.Split(g, "\n") {
			if hasAnyPrefix(line, prefixes) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// allStacks is every goroutine's stack, one per element.
func allStacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
