package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flowdog/flowdog/ca"
	"github.com/flowdog/flowdog/internal/testutil"
)

// Fuzz targets for the HTTP/2 legs (h2conn.go, h2server.go, h2client.go),
// through the whole intercepting path as the rig runs it: TLS with ALPN h2
// on the client leg, and an upstream that speaks HTTP/2 or HTTP/1.1.
//
// FuzzH2ClientFrames is what a client sends to flowdog's HTTP/2 server
// after a valid preface and SETTINGS; FuzzH2ServerFrames is what a server
// sends to flowdog's HTTP/2 client, after its SETTINGS, while a client's
// request is in flight. Whatever the bytes, the proxy must not panic, must
// end the connection when the peer does (or answer the request in flight),
// and must then let go of everything the connection held: its goroutines,
// its parked state, the rig's detached connection.

// fuzzGoroutines are the goroutines a connection may hold: the proxy's
// connection code, and the rig's readiness pollers (one left running is a
// park the proxy never undid).
var fuzzGoroutines = []string{
	"github.com/flowdog/flowdog/proxy.(*h2",
	"github.com/flowdog/flowdog/proxy.newH2",
	"github.com/flowdog/flowdog/proxy.(*Proxy).Serve",
	"github.com/flowdog/flowdog/proxy.(*conn).",
	"github.com/flowdog/flowdog/proxy.(*httpHandler)",
	"github.com/flowdog/flowdog/proxy.(*h1Upstream)",
	"github.com/flowdog/flowdog/proxy.(*pollTCP).OnReadable",
	"github.com/flowdog/flowdog/proxy.apart",
}

// fuzzDeadline bounds each wait of an iteration: the proxy must have
// answered, closed or let go by then. Iterations take milliseconds; only a
// hang comes near it.
const fuzzDeadline = 3 * time.Second

// panicWatch is the rig's logger: it keeps the records that tell of a
// recovered panic. The frame readers recover theirs without counting
// flowdog_proxy_panics_total (h2Conn.wakeRead); such a panic shows only in
// the error a request then fails with, which the proxy logs.
type panicWatch struct {
	mu     sync.Mutex
	seen   []string
	recent []string // the last records, for a failure's message
}

func (p *panicWatch) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.recent, "\n")
}

func (p *panicWatch) Enabled(context.Context, slog.Level) bool { return true }

func (p *panicWatch) Handle(_ context.Context, r slog.Record) error {
	hit := strings.Contains(r.Message, "panic")
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		v := a.Value.String()
		hit = hit || strings.Contains(v, "panic reading frames")
		fmt.Fprintf(&b, " %s=%q", a.Key, v)
		return true
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if hit {
		p.seen = append(p.seen, b.String())
	}
	if len(p.recent) >= 20 {
		p.recent = p.recent[1:]
	}
	p.recent = append(p.recent, r.Time.Format("15:04:05.000000 ")+b.String())
	return nil
}

func (p *panicWatch) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p *panicWatch) WithGroup(string) slog.Handler      { return p }

func (p *panicWatch) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.seen
	p.seen = nil
	return s
}

// fuzzRig is a rig and a TLS client configuration for it that resumes
// sessions (an iteration's handshake then costs little).
type fuzzRig struct {
	*rig
	cfg *tls.Config
}

func newFuzzRig(tb testing.TB, upstream string, blocking bool, o Options) fuzzRig {
	r := newRigMode(tb, upstream, o, blocking)
	return fuzzRig{r, &tls.Config{
		RootCAs: r.rootPool(), ServerName: "example.com", NextProtos: []string{"h2"},
		ClientSessionCache: tls.NewLRUClientSessionCache(4),
	}}
}

func (r fuzzRig) dial(t *testing.T) *tls.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", r.addr(), fuzzDeadline)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, r.cfg)
	tc.SetDeadline(time.Now().Add(fuzzDeadline))
	if err := tc.Handshake(); err != nil {
		c.Close()
		t.Fatalf("TLS handshake with the proxy: %v", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tc.Close()
		t.Fatalf("negotiated %q with the proxy, want h2", p)
	}
	return tc
}

// canary sends a GET on a new connection: it must be answered 200.
func (r fuzzRig) canary(t *testing.T, prefix []byte) error {
	t.Helper()
	c := r.dial(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(fuzzDeadline))
	get := buildFrames(func(b *h2Frames) { b.headers(1, true, h2Req("GET", "/canary")...) })
	frames := readFuzzFrames(c, false)
	defer func() {
		c.Close()
		for range frames {
		}
	}()
	if _, err := c.Write(slices.Concat(prefix, get)); err != nil {
		return err
	}
	var events []string
	status := ""
	for ev := range frames {
		events = append(events, ev.String())
		switch {
		case ev.err != nil || ev.goAway || ev.rst:
			return fmt.Errorf("the canary saw %v", events)
		case ev.stream == 1 && ev.headers && status == "":
			status = ev.status
		}
		if ev.stream == 1 && ev.end {
			if status != "200" {
				return fmt.Errorf("the canary saw %v", events)
			}
			return nil
		}
	}
	return fmt.Errorf("the canary saw %v", events)
}

