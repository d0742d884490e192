package gobin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindInGOBIN(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "flowdog-test-tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GOBIN", dir)
	got, err := Find("flowdog-test-tool")
	if err != nil || got != exe {
		t.Fatalf("Find = %q, %v; want %q", got, err, exe)
	}
	// Not executable: not found, and the error names where it looked.
	os.Chmod(exe, 0o644)
	if _, err := Find("flowdog-test-tool"); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Find of a non-executable file: %v, want an error naming %s", err, dir)
	}
}
