package config

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Limits on one declarations file. HCL's parser and evaluator have inputs on which they take
// time or stack out of all proportion to the file's size, so a few bytes of declarations could
// stall `slotd validate` and the daemon, or crash them with a stack overflow. These limits are
// checked before HCL gets to those paths, and are far above what declarations need.
const (
	// maxFileSize bounds one file: everything else HCL does takes time in proportion to it.
	maxFileSize = 1 << 20
	// maxNesting bounds how deep expressions nest: each bracket, block, string, interpolation
	// and template directive is a level, and so is each operator of a chain such as a + b + c
	// or -!x, each index and each splat. HCL parses and evaluates them by recursion; a few
	// hundred thousand levels overflow the stack, which no recover can catch.
	maxNesting = 128
	// maxStringParts bounds the parts of one quoted string or heredoc. HCL joins consecutive
	// literal parts one at a time, copying the string and shifting the rest of the parts each
	// time: time that grows with the square of the number of parts.
	maxStringParts = 1024
	// maxRepetition bounds the evaluation steps that for expressions and splats add to a file
	// by repeating their bodies once per item: nested ones multiply, so a few hundred bytes
	// could otherwise take hours to evaluate.
	maxRepetition = 1 << 16
)

// checkSource checks the limits that must hold before HCL parses src: the file's size, and,
// on its tokens, nesting and the parts of each string. It returns at most one problem: one is
// enough to reject the file, and the rest of it is not parsed.
func checkSource(name string, src []byte) hcl.Diagnostics {
	if len(src) > maxFileSize {
		return hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "File too large",
			Detail: fmt.Sprintf("The file is larger than %d bytes (1 MiB), the most slotd reads from one declarations file; split the declarations into several files in one folder, and load the folder.",
				maxFileSize),
			Subject: fileStart(name).Ptr(),
		}}
	}

	// Lexing takes time in proportion to the file; the problems it finds are HCL's parser's
	// to report, with better messages.
	tokens, _ := hclsyntax.LexConfig(src, name, hcl.InitialPos)

	// open is a token that opens a level of nesting. It keeps the operators in a row before it,
	// and a string or heredoc also counts its parts and the directives open in it.
	type open struct {
		tok        hclsyntax.Token
		operators  int
		parts      int
		directives int
	}
	var stack []open
	outer := 0      // the levels of the stack, and the operators in a row before each
	directives := 0 // %{if} and %{for} directives open in the strings on the stack
	operators := 0  // binary operators, ?, splats and index brackets in a row at this level
	unary := 0      // unary operators in a row
	for i, tok := range tokens {
		depth := outer + directives + operators + unary
		switch tok.Type {
		case hclsyntax.TokenNewline, hclsyntax.TokenComment:
			// A line ends an attribute, and an item of an object; inside other brackets HCL
			// skips line ends, and an expression goes on.
			if n := len(stack); (n == 0 || stack[n-1].tok.Type == hclsyntax.TokenOBrace) && endsLine(tok) {
				operators, unary = 0, 0
			}
			continue
		case hclsyntax.TokenMinus, hclsyntax.TokenBang:
			// A binary minus, or a unary operator: both nest the expression one level deeper.
			unary++
			if depth+1 > maxNesting {
				return nestingTooDeep(tok.Range)
			}
			continue
		}
		if unary > 0 {
			operators += unary
			unary = 0
		}

		var str *open // the string or heredoc tok is a part of, if any
		if n := len(stack); n > 0 && isString(stack[n-1].tok.Type) {
			str = &stack[n-1]
		}
		switch tok.Type {
		case hclsyntax.TokenQuotedLit, hclsyntax.TokenStringLit,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			if str != nil {
				str.parts++
				if str.parts > maxStringParts {
					return tooManyParts(hcl.RangeBetween(str.tok.Range, tok.Range))
				}
			}
		}

		switch tok.Type {
		case hclsyntax.TokenComma, hclsyntax.TokenEqual, hclsyntax.TokenFatArrow:
			// A new item, attribute or object value starts a new expression.
			operators = 0
		case hclsyntax.TokenPlus, hclsyntax.TokenStar, hclsyntax.TokenSlash, hclsyntax.TokenPercent,
			hclsyntax.TokenEqualOp, hclsyntax.TokenNotEqual, hclsyntax.TokenLessThan,
			hclsyntax.TokenLessThanEq, hclsyntax.TokenGreaterThan, hclsyntax.TokenGreaterThanEq,
			hclsyntax.TokenAnd, hclsyntax.TokenOr, hclsyntax.TokenQuestion:
			// HCL builds a chain of operators (or splats, or conditionals) as a tree as deep as
			// the chain is long, and evaluates it by recursion.
			operators++
			if depth+1 > maxNesting {
				return nestingTooDeep(tok.Range)
			}
		case hclsyntax.TokenOParen, hclsyntax.TokenOBrack, hclsyntax.TokenOBrace,
			hclsyntax.TokenOQuote, hclsyntax.TokenOHeredoc,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			if tok.Type == hclsyntax.TokenOBrack {
				operators++ // an index or splat nests like an operator; a list literal, once
			}
			if tok.Type == hclsyntax.TokenTemplateControl && str != nil {
				switch directive(tokens, i) {
				case "if", "for":
					str.directives++
					directives++
				case "endif", "endfor":
					if str.directives > 0 {
						str.directives--
						directives--
					}
				}
			}
			stack = append(stack, open{tok: tok, operators: operators})
			outer += 1 + operators
			operators = 0
			if outer+directives > maxNesting {
				return nestingTooDeep(tok.Range)
			}
		case hclsyntax.TokenCParen, hclsyntax.TokenCBrack, hclsyntax.TokenCBrace,
			hclsyntax.TokenCQuote, hclsyntax.TokenCHeredoc, hclsyntax.TokenTemplateSeqEnd:
			// Broken files close what they never opened: that is the parser's to report.
			if n := len(stack); n > 0 {
				top := stack[n-1]
				stack = stack[:n-1]
				outer -= 1 + top.operators
				directives -= top.directives
				operators = top.operators
			}
		}
	}
	return nil
}