// settle waits until the proxy let go of the connection: no goroutine of
// its connection code beyond base, every connection the rig detached
// released, none parked. Then no panic may have been recovered.
func (r fuzzRig) settle(t *testing.T, watch *panicWatch, base int, input func() string) {
	t.Helper()
	deadline := time.Now().Add(fuzzDeadline)
	for {
		g := testutil.GoroutinesIn(fuzzGoroutines...)
		det, rel := r.detached.Load(), r.released.Load()
		parked := r.counter(t, r.p.m.parked)
		if g <= base && det == rel && parked == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v after the connection closed: %d goroutines in the proxy's connection code (want %d), "+
				"%d connections detached but %d released, %v parked; %s\n%s",
				fuzzDeadline, g, base, det, rel, parked, input(), testutil.StacksIn(fuzzGoroutines...))
		}
		time.Sleep(time.Millisecond)
	}
	if n := r.counter(t, r.p.m.panics); n != 0 {
		t.Fatalf("%v panics; %s", n, input())
	}
	if seen := watch.take(); len(seen) > 0 {
		t.Fatalf("a panic was recovered: %s; %s", strings.Join(seen, "; "), input())
	}
}

// fuzzEv is a frame (or the end of the connection) as the client saw it,
// copied out of the Framer's buffers.
type fuzzEv struct {
	stream  uint32
	pingAck bool // the ACK of fuzzPing
	headers bool
	status  string // of HEADERS
	data    []byte // of DATA
	end     bool   // END_STREAM
	rst     bool
	goAway  bool
	last    uint32        // of GOAWAY
	code    http2.ErrCode // of RST_STREAM or GOAWAY
	err     error         // the connection ended
}

func (e fuzzEv) String() string {
	switch {
	case e.err != nil:
		return "end: " + e.err.Error()
	case e.headers:
		return fmt.Sprintf("HEADERS %d status=%q end=%v", e.stream, e.status, e.end)
	case e.data != nil:
		return fmt.Sprintf("DATA %d %q end=%v", e.stream, e.data, e.end)
	case e.rst:
		return fmt.Sprintf("RST_STREAM %d %v", e.stream, e.code)
	case e.goAway:
		return fmt.Sprintf("GOAWAY last=%d %v", e.last, e.code)
	}
	return fmt.Sprintf("frame on %d", e.stream)
}

// fuzzPing is the client's PING after the fuzz bytes: its ACK says that
// the proxy read and handled every frame before it.
var fuzzPing = [8]byte{'f', 'l', 'o', 'w', 'd', 'o', 'g', '!'}

// readFuzzFrames reads the proxy's frames into a channel until the connection
// ends, answering DATA with WINDOW_UPDATE when windows is set. Header
// blocks are decoded: a frame the Framer cannot take is the proxy's
// malformed output. The channel is closed after the end.
func readFuzzFrames(c *tls.Conn, windows bool) <-chan fuzzEv {
	ch := make(chan fuzzEv, 1024)
	fr := http2.NewFramer(nil, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.SetMaxReadFrameSize(1<<24 - 1) // whatever the fuzz's SETTINGS allow
	wfr := http2.NewFramer(c, nil)
	go func() {
		defer close(ch)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				ch <- fuzzEv{err: err}
				return
			}
			ev := fuzzEv{stream: f.Header().StreamID}
			switch f := f.(type) {
			case *http2.PingFrame:
				ev.pingAck = f.IsAck() && f.Data == fuzzPing
			case *http2.DataFrame:
				if n := uint32(len(f.Data())); windows && n > 0 {
					wfr.WriteWindowUpdate(0, n)
					if !f.StreamEnded() {
						wfr.WriteWindowUpdate(f.StreamID, n)
					}
				}
				ev.data, ev.end = bytes.Clone(f.Data()), f.StreamEnded()
			case *http2.MetaHeadersFrame:
				ev.headers, ev.status, ev.end = true, f.PseudoValue("status"), f.StreamEnded()
			case *http2.RSTStreamFrame:
				ev.rst, ev.code = true, f.ErrCode
			case *http2.GoAwayFrame:
				ev.goAway, ev.last, ev.code = true, f.LastStreamID, f.ErrCode
			}
			ch <- ev
		}
	}()
	return ch
}

// malformedFrames reports whether err, which ended the client's reading, says
// that the proxy sent frames no HTTP/2 peer may send (rather than that
// the connection ended).
func malformedFrames(err error) bool {
	var ce http2.ConnectionError
	var se http2.StreamError
	return errors.As(err, &ce) || errors.As(err, &se) || errors.Is(err, http2.ErrFrameTooLarge)
}

// connEnded reports whether err is the connection's end, not a timeout.
func connEnded(err error) bool { return !isTimeout(err) }

// wholeFrames reports whether b ends on a frame boundary (or at a frame
// the proxy refuses at its header, which ends the connection): otherwise
// the proxy waits for the rest of the last frame, and a PING after b would
// be taken as part of it.
func wholeFrames(b []byte) bool {
	for len(b) > 0 {
		if len(b) < 9 {
			return false
		}
		n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		if n > h2DefaultMaxFrame {
			return true
		}
		if len(b) < 9+n {
			return false
		}
		b = b[9+n:]
	}
	return true
}

// h2Frames builds frames with x/net's Framer (illegal ones too) and a
// fresh hpack encoder, as the peer's first header block starts one.
type h2Frames struct {
	buf bytes.Buffer
	fr  *http2.Framer
	hb  bytes.Buffer
	enc *hpack.Encoder
}

