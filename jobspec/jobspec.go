// Package jobspec turns a site's HCL2 jobspec into the Nomad job of each lane: it parses the
// jobspec through the Nomad server, checks it can serve as a lane, renders lanes and diffs them.
package jobspec

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/zclconf/go-cty/cty"
)

// Parser is the slice of the Nomad API that Parse needs; *nomadapi.Jobs satisfies it.
type Parser interface {
	ParseHCLOpts(req *nomadapi.JobsParseRequest) (*nomadapi.Job, error)
}

var _ Parser = (*nomadapi.Jobs)(nil)

// serverFile is the name the Nomad server gives the jobspec it parses; Parse puts the
// operator's file name in its place so diagnostics point at the real file.
const serverFile = "input.hcl"

// Parse parses an HCL2 jobspec source through the Nomad server with the given variables
// (sent as the content of a variables file, see VarFile), canonicalized by the server.
// Errors name file and say what failed.
func Parse(p Parser, file string, src string, vars map[string]string) (*nomadapi.Job, error) {
	if err := CheckVarNames(vars); err != nil {
		return nil, fmt.Errorf("parse jobspec %s: %w", file, err)
	}
	job, err := p.ParseHCLOpts(&nomadapi.JobsParseRequest{
		JobHCL:       src,
		Variables:    VarFile(vars),
		Canonicalize: true,
	})
	if err != nil {
		return nil, &ParseError{File: file, Err: err}
	}
	if job == nil || job.ID == nil || *job.ID == "" {
		return nil, fmt.Errorf("parse jobspec %s: the Nomad server returned no job", file)
	}
	return job, nil
}

// ParseError is a jobspec the Nomad server refused (or could not be asked about). Its message
// names the operator's file instead of the server's "input.hcl", so positions can be followed.
type ParseError struct {
	File string
	Err  error
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("parse jobspec %s: %s", e.File, strings.ReplaceAll(e.Err.Error(), serverFile+":", e.File+":"))
}

func (e *ParseError) Unwrap() error { return e.Err }

// CheckVarNames reports every variable name that cannot be written to a variables file
// (an HCL identifier is required). Parse calls it; VarFile assumes it passed.
func CheckVarNames(vars map[string]string) error {
	var errs []error
	for _, k := range sortedKeys(vars) {
		if !hclsyntax.ValidIdentifier(k) {
			errs = append(errs, fmt.Errorf("variable name %q is not a valid HCL identifier", k))
		}
	}
	return errors.Join(errs...)
}

// VarFile renders vars as the content of an HCL variables file, one `name = "value"` line per
// variable in sorted order, every value a string. Quotes, backslashes, control characters and
// template sequences (`${`, `%{`) are escaped, so the server reads back exactly the given value
// (after HCL's Unicode NFC normalization, which applies to every HCL string).
func VarFile(vars map[string]string) string {
	f := hclwrite.NewEmptyFile()
	body := f.Body()
	for _, k := range sortedKeys(vars) {
		body.SetAttributeValue(k, cty.StringVal(vars[k]))
	}
	return string(f.Bytes())
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// CachingParser remembers what the Nomad server parsed, by jobspec and variables: a swap
// renders the same lane several times within a second (pre-flight, make, break), and each
// parse is a round trip to the server. The jobs it returns are shared: callers must not
// change them (Render copies).
type CachingParser struct {
	P Parser
	// Max bounds how many parses are kept; when full, the cache starts over.
	Max int

	mu   sync.Mutex
	jobs map[string]*nomadapi.Job
}

// ParseHCLOpts answers from the cache, or asks P and keeps a successful answer.
func (c *CachingParser) ParseHCLOpts(req *nomadapi.JobsParseRequest) (*nomadapi.Job, error) {
	key := fmt.Sprintf("%t\x00%s\x00%s", req.Canonicalize, req.Variables, req.JobHCL)
	c.mu.Lock()
	job, ok := c.jobs[key]
	c.mu.Unlock()
	if ok {
		return job, nil
	}
	job, err := c.P.ParseHCLOpts(req)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jobs == nil || len(c.jobs) >= c.Max {
		c.jobs = map[string]*nomadapi.Job{}
	}
	c.jobs[key] = job
	return job, nil
}
