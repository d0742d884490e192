package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flowdog/flowdog/interceptors"
)

// take hands the upstream connection over for good (a WebSocket), once
// no request is using it.
func (u *h1Upstream) take(ctx context.Context) (net.Conn, error) {
	if err := u.acquire(ctx); err != nil {
		return nil, err
	}
	u.mu.Lock()
	u.dead = true // no more HTTP requests on it
	u.mu.Unlock()
	u.release()
	if u.onDead != nil {
		// Whatever the server answers, this connection carries no more
		// HTTP: a refused upgrade's response must say so.
		u.onDead()
	}
	if u.br == nil {
		return &bufConn{Conn: u.conn, br: bufio.NewReaderSize(u.conn, 4<<10)}, nil
	}
	return &bufConn{Conn: u.conn, br: u.br}, nil
}

// wsHandshakeHeaders are set by gorilla on each side.
var wsHandshakeHeaders = []string{"Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version",
	"Sec-Websocket-Extensions", "Sec-Websocket-Protocol", "Sec-Websocket-Accept"}

// serveWebSocket proxies an upgrade with both ends parsed, so that every
// data message passes through the WebSocket hooks; pings, pongs and close
// codes are carried across.
func (h *httpHandler) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	c := h.c
	o := &c.p.o
	if h.h1 == nil {
		h.errorHandler(w, r, errors.New("WebSocket needs an HTTP/1.1 upstream; the server negotiated HTTP/2"))
		return
	}
	// The upgrade request goes through the request hooks like any other.
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = h.scheme, r.Host
	if resp, err := c.p.chain.Request(c.flow, out); err != nil || resp != nil {
		if err != nil {
			h.errorHandler(w, r, err)
			return
		}
		writeResponse(w, resp)
		return
	}
	up, err := h.h1.take(r.Context())
	if err != nil {
		h.errorHandler(w, r, err)
		return
	}
	dial := func(context.Context, string, string) (net.Conn, error) { return up, nil }
	d := websocket.Dialer{
		NetDialContext:    dial,
		NetDialTLSContext: dial, // the connection is already TLS when it must be
		HandshakeTimeout:  o.ResponseHeaderTimeout,
		Subprotocols:      websocket.Subprotocols(out),
		ReadBufferSize:    16 << 10,
		WriteBufferSize:   16 << 10,
	}
	hdr := out.Header.Clone()
	for _, k := range wsHandshakeHeaders {
		hdr.Del(k)
	}
	url := "ws://" + out.Host + out.URL.RequestURI()
	upWS, resp, err := d.DialContext(r.Context(), url, hdr)
	if err != nil {
		if resp != nil && errors.Is(err, websocket.ErrBadHandshake) {
			// The server refused the upgrade: the client gets its answer.
			writeResponse(w, resp)
			return
		}
		h.errorHandler(w, r, err)
		return
	}
	defer upWS.Close()
	respHdr := http.Header{}
	for k, v := range resp.Header {
		if !isHandshakeHeader(k) {
			respHdr[k] = v
		}
	}
	// Response hooks see the 101 (headers only).
	resp.Header = respHdr
	if err := c.p.chain.Response(c.flow, resp); err != nil {
		h.errorHandler(w, r, err)
		return
	}
	u := websocket.Upgrader{
		CheckOrigin:     func(*http.Request) bool { return true }, // the server judged the origin
		ReadBufferSize:  16 << 10,
		WriteBufferSize: 16 << 10,
	}
	if sp := upWS.Subprotocol(); sp != "" {
		u.Subprotocols = []string{sp}
	}
	cliWS, err := u.Upgrade(w, r, resp.Header)
	if err != nil {
		return // Upgrade answered the client
	}
	defer cliWS.Close()
	c.p.m.conns("websocket").Inc()
	cliWS.SetReadLimit(o.MaxWebSocketMessage)
	upWS.SetReadLimit(o.MaxWebSocketMessage)
	done := make(chan struct{}, 2)
	go func() { h.pumpWS(r, cliWS, upWS, true); done <- struct{}{} }()
	go func() { h.pumpWS(r, upWS, cliWS, false); done <- struct{}{} }()
	select {
	case <-done:
	case <-c.ctx.Done():
	}
	// One side ended: give the other a moment to receive the close, then stop.
	t := time.AfterFunc(5*time.Second, func() { cliWS.Close(); upWS.Close() })
	<-done
	t.Stop()
}

func isHandshakeHeader(k string) bool {
	for _, h := range wsHandshakeHeaders {
		if strings.EqualFold(k, h) {
			return true
		}
	}
	return false
}

// pumpWS copies messages from src to dst through the hooks.
func (h *httpHandler) pumpWS(r *http.Request, src, dst *websocket.Conn, fromClient bool) {
	c := h.c
	dir := "to_server"
	if !fromClient {
		dir = "to_client"
	}
	deadline := func() time.Time { return time.Now().Add(10 * time.Second) }
	src.SetPingHandler(func(data string) error {
		return dst.WriteControl(websocket.PingMessage, []byte(data), deadline())
	})
	src.SetPongHandler(func(data string) error {
		return dst.WriteControl(websocket.PongMessage, []byte(data), deadline())
	})
	for {
		typ, data, err := src.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			code, text := websocket.CloseGoingAway, ""
			if errors.As(err, &ce) {
				code, text = ce.Code, ce.Text
				if code == websocket.CloseNoStatusReceived {
					_ = dst.WriteControl(websocket.CloseMessage, []byte{}, deadline())
					return
				}
			} else if errors.Is(err, websocket.ErrReadLimit) {
				code, text = websocket.CloseMessageTooBig, "message too big"
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.log.Debug("websocket read", "err", err, "direction", dir)
			}
			_ = dst.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), deadline())
			return
		}
		m := &interceptors.WebSocketMessage{FromClient: fromClient, Text: typ == websocket.TextMessage, Data: data}
		if err := c.p.chain.WebSocketMessage(c.flow, r, m); err != nil {
			c.p.interceptorFailed(err)
			c.log.Warn("websocket hook failed; closing", "err", err)
			msg := websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "interceptor failed")
			_ = dst.WriteControl(websocket.CloseMessage, msg, deadline())
			_ = src.WriteControl(websocket.CloseMessage, msg, deadline())
			return
		}
		if m.Drop {
			c.p.m.wsMessages.WithLabelValues(dir, "dropped").Inc()
			continue
		}
		typ = websocket.BinaryMessage
		if m.Text {
			typ = websocket.TextMessage
		}
		if err := dst.WriteMessage(typ, m.Data); err != nil {
			return
		}
		c.p.m.wsMessages.WithLabelValues(dir, "forwarded").Inc()
	}
}

// writeResponse sends a response the proxy did not get from ReverseProxy.
func writeResponse(w http.ResponseWriter, resp *http.Response) {
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	if resp.Body != nil {
		_, _ = io.Copy(w, resp.Body)
		resp.Body.Close()
	}
}