func newH2Frames() *h2Frames {
	b := &h2Frames{}
	b.fr = http2.NewFramer(&b.buf, nil)
	b.fr.AllowIllegalWrites = true
	b.enc = hpack.NewEncoder(&b.hb)
	return b
}

// block encodes name, value pairs as a header block.
func (b *h2Frames) block(kv ...string) []byte {
	b.hb.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		b.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(b.hb.Bytes())
}

func (b *h2Frames) headers(id uint32, end bool, kv ...string) {
	b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.block(kv...), EndStream: end, EndHeaders: true})
}

func (b *h2Frames) data(id uint32, end bool, s string) { b.fr.WriteData(id, end, []byte(s)) }

func (b *h2Frames) raw(t http2.FrameType, flags http2.Flags, id uint32, payload []byte) {
	b.fr.WriteRawFrame(t, flags, id, payload)
}

func (b *h2Frames) bytes() []byte { return bytes.Clone(b.buf.Bytes()) }

func buildFrames(f func(*h2Frames)) []byte {
	b := newH2Frames()
	f(b)
	return b.bytes()
}

// h2Req is a request's pseudo-header fields, then regular ones.
func h2Req(method, path string, kv ...string) []string {
	return append([]string{":method", method, ":scheme", "https", ":authority", "example.com", ":path", path}, kv...)
}

