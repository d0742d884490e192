package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// errUpstreamGone: the one upstream connection is closed; flowdog never
// dials another (same 5-tuple, one upstream per downstream).
var errUpstreamGone = errors.New("upstream connection closed")

// h1Upstream sends HTTP/1.1 requests one at a time on the single upstream
// connection (an HTTP/2 client's streams queue here).
type h1Upstream struct {
	conn    net.Conn
	br      *bufio.Reader // borrowed from readers while a response is read; nil when idle
	sem     chan struct{} // held from request write until the response body ends
	mu      sync.Mutex
	dead    bool
	timeout time.Duration
	onDead  func()
	reused  bool // a response went through whole: the server may close it while idle; under sem
}

func newH1Upstream(c net.Conn, headerTimeout time.Duration, onDead func()) *h1Upstream {
	return &h1Upstream{conn: c, sem: make(chan struct{}, 1),
		timeout: headerTimeout, onDead: onDead}
}

func (u *h1Upstream) kill() {
	u.mu.Lock()
	was := u.dead
	u.dead = true
	u.mu.Unlock()
	if !was {
		u.conn.Close()
		if u.onDead != nil {
			u.onDead()
		}
	}
}

func (u *h1Upstream) isDead() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dead
}

func (u *h1Upstream) acquire(ctx context.Context) error {
	select {
	case u.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if u.isDead() {
		<-u.sem
		return errUpstreamGone
	}
	return nil
}

func (u *h1Upstream) release() { <-u.sem }

// RoundTrip writes req and reads its response. 100-continue is honoured:
// the body waits for the server's 100, its final answer, or a second (as
// net/http's Transport does, for servers that ignore Expect).
func (u *h1Upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := u.acquire(req.Context()); err != nil {
		return nil, err
	}
	expect := strings.EqualFold(req.Header.Get("Expect"), "100-continue") && req.Body != nil && req.Body != http.NoBody
	var gate *bodyGate
	out := req
	if expect {
		gate = newBodyGate()
		t := time.AfterFunc(expectContinueTimeout, func() { gate.decide(true) })
		defer t.Stop()
		out = req.Clone(req.Context())
		out.Trailer = req.Trailer // filled in when the body ends
		out.Body = &gatedBody{rc: req.Body, gate: gate}
	}
	// A client gone mid-request ends the upstream connection too, which
	// also unblocks a write stuck on a full window.
	stop := context.AfterFunc(req.Context(), u.kill)
	defer stop()
	// The response-header timeout starts once the request is written, so a
	// long upload is not cut short (as net/http's Transport).
	var dl headerDeadline
	werr := make(chan error, 1)
	write := func() {
		err := out.Write(u.conn)
		switch {
		case err == nil:
			dl.arm(u.conn, u.timeout)
		case errors.Is(err, errBodyRefused):
			err = nil // the server answered first; the connection is not reused
		default:
			u.kill()
		}
		werr <- err
	}
	if !expect && (out.Body == nil || out.Body == http.NoBody) {
		write() // nothing to stream: no goroutine needed
	} else {
		go write() // the body streams while the response may already come
	}

	if u.br == nil {
		u.br = readers.Get().(*bufio.Reader)
		u.br.Reset(u.conn)
	}
	// A server that closed its idle connection answers nothing: the
	// request was not processed (net/http's Transport retries such a
	// request, errServerClosedIdle). A replayable one is then refused
	// (errUpstreamGone), and the client retries it on a new connection.
	if _, perr := u.br.Peek(1); perr != nil && !isTimeout(perr) && u.reused && replayable(req) {
		dl.disarm(u.conn)
		u.kill()
		u.release()
		return nil, fmt.Errorf("%w: the server closed its idle connection: %w", errUpstreamGone, perr)
	}
	var resp *http.Response
	var err error
	for {
		resp, err = http.ReadResponse(u.br, req)
		if err != nil {
			break
		}
		if resp.StatusCode == http.StatusContinue {
			if gate != nil {
				gate.decide(true)
			}
			continue
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // other informational responses are not forwarded
		}
		break
	}
	dl.disarm(u.conn)
	refused := false
	if gate != nil {
		refused = !gate.decide(false) // a final answer before the body: not sent
	}
	if err != nil {
		u.kill()
		u.release()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("upstream closed the connection: %w", err)
		}
		return nil, fmt.Errorf("reading upstream response: %w", err)
	}
	if refused {
		// The body was never sent: the connection state is unclear.
		resp.Close = true
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection now belongs to the upgraded protocol.
		resp.Body = &upgradedBody{br: u.br, conn: u.conn}
		u.mu.Lock()
		u.dead = true
		u.mu.Unlock()
		u.release() // later requests find it dead and fail at once
		return resp, nil
	}
	closeAfter := resp.Close || req.Close
	if closeAfter && u.onDead != nil {
		// Say so now, while the client's response header can still tell
		// it that this is the connection's last response.
		u.onDead()
	}
	resp.Body = &h1Body{rc: resp.Body, done: func(clean bool) {
		// Reuse the connection only when both the request and the
		// response went through whole.
		reusable := clean && !closeAfter
		if reusable {
			// The writer normally finished long ago; one still writing
			// after the whole response (a server that answered early) leaves
			// the connection in an unknown state.
			t := time.NewTimer(time.Second)
			select {
			case err := <-werr:
				reusable = err == nil
			case <-t.C:
				reusable = false
			}
			t.Stop()
		}
		if !reusable {
			u.kill()
		} else {
			u.reused = true
		}
		if reusable && u.br.Buffered() == 0 {
			// An idle connection holds no read buffer.
			u.br.Reset(nil)
			readers.Put(u.br)
			u.br = nil
		}
		u.release()
	}}
	return resp, nil
}

