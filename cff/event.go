package cff

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dop251/goja"
)

// fieldValue is one value of a query string parameter, header or cookie.
// Attributes belong to response cookies (Set-Cookie) only.
type fieldValue struct {
	value      string
	attributes string
	hasAttr    bool
}

// field is one entry of querystring, headers or cookies: its value and,
// when the name was repeated, all values in multiValue (the first repeated).
type field struct {
	name string
	fieldValue
	multi []fieldValue
}

func (f *field) values() []fieldValue {
	if len(f.multi) > 0 {
		return f.multi
	}
	return []fieldValue{f.fieldValue}
}

// fields keeps the order in which the client sent the names.
type fields []field

func (fs fields) find(name string) *field {
	for i := range fs {
		if fs[i].name == name {
			return &fs[i]
		}
	}
	return nil
}

// add appends a value under name, making a multiValue when name repeats.
func (fs fields) add(name string, v fieldValue) fields {
	if f := fs.find(name); f != nil {
		if len(f.multi) == 0 {
			f.multi = append(f.multi, f.fieldValue)
		}
		f.multi = append(f.multi, v)
		return fs
	}
	return append(fs, field{name: name, fieldValue: v})
}

// fromValues makes a normalised field: value is the first, multiValue
// holds all when there are several.
func fromValues(name string, vals []fieldValue) field {
	f := field{name: name, fieldValue: vals[0]}
	if len(vals) > 1 {
		f.multi = vals
	}
	return f
}

func equalValues(a, b []fieldValue) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].value != b[i].value || a[i].attributes != b[i].attributes {
			return false
		}
	}
	return true
}

func (fs fields) equal(o fields) bool {
	if len(fs) != len(o) {
		return false
	}
	for i := range fs {
		if fs[i].name != o[i].name || !equalValues(fs[i].values(), o[i].values()) {
			return false
		}
	}
	return true
}

type request struct {
	method, uri string
	query       fields
	rawQuery    string // as received, for rawQueryString()
	hasRawQuery bool   // the URL had a '?'
	headers     fields
	cookies     fields
	// queryString is set when the function returned querystring as a
	// string; it replaces the query as it is.
	queryString *string
}

type body struct {
	data     string // as the function gave it
	encoding string // "text" or "base64"
	bytes    []byte // decoded
}

type response struct {
	statusCode        int
	statusDescription string
	headers, cookies  fields
	body              *body
}

type event struct {
	eventType                                     EventType
	requestID, distributionID, distributionDomain string
	viewerIP                                      string
	req                                           *request
	resp                                          *response
}

// ---- JSON (test events and FunctionOutput) ----

// jsonObject is a JSON object that keeps its keys' order.
type jsonObject struct {
	keys []string
	vals []any
}

func (o *jsonObject) get(k string) any {
	if o == nil {
		return nil
	}
	for i, key := range o.keys {
		if key == k {
			return o.vals[i]
		}
	}
	return nil
}

func decodeOrdered(dec *json.Decoder) (any, error) {
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := t.(json.Delim)
	if !ok {
		return t, nil
	}
	switch d {
	case '{':
		o := &jsonObject{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			v, err := decodeOrdered(dec)
			if err != nil {
				return nil, err
			}
			o.keys = append(o.keys, kt.(string))
			o.vals = append(o.vals, v)
		}
		_, err := dec.Token()
		return o, err
	case '[':
		var a []any
		for dec.More() {
			v, err := decodeOrdered(dec)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		_, err := dec.Token()
		return a, err
	}
	return nil, fmt.Errorf("unexpected %v", d)
}

func jsonString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	case bool:
		return strconv.FormatBool(v), true
	}
	return "", false
}

func jsonObj(v any) *jsonObject {
	o, _ := v.(*jsonObject)
	return o
}

func fieldsFromJSON(v any, what string) (fields, error) {
	var out fields
	o := jsonObj(v)
	if v != nil && o == nil {
		return nil, fmt.Errorf("%s must be an object", what)
	}
	if o == nil {
		return out, nil
	}
	for i, name := range o.keys {
		e := jsonObj(o.vals[i])
		if e == nil {
			return nil, fmt.Errorf("%s[%q] must be an object", what, name)
		}
		f := field{name: name}
		f.value, _ = jsonString(e.get("value"))
		f.attributes, f.hasAttr = jsonString(e.get("attributes"))
		if mv, ok := e.get("multiValue").([]any); ok {
			for _, m := range mv {
				mo := jsonObj(m)
				var fv fieldValue
				fv.value, _ = jsonString(mo.get("value"))
				fv.attributes, fv.hasAttr = jsonString(mo.get("attributes"))
				f.multi = append(f.multi, fv)
			}
		}
		out = append(out, f)
	}
	return out, nil
}