// h2ClientSeeds are what clients send: well-formed sequences, then
// malformed ones.
func h2ClientSeeds() [][]byte {
	get := h2Req("GET", "/")
	big := strings.Repeat("v", 20000)
	s := []func(*h2Frames){
		func(b *h2Frames) { b.headers(1, true, get...) },
		// A POST with DATA and trailers.
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/upload", "content-type", "text/plain", "trailer", "x-sum")...)
			b.data(1, false, "hello, ")
			b.data(1, false, "world")
			b.headers(1, true, "x-sum", "abc")
		},
		// A POST whose Content-Length matches.
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/cl", "content-length", "5")...)
			b.data(1, true, "hello")
		},
		// Three requests, the later ones from hpack's dynamic table.
		func(b *h2Frames) {
			b.headers(1, true, h2Req("GET", "/a", "user-agent", "fuzz", "cookie", "a=1", "cookie", "b=2")...)
			b.headers(3, true, h2Req("GET", "/a", "user-agent", "fuzz")...)
			b.headers(5, true, h2Req("HEAD", "/b", "user-agent", "fuzz")...)
		},
		func(b *h2Frames) {
			b.fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
			b.headers(1, true, get...)
			b.fr.WritePing(true, [8]byte{})
		},
		func(b *h2Frames) {
			b.fr.WriteWindowUpdate(0, 1<<20)
			b.headers(1, false, h2Req("POST", "/w")...)
			b.fr.WriteWindowUpdate(1, 1<<16)
			b.data(1, true, "x")
		},
		// Requests reset: before their body, and after their END_STREAM.
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/reset")...)
			b.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			b.headers(3, true, get...)
			b.fr.WriteRSTStream(3, http2.ErrCodeCancel)
			b.data(1, true, "late")
		},
		func(b *h2Frames) {
			b.fr.WritePriority(3, http2.PriorityParam{StreamDep: 1, Weight: 15, Exclusive: true})
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.block(get...), EndStream: true, EndHeaders: true,
				Priority: http2.PriorityParam{StreamDep: 0, Weight: 200}})
			b.fr.WritePriority(1, http2.PriorityParam{StreamDep: 3})
		},
		// A header block over CONTINUATIONs.
		func(b *h2Frames) {
			blk := b.block(h2Req("GET", "/cont", "x-long", strings.Repeat("c", 300))...)
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:5], EndStream: true})
			b.fr.WriteContinuation(1, false, blk[5:100])
			b.fr.WriteContinuation(1, true, blk[100:])
		},
		// Padding.
		func(b *h2Frames) {
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.block(h2Req("POST", "/pad")...), EndHeaders: true, PadLength: 17})
			b.fr.WriteDataPadded(1, false, []byte("padded"), make([]byte, 40))
			b.fr.WriteDataPadded(1, true, nil, make([]byte, 255))
		},
		// Settings changes on the way.
		func(b *h2Frames) {
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10},
				http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20},
				http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0},
				http2.Setting{ID: http2.SettingEnablePush, Val: 0},
				http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1},
				http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 100})
			b.fr.WriteSettingsAck()
			b.headers(1, true, get...)
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		},
		func(b *h2Frames) {
			b.headers(1, true, get...)
			b.fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye"))
		},
		func(b *h2Frames) {
			b.fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, nil)
			b.headers(1, true, get...)
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("PUT", "/expect", "expect", "100-continue", "content-length", "3")...)
			b.data(1, true, "abc")
		},
		func(b *h2Frames) {
			b.headers(1, true, h2Req("OPTIONS", "*")...)
			b.headers(3, true, ":method", "CONNECT", ":authority", "example.com:443")
		},
		func(b *h2Frames) {
			// A header block whose CONTINUATION never comes.
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.block(h2Req("GET", "/big", "x-big", big)...)[:16000], EndStream: true})
		},
		// Streams over SETTINGS_MAX_CONCURRENT_STREAMS: the last is refused.
		func(b *h2Frames) {
			for id := uint32(1); id <= 2*h2MaxStreams+1; id += 2 {
				b.headers(id, false, h2Req("POST", "/hold")...)
			}
		},
		// Malformed from here on.
		func(b *h2Frames) { b.data(0, true, "x") },
		func(b *h2Frames) { b.data(1, true, "idle") },
		func(b *h2Frames) { b.headers(2, true, get...) },
		func(b *h2Frames) { b.fr.WriteContinuation(1, true, b.block(get...)) },
		func(b *h2Frames) {
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.block(get...)[:3], EndStream: true})
			b.fr.WritePing(false, [8]byte{})
		},
		func(b *h2Frames) {
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.block(get...)[:3], EndStream: true})
			b.fr.WriteContinuation(3, true, []byte{0x82})
		},
		func(b *h2Frames) { b.raw(http2.FrameData, 0, 1, make([]byte, h2DefaultMaxFrame+1)) },
		func(b *h2Frames) {
			b.fr.WriteWindowUpdate(0, 1<<31-1)
			b.fr.WriteWindowUpdate(0, 1<<31-1)
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/w")...)
			b.fr.WriteWindowUpdate(1, 1<<31-1)
			b.fr.WriteWindowUpdate(1, 1<<31-1)
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/w")...)
			b.fr.WriteWindowUpdate(1, 0)
			b.fr.WriteWindowUpdate(0, 0)
		},
		func(b *h2Frames) { b.fr.WriteWindowUpdate(7, 1) },
		func(b *h2Frames) {
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff, 0x7f}, EndStream: true, EndHeaders: true})
		},
		func(b *h2Frames) { b.headers(1, true, h2Req("GET", "/", "Upper", "x")...) },
		func(b *h2Frames) { b.headers(1, true, h2Req("GET", "/", "connection", "close", "te", "gzip")...) },
		func(b *h2Frames) { b.headers(1, true, ":method", "GET", ":scheme", "https") },
		func(b *h2Frames) { b.headers(1, true, h2Req("GET", "/", ":protocol", "websocket")...) },
		func(b *h2Frames) {
			b.headers(1, true, "x-first", "1", ":method", "GET", ":path", "/", ":scheme", "https")
		},
		func(b *h2Frames) { b.headers(1, true, h2Req("GET", "/", ":status", "200")...) },
		func(b *h2Frames) { b.headers(1, true, h2Req("GET", "no-slash")...) },
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/cl", "content-length", "3", "content-length", "4")...)
			b.headers(3, false, h2Req("POST", "/cl", "content-length", "-1")...)
			b.headers(5, true, h2Req("POST", "/cl", "content-length", "3")...)
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/cl", "content-length", "3")...)
			b.data(1, false, "abcd")
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/cl", "content-length", "3")...)
			b.data(1, true, "ab")
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/t")...)
			b.headers(1, false, "x-trailer", "not the end")
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/t")...)
			b.headers(1, true, ":path", "/again")
		},
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/t")...)
			b.headers(1, true, "content-length", "0", "host", "x")
		},
		func(b *h2Frames) {
			b.headers(1, true, get...)
			b.data(1, true, "after end")
			b.headers(1, true, get...)
		},
		func(b *h2Frames) {
			b.headers(5, true, get...)
			b.headers(3, true, get...)
		},
		func(b *h2Frames) { b.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1}) },
		func(b *h2Frames) {
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.block(get...), EndStream: true, EndHeaders: true,
				Priority: http2.PriorityParam{StreamDep: 1}})
		},
		func(b *h2Frames) {
			b.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: b.block(get...), EndHeaders: true})
		},
		func(b *h2Frames) { b.fr.WriteRSTStream(9, http2.ErrCodeCancel) },
		func(b *h2Frames) { b.fr.WriteRSTStream(0, http2.ErrCodeCancel) },
		func(b *h2Frames) {
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
		},
		func(b *h2Frames) {
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100})
		},
		func(b *h2Frames) { b.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2}) },
		func(b *h2Frames) {
			b.headers(1, false, h2Req("POST", "/w")...)
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
			b.fr.WriteWindowUpdate(1, 1<<30)
		},
		func(b *h2Frames) { b.raw(http2.FrameSettings, 0, 0, []byte{0, 4, 0}) },
		func(b *h2Frames) { b.raw(http2.FrameSettings, http2.FlagSettingsAck, 0, []byte{0, 4, 0, 0, 0, 1}) },
		func(b *h2Frames) { b.raw(http2.FrameSettings, 0, 1, nil) },
		func(b *h2Frames) { b.raw(http2.FramePing, 0, 0, []byte{1, 2, 3}) },
		func(b *h2Frames) { b.raw(http2.FramePing, 0, 1, make([]byte, 8)) },
		func(b *h2Frames) { b.raw(http2.FrameGoAway, 0, 1, make([]byte, 8)) },
		func(b *h2Frames) { b.raw(0x20, 0xff, 1, []byte("unknown frame type")) },
		func(b *h2Frames) { b.raw(http2.FrameData, http2.FlagDataPadded, 1, []byte{200, 'x'}) },
		func(b *h2Frames) {
			b.raw(http2.FrameHeaders, http2.FlagHeadersPadded|http2.FlagHeadersEndHeaders, 1, []byte{9, 0x82})
		},
		func(b *h2Frames) {
			b.headers(1, true, get...)
			b.raw(http2.FrameData, 0, 1, make([]byte, 100)[:9]) // a frame cut short
			b.buf.Truncate(b.buf.Len() - 4)
		},
	}
	seeds := make([][]byte, 0, len(s))
	for _, f := range s {
		seeds = append(seeds, buildFrames(f))
	}
	return seeds
}

