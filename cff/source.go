package cff

import (
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"github.com/dop251/goja"
	"github.com/dop251/goja/ast"
	"github.com/dop251/goja/file"
	"github.com/dop251/goja/parser"
	"github.com/dop251/goja/token"
)

// MaxCodeSize is CloudFront's quota on a function's code: 10 KB.
const MaxCodeSize = 10 * 1024

// importRE matches one `import x from 'module'` statement at the start of
// what is left of a line.
var importRE = regexp.MustCompile(`^\s*import\s+([A-Za-z_$][A-Za-z0-9_$]*)\s+from\s+(['"])([^'"]*)(['"])\s*;?`)

// builtinModules are the modules require and import know.
var builtinModules = map[string]bool{"crypto": true, "querystring": true, "cloudfront": true}

// rewriteImports turns the `import x from 'm'` lines that open a 2.0
// function (blank and comment lines may come between) into `var x =
// require('m');` on the same line, so positions in error messages stay
// right. An import anywhere else stays, and goja refuses it as a syntax
// error, as CloudFront wants imports first.
func rewriteImports(src string) (string, error) {
	lines := strings.SplitAfter(src, "\n")
	inComment := false
	for i, line := range lines {
		trim := strings.TrimSpace(line)
		switch {
		case inComment:
			if strings.Contains(trim, "*/") {
				inComment = false
				if rest := strings.TrimSpace(trim[strings.Index(trim, "*/")+2:]); rest != "" {
					return strings.Join(lines, ""), nil
				}
			}
			continue
		case trim == "" || strings.HasPrefix(trim, "//"):
			continue
		case strings.HasPrefix(trim, "/*"):
			if !strings.Contains(trim[2:], "*/") {
				inComment = true
			}
			continue
		}
		if !importRE.MatchString(line) {
			break
		}
		var out strings.Builder
		rest := line
		for {
			m := importRE.FindStringSubmatch(rest)
			if m == nil {
				break
			}
			if m[2] != m[4] {
				return "", fmt.Errorf("%w: bad quotes in import at line %d", ErrSyntax, i+1)
			}
			if !builtinModules[m[3]] {
				return "", fmt.Errorf("%w: line %d: cannot find module '%s' (only crypto, querystring and cloudfront)", ErrSyntax, i+1, m[3])
			}
			fmt.Fprintf(&out, "var %s = require('%s');", m[1], m[3])
			rest = rest[len(m[0]):]
		}
		if strings.TrimSpace(rest) != "" && !strings.HasPrefix(strings.TrimSpace(rest), "//") {
			return "", fmt.Errorf("%w: line %d: an import line must hold only import statements", ErrSyntax, i+1)
		}
		if strings.HasSuffix(line, "\n") {
			out.WriteString("\n")
		}
		lines[i] = out.String()
	}
	return strings.Join(lines, ""), nil
}

// checkRuntimeSyntax parses src and refuses what runtime does not have.
// goja parses ES2020+; cloudfront-js-1.0 has no const, let, async, await,
// classes or generators ("JavaScript runtime 1.0 features": "The const and
// let statements are not supported").
func checkRuntimeSyntax(name, src string, rt Runtime) error {
	prg, err := parser.ParseFile(nil, name, src, 0, parser.WithDisableSourceMaps)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSyntax, err)
	}
	if rt != Runtime10 {
		return nil
	}
	var bad string
	var at file.Idx
	walkAST(reflect.ValueOf(prg), func(n any) bool {
		switch n := n.(type) {
		case *ast.LexicalDeclaration:
			bad, at = n.Token.String(), n.Idx
		case *ast.ForDeclaration:
			bad, at = "let", n.Idx
			if n.IsConst {
				bad = "const"
			}
		case *ast.FunctionLiteral:
			if n.Async {
				bad, at = "async", n.Function
			} else if n.Generator {
				bad, at = "function*", n.Function
			}
		case *ast.ArrowFunctionLiteral:
			if n.Async {
				bad, at = "async", n.Start
			}
		case *ast.AwaitExpression:
			bad, at = "await", n.Await
		case *ast.ClassLiteral:
			bad, at = "class", n.Class
		}
		return bad == ""
	})
	if bad != "" {
		pos := prg.File.Position(int(at) - prg.File.Base())
		return fmt.Errorf("%w: SyntaxError: Token %q not supported in %s (%s:%d:%d)", ErrSyntax, bad, Runtime10, name, pos.Line, pos.Column)
	}
	return nil
}

var (
	fileType  = reflect.TypeOf((*file.File)(nil))
	tokenType = reflect.TypeOf(token.Token(0))
)

// walkAST calls visit on every AST node pointer reachable from v, until
// visit returns false. It walks by reflection, so that no node type is
// forgotten; it is only used at Compile.
func walkAST(v reflect.Value, visit func(any) bool) bool {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() || v.Type() == fileType {
			return true
		}
		if v.CanInterface() && !visit(v.Interface()) {
			return false
		}
		return walkAST(v.Elem(), visit)
	case reflect.Interface:
		if v.IsNil() {
			return true
		}
		return walkAST(v.Elem(), visit)
	case reflect.Struct:
		// Some nodes are embedded by value (ForLoopInitializerLexicalDecl
		// holds a LexicalDeclaration).
		if v.CanAddr() && v.Addr().CanInterface() && !visit(v.Addr().Interface()) {
			return false
		}
		for i := 0; i < v.NumField(); i++ {
			if !v.Type().Field(i).IsExported() {
				continue
			}
			if !walkAST(v.Field(i), visit) {
				return false
			}
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if !walkAST(v.Index(i), visit) {
				return false
			}
		}
	}
	return true
}

// wrapperPrefix and wrapperSuffix turn the function's source into one
// function expression: calling it evaluates the top-level code afresh and
// returns the entry points. The prefix has no newline, so line numbers in
// stack traces are the source's own.
const (
	wrapperPrefix = "(function(){"
	wrapperSuffix = "\n;return [typeof handler === 'function' ? handler : undefined, typeof onRequest === 'function' ? onRequest : undefined];})"
)

// compileSource checks, rewrites and compiles a function's code.
func compileSource(name string, code []byte, rt Runtime) (*goja.Program, error) {
	if len(code) > MaxCodeSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrCodeTooLarge, len(code))
	}
	src := string(code)
	if rt == Runtime20 {
		var err error
		if src, err = rewriteImports(src); err != nil {
			return nil, err
		}
	}
	if err := checkRuntimeSyntax(name, src, rt); err != nil {
		return nil, err
	}
	prg, err := goja.Compile(name, wrapperPrefix+src+wrapperSuffix, true)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSyntax, err)
	}
	return prg, nil
}
