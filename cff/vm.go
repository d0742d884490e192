package cff

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dlclark/regexp2/v2"
	"github.com/dop251/goja"
)

func init() {
	// Backtracking regular expressions (the ones RE2 cannot run) are not
	// interruptible inside goja; bound each match. Only goja uses regexp2
	// in this program.
	if regexp2.DefaultMatchTimeout > time.Hour {
		regexp2.DefaultMatchTimeout = 100 * time.Millisecond
	}
}

// maxCallStack bounds recursion; past it goja throws a RangeError.
const maxCallStack = 1024

// errBudget is what the budget timer interrupts a runtime with.
var errBudget = errors.New("budget exceeded")

// vmState is one goja runtime with the function loaded, and the state of
// the invocation running in it. It is used by one goroutine at a time.
type vmState struct {
	f       *Function
	vm      *goja.Runtime
	wrapper goja.Callable // evaluates the function's top level, returns [handler, onRequest]

	errorCtor     *goja.Object
	freeze        goja.Callable
	jsonStringify goja.Callable
	jsonParse     goja.Callable
	modules       map[string]goja.Value
	querystring   goja.Value
	buffer        goja.Value // Buffer constructor (2.0)
	bufferFrom    goja.Callable
	objectProto   *goja.Object

	// budget timer: armed per invocation, see arm and disarm.
	timer  *time.Timer
	mu     sync.Mutex
	active bool

	// per invocation
	start     time.Time
	eventType EventType
	logs      []string
	logBytes  int
	origins   []string
	// byteStrings remembers strings that 1.0 helpers returned as byte
	// strings (digest(), bytesFrom…), so that crypto hashes them as bytes
	// and not as UTF-8 text, as njs does.
	byteStrings map[string]struct{}
}

// newVMState builds a runtime: prelude, globals, modules, and the
// function's compiled program.
func (f *Function) newVMState() (*vmState, error) {
	s := &vmState{f: f, vm: goja.New(), modules: map[string]goja.Value{}}
	vm := s.vm
	vm.SetTimeSource(func() time.Time { return s.start })
	vm.SetMaxCallStackSize(maxCallStack)
	s.errorCtor = vm.Get("Error").ToObject(vm)
	s.objectProto = vm.Get("Object").ToObject(vm)
	s.freeze, _ = goja.AssertFunction(s.objectProto.Get("freeze"))
	json := vm.Get("JSON").ToObject(vm)
	s.jsonStringify, _ = goja.AssertFunction(json.Get("stringify"))
	s.jsonParse, _ = goja.AssertFunction(json.Get("parse"))

	h := vm.NewObject()
	h.Set("maxAlloc", f.cfg.MaxAlloc)
	h.Set("v2", f.cfg.Runtime == Runtime20)
	h.Set("enc", s.jsEncode)
	h.Set("dec", s.jsDecode)
	h.Set("unescapeBuffer", func(call goja.FunctionCall) goja.Value {
		return vm.ToValue(decodeBytes(unescapeBuffer(call.Argument(0).String()), "utf8"))
	})
	pv, err := vm.RunProgram(preludeProgram)
	if err != nil {
		return nil, fmt.Errorf("cff: prelude: %w", err)
	}
	prelude, _ := goja.AssertFunction(pv)
	res, err := prelude(goja.Undefined(), vm.GlobalObject(), h)
	if err != nil {
		return nil, fmt.Errorf("cff: prelude: %w", err)
	}
	out := res.ToObject(vm)
	s.querystring = out.Get("0")
	if f.cfg.Runtime == Runtime20 {
		s.buffer = out.Get("1")
		s.bufferFrom, _ = goja.AssertFunction(s.buffer.ToObject(vm).Get("from"))
		vm.Set("atob", s.atob)
		vm.Set("btoa", s.btoa)
	} else {
		s.installNJSStrings()
	}
	console := vm.NewObject()
	console.Set("log", s.consoleLog)
	vm.Set("console", console)
	vm.Set("require", s.require)

	wv, err := vm.RunProgram(f.prog)
	if err != nil {
		return nil, fmt.Errorf("cff: %s: %w", f.cfg.Name, err)
	}
	wrapper, ok := goja.AssertFunction(wv)
	if !ok {
		return nil, fmt.Errorf("cff: %s: the program did not evaluate to its wrapper", f.cfg.Name)
	}
	s.wrapper = wrapper
	s.timer = time.AfterFunc(time.Hour, s.interrupt)
	s.timer.Stop()
	return s, nil
}