// fuzzH2Handler is the upstream of FuzzH2ClientFrames: it reads the body
// and answers with a trailer.
func fuzzH2Handler(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	w.Header().Set("Trailer", "X-Done")
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "ok "+r.URL.Path)
	w.Header().Set("X-Done", "1")
}

// FuzzH2ClientFrames sends a client's bytes to flowdog's HTTP/2 server,
// after a valid preface and SETTINGS. mode picks the rig (bit 0: blocking
// legs, else legs that park), the upstream (bit 1: HTTP/1.1, else HTTP/2)
// and whether a canary follows (bit 2, below). The client reads what comes
// back: when the bytes end on a frame boundary it sends a PING and waits
// for its ACK (every frame before it was handled) or the connection's end,
// then for the answers to settle; then it half-closes, and the proxy must
// close the connection and let go of it.
//
// With a canary, the client waits for the proxy to park the connection
// before its PING, and meanwhile a new, well-formed connection must be
// served: whatever one peer sends must not break another's connection
// (the legs share pooled buffers and Framers). The iteration runs on one
// P then, so that what one connection puts in a pool is what the next
// takes out.
func FuzzH2ClientFrames(f *testing.F) {
	for _, s := range h2ClientSeeds() {
		for _, mode := range []uint8{0, 1, 2, 3, 4} {
			f.Add(mode, s)
		}
	}
	watch := &panicWatch{}
	var rigs [4]fuzzRig
	for mode := range rigs {
		srv, pool := tlsServer(f, http.HandlerFunc(fuzzH2Handler), mode&2 == 0)
		srv.Config.ErrorLog = discardLog
		rigs[mode] = newFuzzRig(f, srv.Listener.Addr().String(), mode&1 == 1, Options{
			UpstreamRoots: pool, Logger: slog.New(watch),
			HeaderTimeout: time.Second, ResponseHeaderTimeout: time.Second,
		})
	}
	prefix := []byte(http2.ClientPreface)
	prefix = append(prefix, buildFrames(func(b *h2Frames) { b.fr.WriteSettings() })...)
	ping := buildFrames(func(b *h2Frames) { b.fr.WritePing(false, fuzzPing) })
	var mu sync.Mutex // one connection at a time: what is left over is this input's
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		mode %= 8
		r := rigs[mode%4]
		canary := mode&4 != 0
		input := func() string { return fmt.Sprintf("mode %d, input %q", mode, data) }
		if canary {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		}
		base := testutil.GoroutinesIn(fuzzGoroutines...)
		c := r.dial(t)
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * fuzzDeadline)) // nothing waits forever
		whole := wholeFrames(data)
		sendPing := make(chan struct{})
		pingNow := sync.OnceFunc(func() { close(sendPing) })
		defer pingNow() // whatever happens, the writer ends
		if !canary {
			pingNow()
		}
		wrote := make(chan error, 1)
		frames := readFuzzFrames(c, false)
		go func() {
			_, err := c.Write(slices.Concat(prefix, data))
			if whole && err == nil {
				<-sendPing
				_, err = c.Write(ping)
			}
			wrote <- err
		}()
		if canary {
			// Until the proxy parks the connection (legs that park), or
			// a while.
			for start := time.Now(); r.counter(t, r.p.m.parked) == 0 && time.Since(start) < 4*parkAfter; {
				time.Sleep(time.Millisecond)
			}
			if err := r.canary(t, prefix); err != nil {
				t.Fatalf("a well-formed connection opened after this one failed: %v; %s\nthe proxy's last log records:\n%s",
					err, input(), watch.last())
			}
			pingNow()
		}

		// Until the PING's ACK (or, with a frame cut short, a moment),
		// then until the answers stop coming.
		var ended error
		acked := false
		hard := time.After(fuzzDeadline)
		var quiet <-chan time.Time
		if !whole {
			quiet = time.After(5 * time.Millisecond)
		}
	read:
		for {
			select {
			case ev := <-frames:
				if ev.err != nil {
					ended = ev.err
					break read
				}
				if ev.pingAck {
					acked = true
				}
				if acked || !whole {
					quiet = time.After(10 * time.Millisecond)
				}
			case <-quiet:
				break read
			case <-hard:
				if whole && !acked {
					t.Fatalf("the proxy neither answered the PING nor closed the connection within %v; %s", fuzzDeadline, input())
				}
				break read
			}
		}
		if ended != nil && malformedFrames(ended) {
			t.Fatalf("the proxy sent malformed frames: %v; %s", ended, input())
		}
		if ended == nil {
			// The client is done: the proxy must close the connection.
			select {
			case err := <-wrote:
				wrote <- err // for the wait below
				if err == nil {
					c.CloseWrite()
				}
			case <-time.After(fuzzDeadline):
				t.Fatalf("the client could not write its bytes within %v: the proxy stopped reading, and kept the connection open; %s", fuzzDeadline, input())
			}
			select {
			case ev := <-frames:
				for ev.err == nil {
					select {
					case ev = <-frames:
					case <-time.After(fuzzDeadline):
						t.Fatalf("the proxy kept the connection open %v after the client's EOF; %s", fuzzDeadline, input())
					}
				}
				if malformedFrames(ev.err) {
					t.Fatalf("the proxy sent malformed frames: %v; %s", ev.err, input())
				}
				if !connEnded(ev.err) {
					t.Fatalf("the proxy kept the connection open after the client's EOF: %v; %s", ev.err, input())
				}
			case <-time.After(fuzzDeadline):
				t.Fatalf("the proxy kept the connection open %v after the client's EOF; %s", fuzzDeadline, input())
			}
		}
		c.Close()
		for range frames { // the reader's end
		}
		<-wrote
		r.settle(t, watch, base, input)
	})
}

