package netstackx

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowdog/flowdog/gwlb"
	"github.com/flowdog/flowdog/gwlbsim"
)

// waitLimit bounds every wait for something that must happen; quiet is how
// long a negative check watches for something that must not.
const (
	waitLimit = 5 * time.Second
	quiet     = 200 * time.Millisecond
)

// heldLab is a lab whose server hands each accepted connection to the test
// and whose Handler, unless labOpts has one, hands each Conn to the test and
// holds it (neither reading nor writing) until the engine closes.
type heldLab struct {
	*lab
	client, server *gwlbsim.Host
	conns          chan *Conn
	accepted       chan net.Conn
}

// held is one connection of a heldLab, seen from all four ends.
type held struct {
	c      *Conn
	client net.Conn // the client host's end
	server net.Conn // the server host's end
}

const heldPort = 80

func newHeldLab(t *testing.T, o labOpts) *heldLab {
	t.Helper()
	hl := &heldLab{conns: make(chan *Conn, 16), accepted: make(chan net.Conn, 16)}
	if o.h == nil {
		o.h = func(ctx context.Context, c *Conn) {
			hl.conns <- c
			<-ctx.Done()
		}
	}
	hl.lab = newLab(t, o)
	_, hl.client, hl.server = hl.hosts(0x1234, 0x99)
	ln, err := hl.server.ListenTCP(heldPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hl.accepted <- c
		}
	}()
	return hl
}

