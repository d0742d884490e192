// Package cloudfront_functions is an example interceptor that runs
// unmodified CloudFront Functions (viewer-request and viewer-response
// JavaScript) on intercepted HTTP and HTTPS traffic, with the cff runtime.
package cloudfront_functions

import "github.com/flowdog/flowdog/interceptors"

// ID is the name used in configuration.
const ID = "cloudfront_functions"

func init() {
	interceptors.Register(interceptors.Info{ID: ID, New: func() any { return &Functions{} }})
}