// endsLine reports whether tok is a line end, or a comment that runs to one.
func endsLine(tok hclsyntax.Token) bool {
	return tok.Type == hclsyntax.TokenNewline || bytes.HasSuffix(tok.Bytes, []byte("\n"))
}

func isString(t hclsyntax.TokenType) bool {
	return t == hclsyntax.TokenOQuote || t == hclsyntax.TokenOHeredoc
}

// directive is the keyword of the template directive opened by tokens[i], such as "if".
func directive(tokens hclsyntax.Tokens, i int) string {
	if i+1 < len(tokens) && tokens[i+1].Type == hclsyntax.TokenIdent {
		return string(tokens[i+1].Bytes)
	}
	return ""
}

func nestingTooDeep(at hcl.Range) hcl.Diagnostics {
	return hcl.Diagnostics{{
		Severity: hcl.DiagError,
		Summary:  "Nesting too deep",
		Detail: fmt.Sprintf("The declarations nest more than %d levels deep here, the most slotd reads: each bracket, block, string, interpolation and template directive is a level, and so is each operator of a chain such as a + b + c, each index and each splat. Write the expression with less nesting, or split it.",
			maxNesting),
		Subject: at.Ptr(),
	}}
}

func tooManyParts(at hcl.Range) hcl.Diagnostics {
	return hcl.Diagnostics{{
		Severity: hcl.DiagError,
		Summary:  "String has too many parts",
		Detail: fmt.Sprintf("This string has more than %d parts, the most slotd reads in one string: each line of a heredoc, each ${…} or %%{…} sequence, each $${ or %%%%{ escape and each $ or %% that starts no sequence is a part, and HCL takes time that grows with the square of their number to join them. Shorten the string, or split it into several.",
			maxStringParts),
		Subject: at.Ptr(),
	}}
}

// checkRepetition estimates how many evaluation steps the file's expressions take, and reports
// the expression with which the steps that for expressions and splats add by repetition exceed
// maxRepetition. The estimate is an upper bound: a for expression repeats its body once per item
// of its collection, and a collection that is not written out as a list or object literal is
// taken to be as long as the longest one in the file (nothing else in the evaluation context
// makes collections: config_dir is a string, and env returns strings).
func checkRepetition(body *hclsyntax.Body) hcl.Diagnostics {
	longest := 1
	hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
		longest = max(longest, literalLen(n))
		return nil
	})
	c := &costWalker{longest: longest}
	return c.body(body)
}

