package cff

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"hash"
	"strings"

	"github.com/dop251/goja"
)

// hashes are the algorithms CloudFront's crypto module offers.
var hashes = map[string]func() hash.Hash{
	"md5":    md5.New,
	"sha1":   sha1.New,
	"sha256": sha256.New,
}

// cryptoModule is require('crypto'): createHash and createHmac with md5,
// sha1 and sha256, behaving as Node.js's.
func (s *vmState) cryptoModule() goja.Value {
	m := s.vm.NewObject()
	m.Set("createHash", func(call goja.FunctionCall) goja.Value {
		alg := strings.ToLower(call.Argument(0).String())
		newHash, ok := hashes[alg]
		if !ok {
			s.throw("Digest method not supported")
		}
		return s.hashObject(newHash())
	})
	m.Set("createHmac", func(call goja.FunctionCall) goja.Value {
		alg := strings.ToLower(call.Argument(0).String())
		newHash, ok := hashes[alg]
		if !ok {
			s.throw("Invalid digest: " + alg)
		}
		key := s.bytesOf(call.Argument(1), goja.Undefined())
		return s.hashObject(hmac.New(newHash, key))
	})
	return m
}

// hashObject wraps h with update(data[, inputEncoding]) and
// digest([encoding]).
func (s *vmState) hashObject(h hash.Hash) *goja.Object {
	o := s.vm.NewObject()
	done := false
	o.Set("update", func(call goja.FunctionCall) goja.Value {
		if done {
			s.throw("Digest already called")
		}
		h.Write(s.bytesOf(call.Argument(0), call.Argument(1)))
		return o
	})
	o.Set("digest", func(call goja.FunctionCall) goja.Value {
		if done {
			s.throw("Digest already called")
		}
		done = true
		sum := h.Sum(nil)
		enc := call.Argument(0)
		if goja.IsUndefined(enc) {
			// "hash.digest() – Return type is changed to Buffer if no
			// encoding is provided" (2.0); 1.0 returns a byte string.
			if s.f.cfg.Runtime == Runtime20 {
				return s.newBuffer(sum)
			}
			return s.byteString(sum)
		}
		switch e := enc.String(); e {
		case "hex", "base64", "base64url":
			return s.vm.ToValue(decodeBytes(sum, e))
		case "latin1", "binary":
			return s.vm.ToValue(latin1(sum))
		default:
			panic(s.vm.NewTypeError("digest: encoding must be hex, base64 or base64url"))
		}
	})
	return o
}

// newBuffer makes a 2.0 Buffer holding a copy of b.
func (s *vmState) newBuffer(b []byte) goja.Value {
	v, err := s.bufferFrom(s.buffer, s.vm.ToValue(s.vm.NewArrayBuffer(append([]byte(nil), b...))))
	if err != nil {
		panic(err)
	}
	return v
}

// cloudfrontModule is 2.0's `import cf from 'cloudfront'`: kvs(),
// edgeLocation and the origin helpers.
func (s *vmState) cloudfrontModule() goja.Value {
	vm := s.vm
	m := vm.NewObject()
	var handle *goja.Object
	m.Set("kvs", func(call goja.FunctionCall) goja.Value {
		if handle == nil {
			handle = s.kvsHandle()
			if _, err := s.freeze(goja.Undefined(), handle); err != nil {
				panic(err)
			}
		}
		return handle
	})
	request := vm.NewObject()
	request.Set("name", s.f.cfg.EdgeLocation)
	request.Set("serverIp", s.f.cfg.EdgeServerIP)
	request.Set("region", s.f.cfg.EdgeRegion)
	empty := vm.NewObject()
	for _, o := range []*goja.Object{request, empty} {
		if _, err := s.freeze(goja.Undefined(), o); err != nil {
			panic(err)
		}
	}
	// "You can only use this method for viewer-request functions. For
	// viewer-response functions, this method is empty."
	_ = m.DefineAccessorProperty("edgeLocation", vm.ToValue(func(goja.FunctionCall) goja.Value {
		if s.eventType == ViewerRequestEvent {
			return request
		}
		return empty
	}), nil, goja.FLAG_FALSE, goja.FLAG_TRUE)
	for _, name := range []string{"updateRequestOrigin", "selectRequestOriginById", "createRequestOriginGroup"} {
		m.Set(name, func(call goja.FunctionCall) goja.Value {
			if s.eventType != ViewerRequestEvent {
				s.throw(name + " can only be used in viewer-request functions")
			}
			arg := "undefined"
			if js, err := s.jsonStringify(goja.Undefined(), call.Argument(0)); err == nil && !goja.IsUndefined(js) {
				arg = js.String()
			}
			s.origins = append(s.origins, name+"("+arg+")")
			return goja.Undefined()
		})
	}
	return m
}

// kvsHandle is what cf.kvs() returns: get, exists and meta, each a
// Promise, read from the store named in the configuration.
func (s *vmState) kvsHandle() *goja.Object {
	vm := s.vm
	store := s.f.kvs
	h := vm.NewObject()
	settle := func(v goja.Value, err goja.Value) goja.Value {
		p, resolve, reject := vm.NewPromise()
		if err != nil {
			_ = reject(err)
		} else {
			_ = resolve(v)
		}
		return vm.ToValue(p)
	}
	newErr := func(msg string) goja.Value {
		e, _ := vm.New(s.errorCtor, vm.ToValue(msg))
		return e
	}
	h.Set("get", func(call goja.FunctionCall) goja.Value {
		key := call.Argument(0).String()
		if store == nil {
			return settle(nil, newErr("No key value store is associated with the function"))
		}
		val, ok := store[key]
		if !ok {
			return settle(nil, newErr("Key not found: "+key))
		}
		format := "string"
		if o, ok := call.Argument(1).(*goja.Object); ok {
			if f := o.Get("format"); f != nil && !goja.IsUndefined(f) {
				format = f.String()
			}
		}
		switch format {
		case "string":
			return settle(vm.ToValue(val), nil)
		case "json":
			parsed, err := s.jsonParse(goja.Undefined(), vm.ToValue(val))
			if err != nil {
				return settle(nil, newErr("Value of key "+key+" is not valid JSON"))
			}
			return settle(parsed, nil)
		case "bytes":
			return settle(s.newBuffer([]byte(val)), nil)
		default:
			return settle(nil, newErr("Unknown format: "+format))
		}
	})
	h.Set("exists", func(call goja.FunctionCall) goja.Value {
		_, ok := store[call.Argument(0).String()]
		return settle(vm.ToValue(ok), nil)
	})
	h.Set("meta", func(call goja.FunctionCall) goja.Value {
		meta := vm.NewObject()
		meta.Set("creationDateTime", s.f.kvsLoaded)
		meta.Set("lastUpdatedDateTime", s.f.kvsLoaded)
		meta.Set("keyCount", len(store))
		return settle(meta, nil)
	})
	return h
}
