//go:build e2e

package e2e

// The tests run in this order (Go runs them in source order): the light
// checks first, then the large transfer, the metrics cross-check while
// flowdog has run since the VPC came up, and the restart last.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flowdog/flowdog/gwlbsim"
)

var families = []struct{ name, addr string }{{"ipv4", serverV4}, {"ipv6", serverV6}}

// flowdogRestarted is set once TestRestart has restarted flowdog, whose
// counters then no longer cover everything gwlbsim counted.
var flowdogRestarted bool

// issuedBy reports whether curl -v printed an issuer line containing name.
func issuedBy(verbose, name string) bool {
	for _, l := range strings.Split(verbose, "\n") {
		if strings.Contains(l, "issuer:") && strings.Contains(l, name) {
			return true
		}
	}
	return false
}

// Plain HTTP through interception: the response arrives intact, and the
// geneve_headers interceptor's headers show in curl's output (response
// headers; the request headers nginx received, in the body) and in nginx's
// access log.
func TestHTTP(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			r := mustCurl(t, "--resolve", resolve(webName, "80", fam.addr), "http://"+webName+"/headers")
			cookie := checkGwlbHeaders(t, "response", responseHeaders(r))
			got := headersBody(t, r.stdout)
			checkGwlbHeaders(t, "request at nginx", map[string]string{
				"x-gwlb-vpc-endpoint-id": got["vpce"], "x-gwlb-attachment-id": got["attachment"], "x-gwlb-flow-cookie": got["cookie"],
			})
			if got["cookie"] != cookie || got["proto"] != "HTTP/1.1" {
				t.Errorf("nginx saw cookie %q proto %q; the client got cookie %q over HTTP/1.1", got["cookie"], got["proto"], cookie)
			}
			l := accessLogLine(t, "cookie="+cookie)
			if !strings.Contains(l, "port=80 ") || !strings.Contains(l, "vpce="+endpointID) || !strings.Contains(l, " 200 ") {
				t.Errorf("access log line %q: want port 80, status 200, vpce=%s", l, endpointID)
			}
			if !strings.HasPrefix(l, clientV4+" ") && !strings.HasPrefix(l, "2001:db8:1::10 ") {
				t.Errorf("access log line %q: the server must see the client's own address (same 5-tuple upstream)", l)
			}
			body := mustCurl(t, "--resolve", resolve(webName, "80", fam.addr), "http://"+webName+"/")
			if body.stdout != "hello from nginx in the internet namespace\n" {
				t.Errorf("index.html arrived as %q", body.stdout)
			}
		})
	}
	noViolations(t)
}

// HTTPS interception over HTTP/1.1 and HTTP/2, IPv4 and IPv6: curl trusts
// only flowdog's root, sees a chain issued by flowdog's CA, and the
// protocol it chose reaches nginx.
func TestHTTPS(t *testing.T) {
	for _, fam := range families {
		for _, proto := range []struct{ flag, nginx, curl string }{
			{"--http1.1", "HTTP/1.1", "1.1"},
			{"--http2", "HTTP/2.0", "2"},
		} {
			t.Run(fam.name+"/"+strings.TrimPrefix(proto.flag, "--"), func(t *testing.T) {
				r := mustCurl(t, proto.flag, "--cacert", flowdogRoot, "--resolve", resolve(webName, "443", fam.addr),
					"-w", "certs=%{num_certs} http=%{http_version}\n", "https://"+webName+"/headers")
				if !issuedBy(r.stderr, "flowdog intermediate CA") {
					t.Errorf("the certificate is not issued by flowdog's intermediate:\n%s", r.stderr)
				}
				if want := "certs=2 http=" + proto.curl + "\n"; !strings.HasSuffix(r.stdout, want) {
					t.Errorf("curl: want %q (leaf and flowdog's intermediate, HTTP/%s), got %q", want, proto.curl, r.stdout)
				}
				cookie := checkGwlbHeaders(t, "response", responseHeaders(r))
				got := headersBody(t, strings.Split(r.stdout, "certs=")[0])
				if got["vpce"] != endpointID || got["cookie"] != cookie || got["proto"] != proto.nginx {
					t.Errorf("nginx received vpce %q cookie %q over %q; want %q %q %q", got["vpce"], got["cookie"], got["proto"], endpointID, cookie, proto.nginx)
				}
				l := accessLogLine(t, "cookie="+cookie)
				if !strings.Contains(l, "port=443 ") || !strings.Contains(l, "sni="+webName) || !strings.Contains(l, proto.nginx) {
					t.Errorf("access log line %q: want port 443, sni %s, %s", l, webName, proto.nginx)
				}
			})
		}
	}
	// Trusting only the server's CA fails: what the client gets is not
	// nginx's certificate.
	r := curl(t, "--cacert", testCA, "--resolve", resolve(webName, "443", serverV4), "https://"+webName+"/headers")
	if r.code != 60 {
		t.Errorf("curl trusting only the test CA: want exit 60 (certificate problem), got %v", r)
	}
	noViolations(t)
}

