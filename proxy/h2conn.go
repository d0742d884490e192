package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HTTP/2 on either leg, flowdog's own: x/net's server and client each keep
// goroutines and buffers for as long as the connection is open, and an
// idle intercepted connection must cost little (issue #3: under 64 KiB).
// Here frames are read by a goroutine that exists only while frames come:
// after parkAfter without one it returns its buffers and parks on the
// leg's readiness, as the HTTP/1.1 leg does. Frames are encoded and parsed
// by x/net's Framer and hpack; what is flowdog's is the connection and
// stream state, flow control and the mapping to net/http's types.

const (
	// h2Window is the receive window flowdog gives each stream and the
	// connection: it bounds what a peer may have buffered here (x/net's
	// server allows 1 MiB per connection too).
	h2Window = 1 << 20
	// h2MaxStreams is how many streams a client may open at once.
	h2MaxStreams = 100
	// h2MaxHeaderList bounds a header list (net/http's default plus
	// x/net's slack).
	h2MaxHeaderList = maxHeaderBytes + 4096
	// h2DefaultMaxFrame is SETTINGS_MAX_FRAME_SIZE's initial value.
	h2DefaultMaxFrame = 16384
	// h2WriteTimeout ends a connection whose peer stopped reading: a
	// write blocked this long holds the frame writer, and with it every
	// stream and the reader's acknowledgements.
	h2WriteTimeout = time.Minute
	// h2Preface is what a client sends first.
	h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// h2Role is what differs between the server and the client end.
type h2Role interface {
	// headers handles a HEADERS frame (with its CONTINUATIONs).
	headers(f *http2.MetaHeadersFrame) error
	// streamClosed runs, under c.mu, when a stream's both halves are done.
	streamClosed(st *h2Stream)
	// ended runs once when the connection is over.
	ended(err error)
	// peerGoAway runs when the peer said GOAWAY.
	peerGoAway()
}

// h2Conn is one HTTP/2 connection, the client's or the server's end.
type h2Conn struct {
	role   h2Role
	server bool
	conn   net.Conn
	poll   *pollConn   // nil: the reader never parks
	detach func() bool // may the reader give up its goroutine
	log    *slog.Logger
	onPark func(parked bool)
	// onPanic counts and logs a panic the reader recovered from.
	onPanic func(r any)
	// idleTimeout > 0 closes a connection parked with no stream open.
	idleTimeout time.Duration

	// Frame writes, in order: the hpack encoder's state follows the
	// order of the header blocks on the wire.
	wmu  sync.Mutex
	henc *hpack.Encoder
	hbuf bytes.Buffer
	// A write that blocks past h2WriteTimeout closes the connection.
	writeStart atomic.Int64 // unix nanoseconds; 0: not writing
	wtimer     *time.Timer  // under wmu

	mu      sync.Mutex
	cond    sync.Cond // windows, stream state, a dead connection
	streams map[uint32]*h2Stream
	err     error // the connection is dead
	sendWin int32
	recvWin int32 // what the peer may still send on the connection
	unacked int32 // consumed since the last connection WINDOW_UPDATE
	peer    struct {
		maxFrame   uint32
		initWin    int32
		maxStreams uint32
	}
	goAwaySent, goAwayRecv bool
	lastGood               uint32 // server: the highest client stream seen
	// Streams flowdog reset lately: their frames in flight are dropped,
	// not answered with another RST_STREAM (RFC 9113, 5.4.2).
	recentResets [8]uint32
	nextReset    int

	// The reader: only its goroutine touches these.
	hdec *hpack.Decoder
	br   *bufio.Reader
	rfr  *readFramer

	idleTimer *time.Timer // blocking mode's idle timeout; under mu
	idleSince time.Time   // when the last stream ended; under mu

	parking parking // the reader, while parked
	endOnce sync.Once
}

func (c *h2Conn) init() {
	c.cond.L = &c.mu
	c.streams = map[uint32]*h2Stream{}
	c.sendWin = 65535
	c.recvWin = h2Window
	c.peer.maxFrame = 16384
	c.peer.initWin = 65535
	c.peer.maxStreams = 100 // until the peer's SETTINGS say otherwise (x/net's guess)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.hdec = hpack.NewDecoder(4096, nil)
	c.idleSince = time.Now()
}

// settings is what flowdog asks of its peer, then the connection window.
func (c *h2Conn) writeSettings(extra ...http2.Setting) error {
	s := append([]http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: h2Window},
		{ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList},
	}, extra...)
	return c.write(func(fr *http2.Framer) error {
		if err := fr.WriteSettings(s...); err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, h2Window-65535)
	})
}

