package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// clientHello returns the bytes a crypto/tls client sends first.
func clientHello(t *testing.T, sni string, alpn []string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
	}()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16<<10)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	return buf[:n]
}

func TestReadHelloPeeksInPlaceAndReleasesTheBuffer(t *testing.T) {
	// Names of several lengths give records of several lengths: the record
	// length must be read right whatever its bytes are.
	for i := range 8 {
		sni := strings.Repeat("w", i+1) + ".Example.com"
		t.Run(sni, func(t *testing.T) { testReadHelloInPlace(t, sni) })
	}
}

func testReadHelloInPlace(t *testing.T, sni string) {
	hello := clientHello(t, sni, []string{"h2", "http/1.1"})
	a, b := net.Pipe()
	defer a.Close()
	go func() { a.Write(hello); a.Write([]byte("after")) }()
	c := newBufConn(b)
	h, err := readHello(c, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if h.SNI != strings.ToLower(sni) || len(h.ALPN) != 2 || h.ALPN[0] != "h2" {
		t.Errorf("hello %+v", h)
	}
	if c.keep {
		t.Fatal("a one-record ClientHello was not peeked in place (replayed through a second reader)")
	}
	c.doneSniffing()
	got := make([]byte, len(hello))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, hello) {
		t.Fatalf("the hello bytes were not left for the handshake: %v", err)
	}
	rest := make([]byte, 5)
	if _, err := io.ReadFull(c, rest); err != nil || string(rest) != "after" {
		t.Fatalf("after the hello: %q %v", rest, err)
	}
	if c.br != nil {
		t.Error("the sniffing buffer is kept after it was drained")
	}
}

func TestReadHelloAcrossRecords(t *testing.T) {
	hello := clientHello(t, "split.example", nil)
	// Split the handshake message over two TLS records.
	body := hello[5:]
	half := len(body) / 2
	rec := func(p []byte) []byte {
		return append([]byte{0x16, 0x03, 0x01, byte(len(p) >> 8), byte(len(p))}, p...)
	}
	split := append(rec(body[:half]), rec(body[half:])...)
	a, b := net.Pipe()
	defer a.Close()
	go a.Write(split)
	c := newBufConn(b)
	h, err := readHello(c, 2*time.Second)
	if err != nil || h.SNI != "split.example" {
		t.Fatalf("hello %+v %v", h, err)
	}
	got := make([]byte, len(split))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, split) {
		t.Fatalf("the split hello was not replayed whole: %v", err)
	}
}
