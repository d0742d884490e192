package cff

import (
	"errors"
	"net/http"
)

// ExecutionError is a function that threw, whose Promise was rejected or
// never settled, or that exceeded its time budget. CloudFront answers the
// viewer with 503.
type ExecutionError struct {
	Function string // the function's name
	Reason   string // the JavaScript error, or why the run stopped
	// Budget is true when the function was stopped for exceeding its time
	// budget.
	Budget bool
}

func (e *ExecutionError) Error() string {
	return "FunctionExecutionError: " + e.Reason
}

// StatusCode is the status CloudFront answers the viewer with: 503.
func (e *ExecutionError) StatusCode() int { return http.StatusServiceUnavailable }

// ValidationError is a function whose return value CloudFront refuses: not
// a request or response, a changed method, a read-only or disallowed header,
// a bad query string or URI, a body over the limit… CloudFront answers the
// viewer with 502.
type ValidationError struct {
	Function string
	Reason   string
}

func (e *ValidationError) Error() string {
	return "FunctionValidationError: " + e.Reason
}

// StatusCode is the status CloudFront answers the viewer with: 502.
func (e *ValidationError) StatusCode() int { return http.StatusBadGateway }

// StatusCode maps an error from ViewerRequest or ViewerResponse to the
// status CloudFront gives the viewer: 503 for an *ExecutionError, 502 for a
// *ValidationError or any other error, 200 for nil.
func StatusCode(err error) int {
	var ee *ExecutionError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &ee):
		return ee.StatusCode()
	default:
		return http.StatusBadGateway
	}
}

// Sentinel errors returned by Compile (wrapped with detail).
var (
	ErrCodeTooLarge   = errors.New("cff: function code exceeds the 10 KB limit")
	ErrNoHandler      = errors.New("cff: function defines no handler(event)")
	ErrBadRuntime     = errors.New("cff: unknown runtime")
	ErrBadEventType   = errors.New("cff: unknown event type")
	ErrSyntax         = errors.New("cff: syntax error")
	ErrKVSUnavailable = errors.New("cff: key value stores need cloudfront-js-2.0")
)