// literalLen is the number of items n writes out, or 0 when n is no list or object literal.
func literalLen(n hclsyntax.Node) int {
	switch e := n.(type) {
	case *hclsyntax.TupleConsExpr:
		return len(e.Exprs)
	case *hclsyntax.ObjectConsExpr:
		return len(e.Items)
	}
	return 0
}

// costWalker adds up the evaluation steps of the attributes of a body and its blocks, in source
// order so that the problem is reported at the same expression each time.
type costWalker struct {
	longest  int
	repeated int64 // steps added by repetition so far, in the attributes walked
	frames   []costFrame
}

// costFrame is a node being walked: the steps of its first child (a for expression's collection,
// a splat's source) and of the rest.
type costFrame struct {
	children     int
	first, rest  int64
	nodes        int64 // nodes under the node: each one step, when nothing repeats
	firstRepeats hcl.Range
}

func (c *costWalker) body(body *hclsyntax.Body) hcl.Diagnostics {
	attrs := make([]*hclsyntax.Attribute, 0, len(body.Attributes))
	for _, a := range body.Attributes {
		attrs = append(attrs, a)
	}
	sort.Slice(attrs, func(i, j int) bool { return attrs[i].SrcRange.Start.Byte < attrs[j].SrcRange.Start.Byte })
	for _, a := range attrs {
		c.frames = append(c.frames[:0], costFrame{})
		hclsyntax.Walk(a.Expr, c)
		root := c.frames[0]
		c.repeated = satAdd(c.repeated, max(root.first-root.nodes, 0))
		if c.repeated > maxRepetition {
			at := root.firstRepeats
			if at == (hcl.Range{}) {
				at = a.Expr.Range()
			}
			return hcl.Diagnostics{{
				Severity: hcl.DiagError,
				Summary:  "Expression repeats too much",
				Detail: fmt.Sprintf("Evaluating the for expressions and splats of this file repeats their bodies for more than %d steps, the most slotd evaluates: each repeats its body once per item of its collection, so nested ones multiply. Iterate over shorter lists, or nest fewer for expressions.",
					maxRepetition),
				Subject: at.Ptr(),
			}}
		}
	}
	for _, b := range body.Blocks {
		if diags := c.body(b.Body); diags.HasErrors() {
			return diags
		}
	}
	return nil
}

func (c *costWalker) Enter(hclsyntax.Node) hcl.Diagnostics {
	c.frames = append(c.frames, costFrame{})
	return nil
}

func (c *costWalker) Exit(node hclsyntax.Node) hcl.Diagnostics {
	f := c.frames[len(c.frames)-1]
	c.frames = c.frames[:len(c.frames)-1]
	steps := satAdd(1, satAdd(f.first, f.rest))
	repeats := f.firstRepeats
	switch e := node.(type) {
	case *hclsyntax.ForExpr:
		steps = satAdd(1, satAdd(f.first, satMul(c.items(e.CollExpr), f.rest)))
		repeats = e.SrcRange
	case *hclsyntax.SplatExpr:
		steps = satAdd(1, satAdd(f.first, satMul(c.items(e.Source), f.rest)))
		repeats = e.SrcRange
	}

	parent := &c.frames[len(c.frames)-1]
	if parent.children == 0 {
		parent.first = steps
	} else {
		parent.rest = satAdd(parent.rest, steps)
	}
	parent.children++
	parent.nodes = satAdd(parent.nodes, satAdd(f.nodes, 1))
	if parent.firstRepeats == (hcl.Range{}) {
		// The outermost repeating expression of the attribute is the one to point at.
		parent.firstRepeats = repeats
	}
	return nil
}

// items bounds the number of items of the collection expr evaluates to.
func (c *costWalker) items(expr hclsyntax.Expression) int64 {
	for {
		p, ok := expr.(*hclsyntax.ParenthesesExpr)
		if !ok {
			break
		}
		expr = p.Expression
	}
	switch expr.(type) {
	case *hclsyntax.TupleConsExpr, *hclsyntax.ObjectConsExpr:
		return int64(literalLen(expr))
	}
	return int64(c.longest)
}

// maxSteps caps step counts: beyond it they are all too many anyway, and do not overflow.
const maxSteps = 1 << 40

func satAdd(a, b int64) int64 { return min(a+b, maxSteps) }

func satMul(a, b int64) int64 {
	if a != 0 && b > maxSteps/a {
		return maxSteps
	}
	return min(a*b, maxSteps)
}