// WebSocket through interception (TLS, nginx proxying to the echo server).
func TestWebSocket(t *testing.T) {
	root, err := os.ReadFile(flowdogRoot)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	// With no interceptor hooking WebSocket messages (the default chain has
	// none), flowdog proxies the upgrade and splices the connection: it
	// counts a 101 response, not a "websocket" connection.
	before := getMetrics(t).sum("flowdog_proxy_http_requests_total", `code="1xx"`)
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := websocket.Dialer{
				NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return dialClient(ctx, network, net.JoinHostPort(fam.addr, "443"))
				},
				TLSClientConfig:  &tls.Config{RootCAs: pool, ServerName: webName},
				HandshakeTimeout: 10 * time.Second,
			}
			c, resp, err := d.Dial("wss://"+webName+"/ws", nil)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			checkGwlbHeaders(t, "101 response", map[string]string{
				"x-gwlb-vpc-endpoint-id": resp.Header.Get("X-Gwlb-Vpc-Endpoint-Id"),
				"x-gwlb-attachment-id":   resp.Header.Get("X-Gwlb-Attachment-Id"),
				"x-gwlb-flow-cookie":     resp.Header.Get("X-Gwlb-Flow-Cookie"),
			})
			c.NetConn().SetDeadline(time.Now().Add(20 * time.Second))
			for i, msg := range [][]byte{[]byte("hello"), bytes.Repeat([]byte("0123456789abcdef"), 64<<10)} {
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					t.Fatalf("message %d: write: %v", i, err)
				}
				_, got, err := c.ReadMessage()
				if err != nil {
					t.Fatalf("message %d: read: %v", i, err)
				}
				if !bytes.Equal(got, msg) {
					t.Errorf("message %d: echoed %d bytes, sent %d", i, len(got), len(msg))
				}
			}
		})
	}
	if got := getMetrics(t).sum("flowdog_proxy_http_requests_total", `code="1xx"`) - before; got != 2 {
		t.Errorf("flowdog_proxy_http_requests_total{code=1xx} grew by %v, want 2 upgrades", got)
	}
	noViolations(t)
}

// SNI passthrough: the client sees nginx's own certificate (it trusts only
// the test CA here), and nothing is added to the exchange.
func TestPassthrough(t *testing.T) {
	before := getMetrics(t).sum("flowdog_proxy_connections_total", `kind="tls_passthrough"`)
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			r := mustCurl(t, "--cacert", testCA, "--resolve", resolve(passName, "443", fam.addr), "https://"+passName+"/headers")
			if !issuedBy(r.stderr, "CN=flowdog e2e test server CA") {
				t.Errorf("not nginx's own certificate:\n%s", r.stderr)
			}
			noGwlbHeaders(t, "response", responseHeaders(r))
			if got := headersBody(t, r.stdout); got["vpce"] != "" || got["cookie"] != "" {
				t.Errorf("nginx received X-Gwlb-* headers on a passthrough connection: %q", r.stdout)
			}
		})
	}
	if got := getMetrics(t).sum("flowdog_proxy_connections_total", `kind="tls_passthrough"`) - before; got != 2 {
		t.Errorf("flowdog_proxy_connections_total{kind=tls_passthrough} grew by %v, want 2", got)
	}
	noViolations(t)
}

