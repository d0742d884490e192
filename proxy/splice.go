package proxy

import (
	"errors"
	"io"
	"net"

	"github.com/flowdog/flowdog/interceptors"
)

// splice copies both ways with half-close until both directions end,
// through the stream hooks when any interceptor has one.
func (c *conn) splice(client, upstream net.Conn) {
	hooks := c.p.chain.HasStreamHooks()
	errc := make(chan error, 2)
	cp := func(dst, src net.Conn, fromClient bool) {
		var err error
		if hooks {
			err = c.copyHooked(dst, src, fromClient)
		} else {
			_, err = io.Copy(dst, src)
		}
		if err == nil {
			err = closeWrite(dst)
		} else {
			// A failed direction (a reset, or a hook's error) ends the
			// connection the way the server would have: with a RST.
			reset(client)
			reset(upstream)
		}
		errc <- err
	}
	go cp(upstream, client, true)
	go cp(client, upstream, false)
	<-errc
	<-errc
}

func (c *conn) copyHooked(dst, src net.Conn, fromClient bool) error {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m := &interceptors.TCPMessage{FromClient: fromClient, Data: buf[:n]}
			if err := c.p.chain.TCPMessage(c.flow, m); err != nil {
				c.p.interceptorFailed(err)
				c.log.Warn("stream hook failed; connection closed", "err", err)
				return err
			}
			if !m.Drop && len(m.Data) > 0 {
				if _, err := dst.Write(m.Data); err != nil {
					return err
				}
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}

// interceptorFailed counts an interceptor's error under its id.
func (p *Proxy) interceptorFailed(err error) {
	var ie *interceptors.Error
	if errors.As(err, &ie) {
		p.m.interceptorErrors.WithLabelValues(ie.ID).Inc()
	}
}