// parseEvent reads a test event in CloudFront's JSON shape.
func parseEvent(b []byte, defaultType EventType) (*event, error) {
	if len(b) > MaxEventSize {
		return nil, fmt.Errorf("the event object is %d bytes, over %d", len(b), MaxEventSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	root, err := decodeOrdered(dec)
	if err != nil {
		return nil, fmt.Errorf("the event object is not valid JSON: %v", err)
	}
	o := jsonObj(root)
	if o == nil {
		return nil, fmt.Errorf("the event object must be a JSON object")
	}
	ev := &event{eventType: defaultType}
	ctx := jsonObj(o.get("context"))
	if et, ok := jsonString(ctx.get("eventType")); ok {
		ev.eventType = EventType(et)
	}
	if ev.eventType != ViewerRequestEvent && ev.eventType != ViewerResponseEvent {
		return nil, fmt.Errorf("context.eventType must be viewer-request or viewer-response")
	}
	ev.requestID, _ = jsonString(ctx.get("requestId"))
	ev.distributionID, _ = jsonString(ctx.get("distributionId"))
	ev.distributionDomain, _ = jsonString(ctx.get("distributionDomainName"))
	ev.viewerIP, _ = jsonString(jsonObj(o.get("viewer")).get("ip"))

	rq := jsonObj(o.get("request"))
	req := &request{method: "GET", uri: "/"}
	if m, ok := jsonString(rq.get("method")); ok {
		req.method = m
	}
	if u, ok := jsonString(rq.get("uri")); ok {
		req.uri = u
	}
	if req.query, err = fieldsFromJSON(rq.get("querystring"), "request.querystring"); err != nil {
		return nil, err
	}
	if req.headers, err = fieldsFromJSON(rq.get("headers"), "request.headers"); err != nil {
		return nil, err
	}
	if req.cookies, err = fieldsFromJSON(rq.get("cookies"), "request.cookies"); err != nil {
		return nil, err
	}
	if len(req.query) > 0 {
		req.rawQuery, req.hasRawQuery = rawQuery(req.query), true
	}
	ev.req = req

	if rs := jsonObj(o.get("response")); rs != nil {
		resp := &response{statusCode: 200}
		if n, ok := rs.get("statusCode").(json.Number); ok {
			c, err := n.Int64()
			if err != nil {
				return nil, fmt.Errorf("response.statusCode must be an integer")
			}
			resp.statusCode = int(c)
		}
		resp.statusDescription, _ = jsonString(rs.get("statusDescription"))
		if resp.headers, err = fieldsFromJSON(rs.get("headers"), "response.headers"); err != nil {
			return nil, err
		}
		if resp.cookies, err = fieldsFromJSON(rs.get("cookies"), "response.cookies"); err != nil {
			return nil, err
		}
		ev.resp = resp
	} else if ev.eventType == ViewerResponseEvent {
		return nil, fmt.Errorf("a viewer-response event needs a response object")
	}
	return ev, nil
}

// rawQuery writes fields back as a query string, names and values as
// they are (they are the client's raw text).
func rawQuery(fs fields) string { return joinFields(fs, "&") }

// joinFields writes name=value pairs separated by sep.
func joinFields(fs fields, sep string) string {
	var b strings.Builder
	for _, f := range fs {
		for _, v := range f.values() {
			if b.Len() > 0 {
				b.WriteString(sep)
			}
			b.WriteString(f.name)
			b.WriteByte('=')
			b.WriteString(v.value)
		}
	}
	return b.String()
}

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			b = append(b, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, fmt.Sprintf(`\u%04x`, c)...)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

func appendFieldValue(b []byte, v fieldValue) []byte {
	b = append(b, `{"value":`...)
	b = appendJSONString(b, v.value)
	if v.hasAttr {
		b = append(b, `,"attributes":`...)
		b = appendJSONString(b, v.attributes)
	}
	return b
}

func appendFields(b []byte, fs fields) []byte {
	b = append(b, '{')
	for i, f := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f.name)
		b = append(b, ':')
		b = appendFieldValue(b, f.fieldValue)
		if len(f.multi) > 0 {
			b = append(b, `,"multiValue":[`...)
			for j, v := range f.multi {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendFieldValue(b, v)
				b = append(b, '}')
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// outputJSON is FunctionOutput: {"request": …} or {"response": …} as
// CloudFront prints it, with the fields as CloudFront applies them.
func outputJSON(req *request, resp *response) string {
	var b []byte
	if resp != nil {
		b = append(b, `{"response":{"statusCode":`...)
		b = strconv.AppendInt(b, int64(resp.statusCode), 10)
		if resp.statusDescription != "" {
			b = append(b, `,"statusDescription":`...)
			b = appendJSONString(b, resp.statusDescription)
		}
		b = append(b, `,"headers":`...)
		b = appendFields(b, resp.headers)
		b = append(b, `,"cookies":`...)
		b = appendFields(b, resp.cookies)
		if resp.body != nil {
			b = append(b, `,"body":{"encoding":`...)
			b = appendJSONString(b, resp.body.encoding)
			b = append(b, `,"data":`...)
			b = appendJSONString(b, resp.body.data)
			b = append(b, '}')
		}
		return string(append(b, "}}"...))
	}
	b = append(b, `{"request":{"method":`...)
	b = appendJSONString(b, req.method)
	b = append(b, `,"uri":`...)
	b = appendJSONString(b, req.uri)
	b = append(b, `,"querystring":`...)
	if req.queryString != nil {
		b = appendJSONString(b, *req.queryString)
	} else {
		b = appendFields(b, req.query)
	}
	b = append(b, `,"headers":`...)
	b = appendFields(b, req.headers)
	b = append(b, `,"cookies":`...)
	b = appendFields(b, req.cookies)
	return string(append(b, "}}"...))
}

// ---- JavaScript ----

// setKey defines an own enumerable property, so that a name such as
// "__proto__" stays a plain key.
func setKey(o *goja.Object, name string, v goja.Value) {
	_ = o.DefineDataProperty(name, v, goja.FLAG_TRUE, goja.FLAG_TRUE, goja.FLAG_TRUE)
}

func (s *vmState) fieldValueToJS(v fieldValue) *goja.Object {
	o := s.vm.NewObject()
	o.Set("value", v.value)
	if v.hasAttr {
		o.Set("attributes", v.attributes)
	}
	return o
}

func (s *vmState) fieldsToJS(fs fields) *goja.Object {
	o := s.vm.NewObject()
	for _, f := range fs {
		e := s.fieldValueToJS(f.fieldValue)
		if len(f.multi) > 0 {
			items := make([]any, len(f.multi))
			for i, v := range f.multi {
				items[i] = s.fieldValueToJS(v)
			}
			e.Set("multiValue", s.vm.NewArray(items...))
		}
		setKey(o, f.name, e)
	}
	return o
}

func (s *vmState) eventToJS(ev *event) *goja.Object {
	vm := s.vm
	o := vm.NewObject()
	o.Set("version", "1.0")
	ctx := vm.NewObject()
	if ev.distributionDomain != "" {
		ctx.Set("distributionDomainName", ev.distributionDomain)
	}
	if ev.distributionID != "" {
		ctx.Set("distributionId", ev.distributionID)
	}
	ctx.Set("eventType", string(ev.eventType))
	if ev.requestID != "" {
		ctx.Set("requestId", ev.requestID)
	}
	o.Set("context", ctx)
	viewer := vm.NewObject()
	viewer.Set("ip", ev.viewerIP)
	o.Set("viewer", viewer)

	rq := vm.NewObject()
	rq.Set("method", ev.req.method)
	rq.Set("uri", ev.req.uri)
	rq.Set("querystring", s.fieldsToJS(ev.req.query))
	rq.Set("headers", s.fieldsToJS(ev.req.headers))
	rq.Set("cookies", s.fieldsToJS(ev.req.cookies))
	if s.f.cfg.Runtime == Runtime20 {
		raw := ev.req.rawQuery
		has := ev.req.hasRawQuery
		_ = rq.DefineDataProperty("rawQueryString", vm.ToValue(func(goja.FunctionCall) goja.Value {
			if !has {
				return goja.Undefined()
			}
			return vm.ToValue(raw)
		}), goja.FLAG_TRUE, goja.FLAG_TRUE, goja.FLAG_FALSE)
	}
	o.Set("request", rq)
	if ev.resp != nil {
		rs := vm.NewObject()
		rs.Set("statusCode", ev.resp.statusCode)
		rs.Set("statusDescription", ev.resp.statusDescription)
		rs.Set("headers", s.fieldsToJS(ev.resp.headers))
		rs.Set("cookies", s.fieldsToJS(ev.resp.cookies))
		o.Set("response", rs)
	}
	return o
}

func invalid(format string, args ...any) error {
	return &ValidationError{Reason: fmt.Sprintf(format, args...)}
}

// jsString reads a property that must be a string when present; numbers
// and booleans are taken as their string form.
func jsString(o *goja.Object, name, what string) (string, bool, error) {
	v := o.Get(name)
	if v == nil || goja.IsUndefined(v) || goja.IsNull(v) {
		return "", false, nil
	}
	switch v.ExportType().Kind().String() {
	case "string", "int64", "float64", "bool":
		return v.String(), true, nil
	}
	return "", false, invalid("%s.%s must be a string", what, name)
}

func isAbsent(v goja.Value) bool {
	return v == nil || goja.IsUndefined(v) || goja.IsNull(v)
}

// fieldsFromJS reads querystring, headers or cookies back, applying
// CloudFront's rules against orig: a changed multiValue wins; otherwise a
// changed value replaces the first value and keeps the others.
func (s *vmState) fieldsFromJS(v goja.Value, what string, orig fields, lower, attrs bool) (fields, error) {
	if isAbsent(v) {
		return nil, nil
	}
	obj, ok := v.(*goja.Object)
	if !ok {
		return nil, invalid("%s must be an object", what)
	}
	keys := obj.Keys()
	out := make(fields, 0, len(keys))
	for _, k := range keys {
		eo, ok := obj.Get(k).(*goja.Object)
		if !ok {
			return nil, invalid("%s[%q] must be an object with a value", what, k)
		}
		where := what + "[" + strconv.Quote(k) + "]"
		var val *fieldValue
		if str, ok, err := jsString(eo, "value", where); err != nil {
			return nil, err
		} else if ok {
			val = &fieldValue{value: str}
			if attrs {
				if a, ok, err := jsString(eo, "attributes", where); err != nil {
					return nil, err
				} else if ok {
					val.attributes, val.hasAttr = a, true
				}
			}
		}
		var multi []fieldValue
		hasMulti := false
		if mv := eo.Get("multiValue"); !isAbsent(mv) {
			mo, ok := mv.(*goja.Object)
			if !ok || mo.ClassName() != "Array" {
				return nil, invalid("%s.multiValue must be an array", where)
			}
			hasMulti = true
			n := int(mo.Get("length").ToInteger())
			for i := 0; i < n; i++ {
				io, ok := mo.Get(strconv.Itoa(i)).(*goja.Object)
				if !ok {
					return nil, invalid("%s.multiValue[%d] must be an object with a value", where, i)
				}
				str, ok, err := jsString(io, "value", where+".multiValue")
				if err != nil {
					return nil, err
				}
				if !ok {
					return nil, invalid("%s.multiValue[%d] has no value", where, i)
				}
				fv := fieldValue{value: str}
				if attrs {
					if a, ok, err := jsString(io, "attributes", where+".multiValue"); err != nil {
						return nil, err
					} else if ok {
						fv.attributes, fv.hasAttr = a, true
					}
				}
				multi = append(multi, fv)
			}
		}
		name := k
		if lower {
			name = strings.ToLower(k)
		}
		of := orig.find(name)
		var vals []fieldValue
		switch {
		case hasMulti && len(multi) > 0 && (of == nil || !equalValues(multi, of.multi)):
			vals = multi
		case val != nil && of != nil:
			ov := of.values()
			if val.value == of.value && val.attributes == of.attributes {
				vals = ov
			} else {
				vals = append([]fieldValue{*val}, ov[1:]...)
			}
		case val != nil:
			vals = []fieldValue{*val}
		case of != nil && hasMulti:
			vals = of.values()
		default:
			return nil, invalid("%s has no value", where)
		}
		if prev := out.find(name); prev != nil {
			*prev = fromValues(name, append(prev.values(), vals...))
			continue
		}
		out = append(out, fromValues(name, vals))
	}
	return out, nil
}

// requestFromJS reads a request the function returned.
func (s *vmState) requestFromJS(o *goja.Object, orig *request) (*request, error) {
	out := &request{method: orig.method, uri: orig.uri, rawQuery: orig.rawQuery, hasRawQuery: orig.hasRawQuery}
	if m, ok, err := jsString(o, "method", "request"); err != nil {
		return nil, err
	} else if ok && m != orig.method {
		return nil, invalid("request.method is read-only (%q changed to %q)", orig.method, m)
	}
	if u, ok, err := jsString(o, "uri", "request"); err != nil {
		return nil, err
	} else if ok {
		out.uri = u
	}
	var err error
	qv := o.Get("querystring")
	if str, isStr := qv.Export().(string); qv != nil && isStr {
		str = strings.TrimPrefix(str, "?")
		out.queryString = &str
		for _, part := range strings.Split(str, "&") {
			if part == "" {
				continue
			}
			name, value, _ := strings.Cut(part, "=")
			out.query = out.query.add(name, fieldValue{value: value})
		}
	} else if out.query, err = s.fieldsFromJS(qv, "request.querystring", orig.query, false, false); err != nil {
		return nil, err
	}
	if out.headers, err = s.fieldsFromJS(o.Get("headers"), "request.headers", orig.headers, true, false); err != nil {
		return nil, err
	}
	if out.cookies, err = s.fieldsFromJS(o.Get("cookies"), "request.cookies", orig.cookies, false, false); err != nil {
		return nil, err
	}
	return out, nil
}

// responseFromJS reads a response the function returned or generated;
// orig is nil when a viewer-request function generated it.
func (s *vmState) responseFromJS(o *goja.Object, orig *response) (*response, error) {
	out := &response{}
	sc := o.Get("statusCode")
	f, ok := sc.Export().(int64)
	if !ok {
		if fl, isF := sc.Export().(float64); isF && fl == math.Trunc(fl) {
			f, ok = int64(fl), true
		}
	}
	if !ok || f < 100 || f > 599 {
		return nil, invalid("response.statusCode must be an integer from 100 to 599, not %s", sc.String())
	}
	out.statusCode = int(f)
	var err error
	if out.statusDescription, _, err = jsString(o, "statusDescription", "response"); err != nil {
		return nil, err
	}
	var oh, oc fields
	if orig != nil {
		oh, oc = orig.headers, orig.cookies
	}
	if out.headers, err = s.fieldsFromJS(o.Get("headers"), "response.headers", oh, true, false); err != nil {
		return nil, err
	}
	if out.cookies, err = s.fieldsFromJS(o.Get("cookies"), "response.cookies", oc, false, true); err != nil {
		return nil, err
	}
	bv := o.Get("body")
	if isAbsent(bv) {
		return out, nil
	}
	b := &body{encoding: "text"}
	if str, isStr := bv.Export().(string); isStr {
		b.data = str
	} else if bo, isObj := bv.(*goja.Object); isObj {
		data, ok, err := jsString(bo, "data", "response.body")
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, invalid("response.body.data must be a string")
		}
		b.data = data
		if e, ok, err := jsString(bo, "encoding", "response.body"); err != nil {
			return nil, err
		} else if ok {
			b.encoding = e
		}
	} else {
		return nil, invalid("response.body must be a string or {data, encoding}")
	}
	switch b.encoding {
	case "text":
		b.bytes = []byte(b.data)
	case "base64":
		dec, err := base64.StdEncoding.DecodeString(b.data)
		if err != nil {
			return nil, invalid("response.body.data is not valid base64")
		}
		b.bytes = dec
	default:
		return nil, invalid("response.body.encoding must be text or base64, not %q", b.encoding)
	}
	if len(b.bytes) > s.f.cfg.MaxBodySize {
		return nil, invalid("response.body is %d bytes, over the %d byte limit", len(b.bytes), s.f.cfg.MaxBodySize)
	}
	out.body = b
	return out, nil
}
