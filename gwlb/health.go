package gwlb

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Health answers GWLB's health checks: TCP, HTTP and HTTPS probes on one
// port (a TLS ClientHello is recognised by its first byte). It says 200 only
// while every check passes and the appliance is not draining.
type Health struct {
	checks   []func() error
	draining atomic.Bool
	log      *slog.Logger
	ln       net.Listener
	srv      *http.Server
	conns    chan net.Conn
	tlsCfg   *tls.Config
	wg       sync.WaitGroup
	closed   chan struct{}
}

// NewHealth listens on addr. Each check returns nil when healthy.
func NewHealth(addr string, log *slog.Logger, checks ...func() error) (*Health, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cert, err := selfSigned()
	if err != nil {
		return nil, fmt.Errorf("health: certificate: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	h := &Health{
		log: log, ln: ln,
		conns:  make(chan net.Conn),
		tlsCfg: &tls.Config{Certificates: []tls.Certificate{cert}},
		closed: make(chan struct{}),
	}
	for _, c := range checks {
		if c != nil {
			h.checks = append(h.checks, c)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.serve)
	mux.HandleFunc("GET /healthz", h.serve)
	h.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return h, nil
}

// Addr returns the listening address.
func (h *Health) Addr() net.Addr { return h.ln.Addr() }

// SetDraining makes every probe fail from now on (SIGTERM).
func (h *Health) SetDraining() { h.draining.Store(true) }

// Check returns nil when healthy, or the reason it is not.
func (h *Health) Check() error {
	if h.draining.Load() {
		return errors.New("draining")
	}
	for _, c := range h.checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

func (h *Health) serve(w http.ResponseWriter, r *http.Request) {
	// One probe, one connection: GWLB opens a new one each interval anyway.
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	body, code := "ok\n", http.StatusOK
	if err := h.Check(); err != nil {
		body, code = "unhealthy: "+err.Error()+"\n", http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}

// Serve runs until ctx is done.
func (h *Health) Serve(ctx context.Context) error {
	h.wg.Go(h.acceptLoop)
	errc := make(chan error, 1)
	go func() { errc <- h.srv.Serve(chanListener{h}) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		h.ln.Close()
		h.wg.Wait()
		return fmt.Errorf("health: %w", err)
	}
	close(h.closed)
	h.ln.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(sctx)
	<-errc
	h.wg.Wait()
	return nil
}

func (h *Health) acceptLoop() {
	for {
		c, err := h.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		h.wg.Go(func() { h.sniff(c) })
	}
}

// sniff hands c to the HTTP server, through TLS when it starts with a
// handshake record. A bare TCP probe connects and closes: nothing to do.
func (h *Health) sniff(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(c, 512)
	first, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	var conn net.Conn = &peekedConn{Conn: c, r: br}
	if first[0] == 0x16 {
		conn = tls.Server(conn, h.tlsCfg)
	}
	select {
	case h.conns <- conn:
	case <-h.closed:
		c.Close()
	}
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

type chanListener struct{ h *Health }

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.h.conns:
		return c, nil
	case <-l.h.closed:
		return nil, net.ErrClosed
	}
}
func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return l.h.ln.Addr() }

// selfSigned makes the HTTPS probe certificate; GWLB does not verify it.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "flowdog health check"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