// swapWriter and swapReader let pooled Framers serve any connection.
type swapWriter struct{ w io.Writer }

func (s *swapWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

type swapReader struct{ r io.Reader }

func (s *swapReader) Read(p []byte) (int, error) { return s.r.Read(p) }

type writeFramer struct {
	sw swapWriter
	fr *http2.Framer
}

type readFramer struct {
	sr swapReader
	fr *http2.Framer
}

var (
	writeFramers = sync.Pool{New: func() any {
		w := &writeFramer{}
		w.fr = http2.NewFramer(&w.sw, nil)
		return w
	}}
	readFramers = sync.Pool{New: func() any {
		r := &readFramer{}
		r.fr = http2.NewFramer(nil, &r.sr)
		r.fr.MaxHeaderListSize = h2MaxHeaderList
		// What flowdog lets a peer send: the initial SETTINGS_MAX_FRAME_SIZE,
		// as it advertises none. A larger frame is a FRAME_SIZE_ERROR (RFC
		// 9113, 4.2), refused at its header, and a pooled Framer's read
		// buffer never grows past 16 KiB (x/net's default is 16 MiB).
		r.fr.SetMaxReadFrameSize(h2DefaultMaxFrame)
		return r
	}}
)

// write runs f with the connection's frame writer and flushes. Buffers
// are borrowed for the call only.
func (c *h2Conn) write(f func(*http2.Framer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(f)
}

func (c *h2Conn) writeLocked(f func(*http2.Framer) error) error {
	c.writeStart.Store(time.Now().UnixNano())
	if c.wtimer == nil {
		c.wtimer = time.AfterFunc(h2WriteTimeout, c.writeStuck)
	} else {
		c.wtimer.Reset(h2WriteTimeout)
	}
	defer func() {
		c.writeStart.Store(0)
		c.wtimer.Stop()
	}()
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(c.conn)
	wf := writeFramers.Get().(*writeFramer)
	wf.sw.w = bw
	err := f(wf.fr)
	if err == nil {
		err = bw.Flush()
	}
	wf.sw.w = nil
	writeFramers.Put(wf)
	bw.Reset(nil)
	writers.Put(bw)
	if err != nil {
		err = fmt.Errorf("http2 write: %w", err)
		c.fail(err)
	}
	return err
}

// writeStuck closes the connection if a write has been blocked for
// h2WriteTimeout (a timer that fires late for an earlier write finds a
// later one just begun, and leaves it).
func (c *h2Conn) writeStuck() {
	if t := c.writeStart.Load(); t != 0 && time.Since(time.Unix(0, t)) >= h2WriteTimeout {
		c.conn.Close()
	}
}

// writeHeaders encodes fields and writes them as HEADERS and CONTINUATION
// frames; the caller holds wmu.
func (c *h2Conn) writeHeadersLocked(fr *http2.Framer, id uint32, end bool, fields []hpack.HeaderField) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	c.mu.Lock()
	max := int(c.peer.maxFrame)
	c.mu.Unlock()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), max)
		frag := block[:n]
		block = block[n:]
		var err error
		if first {
			err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0})
		} else {
			err = fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
		first = false
	}
	if c.hbuf.Cap() > 16<<10 {
		c.hbuf = bytes.Buffer{} // an idle connection keeps no large block
	}
	return nil
}

