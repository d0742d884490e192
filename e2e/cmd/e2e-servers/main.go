// Command e2e-servers is the end-to-end suite's helper: it writes the test
// PKI (a server CA that flowdog trusts and a certificate for nginx), and
// runs the small servers of the `internet` namespace that nginx cannot be:
//
//	e2e-servers certs DIR       # ca.pem, server.pem, server-key.pem
//	e2e-servers serve [flags]   # upload sink and WebSocket echo (behind nginx),
//	                            # TCP echo and UDP echo (fast path)
//
// It is started by e2e/vpc.sh; nothing here is part of flowdog.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: e2e-servers certs DIR | serve [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "certs":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: e2e-servers certs DIR")
			os.Exit(2)
		}
		err = writeCerts(os.Args[2])
	case "serve":
		err = serve(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "e2e-servers: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e-servers:", err)
		os.Exit(1)
	}
}

// The names and addresses nginx's certificate covers: what curl asks for
// with --resolve, and the internet namespace's addresses.
var (
	serverNames = []string{"www.example", "passthrough.example"}
	serverIPs   = []net.IP{net.ParseIP("198.51.100.10"), net.ParseIP("2001:db8:2::10")}
)

// writeCerts makes a fresh CA and a server certificate signed by it. The CA
// is what flowdog trusts upstream (tls.upstream_ca_file); clients never
// trust it except to check a passthrough connection.
func writeCerts(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "flowdog e2e test server CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: serverNames[0], Organization: []string{"flowdog e2e nginx"}},
		DNSNames:     serverNames,
		IPAddresses:  serverIPs,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	files := []struct {
		name, typ string
		der       []byte
		mode      os.FileMode
	}{
		{"ca.pem", "CERTIFICATE", caDER, 0o644},
		{"server.pem", "CERTIFICATE", der, 0o644},
		{"server-key.pem", "EC PRIVATE KEY", keyDER, 0o600},
	}
	for _, f := range files {
		b := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(filepath.Join(dir, f.name), b, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err)
	}
	return n
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	sinkAddr := fs.String("sink", "127.0.0.1:8090", "upload sink (HTTP, behind nginx's /upload): answers with the body's size and sha256")
	wsAddr := fs.String("ws", "127.0.0.1:8091", "WebSocket echo (HTTP, behind nginx's /ws)")
	tcpAddr := fs.String("tcp-echo", ":7007", "TCP echo, IPv4 and IPv6")
	udpAddr := fs.String("udp-echo", ":53", "UDP echo (a DNS-like request and answer), IPv4 and IPv6")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	errc := make(chan error, 4)
	sink := &http.Server{Addr: *sinkAddr, Handler: http.HandlerFunc(sinkHandler), ReadHeaderTimeout: 10 * time.Second}
	go func() { errc <- fmt.Errorf("sink: %w", sink.ListenAndServe()) }()
	ws := &http.Server{Addr: *wsAddr, Handler: http.HandlerFunc(wsEcho(log)), ReadHeaderTimeout: 10 * time.Second}
	go func() { errc <- fmt.Errorf("websocket echo: %w", ws.ListenAndServe()) }()

	tl, err := net.Listen("tcp", *tcpAddr)
	if err != nil {
		return err
	}
	go func() { errc <- fmt.Errorf("tcp echo: %w", tcpEcho(tl)) }()
	uc, err := net.ListenPacket("udp", *udpAddr)
	if err != nil {
		return err
	}
	go func() { errc <- fmt.Errorf("udp echo: %w", udpEcho(uc)) }()
	log.Info("e2e-servers: serving", "sink", *sinkAddr, "ws", *wsAddr, "tcp_echo", *tcpAddr, "udp_echo", *udpAddr)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	select {
	case s := <-sig:
		log.Info("e2e-servers: stopping", "signal", s)
		return nil
	case err := <-errc:
		return err
	}
}

// sinkResult is what the upload sink answers, as JSON.
type sinkResult struct {
	Bytes  int64             `json:"bytes"`
	SHA256 string            `json:"sha256"`
	Gwlb   map[string]string `json:"gwlb_headers"`
}

// sinkHandler reads the whole body, hashing it as it streams, so a 1 GB
// upload costs no memory or disk.
func sinkHandler(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, fmt.Sprintf("after %d bytes: %v", n, err), http.StatusBadRequest)
		return
	}
	res := sinkResult{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Gwlb: map[string]string{}}
	for k, v := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-gwlb-") {
			res.Gwlb[k] = strings.Join(v, ",")
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

func wsEcho(log *slog.Logger) http.HandlerFunc {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			log.Warn("websocket upgrade", "err", err)
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, msg); err != nil {
				return
			}
		}
	}
}

func tcpEcho(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func udpEcho(c net.PacketConn) error {
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		c.WriteTo(buf[:n], from)
	}
}