// Flows outside the intercept policy take the fast path: TCP to another
// port (curl to nginx), a DNS-like UDP exchange and a TCP echo, IPv4 and
// IPv6.
func TestFastPath(t *testing.T) {
	before := getMetrics(t)
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			r := mustCurl(t, "--resolve", resolve(webName, fastPort, fam.addr), "http://"+webName+":"+fastPort+"/headers")
			noGwlbHeaders(t, "response", responseHeaders(r))
			if got := headersBody(t, r.stdout); got["vpce"] != "" {
				t.Errorf("nginx received X-Gwlb-* headers on the fast path: %q", r.stdout)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			u, err := dialClient(ctx, "udp", net.JoinHostPort(fam.addr, udpEchoPort))
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			u.SetDeadline(time.Now().Add(10 * time.Second))
			for i := range 3 {
				q := fmt.Appendf(nil, "query %d: A www.example?", i)
				if _, err := u.Write(q); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 2048)
				n, err := u.Read(buf)
				if err != nil || !bytes.Equal(buf[:n], q) {
					t.Fatalf("udp answer %d: %q, %v", i, buf[:n], err)
				}
			}

			c, err := dialClient(ctx, "tcp", net.JoinHostPort(fam.addr, echoPort))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			msg := bytes.Repeat([]byte("fast path "), 200_000) // 2 MB
			go c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("tcp echo of %d bytes: %v (intact: %v)", len(msg), err, bytes.Equal(got, msg))
			}
		})
	}
	after := getMetrics(t)
	if d := after.sum("flowdog_gwlb_flows_created_total", `verdict="fast"`) - before.sum("flowdog_gwlb_flows_created_total", `verdict="fast"`); d < 6 {
		t.Errorf("fast flows created: %v, want at least 6 (curl, udp, tcp; twice)", d)
	}
	if d := after.sum("flowdog_gwlb_flows_created_total", `verdict="intercept"`) - before.sum("flowdog_gwlb_flows_created_total", `verdict="intercept"`); d != 0 {
		t.Errorf("%v flows intercepted, want none", d)
	}
	noViolations(t)
}

// The DROP rule: curl fails at once (the SYN is answered with a RST) and
// nothing reaches nginx.
func TestDrop(t *testing.T) {
	before := getMetrics(t)
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			r := curl(t, "--max-time", "10", "--resolve", resolve(webName, dropPort, fam.addr), "http://"+webName+":"+dropPort+"/headers")
			if r.code != 7 || !strings.Contains(r.stderr, "Connection refused") {
				t.Errorf("want curl exit 7 (connection refused by the RST), got %v", r)
			}
			if r.elapsed > 2*time.Second {
				t.Errorf("curl took %v to fail; a RST should end it at once", r.elapsed)
			}
		})
	}
	if l, ok := findLogLine("port=" + dropPort + " "); ok {
		t.Errorf("a request reached nginx on the dropped port: %q", l)
	}
	after := getMetrics(t)
	for _, dir := range []string{"in", "out"} {
		d := after.sum("flowdog_gwlb_packets_total", `verdict="drop"`, `direction="`+dir+`"`) -
			before.sum("flowdog_gwlb_packets_total", `verdict="drop"`, `direction="`+dir+`"`)
		if d != 2 {
			t.Errorf("drop packets %s: %v, want 2 (a SYN in and a RST out per attempt)", dir, d)
		}
	}
	noViolations(t)
}

