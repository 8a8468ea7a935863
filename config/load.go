package config

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// file is one file's declarations as written. The daemon's own settings are pointers so that
// merging files can tell a setting that is left out from one that is set to its zero value.
type file struct {
	LogLevel *string `hcl:"log_level,optional"`
	LogJSON  *bool   `hcl:"log_json,optional"`
	KVPrefix *string `hcl:"kv_prefix,optional"`
	DataDir  *string `hcl:"data_dir,optional"`
	// HistoryLimit is the default of every site's history_limit.
	HistoryLimit *int `hcl:"history_limit,optional"`

	HTTP   *HTTP     `hcl:"http,block"`
	Consul *Consul   `hcl:"consul,block"`
	Nomad  *Nomad    `hcl:"nomad,block"`
	Sites  []*Site   `hcl:"site,block"`
	Groups []*Group  `hcl:"group,block"`
	Notify []*Notify `hcl:"notify,block"`

	name string // as given to Load or Parse
	dir  string // absolute folder of the file: config_dir, where relative paths start
	body *hclsyntax.Body
	ctx  *hcl.EvalContext
}

// Load reads the declarations at path: one file, or every *.hcl file of a directory in name
// order (dot files and Nomad jobspecs named *.nomad.hcl are skipped, so jobs may sit next to
// the declarations). Mistakes in the declarations come back as Diagnostics, all of them at once.
func Load(path string) (*Config, error) {
	names, err := configFiles(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	var files []*file
	var diags hcl.Diagnostics
	for _, name := range names {
		src, err := readDeclarations(name)
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Cannot read file",
				Detail:   err.Error(),
				Subject:  fileStart(name).Ptr(),
			})
			continue
		}
		f, fileDiags := parseFile(name, src)
		diags = append(diags, fileDiags...)
		if f != nil {
			files = append(files, f)
		}
	}
	return build(names, files, diags)
}

// Parse decodes and checks one file's declarations; filename names it in messages, and its
// folder is where relative paths start. Mistakes come back as Diagnostics, all of them at once.
func Parse(filename string, src []byte) (*Config, error) {
	if filename == "" {
		filename = "<input>"
	}
	var files []*file
	f, diags := parseFile(filename, src)
	if f != nil {
		files = append(files, f)
	}
	return build([]string{filename}, files, diags)
}

func configFiles(path string) ([]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".hcl") ||
			strings.HasSuffix(name, ".nomad.hcl") {
			continue
		}
		names = append(names, filepath.Join(path, name))
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no *.hcl files in %s", path)
	}
	return names, nil
}

// readDeclarations reads the file at name (declarations, or a jobspec), or as much of it as shows that it is over
// maxFileSize: parseFile rejects it then, and reading the rest would be wasted.
func readDeclarations(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxFileSize+1))
}

// parseFile decodes one file. It returns no file when the syntax is broken, or the file is over
// one of the limits in limits.go: decoding a broken tree only adds noise to the errors that need
// fixing first.
func parseFile(name string, src []byte) (*file, hcl.Diagnostics) {
	if diags := checkSource(name, src); diags.HasErrors() {
		return nil, diags
	}
	syntax, diags := hclsyntax.ParseConfig(src, name, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	if more := checkRepetition(syntax.Body.(*hclsyntax.Body)); more.HasErrors() {
		return nil, append(diags, more...)
	}
	dir, err := filepath.Abs(filepath.Dir(name))
	if err != nil {
		return nil, append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Cannot resolve the file's folder",
			Detail:   err.Error(),
			Subject:  fileStart(name).Ptr(),
		})
	}
	f := &file{name: name, dir: dir, body: syntax.Body.(*hclsyntax.Body), ctx: evalContext(dir)}
	diags = append(diags, withoutFollowUps(gohcl.DecodeBody(syntax.Body, f.ctx, f))...)
	return f, diags
}

