package netstackx

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/flowdog/flowdog/gwlb"
)

// TestConnectionsComeAndGo runs 1,000 intercepted connections, 50 at a
// time, and checks that endpoints, flows, handlers, stacks and goroutines
// all return to where they started.
func TestConnectionsComeAndGo(t *testing.T) {
	const (
		total      = 1000
		concurrent = 50
		tenantIdle = 2 * time.Second
	)
	l := newLab(t, labOpts{
		cfg: Config{TenantIdle: tenantIdle},
		gwlb: gwlb.Options{
			// Short, but not so short that a closed flow expires while
			// its last ACKs are still on their way on a loaded machine
			// (they would then take the fast path, to the real server).
			TCPClosedTimeout: time.Second,
			TCPIdleTimeout:   5 * time.Second,
			SweepInterval:    50 * time.Millisecond,
		},
	})
	_, client, server := l.hosts(0x1234, 0x99)
	echoServer(t, server, 7)
	settle()
	baseGoroutines := runtime.NumGoroutine()
	if st := l.engine.Stats(); st != (Stats{}) {
		t.Fatalf("Stats before any connection = %+v, want zero", st)
	}

	start := time.Now()
	sem := make(chan struct{}, concurrent)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []error
	for i := range total {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			dst := netip.AddrPortFrom(serverV4, 7)
			if i%2 == 1 {
				dst = netip.AddrPortFrom(serverV6, 7)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := client.DialTCP(ctx, dst)
			if err == nil {
				c.SetDeadline(time.Now().Add(20 * time.Second))
				msg := fmt.Appendf(nil, "connection %d", i)
				var got []byte
				got, err = roundTrip(c, msg)
				c.Close()
				if err == nil && !bytes.Equal(got, msg) {
					err = fmt.Errorf("echo %q, want %q", got, msg)
				}
			}
			if err != nil {
				mu.Lock()
				failures = append(failures, fmt.Errorf("connection %d to %v: %w", i, dst, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d connections in %v", total, time.Since(start).Round(time.Millisecond))
	for i, err := range failures {
		if i == 5 {
			t.Errorf("... %d failures in all", len(failures))
			break
		}
		t.Error(err)
	}
	if len(failures) > 0 {
		l.diag(t)
	}
	if n := l.metric("flowdog_netstack_dials_total", "result=accepted"); n != total {
		t.Errorf("accepted dials = %v, want %d", n, total)
	}

	// Closed flows leave the flow table after TCPClosedTimeout; their
	// endpoints go with them, while the tenant's stack lives on.
	eventually(t, 10*time.Second, "flows and endpoints to be released", func() bool {
		st := l.engine.Stats()
		return st.Stacks == 1 && st.Endpoints == 0 && st.Flows == 0 && st.Conns == 0 && l.dp.FlowCount() == 0
	})
	// Then the idle tenant's stack goes, and with it its goroutines.
	eventually(t, 3*tenantIdle, "the idle stack to be torn down", func() bool {
		return l.engine.Stats() == Stats{}
	})
	if n := l.metric("flowdog_netstack_stacks", ""); n != 0 {
		t.Errorf("flowdog_netstack_stacks = %v after teardown", n)
	}
	const slack = 3 // the runtime's and the test framework's own
	eventually(t, 5*time.Second, "goroutines to return to the baseline", func() bool {
		settle()
		return runtime.NumGoroutine() <= baseGoroutines+slack
	})
	t.Logf("goroutines: %d at the start, %d at the end", baseGoroutines, runtime.NumGoroutine())
	l.noViolations()
}

// settle lets goroutines that are finishing finish.
func settle() {
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
}
