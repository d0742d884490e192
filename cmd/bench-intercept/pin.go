package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// cpusAllowed returns the union of the CPU masks of pid's threads, for the
// report: it shows that pinning held for the whole run.
func cpusAllowed(pid int) (string, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return "", err
	}
	var all unix.CPUSet
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var s unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &s); err != nil {
			continue
		}
		for c := range 1024 {
			if s.IsSet(c) {
				all.Set(c)
			}
		}
	}
	out := ""
	for c := range 1024 {
		if all.IsSet(c) {
			if out != "" {
				out += ","
			}
			out += strconv.Itoa(c)
		}
	}
	return out, nil
}