// withoutFollowUps drops gohcl's "value must be known" errors. Nothing in a file's evaluation
// context is unknown, so such a value comes from an expression that failed (an unknown
// variable or function) and was already reported at its exact position.
func withoutFollowUps(diags hcl.Diagnostics) hcl.Diagnostics {
	out := diags[:0]
	for _, d := range diags {
		if d.Summary == "Unsuitable value type" && strings.HasSuffix(d.Detail, "value must be known") {
			continue
		}
		out = append(out, d)
	}
	return out
}

// evalContext is what expressions in a file may use: config_dir, the absolute folder of the
// file, and env("NAME"), the daemon's environment variable NAME or "" when it is unset.
func evalContext(dir string) *hcl.EvalContext {
	return &hcl.EvalContext{
		Variables: map[string]cty.Value{"config_dir": cty.StringVal(dir)},
		Functions: map[string]function.Function{"env": envFunc},
	}
}

var envFunc = function.New(&function.Spec{
	Description: "The daemon's environment variable of the given name, or an empty string.",
	Params:      []function.Parameter{{Name: "name", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		return cty.StringVal(os.Getenv(args[0].AsString())), nil
	},
})

// builder turns decoded files into one Config: it merges them, fills defaults, and checks
// everything, collecting every problem with its range.
type builder struct {
	cfg      *Config
	src      *sources
	dirs     map[string]string    // file name → its absolute folder
	declared map[string]hcl.Range // daemon setting → where it is declared
	decoded  hcl.Diagnostics      // HCL's own errors: a rule that hits one of their ranges stays quiet
	reported rangeIndex           // the ranges of the errors in decoded
	diags    hcl.Diagnostics
}

func build(names []string, files []*file, decoded hcl.Diagnostics) (*Config, error) {
	b := &builder{
		cfg:      Default(),
		src:      newSources(),
		dirs:     map[string]string{},
		declared: map[string]hcl.Range{},
		decoded:  decoded,
		reported: newRangeIndex(decoded),
	}
	b.cfg.Files = names
	for _, f := range files {
		b.src.add(f)
		b.dirs[f.name] = f.dir
	}
	for _, f := range files {
		b.merge(f)
	}
	b.complete()
	b.validate()

	all := make(hcl.Diagnostics, 0, len(decoded)+len(b.diags))
	all = append(append(all, decoded...), b.diags...)
	if diags := errorDiagnostics(all, names[0]); len(diags) > 0 {
		return nil, diags
	}
	sort.SliceStable(b.cfg.Sites, func(i, j int) bool { return b.cfg.Sites[i].Name < b.cfg.Sites[j].Name })
	sort.SliceStable(b.cfg.Groups, func(i, j int) bool { return b.cfg.Groups[i].Name < b.cfg.Groups[j].Name })
	sort.SliceStable(b.cfg.Notify, func(i, j int) bool { return b.cfg.Notify[i].Name < b.cfg.Notify[j].Name })
	return b.cfg, nil
}

// merge adds one file's declarations. Sites, groups and notify blocks from all files add up; each of the daemon's own
// settings may be declared in one file only, so that no file silently overrides another.
func (b *builder) merge(f *file) {
	topAttr := func(name string) hcl.Range { return f.body.Attributes[name].SrcRange }
	if f.LogLevel != nil && b.declare("log_level", topAttr("log_level")) {
		b.cfg.LogLevel = *f.LogLevel
	}
	if f.LogJSON != nil && b.declare("log_json", topAttr("log_json")) {
		b.cfg.LogJSON = *f.LogJSON
	}
	if f.KVPrefix != nil && b.declare("kv_prefix", topAttr("kv_prefix")) {
		b.cfg.KVPrefix = *f.KVPrefix
	}
	if f.DataDir != nil && b.declare("data_dir", topAttr("data_dir")) {
		b.cfg.DataDir = *f.DataDir
		if !filepath.IsAbs(b.cfg.DataDir) {
			b.cfg.DataDir = filepath.Join(f.dir, b.cfg.DataDir)
		}
	}
	if f.HistoryLimit != nil && b.declare("history_limit", topAttr("history_limit")) {
		b.cfg.HistoryLimit = *f.HistoryLimit
	}
	if f.HTTP != nil && b.declare("http", f.HTTP.Range) {
		b.cfg.HTTP = *f.HTTP
	}
	if f.Consul != nil && b.declare("consul", f.Consul.Range) {
		b.cfg.Consul = *f.Consul
	}
	if f.Nomad != nil && b.declare("nomad", f.Nomad.Range) {
		b.cfg.Nomad = *f.Nomad
	}
	b.cfg.Sites = append(b.cfg.Sites, f.Sites...)
	b.cfg.Groups = append(b.cfg.Groups, f.Groups...)
	b.cfg.Notify = append(b.cfg.Notify, f.Notify...)
}

// declare records where a daemon setting is declared; it reports false, and a problem, when
// another file already declared it.
func (b *builder) declare(setting string, at hcl.Range) bool {
	if first, ok := b.declared[setting]; ok {
		b.errorf(at, "Duplicate daemon setting",
			"%s is already declared at %s; declare the daemon's own settings (log_level, log_json, kv_prefix, data_dir, history_limit, http, consul, nomad) in one file only.",
			setting, position(first))
		return false
	}
	b.declared[setting] = at
	return true
}

// errorf records a problem at subject, unless HCL already reported one there: the same mistake
// is reported once.
func (b *builder) errorf(subject hcl.Range, summary, format string, args ...any) {
	if b.reported.overlaps(subject) {
		return
	}
	b.diags = append(b.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(format, args...),
		Subject:  subject.Ptr(),
	})
}

