// Package proxy serves intercepted TCP connections: it looks at the first
// bytes, intercepts TLS with a minted certificate (or passes it through by
// SNI and destination rules), proxies HTTP/1.1, HTTP/2 and WebSocket through
// the interceptor chain, and splices anything else through the stream hooks.
//
// The proxy is given both legs already connected (the upstream leg dialled
// from the client's address to the original destination); it never dials.
// One upstream connection serves exactly one downstream connection, so an
// HTTP/2 client whose server speaks HTTP/1.1 has its requests queued on the
// one upstream connection.
//
// Both HTTP legs are flowdog's own (h1server.go; h2conn.go, h2server.go,
// h2client.go on x/net's Framer and hpack) rather than net/http's and
// x/net's, for one reason: an idle connection must hold no goroutine and
// no buffer. Between requests (HTTP/1.1) or frames (HTTP/2) a leg parks on
// the netstack's readiness callback and resumes on a new goroutine, so
// 10,000 idle intercepted connections cost memory, not 30,000 goroutines.
package proxy
