package promtext

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	m, err := Parse(strings.NewReader(`# HELP x y
# TYPE flowdog_gwlb_packets_total counter
flowdog_gwlb_packets_total{direction="in",verdict="fast"} 42
go_goroutines 7
garbage
`))
	if err != nil {
		t.Fatal(err)
	}
	if m[`flowdog_gwlb_packets_total{direction="in",verdict="fast"}`] != 42 || m["go_goroutines"] != 7 || len(m) != 2 {
		t.Errorf("parsed %v", m)
	}
}