// path makes p, written in the block declared at block, absolute: relative paths start at the
// folder of the declaring file.
func (b *builder) path(block hcl.Range, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(b.dirs[block.Filename], p)
}

// position is a range as messages print it.
func position(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

// rangeIndex tells whether a range overlaps one of the ranges of a set of errors, as
// hcl.Range.Overlaps does, in time that grows with the logarithm of their number: a file with
// thousands of problems must not take time that grows with its square.
type rangeIndex map[string]*fileRanges

// fileRanges are the non-empty ranges in one file, sorted by start; maxEnd[i] is the largest end
// of the first i+1 of them.
type fileRanges struct {
	starts, maxEnd []int
}

func newRangeIndex(diags hcl.Diagnostics) rangeIndex {
	byFile := map[string][]hcl.Range{}
	for _, d := range diags {
		if d.Severity == hcl.DiagError && d.Subject != nil && !d.Subject.Empty() {
			byFile[d.Subject.Filename] = append(byFile[d.Subject.Filename], *d.Subject)
		}
	}
	idx := rangeIndex{}
	for name, ranges := range byFile {
		sort.Slice(ranges, func(i, j int) bool { return ranges[i].Start.Byte < ranges[j].Start.Byte })
		fr := &fileRanges{starts: make([]int, len(ranges)), maxEnd: make([]int, len(ranges))}
		for i, r := range ranges {
			fr.starts[i] = r.Start.Byte
			fr.maxEnd[i] = r.End.Byte
			if i > 0 {
				fr.maxEnd[i] = max(fr.maxEnd[i], fr.maxEnd[i-1])
			}
		}
		idx[name] = fr
	}
	return idx
}

// overlaps reports whether r overlaps one of the ranges. Two non-empty ranges of one file
// overlap, for hcl.Range.Overlaps, when each starts at or before the other's end.
func (idx rangeIndex) overlaps(r hcl.Range) bool {
	fr := idx[r.Filename]
	if fr == nil || r.Empty() {
		return false
	}
	n := sort.SearchInts(fr.starts, r.End.Byte+1) // the ranges that start at or before r's end
	return n > 0 && fr.maxEnd[n-1] >= r.Start.Byte
}
