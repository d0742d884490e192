package proxy

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowdog/flowdog/internal/gobin"
)

// h2specModule is the h2spec the conformance test runs in CI (.ci/run
// installs it). It has no go.mod, so its versions are +incompatible (the
// module proxy refused `@v2.2.1` alone).
const h2specModule = "github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible"

// h2specTimeout is h2spec's -o: how long it waits for each expected frame
// (its default). A case that fails waits this long.
const h2specTimeout = 2

// TestH2Spec runs h2spec, the HTTP/2 conformance suite, through the whole
// intercepting path: h2spec over TLS (ALPN h2) to the rig, whose client leg
// is flowdog's HTTP/2 server, and on to an HTTPS upstream that speaks
// HTTP/2 (flowdog's HTTP/2 client) or only HTTP/1.1. Every failed case is
// listed by its h2spec id.
func TestH2Spec(t *testing.T) {
	bin, err := h2specBinary()
	if err != nil {
		msg := fmt.Sprintf("%v: install it with `go install %s` (.ci/run does)", err, h2specModule)
		if testing.Short() {
			t.Skip(msg)
		}
		t.Fatal(msg) // a skipped conformance test must not count as passing
	}
	for _, mode := range []struct {
		name     string
		blocking bool
	}{{"parking", false}, {"blocking", true}} {
		for _, up := range []struct {
			name string
			h2   bool
		}{{"h2-upstream", true}, {"h1-upstream", false}} {
			t.Run(mode.name+"/"+up.name, func(t *testing.T) {
				t.Parallel()
				srv, pool := tlsServer(t, http.HandlerFunc(h2specHandler), up.h2)
				r := newRigMode(t, srv.Listener.Addr().String(), Options{UpstreamRoots: pool}, mode.blocking)
				runH2Spec(t, bin, r.addr())
			})
		}
	}
}

// h2specHandler answers every request simply, whatever h2spec sends.
func h2specHandler(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "h2spec ok\n")
}

// h2specBinary finds h2spec where CI's `go install` put it.
func h2specBinary() (string, error) { return gobin.Find("h2spec") }

// runH2Spec runs every h2spec case (not the strict ones) against addr and
// fails t with each failed case.
func runH2Spec(t *testing.T, bin, addr string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-t", "-k", "-h", host, "-p", port,
		"-o", strconv.Itoa(h2specTimeout), "-j", report)
	cmd.Env = append(os.Environ(), "NO_COLOR=1", "TERM=dumb")
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	runErr := cmd.Run()
	t.Logf("h2spec ran %v (exit: %v)", time.Since(start).Round(time.Millisecond), runErr)
	if ctx.Err() != nil {
		t.Fatalf("h2spec did not finish within 50s:\n%s", out.String())
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		// h2spec stops without a report when it cannot connect at all.
		t.Fatalf("h2spec wrote no JUnit report (%v; exit: %v):\n%s", err, runErr, out.String())
	}
	res, err := parseH2SpecReport(raw)
	if err != nil {
		t.Fatalf("h2spec's JUnit report: %v\n%s\nh2spec's output:\n%s", err, raw, out.String())
	}
	t.Logf("h2spec: %d cases, %d passed, %d skipped, %d failed", res.total, res.total-res.skipped-len(res.failed), res.skipped, len(res.failed))
	if res.total == 0 {
		t.Fatalf("h2spec ran no case:\n%s", out.String())
	}
	if len(res.failed) > 0 {
		t.Errorf("h2spec: %d of %d cases failed:\n%s", len(res.failed), res.total, strings.Join(res.failed, "\n"))
	}
	if runErr != nil && len(res.failed) == 0 {
		t.Errorf("h2spec failed (%v) with no failed case in its report:\n%s", runErr, out.String())
	}
}

// h2specResult is what the JUnit report says.
type h2specResult struct {
	total, skipped int
	failed         []string // "http2/4.2/2 [4.2. Frame Size]: description", then expected and actual lines
}

// parseH2SpecReport reads h2spec's JUnit report. h2spec writes a suite per
// section (package "http2/6.5.2") and a case per test, in order: the case
// number is its position in the suite, as h2spec numbers it on its
// command line (h2spec http2/6.5.2/1). A failure's text, expected lines
// then the actual one, comes raw (innerxml) and, because h2spec's type
// switch misses its *TestError, as <error> rather than <failure>.
func parseH2SpecReport(raw []byte) (h2specResult, error) {
	var rep struct {
		Suites []struct {
			Package string `xml:"package,attr"`
			Name    string `xml:"name,attr"`
			Cases   []struct {
				Desc    string `xml:"classname,attr"`
				Failure *struct {
					Text string `xml:",chardata"`
				} `xml:"failure"` // h2spec writes <error> (see above); <failure> too, should it be fixed
				Error *struct {
					Text string `xml:",chardata"`
				} `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	// The raw text holds what the peer sent: a PING's opaque data, say,
	// whose NUL bytes XML does not allow, or a bare '&' (Strict off).
	raw = bytes.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' {
			return '.'
		}
		return r
	}, raw)
	d := xml.NewDecoder(bytes.NewReader(raw))
	d.Strict = false
	if err := d.Decode(&rep); err != nil {
		return h2specResult{}, err
	}
	var res h2specResult
	for _, s := range rep.Suites {
		for i, c := range s.Cases {
			res.total++
			text := ""
			switch {
			case c.Skipped != nil:
				res.skipped++
				continue
			case c.Failure != nil:
				text = c.Failure.Text
			case c.Error != nil:
				text = c.Error.Text
			default:
				continue
			}
			lines := strings.Split(strings.TrimSpace(text), "\n")
			var b strings.Builder
			fmt.Fprintf(&b, "  %s/%d [%s]: %s", s.Package, i+1, s.Name, c.Desc)
			if n := len(lines); n == 1 {
				fmt.Fprintf(&b, "\n      error:    %s", strings.TrimSpace(lines[0])) // not a TestError: a timeout, say
			} else {
				// TestError's text: the expected lines, then the actual.
				for _, l := range lines[:n-1] {
					if l = strings.TrimSpace(l); l != "" && l != "Expect:" && l != "Actual:" {
						fmt.Fprintf(&b, "\n      expected: %s", l)
					}
				}
				fmt.Fprintf(&b, "\n      actual:   %s", strings.TrimSpace(lines[n-1]))
			}
			res.failed = append(res.failed, b.String())
		}
	}
	return res, nil
}
