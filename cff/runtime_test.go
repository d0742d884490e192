package cff

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestCompileSyntaxPerRuntime(t *testing.T) {
	tests := []struct {
		name    string
		rt      Runtime
		code    string
		wantErr bool
	}{
		{"1.0 var", Runtime10, `function handler(e) { var x = 1; return e.request; }`, false},
		{"1.0 ES6 features it lists", Runtime10, "function handler(e) { var f = (a, ...r) => a ** 2; var s = `x${f(2)}`; return e.request; }", false},
		{"1.0 const", Runtime10, `function handler(e) { const x = 1; return e.request; }`, true},
		{"1.0 let", Runtime10, `function handler(e) { let x = 1; return e.request; }`, true},
		{"1.0 for let", Runtime10, `function handler(e) { for (let i = 0; i < 1; i++) {} return e.request; }`, true},
		{"1.0 for const of", Runtime10, `function handler(e) { for (const k of []) {} return e.request; }`, true},
		{"1.0 async", Runtime10, `async function handler(e) { return e.request; }`, true},
		{"1.0 async arrow", Runtime10, `var g = async () => 1; function handler(e) { return e.request; }`, true},
		{"1.0 class", Runtime10, `class A {} function handler(e) { return e.request; }`, true},
		{"1.0 import", Runtime10, "import crypto from 'crypto';\nfunction handler(e) { return e.request; }", true},
		{"2.0 const let async", Runtime20, `const a = 1; let b = 2; async function handler(e) { await null; return e.request; }`, false},
		{"2.0 imports", Runtime20, "// leading comment\nimport crypto from 'crypto';\nimport qs from \"querystring\"\nimport cf from 'cloudfront';\nfunction handler(e) { return e.request; }", false},
		{"2.0 import unknown module", Runtime20, "import fs from 'fs';\nfunction handler(e) { return e.request; }", true},
		{"2.0 import after code", Runtime20, "var a = 1;\nimport crypto from 'crypto';\nfunction handler(e) { return e.request; }", true},
		{"syntax error", Runtime20, `function handler(e) { return e.request `, true},
		{"no handler", Runtime20, `function other(e) { return e.request; }`, true},
		{"onRequest alias", Runtime20, `function onRequest(e) { return e.request; }`, false},
		{"top level throws", Runtime20, `throw new Error('boom'); function handler(e) {}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(FunctionConfig{Runtime: tt.rt, Code: []byte(tt.code)})
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
	t.Run("1.0 const message names the token and line", func(t *testing.T) {
		_, err := Compile(FunctionConfig{Runtime: Runtime10, Code: []byte("function handler(e) {\n  const x = 1;\n}")})
		if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), `"const"`) || !strings.Contains(err.Error(), ":2:") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("10 KB limit", func(t *testing.T) {
		code := "function handler(e) { return e.request; }\n//" + strings.Repeat("x", MaxCodeSize)
		if _, err := Compile(FunctionConfig{Code: []byte(code)}); !errors.Is(err, ErrCodeTooLarge) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad runtime", func(t *testing.T) {
		if _, err := Compile(FunctionConfig{Runtime: "cloudfront-js-3.0", Code: []byte("function handler(e){}")}); !errors.Is(err, ErrBadRuntime) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestRestrictedFeatures(t *testing.T) {
	body := `
	function throws(f) { try { f(); return 'no'; } catch (e) { return e.name; } }
	return {
		eval: typeof eval,
		newFunction: throws(function () { return new Function('return 1')(); }),
		callFunction: throws(function () { return Function('return 1')(); }),
		ctor: throws(function () { return (function () {}).constructor('return 1')(); }),
		arrowCtor: throws(function () { return (() => 1).constructor('return 1')(); }),
		setTimeout: typeof setTimeout, setInterval: typeof setInterval, setImmediate: typeof setImmediate,
		process: typeof process, fetch: typeof fetch, XMLHttpRequest: typeof XMLHttpRequest,
		fs: throws(function () { require('fs'); }),
		http: throws(function () { require('http'); }),
		strict: throws(function () { undeclared = 1; }),
		fnInstanceof: (function () {}) instanceof Function,
	};`
	want := map[string]any{
		"eval": "undefined", "newFunction": "EvalError", "callFunction": "EvalError", "ctor": "EvalError", "arrowCtor": "EvalError",
		"setTimeout": "undefined", "setInterval": "undefined", "setImmediate": "undefined",
		"process": "undefined", "fetch": "undefined", "XMLHttpRequest": "undefined",
		"fs": "Error", "http": "Error", "strict": "ReferenceError", "fnInstanceof": true,
	}
	for _, rt := range []Runtime{Runtime10, Runtime20} {
		t.Run(string(rt), func(t *testing.T) {
			if got := evalJS(t, rt, body); !reflect.DeepEqual(got, want) {
				t.Fatalf("got %v\nwant %v", got, want)
			}
		})
	}
	t.Run("async constructor", func(t *testing.T) {
		got := evalJS(t, Runtime20, `try { (async function () {}).constructor('return 1'); return 'no'; } catch (e) { return e.name; }`)
		if got != "EvalError" {
			t.Fatalf("got %v", got)
		}
	})
}

func TestDateFrozenAndRandom(t *testing.T) {
	got := evalJS(t, Runtime20, `
	var t0 = Date.now(), same = true;
	for (var i = 0; i < 20000; i++) { if (Date.now() !== t0 || new Date().getTime() !== t0) { same = false; } }
	var a = Math.random(), b = Math.random();
	return {t0: t0, same: same, iso: new Date().toISOString(), random: a >= 0 && a < 1 && a !== b, parsed: new Date(0).getTime()};`)
	want := map[string]any{"t0": float64(testNow.UnixMilli()), "same": true, "iso": "2024-03-01T12:00:00.000Z", "random": true, "parsed": float64(0)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestNJSStringHelpers(t *testing.T) {
	got := evalJS(t, Runtime10, `
	var utf8 = 'é€'.toUTF8();
	return {
		fromArray: String.bytesFrom([104, 105]),
		hex: String.bytesFrom('6869', 'hex'),
		base64: String.bytesFrom('aGk=', 'base64'),
		base64url: String.bytesFrom('_-8', 'base64url').length,
		utf8len: utf8.length,
		roundTrip: utf8.fromUTF8(),
		badUTF8: String.bytesFrom([255]).fromUTF8(),
		toBytes: 'hi'.toBytes(), wide: 'ā'.toBytes(),
		fromBytes: String.bytesFrom([233]).fromBytes(),
		slice: 'hello'.toBytes(1, 3),
	};`)
	want := map[string]any{
		"fromArray": "hi", "hex": "hi", "base64": "hi", "base64url": float64(2), "utf8len": float64(5),
		"roundTrip": "é€", "badUTF8": nil, "toBytes": "hi", "wide": nil, "fromBytes": "é", "slice": "el",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	got = evalJS(t, Runtime20, `return [typeof String.bytesFrom, typeof ''.toUTF8, typeof ''.fromBytes, typeof ''.toBytes, typeof ''.fromUTF8];`)
	if !reflect.DeepEqual(got, []any{"undefined", "undefined", "undefined", "undefined", "undefined"}) {
		t.Fatalf("2.0 has njs helpers: %v", got)
	}
}

func TestRuntime20Globals(t *testing.T) {
	got := evalJS(t, Runtime20, `
	const b = Buffer.from('héllo wörld');
	const u = new TextEncoder().encode('é');
	return {
		b64: b.toString('base64'), b64url: Buffer.from('aGk', 'base64url').toString(),
		hex: Buffer.from('68656c6c6f', 'hex').toString('latin1'), len: Buffer.byteLength('é'),
		isBuf: Buffer.isBuffer(b), isU8: b instanceof Uint8Array, concat: Buffer.concat([Buffer.from('a'), Buffer.from('b')]).toString(),
		json: JSON.parse(Buffer.from('{"a":1}')).a, alloc: Buffer.alloc(3, 'ab').toString(), slice: b.slice(0, 1).toString(),
		readU16: Buffer.from([1, 2]).readUInt16BE(0), eq: Buffer.from('x').equals(Buffer.from('x')),
		enc: Array.from(u), dec: new TextDecoder().decode(u), btoa: btoa('hi'), atob: atob('aGk='),
		u8: new Uint8Array(2) instanceof Uint8Array, arr: [] instanceof Array, arrCtor: Array(3).length, isArray: Array.isArray(Array.of(1)),
	};`)
	want := map[string]any{
		"b64": "aMOpbGxvIHfDtnJsZA==", "b64url": "hi", "hex": "hello", "len": float64(2),
		"isBuf": true, "isU8": true, "concat": "ab", "json": float64(1), "alloc": "aba", "slice": "h",
		"readU16": float64(258), "eq": true, "enc": []any{float64(0xc3), float64(0xa9)}, "dec": "é",
		"btoa": "aGk=", "atob": "hi", "u8": true, "arr": true, "arrCtor": float64(3), "isArray": true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	got = evalJS(t, Runtime10, `return [typeof Buffer, typeof TextEncoder, typeof TextDecoder, typeof atob, typeof btoa];`)
	if !reflect.DeepEqual(got, []any{"undefined", "undefined", "undefined", "undefined", "undefined"}) {
		t.Fatalf("1.0 has 2.0 globals: %v", got)
	}
}

func TestAsyncHandlerAndPromises(t *testing.T) {
	code := `
	async function handler(event) {
		const all = await Promise.all([1, Promise.resolve(2)]);
		const settled = await Promise.allSettled([Promise.reject(new Error('x')), 3]);
		const any = await Promise.any([Promise.reject(1), Promise.resolve(4)]);
		const race = await Promise.race([Promise.resolve(5), new Promise(() => {})]);
		const r = {all, settled: settled.map(s => s.status), any, race, raw: event.request.rawQueryString()};
		return {statusCode: 200, body: JSON.stringify(r)};
	}`
	got := resultBody(t, compile(t, Runtime20, ViewerRequestEvent, code).Test([]byte(minimalRequestEvent)))
	want := map[string]any{"all": []any{float64(1), float64(2)}, "settled": []any{"rejected", "fulfilled"}, "any": float64(4), "race": float64(5), "raw": "q=1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, tt := range []struct{ name, code, want string }{
		{"rejected", `async function handler(e) { throw new TypeError('nope'); }`, "FunctionExecutionError: Uncaught (in promise) TypeError: nope"},
		{"never settles", `function handler(e) { return new Promise(function () {}); }`, "FunctionExecutionError: the handler's Promise never settled"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := compile(t, Runtime20, ViewerRequestEvent, tt.code).Test([]byte(minimalRequestEvent))
			if res.FunctionErrorMessage != tt.want || res.FunctionOutput != "" {
				t.Fatalf("got %q / %q", res.FunctionErrorMessage, res.FunctionOutput)
			}
		})
	}
}

func goDigest(newHash func() hash.Hash, key []byte, data string, enc string) string {
	var h hash.Hash
	if key != nil {
		h = hmac.New(newHash, key)
	} else {
		h = newHash()
	}
	h.Write([]byte(data))
	sum := h.Sum(nil)
	switch enc {
	case "hex":
		return hex.EncodeToString(sum)
	case "base64":
		return base64.StdEncoding.EncodeToString(sum)
	}
	return base64.RawURLEncoding.EncodeToString(sum)
}

func TestCrypto(t *testing.T) {
	algs := map[string]func() hash.Hash{"md5": md5.New, "sha1": sha1.New, "sha256": sha256.New}
	data := []string{"", "The quick brown fox jumps over the lazy dog", "é€ unicode"}
	for _, rt := range []Runtime{Runtime10, Runtime20} {
		var js strings.Builder
		var want []any
		js.WriteString("var crypto = require('crypto'); var r = [];\n")
		for _, alg := range []string{"md5", "sha1", "sha256"} {
			for _, enc := range []string{"hex", "base64", "base64url"} {
				for _, d := range data {
					fmt.Fprintf(&js, "r.push(crypto.createHash(%q).update(%q).digest(%q));\n", alg, d, enc)
					want = append(want, goDigest(algs[alg], nil, d, enc))
					fmt.Fprintf(&js, "r.push(crypto.createHmac(%q, 'secret key').update(%q).digest(%q));\n", alg, d, enc)
					want = append(want, goDigest(algs[alg], []byte("secret key"), d, enc))
				}
			}
		}
		// update() chains and concatenates.
		js.WriteString("r.push(crypto.createHash('sha256').update('The quick ').update('brown fox jumps over the lazy dog').digest('hex'));\n")
		want = append(want, goDigest(sha256.New, nil, data[1], "hex"))
		js.WriteString("return r;")
		t.Run(string(rt), func(t *testing.T) {
			if got := evalJS(t, rt, js.String()); !reflect.DeepEqual(got, want) {
				t.Fatalf("got %v\nwant %v", got, want)
			}
		})
	}
	// Without an encoding, digest() returns a byte string in 1.0 and a
	// Buffer in 2.0; either can key the next HMAC (SigV4-style chains).
	k1 := hmac.New(sha256.New, []byte("key"))
	k1.Write([]byte("date"))
	k2 := hmac.New(sha256.New, k1.Sum(nil))
	k2.Write([]byte("region"))
	chain := hex.EncodeToString(k2.Sum(nil))
	t.Run("1.0 default digest", func(t *testing.T) {
		got := evalJS(t, Runtime10, `var c = require('crypto'); var d = c.createHmac('sha256', 'key').update('date').digest();
			return [typeof d, d.length, c.createHmac('sha256', d).update('region').digest('hex')];`)
		if !reflect.DeepEqual(got, []any{"string", float64(32), chain}) {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("2.0 default digest", func(t *testing.T) {
		got := evalJS(t, Runtime20, `const c = require('crypto'); const d = c.createHmac('sha256', 'key').update('date').digest();
			return [Buffer.isBuffer(d), d.length, c.createHmac('sha256', d).update('region').digest('hex'), c.createHash('md5').update(Buffer.from('é')).digest('hex')];`)
		if !reflect.DeepEqual(got, []any{true, float64(32), chain, "66ddcd97cfdeabb2f6fb8a999b4bc76f"}) {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("errors", func(t *testing.T) {
		got := evalJS(t, Runtime20, `const c = require('crypto');
			function msg(f) { try { f(); return 'no'; } catch (e) { return e.message; } }
			const h = c.createHash('sha1'); h.digest('hex');
			return [msg(() => c.createHash('sha512')), msg(() => h.update('x')), msg(() => h.digest())];`)
		if !reflect.DeepEqual(got, []any{"Digest method not supported", "Digest already called", "Digest already called"}) {
			t.Fatalf("got %v", got)
		}
	})
}

// TestQuerystring compares with Node.js v20's querystring on the same
// inputs (outputs recorded from node).
func TestQuerystring(t *testing.T) {
	tests := []struct{ expr, want string }{
		{`qs.parse('name=value&abc=xyz&abc=123')`, `{"name":"value","abc":["xyz","123"]}`},
		{`qs.decode('a=1&&b=2&c&=x&d=')`, `{"a":"1","b":"2","c":"","":"x","d":""}`},
		{`qs.parse('a+b=c+d&e=%20f%2B&bad=%E0%A4%A&u=%C3%A9')`, `{"a b":"c d","e":" f+","bad":"\ufffd%A","u":"é"}`},
		{`qs.parse('a:1;b:2;a:3', ';', ':')`, `{"a":["1","3"],"b":"2"}`},
		{`qs.parse('a=1&b=2&c=3', null, null, {maxKeys: 2})`, `{"a":"1","b":"2"}`},
		{`qs.parse('a=%41', null, null, {decodeURIComponent: function (s) { return s.toLowerCase(); }})`, `{"a":"%41"}`},
		{`qs.parse('__proto__=x').__proto__`, `"x"`},
		{`qs.stringify({name: 'value', abc: ['xyz', '123'], anotherName: ''})`, `"name=value&abc=xyz&abc=123&anotherName="`},
		{`qs.encode({'a b': 'c&d/é', n: 5, t: true, o: {x: 1}, u: undefined, e: [], z: null})`, `"a%20b=c%26d%2F%C3%A9&n=5&t=true&o=&u=&z="`},
		{`qs.stringify({a: 1, b: 2}, ';', ':')`, `"a:1;b:2"`},
		{`qs.stringify({a: 'x y'}, null, null, {encodeURIComponent: function (s) { return s.toUpperCase(); }})`, `"A=X Y"`},
		{`qs.escape("a b&c/é~*()!'")`, `"a%20b%26c%2F%C3%A9~*()!'"`},
		{`qs.unescape('a%20b%2Fc%E9%zz+')`, `"a b/c\ufffd%zz+"`},
	}
	for _, rt := range []Runtime{Runtime10, Runtime20} {
		for _, tt := range tests {
			t.Run(string(rt)+" "+tt.expr, func(t *testing.T) {
				got := evalJS(t, rt, "var qs = require('querystring'); return "+tt.expr+";")
				if want := mustJSON(t, tt.want); !reflect.DeepEqual(got, want) {
					t.Fatalf("got %#v, want %#v", got, want)
				}
			})
		}
	}
}

func TestConsoleLog(t *testing.T) {
	code := `function handler(event) {
		console.log('a', 1, true, null, undefined, {x: [1]}, new Error('boom'));
		console.log();
		return event.request;
	}`
	res := compile(t, Runtime20, ViewerRequestEvent, code).Test([]byte(minimalRequestEvent))
	want := []string{`a 1 true null undefined {"x":[1]} Error: boom`, ""}
	if !reflect.DeepEqual(res.FunctionExecutionLogs, want) {
		t.Fatalf("logs %q", res.FunctionExecutionLogs)
	}
	code = `function handler(event) { for (var i = 0; i < 100; i++) { console.log('x'.repeat(500)); } return event.request; }`
	res = compile(t, Runtime20, ViewerRequestEvent, code).Test([]byte(minimalRequestEvent))
	total := 0
	for _, l := range res.FunctionExecutionLogs {
		total += len(l)
	}
	if total != MaxLogBytes || len(res.FunctionExecutionLogs) != MaxLogBytes/500+1 {
		t.Fatalf("logs: %d lines, %d bytes", len(res.FunctionExecutionLogs), total)
	}
}

func TestCloudfrontModule(t *testing.T) {
	kvs := map[string]string{"s": "v", "j": `{"a":[1,2]}`, "b": "hi"}
	code := `import cf from 'cloudfront';
	const kvs = cf.kvs();
	async function handler(event) {
		let missing;
		try { await kvs.get('nope'); } catch (e) { missing = e.message; }
		const r = {
			s: await kvs.get('s'), s2: await kvs.get('s', {format: 'string'}), j: (await kvs.get('j', {format: 'json'})).a,
			b: Buffer.isBuffer(await kvs.get('b', {format: 'bytes'})), missing,
			exists: [await kvs.exists('s'), await kvs.exists('nope')], keys: (await kvs.meta()).keyCount,
			edge: cf.edgeLocation,
		};
		cf.updateRequestOrigin({domainName: 'origin.example'});
		cf.selectRequestOriginById('o1');
		return {statusCode: 200, body: JSON.stringify(r)};
	}`
	f, err := Compile(FunctionConfig{Runtime: Runtime20, Code: []byte(code), KVS: kvs, EdgeLocation: "SEA", EdgeServerIP: "192.0.2.1", EdgeRegion: "us-west-2", Budget: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	got := resultBody(t, f.Test([]byte(minimalRequestEvent)))
	want := map[string]any{
		"s": "v", "s2": "v", "j": []any{float64(1), float64(2)}, "b": true, "missing": "Key not found: nope",
		"exists": []any{true, false}, "keys": float64(3),
		"edge": map[string]any{"name": "SEA", "serverIp": "192.0.2.1", "region": "us-west-2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	t.Run("edgeLocation is empty in viewer-response", func(t *testing.T) {
		code := `import cf from 'cloudfront';
		function handler(event) { event.response.headers['x-edge-location-name'] = {value: String(cf.edgeLocation.name)}; return event.response; }`
		f, err := Compile(FunctionConfig{Runtime: Runtime20, EventType: ViewerResponseEvent, Code: []byte(code), EdgeLocation: "SEA"})
		if err != nil {
			t.Fatal(err)
		}
		// x-edge-* is disallowed: the function must fail validation.
		res := f.Test([]byte(`{"context":{"eventType":"viewer-response"},"request":{"method":"GET","uri":"/"},"response":{"statusCode":200}}`))
		if !strings.HasPrefix(res.FunctionErrorMessage, "FunctionValidationError") {
			t.Fatalf("got %+v", res)
		}
		code = strings.ReplaceAll(code, "x-edge-location-name", "x-location-name")
		f, _ = Compile(FunctionConfig{Runtime: Runtime20, EventType: ViewerResponseEvent, Code: []byte(code), EdgeLocation: "SEA"})
		res = f.Test([]byte(`{"context":{"eventType":"viewer-response"},"request":{"method":"GET","uri":"/"},"response":{"statusCode":200}}`))
		if !strings.Contains(res.FunctionOutput, `"x-location-name":{"value":"undefined"}`) {
			t.Fatalf("got %+v", res)
		}
	})
	t.Run("KVS needs 2.0", func(t *testing.T) {
		if _, err := Compile(FunctionConfig{Runtime: Runtime10, Code: []byte("function handler(e){}"), KVS: kvs}); !errors.Is(err, ErrKVSUnavailable) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestAllocationGuards(t *testing.T) {
	got := evalJS(t, Runtime20, `
	function name(f) { try { f(); return 'ok'; } catch (e) { return e.name; } }
	return [
		name(() => 'x'.repeat(1e9)), name(() => ''.padStart(1e9)), name(() => ''.padEnd(1e9)),
		name(() => new Array(1e9)), name(() => Array(1e9)), name(() => new Uint8Array(1e9)),
		name(() => new Float64Array(1e6)), name(() => new ArrayBuffer(1e9)), name(() => Buffer.alloc(1e9)),
		name(() => new Array(1e6).join('xxxxx')),
		name(() => 'x'.repeat(1000)), name(() => new Uint8Array(1000)),
	];`)
	want := []any{"RangeError", "RangeError", "RangeError", "RangeError", "RangeError", "RangeError", "RangeError", "RangeError", "RangeError", "RangeError", "ok", "ok"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v", got)
	}
}

// TestFreshStatePerInvocation: nothing a function keeps in its variables
// reaches the next request, as on CloudFront.
func TestFreshStatePerInvocation(t *testing.T) {
	f := compile(t, Runtime20, ViewerRequestEvent, `var n = 0; const seen = [];
		function handler(e) { n++; seen.push(1); return {statusCode: 200, body: JSON.stringify([n, seen.length])}; }`)
	for i := 0; i < 3; i++ {
		if got := resultBody(t, f.Test([]byte(minimalRequestEvent))); !reflect.DeepEqual(got, []any{float64(1), float64(1)}) {
			t.Fatalf("invocation %d: %v", i, got)
		}
	}
}
