package cff

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// TestCommand is `flowdog cff test`: it runs one function against one
// event the way `aws cloudfront test-function` does and prints the AWS
// CLI's JSON ({"TestResult": {…}}). args are the arguments after
// "cff test":
//
//	--function F.js --runtime cloudfront-js-2.0 --event EVENT.json [--kvs DATA.json] [--budget 5ms]
//
// It returns the exit status: 0 whenever the function ran, whatever it
// returned; 1 when the function could not be compiled or the files read;
// 2 for bad arguments.
func TestCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("flowdog cff test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	function := fs.String("function", "", "the function's JavaScript `file`")
	runtime := fs.String("runtime", string(Runtime20), "cloudfront-js-1.0 or cloudfront-js-2.0")
	eventFile := fs.String("event", "", "the event object, a JSON `file` in CloudFront's shape")
	kvsFile := fs.String("kvs", "", "a key value store, a JSON `file` (an object of strings, or {\"data\":[{\"key\",\"value\"}]})")
	budget := fs.Duration("budget", DefaultBudget, "the time budget of the invocation")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *function == "" || *eventFile == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: flowdog cff test --function F.js --runtime cloudfront-js-2.0 --event EVENT.json [--kvs DATA.json]")
		return 2
	}
	code, err := os.ReadFile(*function)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	event, err := os.ReadFile(*eventFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	name := strings.TrimSuffix(filepath.Base(*function), filepath.Ext(*function))
	f, err := Compile(FunctionConfig{Name: name, Runtime: Runtime(*runtime), Code: code, KVSFile: *kvsFile, Budget: *budget, Now: time.Now})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	res := f.Test(event)
	type summary struct {
		Name           string
		Status         string
		FunctionConfig struct{ Comment, Runtime string }
	}
	var out struct {
		TestResult struct {
			FunctionSummary       summary
			ComputeUtilization    string
			FunctionExecutionLogs []string
			FunctionErrorMessage  string
			FunctionOutput        string
		}
	}
	out.TestResult.FunctionSummary.Name = name
	out.TestResult.FunctionSummary.Status = "UNPUBLISHED"
	out.TestResult.FunctionSummary.FunctionConfig.Runtime = string(f.Runtime())
	out.TestResult.ComputeUtilization = res.ComputeUtilization
	out.TestResult.FunctionExecutionLogs = res.FunctionExecutionLogs
	out.TestResult.FunctionErrorMessage = res.FunctionErrorMessage
	out.TestResult.FunctionOutput = res.FunctionOutput
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "    ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}