// fuzzUpstream is an HTTPS server, HTTP/2 only, that FuzzH2ServerFrames
// drives one connection at a time.
type fuzzUpstream struct {
	ln    net.Listener
	cfg   *tls.Config
	conns chan net.Conn
	pool  *x509.CertPool
}

func newFuzzUpstream(tb testing.TB) *fuzzUpstream {
	tb.Helper()
	upCA := testCA(tb)
	cert, err := upCA.Leaf(ca.SpecFromUpstream(nil, "example.com", netip.Addr{}))
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	u := &fuzzUpstream{
		ln:    ln,
		cfg:   &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"}},
		conns: make(chan net.Conn, 16),
		pool:  x509.NewCertPool(),
	}
	u.pool.AddCert(upCA.Root())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case u.conns <- c:
			default:
				c.Close() // nobody is waiting for it
			}
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		for {
			select {
			case c := <-u.conns:
				c.Close()
			default:
				return
			}
		}
	})
	return u
}

// serveOne takes the proxy's connection and, once the proxy's request
// (stream 1) came, sends SETTINGS then data and half-closes; it reads
// until the proxy closes the connection. The result says what went wrong,
// if anything.
func (u *fuzzUpstream) serveOne(data []byte) <-chan error {
	res := make(chan error, 1)
	// A connection waiting now is not this iteration's (one that an
	// iteration that failed early left).
	for drained := false; !drained; {
		select {
		case c := <-u.conns:
			c.Close()
		default:
			drained = true
		}
	}
	go func() {
		var raw net.Conn
		select {
		case raw = <-u.conns:
		case <-time.After(fuzzDeadline):
			res <- errors.New("the proxy did not connect upstream")
			return
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(3 * fuzzDeadline))
		c := tls.Server(raw, u.cfg)
		if err := c.Handshake(); err != nil {
			res <- fmt.Errorf("upstream TLS handshake: %w", err)
			return
		}
		var pre [len(h2Preface)]byte
		if _, err := io.ReadFull(c, pre[:]); err != nil || string(pre[:]) != h2Preface {
			res <- fmt.Errorf("the proxy's preface: %q, %v", pre, err)
			return
		}
		if _, err := c.Write(buildFrames(func(b *h2Frames) { b.fr.WriteSettings() })); err != nil {
			res <- fmt.Errorf("writing SETTINGS: %w", err)
			return
		}
		// Read the proxy's frames until the connection ends, on a
		// goroutine of its own: the proxy may write while data goes out.
		gotRequest := make(chan struct{})
		readErr := make(chan error, 1)
		var seen []string // what the proxy sent before its request
		go func() {
			fr := http2.NewFramer(nil, c)
			once := sync.OnceFunc(func() { close(gotRequest) })
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					readErr <- err
					return
				}
				if f.Header().Type == http2.FrameHeaders && f.Header().StreamID == 1 {
					once()
				}
				select {
				case <-gotRequest:
				default:
					seen = append(seen, f.Header().String())
				}
			}
		}()
		var err error
		select {
		case <-gotRequest:
		case err = <-readErr:
			select {
			case <-gotRequest: // the request, then the end
			default:
				res <- fmt.Errorf("the proxy's connection ended before its request (after %v): %w", seen, err)
				return
			}
		}
		if _, werr := c.Write(data); werr == nil {
			c.CloseWrite()
		}
		// The proxy must close the connection (once it took the bytes,
		// or once the client's connection is over).
		if err == nil {
			err = <-readErr
		}
		if isTimeout(err) {
			res <- fmt.Errorf("the proxy kept the upstream connection open %v", 3*fuzzDeadline)
			return
		}
		res <- nil
	}()
	return res
}

