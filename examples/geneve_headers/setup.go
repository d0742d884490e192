// Package geneve_headers is an example interceptor: it tells both ends of an
// intercepted HTTP exchange which GWLB endpoint, attachment and flow carried
// it, in X-Gwlb-* headers.
package geneve_headers

import "github.com/flowdog/flowdog/interceptors"

// ID is the name used in configuration.
const ID = "geneve_headers"

func init() {
	interceptors.Register(interceptors.Info{ID: ID, New: func() any { return New() }})
}

// New returns the interceptor with its defaults: headers on requests and responses.
func New() *Headers {
	return &Headers{Requests: true, Responses: true}
}