// A large download and upload through HTTPS interception, sha256 compared.
func TestLargeTransfer(t *testing.T) {
	path, sum, size := bigFile(t)
	cacert := []string{"--cacert", flowdogRoot, "--resolve", resolve(webName, "443", serverV4)}

	t.Run("download", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		args := append([]string{"netns", "exec", "client", "curl", "-sS", "--fail"}, cacert...)
		cmd := exec.CommandContext(ctx, "ip", append(args, "https://"+webName+"/big.bin")...)
		got := &countingHash{h: sha256.New()}
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = got, &stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("curl: %v after %d bytes: %s", err, got.n, stderr.String())
		}
		el := time.Since(start)
		t.Logf("downloaded %d bytes in %v: %.0f MB/s", got.n, el.Round(time.Millisecond), mbps(got.n, el))
		if got.n != size || hex.EncodeToString(got.h.Sum(nil)) != sum {
			t.Errorf("got %d bytes sha256 %x, want %d bytes %s", got.n, got.h.Sum(nil), size, sum)
		}
	})

	t.Run("upload", func(t *testing.T) {
		start := time.Now()
		r := nsRun(t, 10*time.Minute, "client", append(append([]string{"curl", "-sS", "--fail"}, cacert...),
			"-T", path, "https://"+webName+"/upload")...)
		el := time.Since(start)
		if r.code != 0 {
			t.Fatalf("curl: %v", r)
		}
		t.Logf("uploaded %d bytes in %v: %.0f MB/s", size, el.Round(time.Millisecond), mbps(size, el))
		var res struct {
			Bytes  int64             `json:"bytes"`
			SHA256 string            `json:"sha256"`
			Gwlb   map[string]string `json:"gwlb_headers"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("sink answered %q: %v", r.stdout, err)
		}
		if res.Bytes != size || res.SHA256 != sum {
			t.Errorf("the server received %d bytes sha256 %s, want %d %s", res.Bytes, res.SHA256, size, sum)
		}
		if res.Gwlb["X-Gwlb-Vpc-Endpoint-Id"] != endpointID {
			t.Errorf("the upload reached the server without flowdog's headers: %v", res.Gwlb)
		}
	})
	noViolations(t)
}

// flowdog's metrics agree with what gwlbsim sent and received: in total
// since both started, and per verdict for a known mix of flows.
func TestMetrics(t *testing.T) {
	type snap struct {
		m  metrics
		st gwlbsim.Report
	}
	// quiet waits until neither side counts anything more: a packet in
	// flight would be counted by one and not yet by the other.
	quiet := func() snap {
		t.Helper()
		prev := snap{getMetrics(t), getSimStats(t)}
		for range 40 {
			time.Sleep(250 * time.Millisecond)
			cur := snap{getMetrics(t), getSimStats(t)}
			if cur.st.Sent == prev.st.Sent && cur.st.Received == prev.st.Received &&
				cur.m.sum("flowdog_gwlb_packets_total") == prev.m.sum("flowdog_gwlb_packets_total") {
				return cur
			}
			prev = cur
		}
		t.Fatal("traffic does not settle: cannot compare counters")
		return prev
	}
	in := func(m metrics, match ...string) float64 {
		return m.sum("flowdog_gwlb_packets_total", append(match, `direction="in"`)...)
	}
	out := func(m metrics, match ...string) float64 {
		return m.sum("flowdog_gwlb_packets_total", append(match, `direction="out"`)...)
	}

	s0 := quiet()
	// Since the start: every datagram gwlbsim sent was counted in by
	// flowdog (or dropped by its kernel socket, which it counts too), and
	// every datagram flowdog sent reached gwlbsim. Only while both have run
	// since the VPC came up (flowdog's counters restart with it).
	kernelDrops := s0.m.sum("flowdog_gwlb_socket_receive_drops_total")
	if !flowdogRestarted {
		if got, want := in(s0.m)+kernelDrops, float64(s0.st.Sent); got != want {
			t.Errorf("flowdog counted %v packets in (%v dropped by the kernel), gwlbsim sent %v", in(s0.m), kernelDrops, want)
		}
		if got, want := out(s0.m), float64(s0.st.Received); got != want {
			t.Errorf("flowdog counted %v packets out, gwlbsim received %v", got, want)
		}
	}
	t.Logf("since start: gwlbsim sent %d, received %d; flowdog in %v (fast %v, drop %v, intercept %v), out %v (fast %v, drop %v, intercept %v)",
		s0.st.Sent, s0.st.Received, in(s0.m), in(s0.m, `verdict="fast"`), in(s0.m, `verdict="drop"`), in(s0.m, `verdict="intercept"`),
		out(s0.m), out(s0.m, `verdict="fast"`), out(s0.m, `verdict="drop"`), out(s0.m, `verdict="intercept"`))

	// A known mix: 4 UDP exchanges (fast: 8 packets each way), 1 dropped
	// connection (1 SYN in, 1 RST out), 1 intercepted HTTP request.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u, err := dialClient(ctx, "udp", net.JoinHostPort(serverV4, udpEchoPort))
	if err != nil {
		t.Fatal(err)
	}
	u.SetDeadline(time.Now().Add(10 * time.Second))
	for i := range 4 {
		q := fmt.Appendf(nil, "metrics %d", i)
		u.Write(q)
		buf := make([]byte, 100)
		if n, err := u.Read(buf); err != nil || !bytes.Equal(buf[:n], q) {
			t.Fatalf("udp echo %d: %q %v", i, buf[:n], err)
		}
	}
	u.Close()
	curl(t, "--max-time", "5", "--resolve", resolve(webName, dropPort, serverV4), "http://"+webName+":"+dropPort+"/")
	mustCurl(t, "--resolve", resolve(webName, "80", serverV4), "http://"+webName+"/headers")

	s1 := quiet()
	d := func(f func(metrics, ...string) float64, match ...string) float64 {
		return f(s1.m, match...) - f(s0.m, match...)
	}
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"fast in", d(in, `verdict="fast"`), 8},
		{"fast out", d(out, `verdict="fast"`), 8},
		{"drop in", d(in, `verdict="drop"`), 1},
		{"drop out", d(out, `verdict="drop"`), 1},
		{"all in vs gwlbsim sent", d(in), float64(s1.st.Sent - s0.st.Sent)},
		{"all out vs gwlbsim received", d(out), float64(s1.st.Received - s0.st.Received)},
		{"intercepted flows", s1.m.sum("flowdog_gwlb_flows_created_total", `verdict="intercept"`) - s0.m.sum("flowdog_gwlb_flows_created_total", `verdict="intercept"`), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	// A TCP exchange through the netstack: a handshake, a request, a
	// response and the close, on both legs.
	if d(in, `verdict="intercept"`) < 6 || d(out, `verdict="intercept"`) < 6 {
		t.Errorf("intercepted packets: %v in, %v out; want a whole connection on both legs", d(in, `verdict="intercept"`), d(out, `verdict="intercept"`))
	}
	noViolations(t)
}

// flowdog restarted mid-transfer: a long-lived fast-path flow survives
// (its packets arrive mid-stream and are fast-pathed), new connections work
// as soon as flowdog is up again.
func TestRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	long, err := dialClient(ctx, "tcp", net.JoinHostPort(serverV4, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	echo := func(what string, timeout time.Duration) {
		t.Helper()
		long.SetDeadline(time.Now().Add(timeout))
		msg := []byte("long-lived flow: " + what + "\n")
		if _, err := long.Write(msg); err != nil {
			t.Fatalf("%s: write: %v", what, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(long, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%s: echo %q, %v", what, got, err)
		}
	}
	echo("before the restart", 10*time.Second)

	// An intercepted download in progress (rate-limited so that it is).
	_, _, size := bigFile(t)
	dl := exec.CommandContext(ctx, "ip", "netns", "exec", "client", "curl", "-sS", "--limit-rate", "20M",
		"--speed-limit", "1000", "--speed-time", "5", "-o", "/dev/null", "-w", "%{size_download}",
		"--resolve", resolve(webName, "80", serverV4), "http://"+webName+"/big.bin")
	var dlOut, dlErr bytes.Buffer
	dl.Stdout, dl.Stderr = &dlOut, &dlErr
	if err := dl.Start(); err != nil {
		t.Fatal(err)
	}
	dlDone := make(chan error, 1)
	go func() { dlDone <- dl.Wait() }()
	time.Sleep(1500 * time.Millisecond)

	start := time.Now()
	flowdogRestarted = true
	if out, err := vpc("stop", "flowdog"); err != nil {
		t.Fatalf("stop flowdog: %v\n%s", err, out)
	}
	stopped := time.Since(start)
	// While flowdog is away, the long-lived flow's next segment waits in
	// the client's retransmission queue.
	long.SetWriteDeadline(time.Now().Add(5 * time.Second))
	long.Write([]byte("during the restart\n"))
	if out, err := vpc("start", "flowdog"); err != nil {
		t.Fatalf("start flowdog: %v\n%s", err, out)
	}
	t.Logf("flowdog stopped in %v, up again %v after the stop began", stopped.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// New connections work at once: intercepted (HTTPS, with the same
	// root: it persists in state_dir) and fast path.
	r := mustCurl(t, "--cacert", flowdogRoot, "--resolve", resolve(webName, "443", serverV4), "https://"+webName+"/headers")
	checkGwlbHeaders(t, "after restart", responseHeaders(r))
	mustCurl(t, "--resolve", resolve(webName, fastPort, serverV6), "http://"+webName+":"+fastPort+"/")

	// The long-lived flow survived: what was written during the restart
	// arrives (TCP retransmitted it), and it carries on.
	long.SetReadDeadline(time.Now().Add(30 * time.Second))
	want := "during the restart\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(long, got); err != nil || string(got) != want {
		t.Fatalf("long-lived flow across the restart: %q, %v", got, err)
	}
	echo("after the restart", 10*time.Second)

	// The intercepted transfer in progress cannot survive: its TCP state
	// was in flowdog's netstack. Report how it ended.
	select {
	case err := <-dlDone:
		t.Logf("intercepted download in progress during the restart: %v after %s of %d bytes: %s", err, dlOut.String(), size, strings.TrimSpace(dlErr.String()))
	case <-time.After(30 * time.Second):
		dl.Process.Kill()
		<-dlDone
		t.Logf("intercepted download in progress during the restart: still running 30 s later, killed")
	}
	noViolations(t)
}