// h2ServerSeeds are what servers send on stream 1 after their SETTINGS:
// well-formed sequences, then malformed ones.
func h2ServerSeeds() [][]byte {
	s := []func(*h2Frames){
		func(b *h2Frames) { b.headers(1, true, ":status", "200") },
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200", "content-type", "text/plain")
			b.data(1, true, "hello")
		},
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200", "content-length", "5", "trailer", "x-sum")
			b.data(1, false, "hel")
			b.data(1, false, "lo")
			b.headers(1, true, "x-sum", "abc")
		},
		func(b *h2Frames) {
			b.headers(1, false, ":status", "100")
			b.headers(1, false, ":status", "103", "link", "</a.css>; rel=preload")
			b.headers(1, false, ":status", "201")
			b.data(1, true, "created")
		},
		func(b *h2Frames) {
			b.fr.WriteSettingsAck()
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 10},
				http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 16},
				http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 15},
				http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
			b.fr.WritePing(false, [8]byte{1})
			b.fr.WriteWindowUpdate(0, 1<<20)
			b.fr.WriteWindowUpdate(1, 1<<20)
			b.headers(1, true, ":status", "204")
		},
		// CONTINUATION, padding, PRIORITY.
		func(b *h2Frames) {
			blk := b.block(":status", "200", "x-long", strings.Repeat("l", 300))
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:4], PadLength: 3})
			b.fr.WriteContinuation(1, false, blk[4:50])
			b.fr.WriteContinuation(1, true, blk[50:])
			b.fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 1})
			b.fr.WriteDataPadded(1, false, []byte("padded"), make([]byte, 30))
			b.fr.WriteDataPadded(1, true, nil, make([]byte, 10))
		},
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200")
			b.data(1, false, "partial, then GOAWAY")
			b.fr.WriteGoAway(1, http2.ErrCodeNo, nil)
			b.data(1, true, " and the end")
		},
		func(b *h2Frames) { b.fr.WriteGoAway(0, http2.ErrCodeNo, []byte("not processed")) },
		func(b *h2Frames) { b.fr.WriteRSTStream(1, http2.ErrCodeRefusedStream) },
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200")
			b.data(1, false, "then reset")
			b.fr.WriteRSTStream(1, http2.ErrCodeInternal)
		},
		func(b *h2Frames) { b.headers(1, false, ":status", "200") }, // and the connection ends
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200", "set-cookie", "a=1", "set-cookie", "b=2", "content-length", "0")
			b.data(1, true, "")
		},
		// Malformed from here on.
		func(b *h2Frames) { b.headers(1, true, ":status", "abc") },
		func(b *h2Frames) { b.headers(1, true, "x-no-status", "1") },
		func(b *h2Frames) { b.headers(1, true, ":status", "99") },
		func(b *h2Frames) { b.headers(1, true, ":status", "1000") },
		func(b *h2Frames) { b.headers(1, true, ":status", "100") },
		func(b *h2Frames) { b.headers(1, true, ":status", "200", ":path", "/") },
		func(b *h2Frames) { b.headers(1, true, "x-first", "1", ":status", "200") },
		func(b *h2Frames) { b.headers(1, true, ":status", "200", "Upper", "x") },
		func(b *h2Frames) {
			b.headers(1, true, ":status", "200", "connection", "close", "transfer-encoding", "chunked")
		},
		func(b *h2Frames) { b.headers(1, true, ":status", "200", "content-length", "5") },
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200", "content-length", "3")
			b.data(1, true, "abcd")
		},
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200", "content-length", "3")
			b.data(1, true, "ab")
		},
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200", "content-length", "-3")
			b.data(1, true, "ab")
		},
		func(b *h2Frames) {
			b.headers(1, true, ":status", "200")
			b.data(1, true, "after END_STREAM")
			b.headers(1, true, ":status", "200")
		},
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200")
			b.headers(1, false, "x-trailer", "no END_STREAM")
		},
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200")
			b.headers(1, true, ":status", "200")
		},
		func(b *h2Frames) { b.headers(2, true, ":status", "200") },
		func(b *h2Frames) { b.headers(3, true, ":status", "200") },
		func(b *h2Frames) { b.data(3, true, "idle") },
		func(b *h2Frames) { b.data(0, true, "stream 0") },
		func(b *h2Frames) {
			b.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: b.block(h2Req("GET", "/pushed")...), EndHeaders: true})
		},
		func(b *h2Frames) { b.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 1}) },
		func(b *h2Frames) { b.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31}) },
		func(b *h2Frames) {
			b.fr.WriteWindowUpdate(1, 1<<31-1)
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		},
		func(b *h2Frames) { b.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 24}) },
		func(b *h2Frames) {
			b.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0})
			b.headers(1, true, ":status", "200")
		},
		func(b *h2Frames) {
			b.fr.WriteWindowUpdate(0, 1<<31-1)
			b.fr.WriteWindowUpdate(0, 1<<31-1)
		},
		func(b *h2Frames) {
			b.fr.WriteWindowUpdate(1, 1<<31-1)
			b.fr.WriteWindowUpdate(1, 1<<31-1)
			b.headers(1, true, ":status", "200")
		},
		func(b *h2Frames) { b.fr.WriteWindowUpdate(1, 0) },
		func(b *h2Frames) { b.fr.WriteRSTStream(5, http2.ErrCodeCancel) },
		func(b *h2Frames) { b.fr.WriteContinuation(1, true, b.block(":status", "200")) },
		func(b *h2Frames) {
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.block(":status", "200")[:1], EndStream: true})
			b.data(1, true, "interleaved")
		},
		func(b *h2Frames) {
			b.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff, 0x7f}, EndStream: true, EndHeaders: true})
		},
		func(b *h2Frames) { b.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1}) },
		func(b *h2Frames) { b.raw(http2.FrameData, 0, 1, make([]byte, h2DefaultMaxFrame+1)) },
		func(b *h2Frames) { b.raw(http2.FramePing, 0, 0, []byte{1}) },
		func(b *h2Frames) { b.raw(http2.FrameSettings, 0, 0, []byte{0, 1}) },
		func(b *h2Frames) { b.raw(0x20, 0, 1, []byte("unknown")) },
		func(b *h2Frames) {
			b.headers(1, false, ":status", "200")
			b.raw(http2.FrameData, http2.FlagDataEndStream, 1, []byte("cut short"))
			b.buf.Truncate(b.buf.Len() - 3)
		},
	}
	seeds := make([][]byte, 0, len(s))
	for _, f := range s {
		seeds = append(seeds, buildFrames(f))
	}
	return seeds
}

