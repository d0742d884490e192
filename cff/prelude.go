package cff

import "github.com/dop251/goja"

// preludeSource runs once in every goja runtime, before the function's
// code. It is called with the global object and h, a Go object with the
// helpers below; nothing of h stays reachable from the function's code.
//
//	h.maxAlloc        the allocation bound
//	h.v2              true for cloudfront-js-2.0
//	h.enc(s, enc)     string → ArrayBuffer (utf8, hex, base64, base64url, latin1, binary, ascii, utf16le)
//	h.dec(u8, enc)    Uint8Array → string
//	h.unescapeBuffer  querystring's lenient percent-decoder
//
// It returns the querystring module and, in 2.0, Buffer.
const preludeSource = `(function (g, h) {
var MAX = h.maxAlloc;
function def(o, name, v) {
	Object.defineProperty(o, name, {value: v, writable: true, enumerable: false, configurable: true});
}

// Dynamic code evaluation: "Both eval() and Function constructors throw an
// error if attempted."
var NoFunction = function Function() {
	throw new EvalError('Function constructor is not supported in CloudFront Functions');
};
NoFunction.prototype = Function.prototype;
[Function.prototype,
 Object.getPrototypeOf(async function () {}),
 Object.getPrototypeOf(function* () {})].forEach(function (p) {
	Object.defineProperty(p, 'constructor', {value: NoFunction, writable: false, enumerable: false, configurable: false});
});
def(g, 'Function', NoFunction);
delete g.eval;

// Allocation guards.
function guard(n, what) {
	if (n > MAX) {
		throw new RangeError(what + ': ' + n + ' exceeds the allocation limit of ' + MAX);
	}
}
var SP = String.prototype, AP = Array.prototype;
var realRepeat = SP.repeat, realPadStart = SP.padStart, realPadEnd = SP.padEnd, realJoin = AP.join;
def(SP, 'repeat', function repeat(count) {
	var s = '' + this;
	guard(s.length * (+count || 0), 'String.prototype.repeat');
	return realRepeat.call(s, count);
});
def(SP, 'padStart', function padStart(n, fill) {
	guard(+n || 0, 'String.prototype.padStart');
	return realPadStart.call(this, n, fill);
});
def(SP, 'padEnd', function padEnd(n, fill) {
	guard(+n || 0, 'String.prototype.padEnd');
	return realPadEnd.call(this, n, fill);
});
def(AP, 'join', function join(sep) {
	var len = this.length >>> 0;
	guard(len * (sep === undefined ? 1 : ('' + sep).length), 'Array.prototype.join');
	return realJoin.call(this, sep);
});
// guardCtor wraps a constructor with a size check. The wrapper shares the
// real prototype, so instanceof and subclassing keep working (goja's
// instanceof does not accept a Proxy).
var RealArrayBuffer = ArrayBuffer;
function guardCtor(C, what, size) {
	function check(args) {
		var a = args[0];
		if (typeof a === 'number') {
			guard(a * size, what);
		} else if (a !== null && typeof a === 'object' && !(a instanceof RealArrayBuffer) && typeof a.length === 'number') {
			guard(a.length * size, what);
		}
	}
	var W = {[what]: function () {
		var args = Array.prototype.slice.call(arguments);
		check(args);
		if (new.target === undefined) {
			return Reflect.apply(C, undefined, args);
		}
		return Reflect.construct(C, args, new.target === W ? C : new.target);
	}}[what];
	W.prototype = C.prototype;
	Object.setPrototypeOf(W, C);
	return W;
}
def(g, 'Array', guardCtor(Array, 'Array', 1));
['Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array', 'Uint16Array', 'Int32Array',
 'Uint32Array', 'Float32Array', 'Float64Array', 'BigInt64Array', 'BigUint64Array'].forEach(function (n) {
	if (g[n]) {
		def(g, n, guardCtor(g[n], n, g[n].BYTES_PER_ELEMENT));
	}
});
def(g, 'ArrayBuffer', guardCtor(RealArrayBuffer, 'ArrayBuffer', 1));

// querystring, as Node.js's (the guide: "behave exactly as their Node.js
// counterparts").
var unescapeBuffer = h.unescapeBuffer;
function qsEscape(str) {
	if (typeof str !== 'string') {
		str = (typeof str === 'object') ? String(str) : str + '';
	}
	return encodeURIComponent(str);
}
function qsUnescape(s) {
	try {
		return decodeURIComponent(s);
	} catch (e) {
		return unescapeBuffer(s);
	}
}
function decodeStr(s, decoder) {
	try {
		return decoder(s);
	} catch (e) {
		return qsUnescape(s);
	}
}
function addPair(obj, k, v) {
	if (Object.prototype.hasOwnProperty.call(obj, k)) {
		var cur = obj[k];
		if (Array.isArray(cur)) {
			cur.push(v);
		} else {
			Object.defineProperty(obj, k, {value: [cur, v], writable: true, enumerable: true, configurable: true});
		}
	} else {
		Object.defineProperty(obj, k, {value: v, writable: true, enumerable: true, configurable: true});
	}
}
function parse(qs, sep, eq, options) {
	var obj = {};
	if (typeof qs !== 'string' || qs.length === 0) {
		return obj;
	}
	sep = sep ? '' + sep : '&';
	eq = eq ? '' + eq : '=';
	var maxKeys = 1000;
	if (options && typeof options.maxKeys === 'number') {
		maxKeys = options.maxKeys;
	}
	var decode = qsUnescape;
	if (options && typeof options.decodeURIComponent === 'function') {
		decode = options.decodeURIComponent;
	}
	var parts = qs.split(sep);
	var n = 0;
	for (var i = 0; i < parts.length; i++) {
		var part = parts[i];
		if (part.length === 0) {
			continue;
		}
		if (maxKeys > 0 && n >= maxKeys) {
			break;
		}
		n++;
		var at = part.indexOf(eq), k, v;
		if (at >= 0) {
			k = part.slice(0, at);
			v = part.slice(at + eq.length);
		} else {
			k = part;
			v = '';
		}
		if (/[%+]/.test(k)) {
			k = decodeStr(k.replace(/\+/g, '%20'), decode);
		}
		if (/[%+]/.test(v)) {
			v = decodeStr(v.replace(/\+/g, '%20'), decode);
		}
		addPair(obj, k, v);
	}
	return obj;
}
function stringifyPrimitive(v, encode) {
	if (typeof v === 'string') {
		return v.length ? encode(v) : '';
	}
	if (typeof v === 'number' && isFinite(v)) {
		return '' + v;
	}
	if (typeof v === 'bigint' || typeof v === 'boolean') {
		return '' + v;
	}
	return '';
}
function stringify(obj, sep, eq, options) {
	sep = sep || '&';
	eq = eq || '=';
	var encode = qsEscape;
	if (options && typeof options.encodeURIComponent === 'function') {
		encode = options.encodeURIComponent;
	}
	if (obj === null || typeof obj !== 'object') {
		return '';
	}
	var keys = Object.keys(obj), fields = '';
	for (var i = 0; i < keys.length; i++) {
		var k = keys[i], v = obj[k], ks = encode(k) + eq;
		if (Array.isArray(v)) {
			if (v.length === 0) {
				continue;
			}
			if (fields) {
				fields += sep;
			}
			for (var j = 0; j < v.length; j++) {
				if (j) {
					fields += sep;
				}
				fields += ks + stringifyPrimitive(v[j], encode);
			}
		} else {
			if (fields) {
				fields += sep;
			}
			fields += ks + stringifyPrimitive(v, encode);
		}
	}
	return fields;
}
var querystring = Object.freeze({
	parse: parse, decode: parse, stringify: stringify, encode: stringify,
	escape: qsEscape, unescape: qsUnescape
});
if (!h.v2) {
	return [querystring];
}

// Buffer, as Node.js's, for cloudfront-js-2.0.
var enc = h.enc, dec = h.dec, U8 = g.Uint8Array;
function normEnc(e) {
	if (e === undefined || e === null) {
		return 'utf8';
	}
	var l = ('' + e).toLowerCase();
	switch (l) {
	case 'utf8': case 'utf-8': return 'utf8';
	case 'hex': case 'base64': case 'base64url': case 'ascii': return l;
	case 'latin1': case 'binary': return 'latin1';
	case 'ucs2': case 'ucs-2': case 'utf16le': case 'utf-16le': return 'utf16le';
	}
	throw new TypeError('Unknown encoding: ' + e);
}
class Buffer extends U8 {
	static from(v, a, b) {
		if (typeof v === 'string') {
			return new Buffer(enc(v, normEnc(a)));
		}
		if (v instanceof RealArrayBuffer) {
			var off = a === undefined ? 0 : a >>> 0;
			return new Buffer(v, off, b === undefined ? v.byteLength - off : b >>> 0);
		}
		if (v !== null && typeof v === 'object') {
			if (v.type === 'Buffer' && Array.isArray(v.data)) {
				v = v.data;
			}
			if (typeof v.length === 'number') {
				var out = new Buffer(v.length);
				for (var i = 0; i < v.length; i++) {
					out[i] = v[i] & 255;
				}
				return out;
			}
		}
		throw new TypeError('The first argument must be of type string or an instance of Buffer, ArrayBuffer, or Array or an Array-like Object.');
	}
	static alloc(n, fill, e) {
		var b = new Buffer(n);
		if (fill !== undefined && fill !== 0) {
			b.fill(fill, 0, b.length, e);
		}
		return b;
	}
	static allocUnsafe(n) { return new Buffer(n); }
	static allocUnsafeSlow(n) { return new Buffer(n); }
	static byteLength(s, e) {
		if (typeof s !== 'string') {
			return s.byteLength;
		}
		return enc(s, normEnc(e)).byteLength;
	}
	static isBuffer(b) { return b instanceof Buffer; }
	static isEncoding(e) {
		try {
			normEnc(e);
			return e !== undefined && e !== null;
		} catch (err) {
			return false;
		}
	}
	static compare(a, b) { return Buffer.prototype.compare.call(a, b); }
	static concat(list, total) {
		if (total === undefined) {
			total = 0;
			for (var i = 0; i < list.length; i++) {
				total += list[i].length;
			}
		}
		var out = new Buffer(total), pos = 0;
		for (var j = 0; j < list.length && pos < total; j++) {
			var src = list[j];
			var n = Math.min(src.length, total - pos);
			out.set(n === src.length ? src : src.subarray(0, n), pos);
			pos += n;
		}
		return out;
	}
	toString(e, start, end) {
		var s = start === undefined ? 0 : start, t = end === undefined ? this.length : end;
		return dec(this.subarray(s, t), normEnc(e));
	}
	toJSON() { return {type: 'Buffer', data: Array.prototype.slice.call(this)}; }
	equals(o) { return this.compare(o) === 0; }
	compare(o) {
		var n = Math.min(this.length, o.length);
		for (var i = 0; i < n; i++) {
			if (this[i] !== o[i]) {
				return this[i] < o[i] ? -1 : 1;
			}
		}
		return this.length === o.length ? 0 : (this.length < o.length ? -1 : 1);
	}
	copy(target, ts, ss, se) {
		ts = ts || 0;
		ss = ss || 0;
		se = se === undefined ? this.length : se;
		var n = Math.max(0, Math.min(se - ss, target.length - ts));
		target.set(this.subarray(ss, ss + n), ts);
		return n;
	}
	slice(s, e) { return this.subarray(s, e); }
	write(s, off, len, e) {
		if (typeof off === 'string') {
			e = off; off = 0; len = undefined;
		} else if (typeof len === 'string') {
			e = len; len = undefined;
		}
		off = off >>> 0;
		var bytes = new U8(enc(s, normEnc(e)));
		var n = Math.min(bytes.length, this.length - off, len === undefined ? Infinity : len);
		this.set(bytes.subarray(0, n), off);
		return n;
	}
	fill(v, s, e, en) {
		if (typeof s === 'string') {
			en = s; s = 0; e = this.length;
		}
		s = s === undefined ? 0 : s;
		e = e === undefined ? this.length : e;
		if (typeof v === 'string') {
			var bytes = new U8(enc(v, normEnc(en)));
			if (bytes.length === 0) {
				return U8.prototype.fill.call(this, 0, s, e);
			}
			for (var i = s, j = 0; i < e; i++, j = (j + 1) % bytes.length) {
				this[i] = bytes[j];
			}
			return this;
		}
		return U8.prototype.fill.call(this, v, s, e);
	}
	indexOf(v, from, e) {
		var needle = typeof v === 'number' ? [v & 255] : (typeof v === 'string' ? new U8(enc(v, normEnc(e))) : v);
		from = from === undefined ? 0 : (from < 0 ? Math.max(0, this.length + from) : from);
		outer: for (var i = from; i + needle.length <= this.length; i++) {
			for (var j = 0; j < needle.length; j++) {
				if (this[i + j] !== needle[j]) {
					continue outer;
				}
			}
			return i;
		}
		return -1;
	}
	includes(v, from, e) { return this.indexOf(v, from, e) !== -1; }
}
function dv(b) { return new DataView(b.buffer, b.byteOffset, b.byteLength); }
[['UInt8', 'Uint8', 1], ['Int8', 'Int8', 1], ['UInt16', 'Uint16', 2], ['Int16', 'Int16', 2],
 ['UInt32', 'Uint32', 4], ['Int32', 'Int32', 4], ['Float', 'Float32', 4], ['Double', 'Float64', 8],
 ['BigUInt64', 'BigUint64', 8], ['BigInt64', 'BigInt64', 8]].forEach(function (t) {
	var name = t[0], view = t[1], size = t[2];
	var ends = size === 1 ? [''] : ['LE', 'BE'];
	ends.forEach(function (end) {
		var le = end === 'LE';
		def(Buffer.prototype, 'read' + name + end, function (off) {
			off = off === undefined ? 0 : off;
			if (off < 0 || off + size > this.length) {
				throw new RangeError('The value of "offset" is out of range.');
			}
			return dv(this)['get' + view](off, le);
		});
		def(Buffer.prototype, 'write' + name + end, function (value, off) {
			off = off === undefined ? 0 : off;
			if (off < 0 || off + size > this.length) {
				throw new RangeError('The value of "offset" is out of range.');
			}
			dv(this)['set' + view](off, value, le);
			return off + size;
		});
		if (name.indexOf('UInt') === 0) {
			def(Buffer.prototype, 'read' + name.replace('UInt', 'Uint') + end, Buffer.prototype['read' + name + end]);
			def(Buffer.prototype, 'write' + name.replace('UInt', 'Uint') + end, Buffer.prototype['write' + name + end]);
		}
	});
});

class TextEncoder {
	get encoding() { return 'utf-8'; }
	encode(s) { return new U8(enc(s === undefined ? '' : '' + s, 'utf8')); }
}
class TextDecoder {
	constructor(label) {
		var l = label === undefined ? 'utf-8' : ('' + label).toLowerCase();
		if (l !== 'utf-8' && l !== 'utf8' && l !== 'unicode-1-1-utf-8') {
			throw new RangeError('The "' + label + '" encoding is not supported');
		}
	}
	get encoding() { return 'utf-8'; }
	decode(b) {
		if (b === undefined) {
			return '';
		}
		if (b instanceof RealArrayBuffer) {
			b = new U8(b);
		} else if (!(b instanceof U8)) {
			b = new U8(b.buffer, b.byteOffset, b.byteLength);
		}
		return dec(b, 'utf8');
	}
}
def(g, 'Buffer', Buffer);
def(g, 'TextEncoder', TextEncoder);
def(g, 'TextDecoder', TextDecoder);
return [querystring, Buffer];
})`

// preludeProgram is compiled once for the process.
var preludeProgram = goja.MustCompile("cff-prelude.js", preludeSource, true)
