package main

// The interceptors compiled into flowdog. To add one: create its package
// (see examples/), add one import line here, rebuild, and list it under
// `interceptors:` in the configuration.
import (
	_ "github.com/flowdog/flowdog/examples/cloudfront_functions"
	_ "github.com/flowdog/flowdog/examples/geneve_headers"
)