// fail ends the connection: every stream sees err.
func (c *h2Conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	for _, st := range c.streams {
		st.endLocked(err)
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	c.conn.Close()
	c.unpark()
	c.endOnce.Do(func() { c.role.ended(err) })
}

// unpark cancels the wake-up of a parked reader: the connection is over
// and nobody will read it again.
func (c *h2Conn) unpark() {
	if !c.parking.claim(0) {
		return
	}
	if c.onPark != nil {
		c.onPark(false)
	}
}

// goAway tells the peer the connection is over (code != NO_ERROR: because
// of its error) and ends it.
func (c *h2Conn) goAway(code http2.ErrCode, why error) {
	c.mu.Lock()
	last := c.lastGood
	c.goAwaySent = true
	c.mu.Unlock()
	c.write(func(fr *http2.Framer) error { return fr.WriteGoAway(last, code, nil) })
	c.fail(why)
}

// run reads frames until the connection ends (false) or the reader parks
// (true).
func (c *h2Conn) run() (parked bool) {
	// Once parked, the reader's state belongs to the next wake-up: only
	// a reader that ends releases it on the way out.
	for {
		if c.poll != nil && !c.frameSoon() && c.park() {
			return true
		}
		rf := c.reader()
		fh, err := rf.fr.ReadFrameHeader()
		var f http2.Frame
		if err == nil {
			f, err = rf.fr.ReadFrameForHeader(fh)
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) && se.Cause == nil && (fh.Type == http2.FrameHeaders || fh.Type == http2.FrameContinuation) {
				// A header block refused before it was decoded (bad
				// padding, say): the HPACK state is lost, and the Framer
				// may wait for a CONTINUATION. Nothing can follow.
				err = h2ConnError(http2.ErrCodeProtocol, "malformed header block on stream %d", se.StreamID)
			}
			if !errors.As(err, &se) {
				c.rfr = nil // its state is unknown: not for the pool
			}
			if !c.readError(err) {
				c.releaseReader()
				return false
			}
			continue
		}
		if err := c.handle(f); err != nil {
			if !c.readError(err) {
				c.releaseReader()
				return false
			}
		}
	}
}

// readError handles an error from reading or handling a frame and
// reports whether the connection goes on.
func (c *h2Conn) readError(err error) bool {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		if c.server {
			c.mu.Lock()
			if se.StreamID%2 == 1 && se.StreamID > c.lastGood {
				c.lastGood = se.StreamID // refused, but opened
			}
			c.mu.Unlock()
		}
		c.resetStream(se.StreamID, se.Code, err)
		return true
	case errors.As(err, &ce):
		c.goAway(http2.ErrCode(ce), fmt.Errorf("http2: peer protocol error: %w", err))
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAway(http2.ErrCodeFrameSize, err)
	default:
		c.fail(err)
	}
	return false
}

// h2ConnError is a connection error with a reason for the log.
func h2ConnError(code http2.ErrCode, format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{http2.ConnectionError(code)}, a...)...)
}

func (c *h2Conn) reader() *readFramer {
	if c.rfr == nil {
		if c.br == nil {
			c.br = readers.Get().(*bufio.Reader)
			c.br.Reset(c.conn)
		}
		c.rfr = readFramers.Get().(*readFramer)
		c.rfr.sr.r = c.br
		c.rfr.fr.ReadMetaHeaders = c.hdec
	}
	return c.rfr
}

// releaseReader returns the reader's buffers, unless bytes wait in them.
func (c *h2Conn) releaseReader() {
	if c.rfr != nil {
		c.rfr.sr.r = nil
		c.rfr.fr.ReadMetaHeaders = nil
		readFramers.Put(c.rfr)
		c.rfr = nil
	}
	if c.br != nil && c.br.Buffered() == 0 {
		c.br.Reset(nil)
		readers.Put(c.br)
		c.br = nil
	}
}

