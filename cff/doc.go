// Package cff runs unmodified CloudFront Functions JavaScript with goja, a
// pure-Go ECMAScript engine, and maps between net/http and CloudFront's
// event objects.
//
// It knows nothing of flowdog's proxy. A caller compiles a function once
// with Compile and then, per HTTP exchange, calls ViewerRequest before the
// request goes upstream and ViewerResponse before the response goes back;
// Test runs a function against a JSON event the way
// `aws cloudfront test-function` does.
//
// # What is CloudFront's behaviour, and where it comes from
//
// The behaviour follows the CloudFront Developer Guide pages "CloudFront
// Functions event structure", "JavaScript runtime features for CloudFront
// Functions" (1.0 and 2.0), "General helper methods", "Helper methods for
// key value stores", "Restrictions on edge functions" and "Testing
// functions", and the published `test-function` output of AWS's samples
// (aws-samples/amazon-cloudfront-functions; TestSamples runs them from a
// directory named by CFF_SAMPLES, as AWS's code is not vendored here).
// Where the guide is silent the choice made here is stated on the type or
// function that makes it.
//
// # Runtimes
//
// cloudfront-js-1.0 is ES5.1 plus the later features the guide lists:
// const, let, async, await, classes and generators are rejected at Compile;
// the njs byte-string helpers (String.bytesFrom, String.prototype.fromBytes,
// fromUTF8, toBytes, toUTF8) exist; crypto's digest() without an encoding
// returns a byte string. cloudfront-js-2.0 adds const, let, async/await,
// Buffer, TextEncoder/TextDecoder, atob/btoa, request.rawQueryString() and
// `import x from 'crypto'|'querystring'|'cloudfront'` lines at the top of
// the file; it has no njs string helpers and digest() without an encoding
// returns a Buffer. goja implements a superset of both runtimes (Map, Set,
// destructuring, …): code that runs here may still be refused by AWS.
//
// Both: strict mode, require('crypto') and require('querystring'),
// console.log (10 KB of logs per invocation), no eval, no Function
// constructor, no timers, no process, no network or file system, Date frozen
// at the start of an invocation, Math.random working.
//
// # Isolation, pooling and limits
//
// The source is compiled once (goja.Program). Each goja.Runtime runs the
// prelude once and is kept in a sync.Pool (per-P caches, so requests on
// different CPUs never contend, and a request never waits for another
// request's function: an empty pool builds a new runtime from the compiled
// program). Every invocation re-evaluates the function's top-level code, as
// CloudFront starts every invocation from a fresh state: nothing a function
// stores in its variables survives into the next request. Changes a
// function makes to built-in objects (String.prototype …) do persist in
// that runtime; a runtime that failed is discarded.
//
// Limits: the code size (10 KB, CloudFront's quota); the time budget per
// invocation (Budget, default 5 ms of wall-clock time, enforced with goja's
// Interrupt, reported as ComputeUtilization = elapsed/budget·100, capped at
// 100); a response body set by a function (MaxBodySize, default 40 KB); the
// strings and arrays that String.prototype.repeat/padStart/padEnd, Array,
// ArrayBuffer, the typed array constructors and Buffer.alloc may create
// (MaxAlloc, default 2 MiB, CloudFront's function memory quota); the logs
// (10 KB). goja has no heap limit: a loop that allocates is stopped by the
// time budget, but a native built-in (one call) is not interruptible, so a
// built-in not listed above can exceed the budget or the allocation bound
// while it runs. Backtracking regular expressions (those RE2 cannot run) are
// cut off after 100 ms by regexp2's process-wide DefaultMatchTimeout, which
// this package sets; goja treats a timed-out match as no match.
package cff
