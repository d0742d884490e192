package ca

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRotation(t *testing.T) {
	clk := newFakeClock()
	root := newTestRoot(t, 10*365*24*time.Hour)
	signer := &flakySigner{Signer: root.Signer}
	root.Signer = signer
	a, err := New(root, Options{
		IntermediateLifetime: 3 * time.Hour, // rotated at 2h
		RetryInterval:        5 * time.Millisecond,
		Now:                  clk.Now,
		Logger:               discardLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := signer.calls.Load(); got != 1 {
		t.Fatalf("root signed %d times at New, want 1", got)
	}
	spec := LeafSpec{DNSNames: []string{"rotate.example"}}
	before, err := a.Leaf(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"a.example", "b.example", "c.example"} {
		if _, err := a.Leaf(LeafSpec{DNSNames: []string{h}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := signer.calls.Load(); got != 1 {
		t.Fatalf("root signed %d times after minting leaves, want 1: leaves must not use the root", got)
	}
	old := a.Intermediate()
	startRun(t, a)

	clk.Advance(time.Hour + 50*time.Minute)
	time.Sleep(50 * time.Millisecond) // ten retry intervals: not due yet
	if a.Intermediate() != old {
		t.Fatal("rotated before RotateBefore")
	}

	clk.Advance(11 * time.Minute) // 2h01m: due
	eventually(t, "rotation", func() bool { return a.Intermediate() != old })
	nu := a.Intermediate()
	if got := signer.calls.Load(); got != 2 {
		t.Errorf("root signed %d times, want 2 (one per intermediate)", got)
	}
	if got := metricValue(t, a.m.rotations); got != 1 {
		t.Errorf("rotations = %v, want 1", got)
	}
	if got := metricValue(t, a.m.intermediateNA); got != float64(nu.NotAfter.Unix()) {
		t.Errorf("expiry gauge = %v, want %v", got, nu.NotAfter.Unix())
	}
	if !nu.NotAfter.After(old.NotAfter) {
		t.Error("new intermediate does not outlive the old one")
	}
	if got := metricValue(t, a.m.entries); got != 0 {
		t.Errorf("cache holds %v leaves of the old intermediate", got)
	}

	after, err := a.Leaf(spec)
	if err != nil {
		t.Fatal(err)
	}
	if after == before {
		t.Fatal("leaf of the old intermediate served after rotation")
	}
	if !bytes.Equal(after.Certificate[1], nu.Raw) || !bytes.Equal(after.Leaf.AuthorityKeyId, nu.SubjectKeyId) {
		t.Error("new leaf does not chain to the new intermediate")
	}
	chains := verifyLeaf(t, after.Certificate, a.Root(), "rotate.example", clk.Now())
	if !chains[0][1].Equal(nu) {
		t.Error("verified chain does not go through the new intermediate")
	}
	// The old leaf still verifies (connections holding it keep working).
	verifyLeaf(t, before.Certificate, a.Root(), "rotate.example", clk.Now())
	if err := a.Ready(); err != nil {
		t.Errorf("Ready after rotation: %v", err)
	}
}

func TestRotationFailureKeepsServing(t *testing.T) {
	clk := newFakeClock()
	root := newTestRoot(t, 10*365*24*time.Hour)
	signer := &flakySigner{Signer: root.Signer}
	root.Signer = signer
	logs := &syncBuffer{}
	a, err := New(root, Options{
		IntermediateLifetime: 3 * time.Hour,
		RotateBefore:         time.Hour,
		RetryInterval:        5 * time.Millisecond,
		Now:                  clk.Now,
		Logger:               slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	old := a.Intermediate()
	signer.fail.Store(true)
	startRun(t, a)
	clk.Advance(2*time.Hour + time.Minute)

	eventually(t, "retried rotation failures", func() bool { return metricValue(t, a.m.rotationFails) >= 3 })
	if a.Intermediate() != old {
		t.Fatal("intermediate replaced although the signer fails")
	}
	if err := a.Ready(); err != nil {
		t.Errorf("Ready while the old intermediate is valid: %v", err)
	}
	c, err := a.Leaf(LeafSpec{DNSNames: []string{"still.example"}})
	if err != nil {
		t.Fatalf("Leaf while rotation fails: %v", err)
	}
	if !bytes.Equal(c.Certificate[1], old.Raw) {
		t.Error("leaf not signed by the old intermediate")
	}
	verifyLeaf(t, c.Certificate, a.Root(), "still.example", clk.Now())
	if !strings.Contains(logs.String(), "rotation failed") || !strings.Contains(logs.String(), "ThrottlingException") {
		t.Errorf("no log line with the failure:\n%s", logs)
	}

	signer.fail.Store(false)
	eventually(t, "rotation after recovery", func() bool { return a.Intermediate() != old })
	fails := metricValue(t, a.m.rotationFails)
	time.Sleep(20 * time.Millisecond)
	if got := metricValue(t, a.m.rotationFails); got != fails {
		t.Errorf("failures kept counting after recovery: %v -> %v", fails, got)
	}
	if got := metricValue(t, a.m.rotations); got != 1 {
		t.Errorf("rotations = %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "succeeded after failures") {
		t.Error("no log line for the recovery")
	}
	c, err = a.Leaf(LeafSpec{DNSNames: []string{"still.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Certificate[1], a.Intermediate().Raw) {
		t.Error("leaf after recovery not signed by the new intermediate")
	}
}

func TestNotReadyWhenIntermediateExpires(t *testing.T) {
	clk := newFakeClock()
	root := newTestRoot(t, 10*365*24*time.Hour)
	signer := &flakySigner{Signer: root.Signer}
	root.Signer = signer
	a, err := New(root, Options{IntermediateLifetime: 3 * time.Hour, Now: clk.Now, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	signer.fail.Store(true)
	clk.Advance(2*time.Hour + time.Minute)
	a.rotateIfDue() // fails
	clk.Advance(time.Hour)
	if err := a.Ready(); !errors.Is(err, ErrNotReady) {
		t.Errorf("Ready = %v, want ErrNotReady", err)
	}
	if _, err := a.Leaf(LeafSpec{DNSNames: []string{"late.example"}}); !errors.Is(err, ErrNotReady) {
		t.Errorf("Leaf err = %v, want ErrNotReady", err)
	}
	signer.fail.Store(false)
	a.rotateIfDue()
	if err := a.Ready(); err != nil {
		t.Errorf("Ready after a late rotation: %v", err)
	}
}

func TestRotationStopsAtRootExpiry(t *testing.T) {
	clk := newFakeClock()
	root := newTestRoot(t, 4*time.Hour)
	logs := &syncBuffer{}
	a, err := New(root, Options{IntermediateLifetime: 3 * time.Hour, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(2*time.Hour + time.Minute)
	a.rotateIfDue() // capped at the root's NotAfter
	if !a.Intermediate().NotAfter.Equal(root.Cert.NotAfter) {
		t.Fatalf("intermediate NotAfter %v, want the root's %v", a.Intermediate().NotAfter, root.Cert.NotAfter)
	}
	in := a.Intermediate()
	clk.Advance(time.Hour)
	for range 3 {
		a.rotateIfDue()
	}
	if a.Intermediate() != in {
		t.Error("rotated although a new intermediate cannot outlive the current one")
	}
	if n := strings.Count(logs.String(), "root CA expires soon"); n != 1 {
		t.Errorf("root expiry logged %d times, want once", n)
	}
}

func TestNewErrors(t *testing.T) {
	good := newTestRoot(t, time.Hour)
	failing := newTestRoot(t, time.Hour)
	fs := &flakySigner{Signer: failing.Signer}
	fs.fail.Store(true)
	failing.Signer = fs
	mismatched := &Root{Cert: good.Cert, Signer: newTestRoot(t, time.Hour).Signer}

	tests := []struct {
		name string
		root *Root
		opts Options
		want string
	}{
		{"failing signer", failing, Options{}, "signing the first intermediate"},
		{"mismatched signer", mismatched, Options{}, "does not match"},
		{"nil root", nil, Options{}, "required"},
		{"expired root", good, Options{Now: func() time.Time { return time.Now().Add(2 * time.Hour) }}, "expired"},
		{"RotateBefore too long", good, Options{IntermediateLifetime: time.Hour, RotateBefore: time.Hour}, "RotateBefore"},
		{"negative cache", good, Options{CacheSize: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Logger = discardLogger()
			_, err := New(tt.root, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newTestAuthority(t, Options{Registerer: reg, CacheSize: 5})
	if _, err := a.Leaf(LeafSpec{DNSNames: []string{"m.example"}}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		got[mf.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	want := map[string]float64{
		"flowdog_ca_leaves_minted_total":                   1,
		"flowdog_ca_leaf_mint_errors_total":                0,
		"flowdog_ca_leaf_cache_hits_total":                 0,
		"flowdog_ca_leaf_cache_misses_total":               1,
		"flowdog_ca_leaf_cache_evictions_total":            0,
		"flowdog_ca_leaf_cache_entries":                    1,
		"flowdog_ca_leaf_cache_entries_max":                5,
		"flowdog_ca_rotations_total":                       0,
		"flowdog_ca_rotation_failures_total":               0,
		"flowdog_ca_intermediate_expiry_timestamp_seconds": float64(a.Intermediate().NotAfter.Unix()),
		"flowdog_ca_root_expiry_timestamp_seconds":         float64(a.Root().NotAfter.Unix()),
	}
	for name, v := range want {
		if g, ok := got[name]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", name, g, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d metrics registered, want %d", len(got), len(want))
	}
	// A second authority on the same registry is an error, not a panic, and
	// registers nothing.
	if _, err := New(newTestRoot(t, time.Hour), Options{Registerer: reg, Logger: discardLogger()}); err == nil {
		t.Error("second registration succeeded")
	}
}
