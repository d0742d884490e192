package cff

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/dop251/goja"
)

// encodeString turns a string into bytes the way Node.js's Buffer.from
// does for each encoding. Decoders are lenient as Node's are: hex stops at
// the first bad pair, base64 skips characters outside its alphabets.
func encodeString(s, enc string) []byte {
	switch enc {
	case "hex":
		n := len(s) / 2
		out := make([]byte, 0, n)
		for i := 0; i+1 < len(s); i += 2 {
			b, err := hex.DecodeString(s[i : i+2])
			if err != nil {
				break
			}
			out = append(out, b[0])
		}
		return out
	case "base64", "base64url":
		return decodeBase64Lenient(s)
	case "latin1", "ascii":
		out := make([]byte, 0, len(s))
		for _, r := range s {
			out = append(out, byte(r))
		}
		return out
	case "utf16le":
		u := utf16.Encode([]rune(s))
		out := make([]byte, 0, 2*len(u))
		for _, c := range u {
			out = append(out, byte(c), byte(c>>8))
		}
		return out
	default:
		return []byte(s)
	}
}

func decodeBase64Lenient(s string) []byte {
	clean := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/':
			clean = append(clean, c)
		case c == '-':
			clean = append(clean, '+')
		case c == '_':
			clean = append(clean, '/')
		case c == '=':
			i = len(s)
		}
	}
	if len(clean)%4 == 1 {
		clean = clean[:len(clean)-1]
	}
	out, err := base64.RawStdEncoding.DecodeString(string(clean))
	if err != nil {
		return nil
	}
	return out
}

// decodeBytes turns bytes into a string for an encoding, as Node.js's
// buf.toString does; invalid UTF-8 becomes U+FFFD.
func decodeBytes(b []byte, enc string) string {
	switch enc {
	case "hex":
		return hex.EncodeToString(b)
	case "base64":
		return base64.StdEncoding.EncodeToString(b)
	case "base64url":
		return base64.RawURLEncoding.EncodeToString(b)
	case "latin1":
		return latin1(b)
	case "ascii":
		r := make([]rune, len(b))
		for i, c := range b {
			r[i] = rune(c & 0x7f)
		}
		return string(r)
	case "utf16le":
		u := make([]uint16, len(b)/2)
		for i := range u {
			u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
		}
		return string(utf16.Decode(u))
	default:
		if utf8.Valid(b) {
			return string(b)
		}
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
}

// latin1 makes a byte string: one character per byte.
func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}

// unescapeBuffer is Node.js's querystring.unescapeBuffer: %XX sequences
// become bytes, anything else stays.
func unescapeBuffer(s string) []byte {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if b, err := hex.DecodeString(s[i+1 : i+3]); err == nil {
				out = append(out, b[0])
				i += 2
				continue
			}
		}
		out = append(out, s[i])
	}
	return out
}

// jsEncode is the prelude's h.enc(string, encoding) → ArrayBuffer.
func (s *vmState) jsEncode(call goja.FunctionCall) goja.Value {
	str := call.Argument(0).String()
	b := encodeString(str, call.Argument(1).String())
	if len(b) > s.f.cfg.MaxAlloc {
		panic(s.vm.NewTypeError("Buffer: exceeds the allocation limit"))
	}
	return s.vm.ToValue(s.vm.NewArrayBuffer(b))
}

// jsDecode is the prelude's h.dec(uint8array, encoding) → string.
func (s *vmState) jsDecode(call goja.FunctionCall) goja.Value {
	var b []byte
	if err := s.vm.ExportTo(call.Argument(0), &b); err != nil {
		panic(s.vm.NewTypeError("argument must be a Uint8Array"))
	}
	return s.vm.ToValue(decodeBytes(b, call.Argument(1).String()))
}

// bytesOf reads data handed to crypto: a Buffer, typed array, DataView or
// ArrayBuffer as its bytes; a string in inputEnc (default UTF-8, as Node),
// or, in 1.0, as bytes when a byte-string helper made it.
func (s *vmState) bytesOf(v goja.Value, inputEnc goja.Value) []byte {
	if o, ok := v.(*goja.Object); ok {
		var b []byte
		if err := s.vm.ExportTo(o, &b); err == nil {
			return b
		}
		if ab, ok := o.Export().(goja.ArrayBuffer); ok {
			return ab.Bytes()
		}
		panic(s.vm.NewTypeError("The \"data\" argument must be of type string or an instance of Buffer, TypedArray, or DataView."))
	}
	if goja.IsUndefined(v) || goja.IsNull(v) {
		panic(s.vm.NewTypeError("The \"data\" argument must be of type string or an instance of Buffer, TypedArray, or DataView."))
	}
	str := v.String()
	if s.byteStrings != nil {
		if _, ok := s.byteStrings[str]; ok {
			return encodeString(str, "latin1")
		}
	}
	enc := "utf8"
	if !goja.IsUndefined(inputEnc) {
		enc = normEncoding(inputEnc.String())
	}
	return encodeString(str, enc)
}