// interrupt runs on the budget timer's goroutine.
func (s *vmState) interrupt() {
	s.mu.Lock()
	if s.active {
		s.vm.Interrupt(errBudget)
	}
	s.mu.Unlock()
}

// arm starts an invocation: clock, logs, budget timer.
func (s *vmState) arm(et EventType) {
	s.start = s.f.cfg.Now()
	s.eventType = et
	s.logs = s.logs[:0]
	s.logBytes = 0
	s.origins = s.origins[:0]
	if s.byteStrings != nil {
		clear(s.byteStrings)
	}
	s.mu.Lock()
	s.active = true
	s.mu.Unlock()
	s.timer.Reset(s.f.cfg.Budget)
}

// disarm ends an invocation. After it no interrupt can reach the runtime:
// a timer that fired already did its Interrupt under mu, which
// ClearInterrupt undoes.
func (s *vmState) disarm() {
	s.mu.Lock()
	s.active = false
	s.mu.Unlock()
	s.timer.Stop()
	s.vm.ClearInterrupt()
}

// throw raises a JavaScript Error with msg from a Go callback.
func (s *vmState) throw(msg string) {
	obj, err := s.vm.New(s.errorCtor, s.vm.ToValue(msg))
	if err != nil {
		panic(s.vm.NewTypeError(msg))
	}
	panic(obj)
}

// require gives the built-in modules; anything else throws, as there is
// no file system.
func (s *vmState) require(call goja.FunctionCall) goja.Value {
	name := call.Argument(0).String()
	if m, ok := s.modules[name]; ok {
		return m
	}
	var m goja.Value
	switch name {
	case "crypto":
		m = s.cryptoModule()
	case "querystring":
		m = s.querystring
	case "cloudfront":
		if s.f.cfg.Runtime != Runtime20 {
			s.throw("Cannot find module 'cloudfront': it needs cloudfront-js-2.0")
		}
		m = s.cloudfrontModule()
	default:
		s.throw(fmt.Sprintf("Cannot find module '%s'", name))
	}
	if _, err := s.freeze(goja.Undefined(), m); err != nil {
		panic(err)
	}
	s.modules[name] = m
	return m
}

// consoleLog collects log lines; CloudFront truncates a run's logs at 10 KB.
func (s *vmState) consoleLog(call goja.FunctionCall) goja.Value {
	if s.logBytes >= MaxLogBytes {
		return goja.Undefined()
	}
	var line []byte
	for i, a := range call.Arguments {
		if i > 0 {
			line = append(line, ' ')
		}
		line = append(line, s.format(a)...)
	}
	if room := MaxLogBytes - s.logBytes; len(line) > room {
		line = line[:room]
	}
	s.logBytes += len(line)
	s.logs = append(s.logs, string(line))
	return goja.Undefined()
}

// format renders a console.log argument: strings as they are, errors as
// "Name: message", other objects as JSON.
func (s *vmState) format(v goja.Value) string {
	o, ok := v.(*goja.Object)
	if !ok {
		return v.String()
	}
	if _, isFn := goja.AssertFunction(v); isFn {
		return "[Function]"
	}
	if o.ClassName() == "Error" {
		return o.String()
	}
	js, err := s.jsonStringify(goja.Undefined(), v)
	if err != nil || goja.IsUndefined(js) {
		return o.String()
	}
	return js.String()
}