// dial connects the client to dst:heldPort and returns the connection once
// both the Handler and the server have it.
func (hl *heldLab) dial(t *testing.T, dst netip.Addr) held {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := hl.client.DialTCP(ctx, netip.AddrPortFrom(dst, heldPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	h := held{client: cc}
	select {
	case h.c = <-hl.conns:
	case <-time.After(waitLimit):
		t.Fatal("the Handler never got the connection")
	}
	select {
	case h.server = <-hl.accepted:
		t.Cleanup(func() { h.server.Close() })
	case <-time.After(waitLimit):
		t.Fatal("the server never accepted the connection")
	}
	local := cc.LocalAddr().(*net.TCPAddr).AddrPort()
	if h.c.ClientAddr != local {
		t.Fatalf("Handler got the connection from %v, want %v", h.c.ClientAddr, local)
	}
	if p := h.server.RemoteAddr().(*net.TCPAddr).AddrPort(); p != local {
		t.Fatalf("server accepted a connection from %v, want %v", p, local)
	}
	return h
}

// leg is one side of a held connection: flowdog's end and the peer's.
type leg struct {
	name string
	get  func(held) (*TCPConn, net.Conn)
}

var legs = []leg{
	{"client", func(h held) (*TCPConn, net.Conn) { return tcpConn(h.c.Client), h.client }},
	{"upstream", func(h held) (*TCPConn, net.Conn) { return tcpConn(h.c.Upstream), h.server }},
}

func tcpConn(c net.Conn) *TCPConn {
	tc, ok := c.(*TCPConn)
	if !ok {
		panic("netstackx: a leg is not a *TCPConn")
	}
	return tc
}

// readableProbe records an OnReadable callback: how often it ran and
// whether the leg was readable when it did.
type readableProbe struct {
	fired    chan struct{}
	runs     atomic.Int32
	readable atomic.Bool
	stop     func() bool
}

func probe(c *TCPConn) *readableProbe {
	p := &readableProbe{fired: make(chan struct{})}
	p.stop = c.OnReadable(func() {
		if p.runs.Add(1) == 1 {
			p.readable.Store(c.Readable())
			close(p.fired)
		}
	})
	return p
}

func (p *readableProbe) hasFired() bool {
	select {
	case <-p.fired:
		return true
	default:
		return false
	}
}

// waitFired fails unless p's callback runs within waitLimit, and checks
// that the leg was readable when it did.
func (p *readableProbe) waitFired(t *testing.T, what string) {
	t.Helper()
	select {
	case <-p.fired:
	case <-time.After(waitLimit):
		t.Fatalf("OnReadable did not fire within %v after %s", waitLimit, what)
	}
	if !p.readable.Load() {
		t.Errorf("OnReadable fired after %s, but Readable() was false in the callback", what)
	}
}

// staysQuiet fails if p's callback runs within quiet.
func (p *readableProbe) staysQuiet(t *testing.T, what string) {
	t.Helper()
	select {
	case <-p.fired:
		t.Fatalf("OnReadable fired %s", what)
	case <-time.After(quiet):
	}
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		t.Fatalf("%s: not within %v", what, waitLimit)
	}
}

func readFull(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// readErr reads from c (which must have nothing left to read) and returns
// the error, failing if the read returns data or blocks.
func readErr(t *testing.T, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	n, err := c.Read(make([]byte, 64))
	if n != 0 {
		t.Errorf("read %d bytes, want none", n)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read blocked for %v: the connection is still open", waitLimit)
	}
	if err == nil {
		t.Fatal("read returned no error")
	}
	return err
}

// expectEnded checks that the peer's end of a leg that flowdog closed sees
// EOF or a reset (and no more data).
func expectEnded(t *testing.T, c net.Conn, who string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	got, err := io.ReadAll(c)
	if len(got) != 0 {
		t.Errorf("%s read %q after release, want nothing", who, got)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: the connection is still open after release (read: %v)", who, err)
	}
}

// TestOnReadableData checks Readable and OnReadable on both legs as data
// arrives from the peer: nothing before, the callback once it comes (on a
// goroutine where Readable is true), the bytes as sent, not readable once
// drained, and a callback registered on an already readable leg fires at
// once.
func TestOnReadableData(t *testing.T) {
	hl := newHeldLab(t, labOpts{})
	for _, lg := range legs {
		for _, dst := range []netip.Addr{serverV4, serverV6} {
			name := lg.name + "/IPv4"
			if dst.Is6() {
				name = lg.name + "/IPv6"
			}
			t.Run(name, func(t *testing.T) {
				h := hl.dial(t, dst)
				c, peer := lg.get(h)
				if c.Readable() {
					t.Fatal("Readable() before the peer sent anything")
				}
				p := probe(c)
				p.staysQuiet(t, "before the peer sent anything")
				if c.Readable() {
					t.Fatal("Readable() before the peer sent anything")
				}

				msg := []byte("first bytes from the " + lg.name + "'s peer")
				if _, err := peer.Write(msg); err != nil {
					t.Fatal(err)
				}
				p.waitFired(t, "the peer wrote")
				if !c.Readable() {
					t.Error("Readable() = false after OnReadable fired")
				}
				if p.stop() {
					t.Error("stop() = true after the callback ran")
				}
				if got := readFull(t, c, len(msg)); !bytes.Equal(got, msg) {
					t.Errorf("read %q, want %q", got, msg)
				}
				if c.Readable() {
					t.Error("Readable() = true with everything read")
				}

				// Already readable: the callback runs at once.
				msg2 := []byte("second")
				if _, err := peer.Write(msg2); err != nil {
					t.Fatal(err)
				}
				eventually(t, waitLimit, "the second write to arrive", c.Readable)
				p2 := probe(c)
				p2.waitFired(t, "registering on a readable leg")
				if got := readFull(t, c, len(msg2)); !bytes.Equal(got, msg2) {
					t.Errorf("read %q, want %q", got, msg2)
				}
				if n := p.runs.Load(); n != 1 {
					t.Errorf("the first callback ran %d times, want once", n)
				}
				if n := p2.runs.Load(); n != 1 {
					t.Errorf("the second callback ran %d times, want once", n)
				}
			})
		}
	}
	hl.noViolations()
}

// TestOnReadableCallbackMayBlock checks that the callback runs on a
// goroutine of its own: while it blocks, the leg keeps receiving, and the
// callback may itself read and register again.
func TestOnReadableCallbackMayBlock(t *testing.T) {
	hl := newHeldLab(t, labOpts{})
	for _, lg := range legs {
		t.Run(lg.name, func(t *testing.T) {
			h := hl.dial(t, serverV4)
			c, peer := lg.get(h)
			entered, unblock, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
			var again *readableProbe
			c.OnReadable(func() {
				defer close(done)
				close(entered)
				<-unblock
				again = probe(c) // data is waiting: fires at once
			})
			if _, err := peer.Write([]byte("one")); err != nil {
				t.Fatal(err)
			}
			wait(t, entered, "the callback to start")
			// The callback blocks; the stack goes on.
			if _, err := peer.Write([]byte("two")); err != nil {
				t.Fatal(err)
			}
			read := make(chan []byte, 1)
			go func() {
				c.SetReadDeadline(time.Now().Add(waitLimit))
				b := make([]byte, 6)
				n, _ := io.ReadFull(c, b)
				read <- b[:n]
			}()
			select {
			case got := <-read:
				if string(got) != "onetwo" {
					t.Fatalf("read %q while the callback blocks, want %q", got, "onetwo")
				}
			case <-time.After(2 * waitLimit):
				// A deadline cannot end a Read stuck on a lock.
				t.Fatal("a Read hangs while the callback blocks: the callback runs on the stack's goroutine")
			}
			c.SetReadDeadline(time.Time{})
			if _, err := peer.Write([]byte("three")); err != nil {
				t.Fatal(err)
			}
			eventually(t, waitLimit, "the third write to arrive", c.Readable)
			close(unblock)
			wait(t, done, "the callback to return")
			again.waitFired(t, "registering again from the callback, with data waiting")
			if got := readFull(t, c, 5); string(got) != "three" {
				t.Fatalf("read %q, want %q", got, "three")
			}
		})
	}
	hl.noViolations()
}

// TestOnReadableFIN checks that a FIN from the peer wakes OnReadable and
// that a Read then returns io.EOF: the client half-closes, the server
// closes.
func TestOnReadableFIN(t *testing.T) {
	hl := newHeldLab(t, labOpts{})
	for _, lg := range legs {
		t.Run(lg.name, func(t *testing.T) {
			h := hl.dial(t, serverV4)
			c, peer := lg.get(h)
			p := probe(c)
			if c.Readable() {
				t.Fatal("Readable() before the peer sent anything")
			}
			if lg.name == "client" {
				if err := peer.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			} else if err := peer.Close(); err != nil {
				t.Fatal(err)
			}
			p.waitFired(t, "the peer's FIN")
			if !c.Readable() {
				t.Error("Readable() = false after the peer's FIN")
			}
			if err := readErr(t, c); err != io.EOF {
				t.Errorf("Read after the peer's FIN = %v, want io.EOF", err)
			}
		})
	}
	hl.noViolations()
}

// TestOnReadableRST checks that a RST from the peer wakes OnReadable and
// that a Read then fails with a reset. The peer resets the way TCP does: it
// closes with received data it has not read.
func TestOnReadableRST(t *testing.T) {
	hl := newHeldLab(t, labOpts{})
	for _, lg := range legs {
		t.Run(lg.name, func(t *testing.T) {
			h := hl.dial(t, serverV4)
			c, peer := lg.get(h)
			peerHost := hl.client
			if lg.name == "upstream" {
				peerHost = hl.server
			}
			p := probe(c)
			if _, err := c.Write([]byte("xy")); err != nil {
				t.Fatal(err)
			}
			// One byte read, one left unread: closing now resets.
			if got := readFull(t, peer, 1); string(got) != "x" {
				t.Fatalf("peer read %q, want %q", got, "x")
			}
			if c.Readable() {
				t.Fatal("Readable() before the peer sent anything")
			}
			resets := peerHost.Stack().Stats().TCP.ResetsSent.Value()
			if err := peer.Close(); err != nil {
				t.Fatal(err)
			}
			eventually(t, waitLimit, "the peer to send a RST on closing with unread data", func() bool {
				return peerHost.Stack().Stats().TCP.ResetsSent.Value() > resets
			})
			p.waitFired(t, "the peer's RST")
			if !c.Readable() {
				t.Error("Readable() = false after the peer's RST")
			}
			err := readErr(t, c)
			if err == io.EOF || !strings.Contains(err.Error(), "reset") {
				t.Errorf("Read after the peer's RST = %v, want a connection reset", err)
			}
		})
	}
	hl.noViolations()
}

// TestOnReadableStop checks stop: called before any data it returns true
// (and false when called again), and the callback never runs; racing with
// data it returns true exactly when the callback does not run.
func TestOnReadableStop(t *testing.T) {
	hl := newHeldLab(t, labOpts{})
	for _, lg := range legs {
		t.Run(lg.name+"/before data", func(t *testing.T) {
			h := hl.dial(t, serverV4)
			c, peer := lg.get(h)
			stopped := probe(c)
			if !stopped.stop() {
				t.Fatal("stop() before any data = false, want true")
			}
			if stopped.stop() {
				t.Error("a second stop() = true, want false")
			}
			control := probe(c)
			if _, err := peer.Write([]byte("data")); err != nil {
				t.Fatal(err)
			}
			control.waitFired(t, "the peer wrote")
			stopped.staysQuiet(t, "after stop() returned true")
			if !c.Readable() {
				t.Error("Readable() = false with data waiting")
			}
			if got := readFull(t, c, 4); string(got) != "data" {
				t.Errorf("read %q, want %q", got, "data")
			}
		})
		t.Run(lg.name+"/racing data", func(t *testing.T) {
			h := hl.dial(t, serverV4)
			c, peer := lg.get(h)
			const rounds = 20
			var stopped []*readableProbe
			var ran int
			for i := range rounds {
				p := probe(c)
				if _, err := peer.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				if p.stop() {
					stopped = append(stopped, p)
				} else {
					ran++
					p.waitFired(t, "stop() returned false")
				}
				if got := readFull(t, c, 1); got[0] != byte(i) {
					t.Fatalf("round %d: read %d", i, got[0])
				}
			}
			t.Logf("%d rounds: stop() won %d, the callback %d", rounds, len(stopped), ran)
			time.Sleep(quiet) // negative check: give stopped callbacks time to run
			for _, p := range stopped {
				if p.hasFired() {
					t.Error("a callback ran although its stop() returned true")
				}
			}
		})
	}
	hl.noViolations()
}

// detachedConn is what a detaching Handler hands to the test.
type detachedConn struct {
	c       *Conn
	release func()
	served  chan struct{} // closed when the goroutine serving the legs ends
}

// relay copies from src to dst until either fails, leaving both open.
func relay(dst, src net.Conn) { io.Copy(dst, src) }

// TestDetachOutlivesHandler detaches in a Handler that returns at once: the
// connection stays open and counted, served by a goroutine the Handler
// started; release closes both legs and uncounts it, once.
func TestDetachOutlivesHandler(t *testing.T) {
	got := make(chan detachedConn, 1)
	returned := make(chan struct{})
	var engine atomic.Pointer[Engine]
	var inHandler atomic.Int64
	h := func(ctx context.Context, c *Conn) {
		defer close(returned)
		inHandler.Store(-1)
		if e := engine.Load(); e != nil {
			inHandler.Store(int64(e.Stats().Conns))
		}
		release := c.Detach()
		d := detachedConn{c: c, release: release, served: make(chan struct{})}
		go func() {
			defer close(d.served)
			var wg sync.WaitGroup
			wg.Go(func() { relay(c.Upstream, c.Client) })
			wg.Go(func() { relay(c.Client, c.Upstream) })
			wg.Wait()
		}()
		got <- d
	}
	hl := newHeldLab(t, labOpts{h: h})
	l := hl.lab
	engine.Store(l.engine)
	hd := hl.dialDetached(t, got)
	d, cc, sc := hd.d, hd.client, hd.server
	wait(t, returned, "the Handler to return")
	if n := inHandler.Load(); n != 1 {
		t.Errorf("Stats().Conns in the Handler = %d, want 1", n)
	}
	if st := l.engine.Stats(); st.Conns != 1 || st.Stacks != 1 {
		t.Errorf("Stats after the detaching Handler returned = %+v, want 1 connection and 1 stack", st)
	}
	if n := l.metric("flowdog_netstack_connections_active", ""); n != 1 {
		t.Errorf("flowdog_netstack_connections_active = %v after the detaching Handler returned, want 1", n)
	}

	// Both legs still carry bytes, both ways.
	if _, err := cc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if b := readFull(t, sc, 4); string(b) != "ping" {
		t.Fatalf("server read %q, want ping", b)
	}
	if _, err := sc.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if b := readFull(t, cc, 4); string(b) != "pong" {
		t.Fatalf("client read %q, want pong", b)
	}

	d.release()
	if st := l.engine.Stats(); st.Conns != 0 {
		t.Errorf("Stats().Conns after release = %d, want 0", st.Conns)
	}
	expectEnded(t, cc, "the client")
	expectEnded(t, sc, "the server")
	wait(t, d.served, "the goroutine serving the released legs to end")
	if _, err := d.c.Client.Write([]byte("x")); err == nil {
		t.Error("a write on the released client leg succeeded")
	}
	if _, err := d.c.Upstream.Write([]byte("x")); err == nil {
		t.Error("a write on the released upstream leg succeeded")
	}

	d.release() // harmless
	if st := l.engine.Stats(); st.Conns != 0 {
		t.Errorf("Stats().Conns after a second release = %d, want 0", st.Conns)
	}
	if n := l.metric("flowdog_netstack_connections_active", ""); n != 0 {
		t.Errorf("flowdog_netstack_connections_active = %v after two releases, want 0", n)
	}
	l.noViolations()
}

// TestDetachThenPanic: a Handler that detaches and then panics has its
// connection released all the same, and the release it was given stays
// harmless.
func TestDetachThenPanic(t *testing.T) {
	got := make(chan detachedConn, 1)
	hl := newHeldLab(t, labOpts{h: func(ctx context.Context, c *Conn) {
		got <- detachedConn{c: c, release: c.Detach()}
		panic("handler panics after Detach")
	}})
	h := hl.dialDetached(t, got)
	d := h.d
	eventually(t, waitLimit, "the panicking Handler's connection to be released", func() bool {
		return hl.engine.Stats().Conns == 0
	})
	expectEnded(t, h.client, "the client")
	expectEnded(t, h.server, "the server")
	if _, err := d.c.Client.Write([]byte("x")); err == nil {
		t.Error("a write on the client leg succeeded after the panic")
	}
	if _, err := d.c.Upstream.Write([]byte("x")); err == nil {
		t.Error("a write on the upstream leg succeeded after the panic")
	}
	d.release()
	if st := hl.engine.Stats(); st.Conns != 0 {
		t.Errorf("Stats().Conns after release following the panic = %d, want 0", st.Conns)
	}
	if n := hl.metric("flowdog_netstack_connections_active", ""); n != 0 {
		t.Errorf("flowdog_netstack_connections_active = %v, want 0", n)
	}
	hl.noViolations()
}

// heldDetached is a connection whose Handler detached it.
type heldDetached struct {
	d              detachedConn
	client, server net.Conn
}

// dialDetached dials through hl, whose Handler must send what it detached
// on got instead of holding the connection.
func (hl *heldLab) dialDetached(t *testing.T, got <-chan detachedConn) heldDetached {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := hl.client.DialTCP(ctx, netip.AddrPortFrom(serverV4, heldPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	h := heldDetached{client: cc}
	select {
	case h.d = <-got:
		// Before the lab's cleanup closes the engine, which would wait
		// forever for a connection that a failed test left detached.
		t.Cleanup(h.d.release)
	case <-time.After(waitLimit):
		t.Fatal("the Handler never got the connection")
	}
	select {
	case h.server = <-hl.accepted:
		t.Cleanup(func() { h.server.Close() })
	case <-time.After(waitLimit):
		t.Fatal("the server never accepted the connection")
	}
	return h
}

// TestDetachedConnKeepsTenant leaves a detached connection idle until its
// flow leaves the data path's flow table: the released endpoints wake the
// owner's OnReadable, the tenant's stack outlives TenantIdle for as long as
// the connection is not released, and goes once it is.
func TestDetachedConnKeepsTenant(t *testing.T) {
	const tenantIdle = 50 * time.Millisecond
	got := make(chan detachedConn, 1)
	woke := make(chan error, 1)
	hl := newHeldLab(t, labOpts{
		cfg: Config{TenantIdle: tenantIdle},
		gwlb: gwlb.Options{
			TCPIdleTimeout: time.Second,
			SweepInterval:  50 * time.Millisecond,
		},
		h: func(ctx context.Context, c *Conn) {
			d := detachedConn{c: c, release: c.Detach()}
			cl := tcpConn(c.Client)
			cl.OnReadable(func() {
				_, err := cl.Read(make([]byte, 1))
				woke <- err
			})
			got <- d
		},
	})
	h := hl.dialDetached(t, got)
	eventually(t, 10*time.Second, "the idle flow to leave the flow table", func() bool {
		return hl.dp.FlowCount() == 0 && hl.engine.Stats().Flows == 0
	})
	select {
	case err := <-woke:
		if err == nil {
			t.Error("the owner's Read after its flow left the table succeeded")
		}
	case <-time.After(waitLimit):
		t.Fatal("the owner's OnReadable did not fire when its flow left the table")
	}
	// Negative check: many TenantIdle periods (and sweeps) go by.
	time.Sleep(quiet)
	if st := hl.engine.Stats(); st.Stacks != 1 || st.Conns != 1 {
		t.Fatalf("Stats with an unreleased detached connection = %+v, want its stack and connection kept", st)
	}
	h.d.release()
	eventually(t, waitLimit, "the idle tenant to be torn down after release", func() bool {
		return hl.engine.Stats() == Stats{}
	})
}

// TestEngineCloseWakesDetachedOwner closes the engine under a detached,
// idle connection whose owner waits only with OnReadable: the legs' reset
// wakes it, it releases, and Close returns.
func TestEngineCloseWakesDetachedOwner(t *testing.T) {
	got := make(chan detachedConn, 1)
	woke := make(chan error, 1)
	returned := make(chan struct{})
	hl := newHeldLab(t, labOpts{h: func(ctx context.Context, c *Conn) {
		defer close(returned)
		d := detachedConn{c: c, release: c.Detach()}
		cl := tcpConn(c.Client)
		cl.OnReadable(func() {
			_, err := cl.Read(make([]byte, 1))
			woke <- err
			d.release()
		})
		got <- d
	}})
	h := hl.dialDetached(t, got)
	wait(t, returned, "the detaching Handler to return")
	if st := hl.engine.Stats(); st.Conns != 1 || st.Stacks != 1 {
		t.Fatalf("Stats with a detached connection = %+v, want 1 connection and 1 stack", st)
	}
	select {
	case err := <-woke:
		t.Fatalf("the owner woke before Close (read: %v)", err)
	default:
	}

	closed := make(chan error, 1)
	go func() { closed <- hl.engine.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		h.d.release() // let the cleanup's Close finish
		t.Fatal("Engine.Close hung on a detached connection whose owner waits with OnReadable")
	}
	select {
	case err := <-woke:
		if err == nil {
			t.Error("the owner's Read after Close succeeded")
		}
	default:
		t.Error("Close returned without the owner's OnReadable having fired")
	}
	if st := hl.engine.Stats(); st != (Stats{}) {
		t.Errorf("Stats after Close = %+v, want zero", st)
	}
	if n := hl.metric("flowdog_netstack_connections_active", ""); n != 0 {
		t.Errorf("flowdog_netstack_connections_active = %v after Close, want 0", n)
	}
}