// frameSoon reports whether a frame (or an error) comes within parkAfter.
func (c *h2Conn) frameSoon() bool {
	if c.br != nil && c.br.Buffered() > 0 {
		return true
	}
	c.reader()
	c.conn.SetReadDeadline(time.Now().Add(parkAfter))
	_, err := c.br.Peek(1)
	c.conn.SetReadDeadline(time.Time{})
	return err == nil || !isTimeout(err)
}

// park gives up the reader's goroutine until the leg is readable (or, with
// no stream open, the idle timeout passes). It reports false when the
// goroutine must stay.
func (c *h2Conn) park() bool {
	if c.detach != nil && !c.detach() {
		return false
	}
	c.releaseReader()
	// Under mu, so that the last stream ending now finds the reader
	// parked and arms the idle timer (armIdleLocked).
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return false // over: the reader returns and releases
	}
	idle := len(c.streams) == 0
	if c.onPark != nil {
		c.onPark(true)
	}
	p := &c.parking
	p.park(func(gen uint64) {
		if idle && c.idleTimeout > 0 {
			// Idle since the last stream ended: PINGs and SETTINGS do
			// not keep a connection open (as x/net's server).
			d := max(c.idleTimeout-time.Since(c.idleSince), 0)
			p.setTimer(d, func() { c.wake(gen, true) })
		}
		p.stops[0] = c.poll.p.OnReadable(func() { c.wake(gen, false) })
	})
	return true
}

// armIdleLocked starts the idle timeout of a parked reader whose last
// stream just ended (c.mu held).
func (c *h2Conn) armIdleLocked() {
	if c.idleTimeout <= 0 {
		return
	}
	if c.poll == nil {
		// The reader never parks (blocking legs): a timer of its own,
		// restarted each time the connection goes idle.
		if c.idleTimer == nil {
			c.idleTimer = time.AfterFunc(c.idleTimeout, c.idleExpired)
		} else {
			c.idleTimer.Reset(c.idleTimeout)
		}
		return
	}
	c.idleSince = time.Now()
	c.parking.armTimer(c.idleTimeout, func(gen uint64) { c.wake(gen, true) })
}

// wake runs on a goroutine of its own; the first wake-up of a park reads on.
func (c *h2Conn) wake(gen uint64, idle bool) {
	if !c.parking.claim(gen) {
		return
	}
	if c.onPark != nil {
		c.onPark(false)
	}
	if idle {
		c.mu.Lock()
		busy := len(c.streams) > 0
		c.mu.Unlock()
		if busy {
			// A stream opened (a client request) since: the timer was stale.
			c.wakeRead()
			return
		}
		c.goAway(http2.ErrCodeNo, errors.New("http2: idle connection closed"))
		return
	}
	c.wakeRead()
}

func (c *h2Conn) wakeRead() {
	defer func() {
		if r := recover(); r != nil {
			if c.onPanic != nil {
				c.onPanic(r)
			}
			c.fail(fmt.Errorf("http2: panic reading frames: %v", r))
		}
	}()
	c.run()
}

