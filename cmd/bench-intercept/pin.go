package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinPid restricts every thread of process pid (0: this process) to cpus.
// Threads started later inherit the mask of the thread that creates them,
// so pinning the threads that exist is enough; the second pass catches
// threads started while the first one ran.
func pinPid(pid int, cpus ...int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	dir := "/proc/self/task"
	if pid != 0 {
		dir = fmt.Sprintf("/proc/%d/task", pid)
	}
	for range 2 {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("pin: %w", err)
		}
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("pin to CPUs %v: %w", cpus, err)
			}
		}
	}
	return nil
}

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
