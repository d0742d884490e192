package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// memSample is flowdog's memory at one moment.
type memSample struct {
	rss        int64
	heapInuse  float64 // go_memstats_heap_inuse_bytes
	stackInuse float64 // go_memstats_stack_inuse_bytes
	goroutines float64
}

func (l *lab) memSample(ctx context.Context, settle time.Duration) (memSample, error) {
	var s memSample
	// Collect first, then wait: the scavenger returns freed pages to the
	// OS in the background, and RSS is read after it had time to.
	if err := l.fd.gc(ctx); err != nil {
		return s, err
	}
	select {
	case <-time.After(settle):
	case <-ctx.Done():
		return s, ctx.Err()
	}
	m, err := l.fd.metrics(ctx)
	if err != nil {
		return s, err
	}
	s.heapInuse, s.stackInuse, s.goroutines = m["go_memstats_heap_inuse_bytes"], m["go_memstats_stack_inuse_bytes"], m["go_goroutines"]
	s.rss, err = l.fd.rssBytes()
	return s, err
}

// memResult is the memory of n idle connections: after minus before.
type memResult struct {
	n             int
	before, after memSample
	open          time.Duration // to open the n connections
}

func (m memResult) per(f func(memSample) float64) float64 {
	return (f(m.after) - f(m.before)) / float64(m.n)
}

// memory measures flowdog's memory per idle HTTPS connection, FAST and
// INTERCEPT each in a fresh flowdog process, so that neither inherits
// the other's heap (Go keeps freed memory for reuse).
func memory(ctx context.Context, o *options, p *pki, h2 bool) ([]row, error) {
	var res [2]memResult
	for i, t := range targets(true) {
		r, err := memoryOf(ctx, o, p, t, h2)
		if err != nil {
			return nil, err
		}
		res[i] = r
		fmt.Printf("  %-9s %d idle HTTPS connections opened in %v (%.0f/s); flowdog RSS %.1f -> %.1f MiB, heap in use %.1f -> %.1f MiB, %0.f -> %0.f goroutines\n",
			t.name, r.n, r.open.Round(time.Millisecond), float64(r.n)/r.open.Seconds(),
			float64(r.before.rss)/(1<<20), float64(r.after.rss)/(1<<20),
			r.before.heapInuse/(1<<20), r.after.heapInuse/(1<<20), r.before.goroutines, r.after.goroutines)
	}
	kib := func(f func(memSample) float64) (string, string, float64, float64) {
		a, b := res[0].per(f)/1024, res[1].per(f)/1024
		// No ratio against a FAST figure that shows as 0.0: it would
		// only magnify noise.
		return fmt.Sprintf("%.1f", a), fmt.Sprintf("%.1f", b), ratioOrZero(b, a, 0.05), b
	}
	rss := func(s memSample) float64 { return float64(s.rss) }
	heap := func(s memSample) float64 { return s.heapInuse }
	stack := func(s memSample) float64 { return s.stackInuse }
	gor := func(s memSample) float64 { return s.goroutines }
	title := fmt.Sprintf("%d idle HTTPS connections", res[1].n)
	if h2 {
		title += " (HTTP/2)"
	}
	var rows []row
	f, in, ratio, v := kib(rss)
	// The aim: under 64 KiB of memory per idle intercepted connection.
	rows = append(rows, row{title + ": flowdog RSS per connection, KiB", f, in, ratio,
		aim{text: "INTERCEPT < 64 KiB", met: v < 64}})
	f, in, ratio, _ = kib(heap)
	rows = append(rows, row{title + ": Go heap in use per connection, KiB", f, in, ratio, aim{}})
	f, in, ratio, _ = kib(stack)
	rows = append(rows, row{title + ": goroutine stacks per connection, KiB", f, in, ratio, aim{}})
	a, b := res[0].per(gor), res[1].per(gor)
	rows = append(rows, row{title + ": goroutines per connection", fmt.Sprintf("%.2f", a), fmt.Sprintf("%.2f", b), 0, aim{}})
	return rows, nil
}

// ratioOrZero is a/b, or 0 (no ratio) when b < minB or a <= 0.
func ratioOrZero(a, b, minB float64) float64 {
	if b < minB || a <= 0 {
		return 0
	}
	return a / b
}

func memoryOf(ctx context.Context, o *options, p *pki, t target, h2 bool) (r memResult, err error) {
	l, err := newLab(ctx, o, p, false)
	if err != nil {
		return r, err
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		err = errors.Join(err, l.Close())
	}()
	// Warm up with a first batch, kept open and outside the count: the
	// tenant's netstack, the minted leaf, pools and caches are one-time
	// costs, not per-connection ones.
	warm, err := l.idleConns(ctx, t, o.connPar, o.connPar, h2)
	conns = append(conns, warm...)
	if err != nil {
		return r, err
	}
	if r.before, err = l.memSample(ctx, o.settle); err != nil {
		return r, err
	}
	start := time.Now()
	idle, err := l.idleConns(ctx, t, o.conns, o.connPar, h2)
	r.open = time.Since(start)
	conns = append(conns, idle...)
	if err != nil {
		return r, err
	}
	r.n = len(idle)
	if r.after, err = l.memSample(ctx, o.settle); err != nil {
		return r, err
	}
	if t.intercepted && o.heapprofile != "" {
		path := o.heapprofile
		if h2 {
			path += ".h2"
		}
		if err := l.fd.saveHeapProfile(ctx, path); err != nil {
			return r, err
		}
	}
	return r, l.fd.Alive()
}