// handle applies one frame.
func (c *h2Conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if f.HasPriority() && f.Priority.StreamDep == f.StreamID {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
		return c.role.headers(f)
	case *http2.DataFrame:
		return c.data(f)
	case *http2.SettingsFrame:
		return c.settings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return c.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
	case *http2.WindowUpdateFrame:
		return c.windowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.rstStream(f)
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goAwayRecv = true
		if !c.server {
			// Streams the server never saw may be retried elsewhere.
			for id, st := range c.streams {
				if id > f.LastStreamID {
					st.endLocked(errUpstreamGone)
				}
			}
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		c.role.peerGoAway() // no new streams; those open finish
		return nil
	case *http2.PriorityFrame:
		if f.StreamID == f.StreamDep {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
		return nil
	case *http2.PushPromiseFrame:
		return h2ConnError(http2.ErrCodeProtocol, "PUSH_PROMISE was not asked for")
	case *http2.ContinuationFrame:
		return h2ConnError(http2.ErrCodeProtocol, "CONTINUATION out of turn")
	}
	return nil // unknown frame types are ignored (RFC 9113, 4.1)
}

func (c *h2Conn) settings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.mu.Lock()
			c.peer.maxFrame = s.Val
			c.mu.Unlock()
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int32(s.Val) - c.peer.initWin
			c.peer.initWin = int32(s.Val)
			for _, st := range c.streams {
				if w := int64(st.sendWin) + int64(delta); w > 1<<31-1 {
					c.mu.Unlock()
					return h2ConnError(http2.ErrCodeFlowControl, "window overflow")
				}
				st.sendWin += delta
			}
			c.cond.Broadcast()
			c.mu.Unlock()
		case http2.SettingMaxConcurrentStreams:
			c.mu.Lock()
			c.peer.maxStreams = s.Val
			c.cond.Broadcast()
			c.mu.Unlock()
		case http2.SettingHeaderTableSize:
			c.wmu.Lock()
			c.henc.SetMaxDynamicTableSizeLimit(s.Val)
			c.wmu.Unlock()
		case http2.SettingEnablePush:
			if !c.server {
				return h2ConnError(http2.ErrCodeProtocol, "a server sent ENABLE_PUSH")
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
}

func (c *h2Conn) windowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if int64(c.sendWin)+int64(f.Increment) > 1<<31-1 {
			return h2ConnError(http2.ErrCodeFlowControl, "connection window overflow")
		}
		c.sendWin += int32(f.Increment)
		c.cond.Broadcast()
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if c.idle(f.StreamID) {
			return h2ConnError(http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream %d", f.StreamID)
		}
		return nil
	}
	if int64(st.sendWin)+int64(f.Increment) > 1<<31-1 {
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
	}
	st.sendWin += int32(f.Increment)
	c.cond.Broadcast()
	return nil
}

func (c *h2Conn) rstStream(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	st := c.streams[f.StreamID]
	if st == nil {
		idle := c.idle(f.StreamID)
		c.mu.Unlock()
		if idle {
			return h2ConnError(http2.ErrCodeProtocol, "RST_STREAM on idle stream %d", f.StreamID)
		}
		return nil
	}
	why := fmt.Errorf("stream reset by peer: %v", f.ErrCode)
	if f.ErrCode == http2.ErrCodeRefusedStream {
		why = fmt.Errorf("%w: %v", errRefused, why)
	}
	st.endLocked(why)
	c.mu.Unlock()
	c.consumed(nil, 0) // what the stream left unread is the peer's again
	return nil
}

// idle reports, under c.mu, whether id names a stream not yet opened.
func (c *h2Conn) idle(id uint32) bool {
	if c.server {
		return c.role.(*h2Server).idleStream(id)
	}
	return c.role.(*h2Client).idleStream(id)
}

// data buffers a DATA frame for its stream's reader.
func (c *h2Conn) data(f *http2.DataFrame) error {
	n := int32(f.Length) // padding counts against the windows too
	c.mu.Lock()
	if n > c.recvWin {
		c.mu.Unlock()
		return h2ConnError(http2.ErrCodeFlowControl, "connection window exceeded")
	}
	c.recvWin -= n
	st := c.streams[f.StreamID]
	if st == nil || st.recvDone || st.reset {
		idle := st == nil && c.idle(f.StreamID)
		closed := st != nil && st.recvDone && !st.reset
		wasReset := c.wasReset(f.StreamID) // under mu, as resetStream writes it
		c.mu.Unlock()
		c.consumed(nil, int(n)) // nobody will read it
		switch {
		case idle:
			return h2ConnError(http2.ErrCodeProtocol, "DATA on idle stream %d", f.StreamID)
		case wasReset:
			return nil // frames in flight after flowdog's RST_STREAM
		case st == nil || closed:
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeStreamClosed}
		}
		return nil
	}
	if !c.server && st.resp == nil {
		c.unacked += n
		c.mu.Unlock()
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol, Cause: errors.New("DATA before the response's HEADERS")}
	}
	if n > st.recvWin {
		c.unacked += n // the reset that follows gives it back
		c.mu.Unlock()
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
	}
	st.recvWin -= n
	d := f.Data()
	st.got += int64(len(d))
	pad := int(n) - len(d)
	if st.wantLen >= 0 && (st.got > st.wantLen || f.StreamEnded() && st.got != st.wantLen) {
		c.unacked += n
		c.mu.Unlock()
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
	}
	st.buf.Write(d)
	if f.StreamEnded() {
		st.recvEnd(nil)
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	if pad > 0 {
		c.consumed(st, pad)
	}
	return nil
}

