package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/flowdog/flowdog/internal/benchutil"
	"github.com/flowdog/flowdog/internal/loadgen"
)

// The load generator runs in a child process (this binary again, told so
// by childEnv) rather than as a goroutine: in one process the generator and
// the appliance share the Go scheduler's Ps, and on two cores sysmon's
// hand-offs of Ps held in long sendmmsg calls then decide the result more
// than the data path does (measured: flowdog's figure moved by 50% with
// GOMAXPROCS alone). A separate process is also what GWLB is: another host.
const childEnv = "FLOWDOG_BENCH_LOADGEN"

// childSpec is what the parent hands the child, as JSON in childEnv.
type childSpec struct {
	Config loadgen.Config
	CPU    int // pin the generator to this CPU; -1: do not pin
}

// runGenerator runs loadgen with cfg in a child process (pinned to cpu
// unless it is -1) and returns its result.
func runGenerator(ctx context.Context, cfg loadgen.Config, cpu int) (loadgen.Result, error) {
	var res loadgen.Result
	exe, err := os.Executable()
	if err != nil {
		return res, fmt.Errorf("load generator: %w", err)
	}
	js, err := json.Marshal(childSpec{Config: cfg, CPU: cpu})
	if err != nil {
		return res, fmt.Errorf("load generator: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	// The child writes its result even when it fails (partial counts help).
	if stdout.Len() > 0 {
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			return res, errors.Join(fmt.Errorf("load generator: bad output: %w", err), runErr)
		}
	}
	if runErr != nil {
		return res, fmt.Errorf("load generator: %w: %s", runErr, strings.TrimSpace(stderr.String()))
	}
	return res, nil
}

// childMain is the child's whole life: run the generator, print the result
// as JSON on stdout, exit non-zero on failure.
func childMain(js string) int {
	var spec childSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "bad config:", err)
		return 2
	}
	if spec.CPU >= 0 {
		if err := benchutil.Pin(0, spec.CPU); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		runtime.GOMAXPROCS(1)
	}
	res, err := loadgen.Run(context.Background(), spec.Config)
	if jerr := json.NewEncoder(os.Stdout).Encode(res); jerr != nil && err == nil {
		err = jerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
