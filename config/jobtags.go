package config

import (
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// jobServiceTags reads the tags the site's jobspec gives its service, where they are written
// literally: job > group > service, and job > group > task > service, whose name is s.Service.
// Every lane carries these tags, so none of them may route to one slot. The jobspec is Nomad's
// to parse (with its variables and functions); this reads only its syntax, without evaluating
// anything that needs them, and a jobspec it cannot read adds nothing: Nomad reports it when a
// lane is rendered.
func jobServiceTags(s *Site) map[string]hcl.Range {
	src, err := readDeclarations(s.Job)
	if err != nil || checkSource(s.Job, src).HasErrors() {
		return nil
	}
	f, diags := hclsyntax.ParseConfig(src, s.Job, hcl.InitialPos)
	if diags.HasErrors() {
		return nil
	}
	tags := map[string]hcl.Range{}
	for _, job := range blocksOf(f.Body.(*hclsyntax.Body), "job") {
		for _, group := range blocksOf(job.Body, "group") {
			services := blocksOf(group.Body, "service")
			for _, task := range blocksOf(group.Body, "task") {
				services = append(services, blocksOf(task.Body, "service")...)
			}
			for _, svc := range services {
				if name, ok := literalAttr(svc.Body, "name"); !ok || name != s.Service {
					continue
				}
				a := svc.Body.Attributes["tags"]
				if a == nil {
					continue
				}
				list, ok := a.Expr.(*hclsyntax.TupleConsExpr)
				if !ok {
					continue
				}
				for _, item := range list.Exprs {
					if tag, ok := literalKey(item); ok {
						if _, seen := tags[tag]; !seen {
							tags[tag] = item.Range()
						}
					}
				}
			}
		}
	}
	return tags
}

func blocksOf(body *hclsyntax.Body, typ string) []*hclsyntax.Block {
	var out []*hclsyntax.Block
	for _, b := range body.Blocks {
		if b.Type == typ {
			out = append(out, b)
		}
	}
	return out
}

// literalAttr is the value of a string attribute written without variables or functions.
func literalAttr(body *hclsyntax.Body, name string) (string, bool) {
	a := body.Attributes[name]
	if a == nil {
		return "", false
	}
	return literalKey(a.Expr)
}