// consumed returns n bytes of window to the peer once enough have been
// read (st nil: the connection's only).
func (c *h2Conn) consumed(st *h2Stream, n int) {
	var connInc, streamInc uint32
	c.mu.Lock()
	c.unacked += int32(n)
	if c.unacked >= h2Window/4 {
		connInc = uint32(c.unacked)
		c.recvWin += c.unacked
		c.unacked = 0
	}
	if st != nil && !st.recvDone && !st.reset {
		st.unacked += int32(n)
		if st.unacked >= h2Window/4 {
			streamInc = uint32(st.unacked)
			st.recvWin += st.unacked
			st.unacked = 0
		}
	}
	dead := c.err != nil
	c.mu.Unlock()
	if dead || connInc == 0 && streamInc == 0 {
		return
	}
	c.write(func(fr *http2.Framer) error {
		if connInc > 0 {
			if err := fr.WriteWindowUpdate(0, connInc); err != nil {
				return err
			}
		}
		if streamInc > 0 {
			return fr.WriteWindowUpdate(st.id, streamInc)
		}
		return nil
	})
}

// cancelStream resets st, a stream flowdog opened or accepted, unless it
// has ended already (the peer reset it, or both ends finished): a closed
// stream gets no RST_STREAM (RFC 9113, 5.1 and 5.4.2), and is not taken
// for one flowdog reset, whose late frames are dropped: the peer's frames
// on it still get STREAM_CLOSED.
func (c *h2Conn) cancelStream(st *h2Stream, code http2.ErrCode, why error) {
	c.mu.Lock()
	if st.ended || st.closed {
		c.mu.Unlock()
		return
	}
	st.endLocked(fmt.Errorf("stream reset: %w", why))
	c.noteResetLocked(st.id)
	c.mu.Unlock()
	c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(st.id, code) })
	c.consumed(nil, 0)
}

