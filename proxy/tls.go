package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flowdog/flowdog/ca"
)

// hello is what flowdog learns from a ClientHello.
type hello struct {
	SNI  string
	ALPN []string
}

var errSniffed = errors.New("client hello read")

// readHello parses the ClientHello at the start of c without consuming it.
// Usually the hello is one TLS record and is peeked in place; a hello split
// over several records is read through a tee and put back in front of the
// connection.
func readHello(c *bufConn, timeout time.Duration) (*hello, error) {
	c.Conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.Conn.SetReadDeadline(time.Time{})
	if hdr, err := c.br.Peek(5); err == nil {
		if n := 5 + (int(hdr[3])<<8 | int(hdr[4])); n <= c.br.Size() {
			if rec, err := c.br.Peek(n); err == nil {
				if h, err := parseHello(&readOnlyConn{r: bytes.NewReader(rec), Conn: c.Conn}); h != nil || !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					return h, err
				}
			}
		}
	}
	var rec bytes.Buffer
	h, err := parseHello(&readOnlyConn{r: io.TeeReader(c.br, &rec), Conn: c.Conn})
	// Replay what crypto/tls consumed, then the rest.
	c.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(rec.Bytes()), c.br), 4<<10)
	c.keep = true
	return h, err
}

// parseHello runs crypto/tls's server handshake just far enough to see the
// ClientHello.
func parseHello(ro *readOnlyConn) (*hello, error) {
	var h *hello
	err := tls.Server(ro, &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		h = &hello{SNI: strings.ToLower(chi.ServerName), ALPN: slices.Clone(chi.SupportedProtos)}
		return nil, errSniffed
	}}).Handshake()
	if h == nil {
		return nil, err
	}
	return h, nil
}

// readOnlyConn feeds crypto/tls while sniffing; what it writes (an alert) is discarded.
type readOnlyConn struct {
	net.Conn
	r io.Reader
}

func (c *readOnlyConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *readOnlyConn) Write(p []byte) (int, error) { return len(p), nil }

func (c *conn) serveTLS() {
	h, err := readHello(c.client, c.p.o.TLSHandshakeTimeout)
	if err != nil {
		// Not a ClientHello crypto/tls can read: pass it on untouched.
		c.client.doneSniffing()
		c.log.Debug("unreadable ClientHello; splicing", "err", err)
		c.p.m.conns("tls_unparsed").Inc()
		c.splice(c.client, c.upstream)
		return
	}
	c.client.doneSniffing()
	c.flow.SNI = h.SNI
	c.log = c.log.With("sni", h.SNI)
	if why := c.passthroughReason(h); why != "" {
		c.p.m.conns("tls_passthrough").Inc()
		c.log.Debug("TLS passthrough", "why", why)
		c.splice(c.client, c.upstream)
		return
	}
	c.interceptTLS(h)
}

func (c *conn) passthroughReason(h *hello) string {
	dst := c.info.Server.Addr()
	switch {
	case c.p.o.CA == nil:
		return "no CA"
	case c.p.o.Passthrough.matchSNI(h.SNI):
		return "sni rule"
	case c.p.o.Passthrough.matchAddr(dst):
		return "destination rule"
	case c.p.o.AutoPassthrough && c.p.auto.has(c.autoKey(h.SNI, dst)):
		return "client rejected flowdog's certificate earlier"
	}
	return ""
}

// autoKey scopes a learnt passthrough to the tenant, the server name and
// the server: one client's rejection must not blind interception for other
// tenants, or for the same name at other addresses.
func (c *conn) autoKey(sni string, dst netip.Addr) string {
	return c.info.EndpointID + "/" + c.info.AttachmentID + "/" + sni + "/" + dst.String()
}

// clientOffer is the client's ALPN offer as flowdog takes it: without h2
// when HTTP/2 is off and the client can do HTTP/1.1 (then both legs speak
// HTTP/1.1, whose idle connections hold no goroutine). A client that
// offers only h2 (gRPC) still gets it.
func (c *conn) clientOffer(h *hello) []string {
	if !c.p.o.DisableHTTP2 || !slices.Contains(h.ALPN, "h2") || !slices.Contains(h.ALPN, "http/1.1") {
		return h.ALPN
	}
	return slices.DeleteFunc(slices.Clone(h.ALPN), func(p string) bool { return p == "h2" })
}

// upstreamALPN offers the server what the client offered, plus HTTP/1.1
// when the client speaks HTTP: flowdog can translate between the two.
func upstreamALPN(client []string) []string {
	if len(client) == 0 {
		return nil
	}
	out := slices.Clone(client)
	if (slices.Contains(client, "h2") || slices.Contains(client, "http/1.1")) && !slices.Contains(client, "http/1.1") {
		out = append(out, "http/1.1")
	}
	return out
}

// clientALPN picks what to offer the client: the server's choice when the
// client offered it, else the client's HTTP protocol (flowdog translates).
func clientALPN(server string, client []string) []string {
	switch {
	case server != "" && slices.Contains(client, server):
		return []string{server}
	case isHTTPProto(server) && slices.Contains(client, "h2"):
		return []string{"h2"}
	case isHTTPProto(server) && slices.Contains(client, "http/1.1"):
		return []string{"http/1.1"}
	}
	return nil
}

func isHTTPProto(p string) bool { return p == "h2" || p == "http/1.1" || p == "" }

