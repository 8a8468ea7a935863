package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// Diagnostics is the error Load and Parse return when declarations are wrong: every problem
// found, in file and position order, each with its Subject range. Get the list with errors.As.
type Diagnostics hcl.Diagnostics

// Error prints one line per problem: "file:line:col: summary; detail".
func (d Diagnostics) Error() string {
	lines := make([]string, len(d))
	for i, diag := range d {
		lines[i] = diagLine(diag)
	}
	return strings.Join(lines, "\n")
}

func diagLine(d *hcl.Diagnostic) string {
	var b strings.Builder
	if d.Subject != nil {
		fmt.Fprintf(&b, "%s:%d:%d: ", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
	}
	b.WriteString(d.Summary)
	if d.Detail != "" {
		b.WriteString("; ")
		b.WriteString(d.Detail)
	}
	// HCL's own details sometimes span lines; one problem stays one line.
	return strings.Join(strings.Fields(b.String()), " ")
}

// errorDiagnostics keeps the errors of diags, sorted by position, each with a subject in a named
// file: a problem that HCL could not place is put at the start of fallback's file.
func errorDiagnostics(diags hcl.Diagnostics, fallback string) Diagnostics {
	var out Diagnostics
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		if d.Subject == nil || d.Subject.Filename == "" || d.Subject.Start.Line < 1 {
			file := fallback
			if d.Subject != nil && d.Subject.Filename != "" {
				file = d.Subject.Filename
			}
			d.Subject = fileStart(file).Ptr()
		}
		out = append(out, d)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].Subject, out[j].Subject
		if a.Filename != b.Filename {
			return a.Filename < b.Filename
		}
		return a.Start.Byte < b.Start.Byte
	})
	return out
}

// fileStart is the position of a problem with a whole file.
func fileStart(filename string) hcl.Range {
	start := hcl.Pos{Line: 1, Column: 1, Byte: 0}
	return hcl.Range{Filename: filename, Start: start, End: start}
}

// sources holds the syntax of every file read, so that a message points at the attribute, map
// key or list item it is about rather than at the whole block.
type sources struct {
	blocks map[hcl.Range]*hclsyntax.Block // every block, by its definition range
	ctx    map[string]*hcl.EvalContext    // every file's evaluation context, by file name
	keyed  map[attrRef]*attrKeys          // the keys of the object attributes asked about so far
}

func newSources() *sources {
	return &sources{
		blocks: map[hcl.Range]*hclsyntax.Block{},
		ctx:    map[string]*hcl.EvalContext{},
		keyed:  map[attrRef]*attrKeys{},
	}
}

func (s *sources) add(f *file) {
	s.ctx[f.name] = f.ctx
	s.addBlocks(f.body)
}

func (s *sources) addBlocks(body *hclsyntax.Body) {
	for _, b := range body.Blocks {
		s.blocks[b.DefRange()] = b
		s.addBlocks(b.Body)
	}
}

// attr is the attribute name of the block declared at block, or nil when it is not written.
func (s *sources) attr(block hcl.Range, name string) *hclsyntax.Attribute {
	b := s.blocks[block]
	if b == nil {
		return nil
	}
	return b.Body.Attributes[name]
}

// set reports whether the block declared at block sets the attribute name. As in Terraform, an
// attribute that is null is left out, so its default applies.
func (s *sources) set(block hcl.Range, name string) bool {
	a := s.attr(block, name)
	if a == nil {
		return false
	}
	v, diags := a.Expr.Value(s.ctx[block.Filename])
	return diags.HasErrors() || !v.IsNull()
}

// attrRange is where the attribute is written, or the block when it is not.
func (s *sources) attrRange(block hcl.Range, name string) hcl.Range {
	if a := s.attr(block, name); a != nil {
		return a.SrcRange
	}
	return block
}

// labelRange is where the block's (first) label is written.
func (s *sources) labelRange(block hcl.Range) hcl.Range {
	if b := s.blocks[block]; b != nil && len(b.LabelRanges) > 0 {
		return b.LabelRanges[0]
	}
	return block
}

// keys lists the keys an object attribute writes literally, with their ranges, in source order
// (duplicates included). Keys computed from expressions are left out.
func (s *sources) keys(block hcl.Range, name string) []objectKey {
	return s.attrKeys(block, name).list
}

// attrRef names the attribute name of the block declared at block.
type attrRef struct {
	block hcl.Range
	name  string
}

// attrKeys are the keys an object attribute writes literally: they are worked out once, so that
// looking up each key of a large object takes time in proportion to its size, not its square.
type attrKeys struct {
	list  []objectKey          // in source order, duplicates included
	first map[string]hcl.Range // where each key is written first
}

func (s *sources) attrKeys(block hcl.Range, name string) *attrKeys {
	ref := attrRef{block, name}
	if k, ok := s.keyed[ref]; ok {
		return k
	}
	k := &attrKeys{first: map[string]hcl.Range{}}
	s.keyed[ref] = k
	a := s.attr(block, name)
	if a == nil {
		return k
	}
	obj, ok := a.Expr.(*hclsyntax.ObjectConsExpr)
	if !ok {
		return k
	}
	for _, item := range obj.Items {
		if key, ok := literalKey(item.KeyExpr); ok {
			rng := item.KeyExpr.Range()
			k.list = append(k.list, objectKey{name: key, rng: rng})
			if _, seen := k.first[key]; !seen {
				k.first[key] = rng
			}
		}
	}
	return k
}

type objectKey struct {
	name string
	rng  hcl.Range
}

func literalKey(expr hclsyntax.Expression) (string, bool) {
	v, diags := expr.Value(nil)
	if diags.HasErrors() || !v.IsWhollyKnown() || v.IsNull() || !v.Type().Equals(cty.String) {
		return "", false
	}
	return v.AsString(), true
}

// keyRange is where the object attribute writes key, or the attribute when it is computed.
func (s *sources) keyRange(block hcl.Range, name, key string) hcl.Range {
	if rng, ok := s.attrKeys(block, name).first[key]; ok {
		return rng
	}
	return s.attrRange(block, name)
}

// itemRange is where the list attribute writes its i-th item, or the attribute when it is computed.
func (s *sources) itemRange(block hcl.Range, name string, i int) hcl.Range {
	if a := s.attr(block, name); a != nil {
		if tuple, ok := a.Expr.(*hclsyntax.TupleConsExpr); ok && i < len(tuple.Exprs) {
			return tuple.Exprs[i].Range()
		}
	}
	return s.attrRange(block, name)
}
