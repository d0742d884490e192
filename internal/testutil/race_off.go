//go:build !race

package testutil

// Race is true when built with -race, under which allocation counts are
// not meaningful (the detector allocates).
const Race = false