// interceptTLS connects upstream first with the client's SNI and ALPN
// offer, verifies the server, then completes the client's handshake with a
// certificate that mirrors the server's names.
func (c *conn) interceptTLS(h *hello) {
	o := &c.p.o
	dst := c.info.Server.Addr()
	serverName := h.SNI
	if serverName == "" {
		serverName = dst.String() // verified against the certificate's IP SANs
	}
	up := tls.Client(c.upstream, &tls.Config{
		ServerName:         serverName,
		NextProtos:         upstreamALPN(c.clientOffer(h)),
		RootCAs:            o.UpstreamRoots,
		InsecureSkipVerify: o.InsecureSkipVerify,
		// Resume sessions with servers, as the client itself would: a
		// cache per tenant, so that tenants never share session state.
		ClientSessionCache: c.p.sessions.get(c.info.EndpointID + "/" + c.info.AttachmentID),
	})
	hctx, cancel := context.WithTimeout(c.ctx, o.TLSHandshakeTimeout)
	err := apart(func() error { return up.HandshakeContext(hctx) })
	cancel()
	if err != nil {
		c.p.m.upstreamTLSErrors.WithLabelValues(tlsErrorKind(err)).Inc()
		c.log.Warn("upstream TLS handshake failed; client connection reset", "err", err)
		reset(c.client)
		return
	}
	us := up.ConnectionState()
	var leafCert = us.PeerCertificates
	spec := ca.SpecFromUpstream(nil, h.SNI, dst)
	if len(leafCert) > 0 {
		spec = ca.SpecFromUpstream(leafCert[0], h.SNI, dst)
	}
	cert, err := o.CA.Leaf(spec)
	if err != nil {
		c.log.Error("minting a certificate failed; client connection reset", "err", err)
		reset(c.client)
		return
	}
	dcfg := &tls.Config{
		Certificates: []tls.Certificate{*cert},
		NextProtos:   clientALPN(us.NegotiatedProtocol, c.clientOffer(h)),
	}
	// One ticket key for all connections, so that clients can resume.
	dcfg.SetSessionTicketKeys(c.p.ticketKeys)
	down := tls.Server(c.client, dcfg)
	hctx, cancel = context.WithTimeout(c.ctx, o.TLSHandshakeTimeout)
	err = apart(func() error { return down.HandshakeContext(hctx) })
	cancel()
	if err != nil {
		kind := tlsErrorKind(err)
		c.p.m.clientTLSErrors.WithLabelValues(kind).Inc()
		if kind == "certificate_rejected" {
			c.log.Warn("client rejected flowdog's certificate (pinning, or flowdog's root not trusted)",
				"err", err, "auto_passthrough", o.AutoPassthrough)
			if o.AutoPassthrough {
				c.p.auto.add(c.autoKey(h.SNI, dst), o.AutoPassthroughTTL)
			}
		} else {
			c.log.Info("client TLS handshake failed", "err", err)
		}
		return
	}
	cs := down.ConnectionState()
	c.flow.ALPN, c.flow.TLSVersion = cs.NegotiatedProtocol, cs.Version
	c.p.m.conns("tls_intercepted").Inc()
	downC, upC := net.Conn(down), net.Conn(up)
	switch {
	case cs.NegotiatedProtocol == "h2":
		c.serveHTTP(downC, upC, true, us.NegotiatedProtocol)
	case cs.NegotiatedProtocol == "http/1.1":
		c.serveHTTP(downC, upC, false, us.NegotiatedProtocol)
	case us.NegotiatedProtocol == "" || us.NegotiatedProtocol == "http/1.1":
		// No ALPN: HTTP/1.1 if it looks like it, else decrypted bytes.
		b := newBufConn(downC)
		isHTTP := b.looksHTTP()
		b.doneSniffing()
		if isHTTP {
			c.serveHTTP(b, upC, false, us.NegotiatedProtocol)
			return
		}
		c.splice(b, newBufConn(upC))
	default:
		c.splice(newBufConn(downC), newBufConn(upC))
	}
}

// tlsErrorKind classifies handshake failures for metrics.
func tlsErrorKind(err error) string {
	s := err.Error()
	var ce *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ce):
		return "bad_server_certificate"
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "timeout"):
		return "timeout"
	case strings.Contains(s, "bad certificate"), strings.Contains(s, "unknown certificate authority"),
		strings.Contains(s, "certificate unknown"), strings.Contains(s, "certificate required"),
		// An OpenSSL 3 client (curl) that rejects the certificate over TLS
		// 1.3 shows up in crypto/tls as a record it cannot authenticate,
		// not as the alert it sent (reproduced with curl 7.88).
		strings.Contains(s, "bad record MAC"):
		return "certificate_rejected"
	case errors.Is(err, io.EOF), strings.Contains(s, "reset by peer"), strings.Contains(s, "broken pipe"):
		return "closed"
	case strings.Contains(s, "protocol version"):
		return "version"
	}
	return "other"
}

// apart runs f on a goroutine of its own and waits for it: a TLS handshake
// grows a stack (crypto, and gVisor's send path), and the connection's own
// goroutine then idles for as long as the connection lives with whatever
// stack it grew; the runtime does not shrink a stack that is a quarter used.
func apart(f func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	return <-errc
}

// sessionCaches holds one TLS client session cache per tenant, bounded.
type sessionCaches struct {
	mu sync.Mutex
	m  map[string]tls.ClientSessionCache
}

const (
	maxTenantCaches  = 1024
	sessionsPerCache = 1024
)

func (s *sessionCaches) get(tenant string) tls.ClientSessionCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.m[tenant]; ok {
		return c
	}
	if s.m == nil || len(s.m) >= maxTenantCaches {
		s.m = map[string]tls.ClientSessionCache{} // bounded: start over
	}
	c := tls.NewLRUClientSessionCache(sessionsPerCache)
	s.m[tenant] = c
	return c
}
