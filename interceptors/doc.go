// Package interceptors is flowdog's public API for code that reads and
// rewrites intercepted traffic, and the registry that compiles it in.
//
// An interceptor is a Go value with any subset of the hook methods below;
// flowdog calls the ones it implements, in the order the configuration
// lists the interceptors:
//
//   - [FlowAcceptor]: decides whether a new flow is intercepted, passed
//     through untouched, or dropped, before any packet reaches a stack.
//   - [RequestHook]: an HTTP request, headers read and body streaming; may
//     rewrite it or answer it directly (no upstream request is made).
//   - [ResponseHook]: an HTTP response, headers read and body streaming;
//     may rewrite or replace it.
//   - [WebSocketHook]: each WebSocket message, either way; may modify or
//     drop it.
//   - [StreamHook]: each chunk of a raw TCP stream (anything that is not
//     HTTP), either way; may modify or drop it.
//
// Interceptors register in init with [Register], the way Caddy modules do:
// an [Info] holds the id used in configuration and a constructor without
// side effects. flowdog decodes the interceptor's YAML configuration into
// the value New returns (unknown fields are errors), then calls Provision
// ([Provisioner]) and Validate ([Validator]) when implemented, and Cleanup
// ([CleanerUpper]) at shutdown.
//
// To add an interceptor: create a folder with the package, add one blank
// import line to cmd/flowdog/interceptors.go, rebuild, and list it under
// `interceptors:` in the configuration.
//
// An interceptor that panics or returns an error fails that one request
// (the client gets a 502 naming nothing but the failure) and nothing else;
// the error is logged with the interceptor's id.
package interceptors