// resetStream sends RST_STREAM and ends the stream locally.
func (c *h2Conn) resetStream(id uint32, code http2.ErrCode, why error) {
	c.mu.Lock()
	st := c.streams[id]
	if st != nil {
		if st.reset {
			c.mu.Unlock()
			return
		}
		st.endLocked(fmt.Errorf("stream reset: %w", why))
	}
	c.noteResetLocked(id)
	c.mu.Unlock()
	c.write(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
	c.consumed(nil, 0)
}

// noteResetLocked remembers that flowdog reset (or ignored) stream id.
func (c *h2Conn) noteResetLocked(id uint32) {
	c.recentResets[c.nextReset%len(c.recentResets)] = id
	c.nextReset++
}

// wasReset reports, under mu, whether flowdog reset stream id lately.
func (c *h2Conn) wasReset(id uint32) bool {
	for _, r := range c.recentResets {
		if r == id {
			return true
		}
	}
	return false
}

// closeIfDone closes a connection that said GOAWAY once its last stream
// ends (the caller holds c.mu).
func (c *h2Conn) doneLocked() bool {
	return (c.goAwaySent || c.goAwayRecv) && len(c.streams) == 0
}

// h2Stream is one stream's state, under its connection's mu.
type h2Stream struct {
	c  *h2Conn
	id uint32

	sendWin  int32
	sendDone bool // flowdog sent END_STREAM

	recvWin  int32
	unacked  int32
	buf      bytes.Buffer // received, not yet read
	recvDone bool         // the peer sent END_STREAM (or the stream ended)
	recvErr  error        // after buf: io.EOF or why the stream ended
	wantLen  int64        // declared content-length, -1 if none
	got      int64
	trailers http.Header // received; handed to the body's reader at EOF

	// The client end's: the response, and what a 100 Continue opens.
	resp       *http.Response
	onContinue func()
	info       []info1xx // 1xx responses for RoundTrip to pass on
	infos      int
	cleanup    func() // under mu, when the stream is forgotten

	isHead bool // the client end's: a HEAD request (no body comes)
	reset  bool // RST_STREAM sent or received
	ended  bool
	onEnd  func(error) // under mu, once: the stream is over early
	closed bool        // removed from the connection
}

func (c *h2Conn) newStreamLocked(id uint32) *h2Stream {
	st := &h2Stream{c: c, id: id, sendWin: c.peer.initWin, recvWin: h2Window, wantLen: -1}
	c.streams[id] = st
	return st
}

// recvEnd marks the receiving half done (err nil: cleanly).
func (st *h2Stream) recvEnd(err error) {
	st.recvDone = true
	if st.recvErr == nil {
		if err == nil {
			err = io.EOF
		}
		st.recvErr = err
	}
	st.maybeCloseLocked()
}

// endLocked ends the stream early: readers and writers see err.
func (st *h2Stream) endLocked(err error) {
	if st.ended {
		return
	}
	if err == nil || errors.Is(err, io.EOF) {
		// A stream cut short never looks complete to its reader.
		err = fmt.Errorf("http2: connection closed mid-stream: %w", io.ErrUnexpectedEOF)
	}
	st.ended = true
	st.reset = true
	if !st.recvDone {
		// Cut short: what it buffered is dropped, and its window given
		// back. A stream reset after its END_STREAM (a server that
		// answered before the request body ended) keeps its whole body.
		st.recvErr = err
		st.recvDone = true
		st.c.unacked += int32(st.buf.Len())
		st.buf = bytes.Buffer{}
	}
	if st.onEnd != nil {
		st.onEnd(err)
	}
	st.sendDone = true
	st.maybeCloseLocked()
	st.c.cond.Broadcast()
}

// maybeCloseLocked forgets a stream whose both halves are done.
func (st *h2Stream) maybeCloseLocked() {
	if st.closed || !st.recvDone || !st.sendDone {
		return
	}
	st.closed = true
	c := st.c
	delete(c.streams, st.id)
	if st.cleanup != nil {
		st.cleanup()
	}
	if len(c.streams) == 0 {
		c.streams = map[uint32]*h2Stream{} // an idle map holds no buckets
		c.armIdleLocked()
	}
	c.role.streamClosed(st)
	c.cond.Broadcast()
}

// read reads received data; the window is returned as it is read.
func (st *h2Stream) read(p []byte) (int, error) {
	c := st.c
	c.mu.Lock()
	for st.buf.Len() == 0 && st.recvErr == nil {
		c.cond.Wait()
	}
	if st.buf.Len() == 0 {
		err := st.recvErr
		c.mu.Unlock()
		return 0, err
	}
	n, _ := st.buf.Read(p)
	if st.buf.Len() == 0 {
		st.buf = bytes.Buffer{} // no buffer kept between frames
	}
	c.mu.Unlock()
	c.consumed(st, n)
	return n, nil
}

// writeData sends p as DATA frames, as the windows allow.
func (st *h2Stream) writeData(p []byte, end bool) error {
	c := st.c
	for {
		c.mu.Lock()
		var n int32
		for {
			if c.err != nil {
				c.mu.Unlock()
				return c.err
			}
			if st.reset || st.sendDone {
				c.mu.Unlock()
				return errStreamClosed
			}
			if len(p) == 0 {
				break // END_STREAM alone needs no window
			}
			// A window may be negative: SETTINGS lowered it after data
			// went out (RFC 9113, 6.9.2).
			n = min(int32(len(p)), st.sendWin, c.sendWin, int32(c.peer.maxFrame))
			if n > 0 {
				break
			}
			c.cond.Wait()
		}
		st.sendWin -= n
		c.sendWin -= n
		last := end && int(n) == len(p)
		if last {
			st.sendDone = true
		}
		c.mu.Unlock()
		err := c.write(func(fr *http2.Framer) error { return fr.WriteData(st.id, last, p[:n]) })
		if err != nil {
			return err
		}
		if last {
			c.mu.Lock()
			st.maybeCloseLocked()
			c.mu.Unlock()
		}
		p = p[n:]
		if len(p) == 0 {
			return nil
		}
	}
}

// writeHeaders sends a header block on the stream.
func (st *h2Stream) writeHeaders(fields []hpack.HeaderField, end bool) error {
	c := st.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if st.reset || st.sendDone {
		c.mu.Unlock()
		return errStreamClosed
	}
	if end {
		st.sendDone = true
	}
	c.mu.Unlock()
	err := c.writeLocked(func(fr *http2.Framer) error { return c.writeHeadersLocked(fr, st.id, end, fields) })
	if end {
		c.mu.Lock()
		st.maybeCloseLocked()
		c.mu.Unlock()
	}
	return err
}

// writeHeadersAndData sends a header block and then p, the first DATA
// frame in the same write when the windows allow.
func (st *h2Stream) writeHeadersAndData(fields []hpack.HeaderField, p []byte) error {
	c := st.c
	c.wmu.Lock()
	c.mu.Lock()
	if c.err != nil || st.reset || st.sendDone {
		c.mu.Unlock()
		c.wmu.Unlock()
		return errStreamClosed
	}
	n := max(min(int32(len(p)), st.sendWin, c.sendWin, int32(c.peer.maxFrame)), 0)
	st.sendWin -= n
	c.sendWin -= n
	c.mu.Unlock()
	err := c.writeLocked(func(fr *http2.Framer) error {
		if err := c.writeHeadersLocked(fr, st.id, false, fields); err != nil {
			return err
		}
		if n > 0 {
			return fr.WriteData(st.id, false, p[:n])
		}
		return nil
	})
	c.wmu.Unlock()
	if err != nil || int(n) == len(p) {
		return err
	}
	return st.writeData(p[n:], false)
}

var errStreamClosed = errors.New("http2: stream closed")

// errRefused: the peer refused the stream before processing it.
var errRefused = errors.New("http2: stream refused")

// h2Body is a stream's received data as a request or response body.
type h2Body struct {
	st      *h2Stream
	trailer *http.Header // filled at EOF
	onRead  func()       // before the first read (server: 100 Continue)
}

func (b *h2Body) Read(p []byte) (int, error) {
	if b.onRead != nil {
		b.onRead()
		b.onRead = nil
	}
	n, err := b.st.read(p)
	if err == io.EOF && b.trailer != nil {
		// On the reader's goroutine, as net/http's bodies do: whoever
		// reads the trailers reads them after EOF.
		c := b.st.c
		c.mu.Lock()
		t := b.st.trailers
		c.mu.Unlock()
		if len(t) > 0 {
			if *b.trailer == nil {
				*b.trailer = make(http.Header, len(t))
			}
			for k, v := range t {
				(*b.trailer)[k] = v
			}
		}
	}
	return n, err
}

func (b *h2Body) Close() error {
	c := b.st.c
	c.mu.Lock()
	done := b.st.recvDone && b.st.buf.Len() == 0
	left := b.st.buf.Len()
	b.st.buf = bytes.Buffer{}
	c.mu.Unlock()
	if left > 0 {
		c.consumed(nil, left)
	}
	if !done {
		c.cancelStream(b.st, http2.ErrCodeCancel, errors.New("body closed"))
	}
	return nil
}

// idleExpired closes a connection that stayed without a stream for the
// idle timeout (blocking mode).
func (c *h2Conn) idleExpired() {
	c.mu.Lock()
	busy := len(c.streams) > 0 || c.err != nil
	c.mu.Unlock()
	if !busy {
		c.goAway(http2.ErrCodeNo, errors.New("http2: idle connection closed"))
	}
}
