package interceptors

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// recorder appends its name to the request's X-Order header.
type recorder struct {
	Name   string `yaml:"name"`
	Answer bool   `yaml:"answer"`
	Panic  bool   `yaml:"panic"`
	Fail   bool   `yaml:"fail"`
	Decide string `yaml:"decide"`
	clean  *[]string
}

func (r *recorder) Request(f *Flow, req *http.Request) (*http.Response, error) {
	req.Header.Add("X-Order", r.Name)
	switch {
	case r.Panic:
		panic("boom")
	case r.Fail:
		return nil, errors.New("refused")
	case r.Answer:
		return &http.Response{StatusCode: 204}, nil
	}
	return nil, nil
}

func (r *recorder) Response(f *Flow, resp *http.Response) error {
	resp.Header.Add("X-Order", r.Name)
	return nil
}

func (r *recorder) AcceptFlow(ctx context.Context, f *Flow) (Decision, error) {
	switch r.Decide {
	case "pass":
		return Pass, nil
	case "drop":
		return Drop, nil
	case "error":
		return Intercept, errors.New("lambda timed out")
	}
	return Intercept, nil
}

func (r *recorder) Validate() error {
	if r.Name == "" {
		return errors.New("name is required")
	}
	return nil
}

var cleaned []string

func (r *recorder) Cleanup() error { cleaned = append(cleaned, r.Name); return nil }

func init() {
	Register(Info{ID: "recorder", New: func() any { return &recorder{} }})
}

func chain(t *testing.T, docs ...string) (*Chain, error) {
	t.Helper()
	var cfgs []Config
	for _, d := range docs {
		var c Config
		if err := yaml.Unmarshal([]byte("name: recorder\nconfig: "+d), &c); err != nil {
			t.Fatal(err)
		}
		cfgs = append(cfgs, c)
	}
	return NewChain(context.Background(), cfgs, nil, nil)
}

func TestChainRunsInOrderAndStopsAtAnAnswer(t *testing.T) {
	c, err := chain(t, "{name: a}", "{name: b, answer: true}", "{name: c}")
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "http://x/", nil)
	resp, err := c.Request(&Flow{}, req)
	if err != nil || resp == nil || resp.StatusCode != 204 {
		t.Fatalf("Request = %v, %v; want b's answer", resp, err)
	}
	if got := strings.Join(req.Header.Values("X-Order"), ","); got != "a,b" {
		t.Errorf("request hooks ran %q, want a,b (c not after an answer)", got)
	}
	if resp.Request != req {
		t.Error("answer's Request not set")
	}
	resp.Header = http.Header{}
	if err := c.Response(&Flow{}, resp); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(resp.Header.Values("X-Order"), ","); got != "a,b,c" {
		t.Errorf("response hooks ran %q, want all, in order", got)
	}
}

func TestChainPanicAndErrorNameTheInterceptor(t *testing.T) {
	for _, doc := range []string{"{name: p, panic: true}", "{name: f, fail: true}"} {
		c, err := chain(t, doc)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Request(&Flow{}, httptest.NewRequest("GET", "http://x/", nil))
		var ie *Error
		if !errors.As(err, &ie) || ie.ID != "recorder" {
			t.Errorf("%s: error %v, want an *Error naming recorder", doc, err)
		}
	}
}

func TestChainAcceptorsFirstNonInterceptDecides(t *testing.T) {
	cases := []struct {
		docs []string
		want Decision
		err  bool
	}{
		{[]string{"{name: a}", "{name: b}"}, Intercept, false},
		{[]string{"{name: a}", "{name: b, decide: pass}", "{name: c, decide: drop}"}, Pass, false},
		{[]string{"{name: a, decide: drop}", "{name: b, decide: pass}"}, Drop, false},
		{[]string{"{name: a, decide: error}"}, Drop, true},
	}
	for _, c := range cases {
		ch, err := chain(t, c.docs...)
		if err != nil {
			t.Fatal(err)
		}
		if !ch.HasAcceptors() {
			t.Fatal("HasAcceptors false")
		}
		d, err := ch.AcceptFlow(context.Background(), &Flow{})
		if d != c.want || (err != nil) != c.err {
			t.Errorf("%v: %v, %v; want %v (error %v)", c.docs, d, err, c.want, c.err)
		}
	}
}

func TestNewChainErrorsNameTheField(t *testing.T) {
	cleaned = nil
	cases := []struct {
		cfgs []Config
		want string
	}{
		{[]Config{{Name: "nope"}}, `interceptors[0].name: unknown interceptor "nope"`},
		{nil, ""},
	}
	for _, c := range cases {
		_, err := NewChain(context.Background(), c.cfgs, nil, nil)
		if c.want == "" {
			if err != nil {
				t.Error(err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
	_, err := chain(t, "{name: ok}", "{bogus: 1}")
	if err == nil || !strings.Contains(err.Error(), "interceptors[1].config") || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown field: %v", err)
	}
	_, err = chain(t, "{name: ok}", "{answer: true}")
	if err == nil || !strings.Contains(err.Error(), "name is required") {
		t.Errorf("Validate: %v", err)
	}
	oks := 0
	for _, n := range cleaned {
		if n == "ok" {
			oks++
		}
	}
	if oks != 2 {
		t.Errorf("cleaned %v: a failed chain must clean up what it provisioned", cleaned)
	}
}

func TestRegisterRefusesBadInfo(t *testing.T) {
	for _, info := range []Info{{ID: "", New: func() any { return nil }}, {ID: "Bad-Id", New: func() any { return nil }},
		{ID: "recorder", New: func() any { return nil }}, {ID: "no_new"}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%q) did not panic", info.ID)
				}
			}()
			Register(info)
		}()
	}
	if _, ok := Lookup("recorder"); !ok {
		t.Error("Lookup")
	}
}
