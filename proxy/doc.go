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
package proxy