// fuzzRequests are the client's requests of FuzzH2ServerFrames, on
// stream 1.
var fuzzRequests = []func(*h2Frames){
	func(b *h2Frames) { b.headers(1, true, h2Req("GET", "/")...) },
	func(b *h2Frames) {
		b.headers(1, false, h2Req("POST", "/upload", "content-length", "5")...)
		b.data(1, true, "hello")
	},
	func(b *h2Frames) {
		b.headers(1, false, h2Req("POST", "/trailers", "trailer", "x-sum")...)
		b.data(1, false, "hel")
		b.data(1, false, "lo")
		b.headers(1, true, "x-sum", "abc")
	},
	func(b *h2Frames) { b.headers(1, true, h2Req("HEAD", "/")...) },
	func(b *h2Frames) {
		b.headers(1, false, h2Req("PUT", "/expect", "expect", "100-continue", "content-length", "5")...)
		b.data(1, true, "hello")
	},
}

// FuzzH2ServerFrames sends a server's bytes to flowdog's HTTP/2 client
// while a client's request is in flight: the upstream takes the proxy's
// connection, sends SETTINGS, waits for the request's HEADERS, then sends
// the bytes and half-closes. mode picks the rig (bit 0: blocking legs,
// else legs that park) and the client's request (mode>>1: fuzzRequests).
// The client must get an answer or an error (a 502, a reset stream, the
// connection's end) in time, and the proxy must then let go of both
// connections.
func FuzzH2ServerFrames(f *testing.F) {
	nreq := uint8(len(fuzzRequests))
	for i, s := range h2ServerSeeds() {
		for _, mode := range []uint8{0, 1, uint8(i%int(nreq))<<1 | uint8(i%2)} {
			f.Add(mode, s)
		}
	}
	watch := &panicWatch{}
	up := newFuzzUpstream(f)
	var rigs [2]fuzzRig
	for mode := range rigs {
		rigs[mode] = newFuzzRig(f, up.ln.Addr().String(), mode == 1, Options{
			UpstreamRoots: up.pool, Logger: slog.New(watch),
			HeaderTimeout: time.Second, ResponseHeaderTimeout: time.Second,
		})
	}
	prefix := []byte(http2.ClientPreface)
	prefix = append(prefix, buildFrames(func(b *h2Frames) { b.fr.WriteSettings() })...)
	var mu sync.Mutex // one connection at a time: what is left over is this input's
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		r := rigs[mode%2]
		kind := int(mode>>1) % len(fuzzRequests)
		input := func() string { return fmt.Sprintf("mode %d (request %d), input %q", mode, kind, data) }
		base := testutil.GoroutinesIn(fuzzGoroutines...)
		upDone := up.serveOne(data)
		c := r.dial(t)
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * fuzzDeadline))
		msg := slices.Concat(prefix, buildFrames(fuzzRequests[kind]))
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Write(msg)
			wrote <- err
		}()
		frames := readFuzzFrames(c, true)

		// Until stream 1 ends (END_STREAM, RST_STREAM), the proxy says
		// it was not processed (GOAWAY before it), or the connection ends.
		var body []byte
		var events []string // what the client saw, for a failure's message
		hard := time.After(fuzzDeadline)
	read:
		for {
			select {
			case ev := <-frames:
				events = append(events, ev.String())
				if ev.err != nil {
					if malformedFrames(ev.err) {
						t.Fatalf("the proxy sent malformed frames: %v; %s", ev.err, input())
					}
					break read
				}
				if ev.stream == 1 && ev.headers && ev.status != "" && (len(ev.status) != 3 || ev.status < "100" || ev.status > "999") {
					t.Fatalf("the proxy answered with :status %q; %s", ev.status, input())
				}
				if ev.stream == 1 && len(body) < 4<<10 {
					body = append(body, ev.data...)
				}
				if ev.stream == 1 && (ev.end || ev.rst) || ev.goAway && ev.last < 1 {
					break read
				}
			case <-hard:
				t.Errorf("no answer to the client's request within %v (body so far %q); %s", fuzzDeadline, body, input())
				break read
			}
		}
		if bytes.Contains(body, []byte("panic reading frames")) {
			t.Fatalf("the client got %q; %s", body, input())
		}
		c.Close()
		for range frames { // the reader's end
		}
		<-wrote
		select {
		case err := <-upDone:
			if err != nil {
				t.Fatalf("upstream: %v; the client saw %v; %s\nthe proxy's last log records:\n%s", err, events, input(), watch.last())
			}
		case <-time.After(4 * fuzzDeadline):
			t.Fatalf("the upstream connection did not end; %s", input())
		}
		r.settle(t, watch, base, input)
	})
}
