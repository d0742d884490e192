// Package promtext reads Prometheus's text exposition format into a map,
// for programs and tests that compare a flowdog's /metrics with what they
// sent it.
package promtext

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

// Parse maps each sample line's series (name and labels, as written) to
// its value. Comments and lines that do not parse are skipped.
func Parse(r io.Reader) (map[string]float64, error) {
	m := make(map[string]float64)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		m[l[:i]] = v
	}
	return m, sc.Err()
}