// idleCheck reads, without waiting, what the server sent while no request
// was out (pc is the leg under TLS). A TLS session ticket is consumed by
// crypto/tls and changes nothing; anything else (a FIN, a reset, bytes out
// of turn) ends the connection, as the server meant. It reports whether the
// connection is still usable.
func (u *h1Upstream) idleCheck(pc *pollConn) bool {
	select {
	case u.sem <- struct{}{}:
	default:
		return true // a request is out: its response reader sees it
	}
	defer u.release()
	if u.isDead() {
		return false
	}
	var b [1]byte
	var n int
	err := pc.tryRead(func() (err error) {
		if u.br != nil {
			n, err = u.br.Read(b[:])
		} else {
			n, err = u.conn.Read(b[:])
		}
		return err
	})
	if n == 0 && isTimeout(err) {
		return true
	}
	u.kill()
	return false
}

// readers lends HTTP/1.1 upstream connections their response readers.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

// expectContinueTimeout is how long a body waits for a 100 Continue.
const expectContinueTimeout = time.Second

// errBodyRefused: the server's final answer came before the body was sent.
var errBodyRefused = errors.New("request body not sent: the server answered first")

// bodyGate is decided once: send the body (a 100, or the timeout) or not (a
// final answer first).
type bodyGate struct {
	once sync.Once
	done chan struct{}
	send bool
}

func newBodyGate() *bodyGate { return &bodyGate{done: make(chan struct{})} }

// decide records v if nothing was decided yet and returns the decision.
func (g *bodyGate) decide(v bool) bool {
	g.once.Do(func() { g.send = v; close(g.done) })
	return g.send
}

// gatedBody holds the request body until the gate opens.
type gatedBody struct {
	rc   io.ReadCloser
	gate *bodyGate
}

func (g *gatedBody) Read(p []byte) (int, error) {
	<-g.gate.done
	if !g.gate.send {
		return 0, errBodyRefused
	}
	return g.rc.Read(p)
}

func (g *gatedBody) Close() error { return g.rc.Close() }

// headerDeadline arms the read deadline for the response headers once the
// request is written, unless the headers came first.
type headerDeadline struct {
	mu   sync.Mutex
	done bool
}

func (d *headerDeadline) arm(c net.Conn, timeout time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.done {
		c.SetReadDeadline(time.Now().Add(timeout))
	}
}

func (d *headerDeadline) disarm(c net.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.done = true
	c.SetReadDeadline(time.Time{})
}

// h1Body reports when the response body ended and whether cleanly.
type h1Body struct {
	rc   io.ReadCloser
	once sync.Once
	done func(clean bool)
}

func (b *h1Body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		b.once.Do(func() { b.done(errors.Is(err, io.EOF)) })
	}
	return n, err
}

func (b *h1Body) Close() error {
	// An unread body: the connection cannot be reused. End it first:
	// net/http's Close reads the rest of the response to EOF, which for a
	// long (or endless) one would hold the handler, the connection and the
	// semaphore until the server stops sending.
	b.once.Do(func() { b.done(false) })
	b.rc.Close() // fails at once on the closed connection
	return nil
}

// upgradedBody is the connection after a 101, as httputil.ReverseProxy wants it.
type upgradedBody struct {
	br   *bufio.Reader
	conn net.Conn
}

func (b *upgradedBody) Read(p []byte) (int, error)  { return b.br.Read(p) }
func (b *upgradedBody) Write(p []byte) (int, error) { return b.conn.Write(p) }
func (b *upgradedBody) Close() error                { return b.conn.Close() }

// errHeaderTimeout: the server sent no response headers in time.
var errHeaderTimeout error = headerTimeoutError{}

type headerTimeoutError struct{}

func (headerTimeoutError) Error() string   { return "timeout awaiting response headers" }
func (headerTimeoutError) Timeout() bool   { return true }
func (headerTimeoutError) Temporary() bool { return true }

// replayable: a request the client may send again (RFC 9110, 9.2.2), as
// net/http's Transport judges it.
func replayable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return r.Body == nil || r.Body == http.NoBody
	}
	_, a := r.Header["Idempotency-Key"]
	_, b := r.Header["X-Idempotency-Key"]
	return a || b
}
