// Command flowdog is the appliance daemon behind an AWS Gateway Load
// Balancer. See `flowdog help`.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/flowdog/flowdog/cff"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

const usage = `flowdog: a programmable appliance behind an AWS Gateway Load Balancer.

Usage:
  flowdog run [flags]        run the daemon (flowdog run -h lists the flags)
  flowdog config default     print the default configuration, commented
  flowdog config check FILE  validate a configuration file
  flowdog ca init ...        create a root CA certificate (KMS key or local key)
  flowdog ca show FILE       describe a certificate
  flowdog cff test ...       run a CloudFront function against an event, as
                             aws cloudfront test-function does
  flowdog version            print the version
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

// realMain returns the exit status: 0 fine, 1 runtime failure, 2 usage or configuration error.
func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "config":
		return cmdConfig(args[1:], stdout, stderr)
	case "ca":
		return cmdCA(args[1:], stdout, stderr)
	case "cff":
		if len(args) < 2 || args[1] != "test" {
			fmt.Fprint(stderr, "usage: flowdog cff test --function F.js --runtime cloudfront-js-2.0 --event EVENT.json [--kvs DATA.json]\n")
			return 2
		}
		return cff.TestCommand(args[2:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "flowdog", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "flowdog: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		return fmt.Sprintf("%s (%s%s, %s)", v, rev, dirty, bi.GoVersion)
	}
	return fmt.Sprintf("%s (%s)", v, bi.GoVersion)
}
