package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowdog/flowdog/internal/config"
	"github.com/flowdog/flowdog/internal/testutil"
)

func runMain(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = realMain(args, &o, &e)
	return code, o.String(), e.String()
}

func TestConfigDefaultIsValidAndRoundTrips(t *testing.T) {
	code, out, _ := runMain("config", "default")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	c, err := config.Parse([]byte(out))
	if err != nil {
		t.Fatalf("printed default does not parse: %v", err)
	}
	if c.GWLB.Listen != "0.0.0.0:6081" || c.Health.Listen != ":8080" || c.Admin.Listen != "127.0.0.1:9090" {
		t.Errorf("defaults: %+v %+v %+v", c.GWLB, c.Health, c.Admin)
	}
	if !strings.Contains(out, "# ") {
		t.Error("default config has no comments")
	}
}

func TestBadConfigOrFlagExitsNonZeroNamingTheField(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("gwlb:\n  listen: 0.0.0.0:6081\n  worker: 2\n"), 0o600)
	invalid := filepath.Join(dir, "invalid.yaml")
	os.WriteFile(invalid, []byte("policy:\n  rules:\n    - action: reflect\n"), 0o600)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"run", "--config", bad}, "worker"},
		{[]string{"run", "--config", invalid}, "policy.rules[0].action"},
		{[]string{"run", "--config", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
		{[]string{"run", "--workers", "lots"}, "-workers"},
		{[]string{"run", "--drain", "forever"}, "-drain"},
		{[]string{"run", "--listen", "localhost"}, "gwlb.listen"},
		{[]string{"run", "--log-level", "chatty"}, "log.level"},
		{[]string{"run", "--nope"}, "nope"},
		{[]string{"config", "check", invalid}, "policy.rules[0].action"},
		{[]string{"frobnicate"}, "unknown command"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, _, stderr := runMain(c.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("stderr %q lacks %q", stderr, c.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runMain("version")
	if code != 0 || !strings.HasPrefix(out, "flowdog ") {
		t.Errorf("version: %d %q", code, out)
	}
}

// testConfig is the defaults on loopback with ephemeral ports.
func testConfig(t testing.TB) *config.Config {
	c := config.Default()
	c.GWLB.Listen = "127.0.0.1:0"
	c.GWLB.Workers = 2
	c.Health.Listen = "127.0.0.1:0"
	c.Admin.Listen = "127.0.0.1:0"
	c.Shutdown.Drain = config.Duration(time.Second)
	c.Log.Level = "warn"
	c.StateDir = t.TempDir()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// fastConfig is testConfig with every flow on the fast path.
func fastConfig(t testing.TB) *config.Config {
	c := testConfig(t)
	c.Policy.Rules = nil
	return c
}

// startDaemon runs flowdog in-process; the returned cancel is SIGTERM.
// The returned channel is closed when run returns; *errp holds its error.
func startDaemon(t testing.TB, cfg *config.Config) (d *daemon, cancel context.CancelFunc, done <-chan struct{}, errp *error) {
	t.Helper()
	testutil.NeedRaw(t)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *daemon, 1)
	exited := make(chan struct{})
	errp = new(error)
	go func() {
		*errp = run(ctx, cfg, newLogger(cfg.Log, io.Discard), ready)
		close(exited)
	}()
	select {
	case d = <-ready:
	case <-exited:
		t.Fatalf("flowdog did not start: %v", *errp)
	case <-time.After(10 * time.Second):
		t.Fatal("flowdog did not start in 10s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Error("flowdog did not stop")
		}
	})
	return d, cancel, exited, errp
}

func healthCode(t testing.TB, d *daemon) int {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + d.health.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestSIGTERMTurnsHealthTo503ThenDrainsAndExits(t *testing.T) {
	cfg := testConfig(t)
	d, sigterm, done, errp := startDaemon(t, cfg)
	deadline := time.Now().Add(5 * time.Second)
	for healthCode(t, d) != 200 {
		if time.Now().After(deadline) {
			t.Fatal("never healthy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	sigterm()
	// Health fails at once, while the data path keeps running during the drain.
	deadline = time.Now().Add(time.Second)
	for healthCode(t, d) != 503 {
		if time.Now().After(deadline) {
			t.Fatal("health did not turn 503 after SIGTERM")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := d.dp.Healthy(); err != nil {
		t.Errorf("data path stopped before the drain ended: %v", err)
	}
	select {
	case <-done:
		if *errp != nil {
			t.Fatalf("run: %v", *errp)
		}
		if el := time.Since(start); el < 900*time.Millisecond {
			t.Errorf("exited after %v, before the 1s drain", el)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not exit after the drain")
	}
}

func TestMetricsEndpoint(t *testing.T) {
	d, _, _, _ := startDaemon(t, testConfig(t))
	resp, err := http.Get("http://" + d.admin.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, m := range []string{"flowdog_gwlb_packets_total", "flowdog_gwlb_dropped_packets_total", "flowdog_gwlb_flows_active",
		"flowdog_gwlb_socket_receive_drops_total", "flowdog_build_info", "go_goroutines"} {
		if !bytes.Contains(b, []byte(m)) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}