func normEncoding(e string) string {
	switch strings.ToLower(e) {
	case "hex":
		return "hex"
	case "base64":
		return "base64"
	case "base64url":
		return "base64url"
	case "latin1", "binary":
		return "latin1"
	case "ascii":
		return "ascii"
	case "utf16le", "ucs2", "ucs-2", "utf-16le":
		return "utf16le"
	}
	return "utf8"
}

// byteString returns b as a 1.0 byte string and remembers it as one.
func (s *vmState) byteString(b []byte) goja.Value {
	str := latin1(b)
	if s.byteStrings == nil {
		s.byteStrings = map[string]struct{}{}
	}
	if len(s.byteStrings) < 256 {
		s.byteStrings[str] = struct{}{}
	}
	return s.vm.ToValue(str)
}

// btoa is the 2.0 global: a byte string to base64.
func (s *vmState) btoa(call goja.FunctionCall) goja.Value {
	str := call.Argument(0).String()
	b := make([]byte, 0, len(str))
	for _, r := range str {
		if r > 0xff {
			s.throw("InvalidCharacterError: Invalid character")
		}
		b = append(b, byte(r))
	}
	return s.vm.ToValue(base64.StdEncoding.EncodeToString(b))
}

// atob is the 2.0 global: base64 to a byte string.
func (s *vmState) atob(call goja.FunctionCall) goja.Value {
	str := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\f' || r == '\r' {
			return -1
		}
		return r
	}, call.Argument(0).String())
	str = strings.TrimRight(str, "=")
	b, err := base64.RawStdEncoding.DecodeString(str)
	if err != nil {
		s.throw("InvalidCharacterError: The string to be decoded is not correctly encoded.")
	}
	return s.vm.ToValue(latin1(b))
}

// installNJSStrings adds njs's byte-string helpers of cloudfront-js-1.0.
func (s *vmState) installNJSStrings() {
	vm := s.vm
	str := vm.Get("String").ToObject(vm)
	proto := str.Get("prototype").ToObject(vm)
	def := func(o *goja.Object, name string, fn func(goja.FunctionCall) goja.Value) {
		_ = o.DefineDataProperty(name, vm.ToValue(fn), goja.FLAG_TRUE, goja.FLAG_TRUE, goja.FLAG_FALSE)
	}
	// runesOf returns this[start:end] as runes.
	runesOf := func(call goja.FunctionCall) []rune {
		r := []rune(call.This.String())
		start, end := 0, len(r)
		if a := call.Argument(0); !goja.IsUndefined(a) {
			start = clampIndex(int(a.ToInteger()), len(r))
		}
		if a := call.Argument(1); !goja.IsUndefined(a) {
			end = clampIndex(int(a.ToInteger()), len(r))
		}
		if start > end {
			start = end
		}
		return r[start:end]
	}
	// String.bytesFrom(array | string, encoding)
	def(str, "bytesFrom", func(call goja.FunctionCall) goja.Value {
		arg := call.Argument(0)
		if o, ok := arg.(*goja.Object); ok && o.ClassName() == "Array" {
			var nums []int64
			if err := vm.ExportTo(o, &nums); err != nil {
				panic(vm.NewTypeError("bytesFrom: array of octets expected"))
			}
			b := make([]byte, len(nums))
			for i, n := range nums {
				b[i] = byte(n)
			}
			return s.byteString(b)
		}
		enc := call.Argument(1).String()
		switch enc {
		case "hex", "base64", "base64url":
		default:
			panic(vm.NewTypeError("bytesFrom: encoding must be hex, base64 or base64url"))
		}
		return s.byteString(encodeString(arg.String(), enc))
	})
	// fromBytes: a byte string to Unicode, each byte a code point.
	def(proto, "fromBytes", func(call goja.FunctionCall) goja.Value {
		r := runesOf(call)
		for _, c := range r {
			if c > 0xff {
				return goja.Null()
			}
		}
		return vm.ToValue(string(r))
	})
	// fromUTF8: a UTF-8 byte string to Unicode; null when invalid.
	def(proto, "fromUTF8", func(call goja.FunctionCall) goja.Value {
		b, ok := latin1Bytes(runesOf(call))
		if !ok || !utf8.Valid(b) {
			return goja.Null()
		}
		return vm.ToValue(string(b))
	})
	// toBytes: Unicode to a byte string; null past U+00FF.
	def(proto, "toBytes", func(call goja.FunctionCall) goja.Value {
		b, ok := latin1Bytes(runesOf(call))
		if !ok {
			return goja.Null()
		}
		return s.byteString(b)
	})
	// toUTF8: Unicode to a UTF-8 byte string.
	def(proto, "toUTF8", func(call goja.FunctionCall) goja.Value {
		return s.byteString([]byte(string(runesOf(call))))
	})
}

func clampIndex(i, n int) int {
	if i < 0 {
		i += n
		if i < 0 {
			i = 0
		}
	}
	if i > n {
		i = n
	}
	return i
}

// latin1Bytes turns code points up to U+00FF into bytes; false past it.
func latin1Bytes(r []rune) ([]byte, bool) {
	b := make([]byte, len(r))
	for i, c := range r {
		if c > 0xff {
			return nil, false
		}
		b[i] = byte(c)
	}
	return b, true
}
