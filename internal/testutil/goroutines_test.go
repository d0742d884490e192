package testutil

import "testing"

//go:noinline
func parkedHere(c chan struct{}) { <-c }

func TestGoroutinesIn(t *testing.T) {
	const fn = "github.com/flowdog/flowdog/internal/testutil.parkedHere"
	before := GoroutinesIn(fn)
	c := make(chan struct{})
	done := make(chan struct{})
	for range 3 {
		go func() { parkedHere(c); done <- struct{}{} }()
	}
	Eventually(t, 5e9, "goroutines counted", func() bool { return GoroutinesIn(fn) == before+3 })
	close(c)
	for range 3 {
		<-done
	}
	if n := GoroutinesIn(fn); n != before {
		t.Errorf("%d goroutines in %s after they ended, want %d", n, fn, before)
	}
}
