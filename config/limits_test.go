package config

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parsePromptly parses src as the file name, failing the test if Parse does not return within
// a generous bound: the inputs it is given took seconds to minutes before the limits, or
// overflowed the stack.
func parsePromptly(t *testing.T, name string, src []byte) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := Parse(name, src)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("Parse of %d bytes did not return within 5s", len(src))
		return nil
	}
}

// fuzzFound is the input a fuzz worker was minimizing while FuzzParse showed 0 execs/sec: a
// string of 3,378 '$' (the last one opening an interpolation that is never closed). HCL's parser
// makes one part of each '$' and joins the parts in time that grows with their square.
// testdata/fuzz/FuzzParse/dollar-run holds it as a seed.
var fuzzFound = "A=\"" + strings.Repeat("$", 3377) + "${\""

// TestParseReturnsPromptly parses inputs that made Parse take seconds to hours, or crash the
// process with a stack overflow: each returns within the bound, with its first problem placed.
func TestParseReturnsPromptly(t *testing.T) {
	clearTokenEnv(t)
	dir := writeDir(t, nil)
	name := filepath.Join(dir, "slots.hcl")
	r := strings.Repeat
	site := "site \"web\" {\n  job     = \"job.nomad.hcl\"\n  service = \"web\"\n"
	list := "[" + strings.TrimSuffix(r("0,", 10), ",") + "]"
	nestedFor := "1"
	for i := range 8 {
		nestedFor = fmt.Sprintf("[for a%d in %s : %s]", i, list, nestedFor)
	}
	numbered := func(format string, n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, format, i)
		}
		return b.String()
	}

	cases := []struct {
		name, src string
		summary   string
		line, col int
	}{
		{"the input the fuzzer found", fuzzFound, "String has too many parts", 1, 3},
		{"a$ repeated in a string (128 KiB; 20s before)", "kv_prefix = \"" + r("a$", 64<<10) + "\"\n", "String has too many parts", 1, 13},
		{"% repeated in a string (64 KiB; 2s before)", "kv_prefix = \"" + r("%", 64<<10) + "\"\n", "String has too many parts", 1, 13},
		{"a heredoc of 128Ki lines (28s before)", "kv_prefix = <<EOT\n" + r("x\n", 128<<10) + "EOT\n", "String has too many parts", 1, 13},
		{"150,000 nested brackets (stack overflow before)", "kv_prefix = " + r("(", 150000) + "1" + r(")", 150000) + "\n", "Nesting too deep", 1, 141},
		{"a chain of 500,000 operators (stack overflow before)", "kv_prefix = 1" + r("+1", 500000) + "\n", "Nesting too deep", 1, 270},
		{"eight nested for expressions over ten items (2 minutes before)", "kv_prefix = " + nestedFor + "\n", "Expression repeats too much", 1, 13},
		{"3,000 slots with an unknown auto_swap (55s before)", site + numbered("  slot \"s%d\" { auto_swap = \"x\" }\n", 3000) + "}\n", "Unknown auto_swap slot", 4, 15},
		{"8,000 sites with problems (19s before)", r("site \"W\" {\n  x = 1\n}\n", 8000), "Invalid site name", 1, 6},
		{"a settings object of 20,000 bad names (over 2 minutes before)", site + "  slot \"a\" {}\n  slot \"b\" {\n    settings = {\n" + numbered("      \"%d\" = \"\"\n", 20000) + "    }\n  }\n}\n", "Invalid setting name", 7, 7},
		{"a file over 1 MiB", r("# comment\n", maxFileSize/10+1), "File too large", 1, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := parsePromptly(t, name, []byte(tc.src))
			diags := requireDiagnostics(t, err)
			d := diags[0]
			assert.Equal(t, tc.summary, d.Summary, "%.300s", err)
			assert.Equal(t, name, d.Subject.Filename)
			assert.Equal(t, tc.line, d.Subject.Start.Line, "%.300s", err)
			assert.Equal(t, tc.col, d.Subject.Start.Column, "%.300s", err)
		})
	}
}

// TestLimits checks each limit just past its edge: one problem, where it is crossed.
func TestLimits(t *testing.T) {
	r := strings.Repeat
	list100 := "[" + strings.TrimSuffix(r("0,", 100), ",") + "]"
	cases := []struct {
		name, src string
		summary   string
		line, col int
		detail    string
	}{
		{"129 brackets", "kv_prefix = " + r("(", 129) + "\"slotd\"" + r(")", 129), "Nesting too deep", 1, 141, "more than 128 levels"},
		{"129 nested blocks", r("a {\n", 129) + r("}\n", 129), "Nesting too deep", 129, 3, ""},
		{"129 operators", "log_level = 1" + r(" + 1", 129), "Nesting too deep", 1, 527, ""},
		{"129 unary operators", "log_level = " + r("-", 129) + "1", "Nesting too deep", 1, 141, ""},
		{"128 indexes", "log_level = a" + r("[0]", 128), "Nesting too deep", 1, 14 + 127*3, ""},
		{"129 conditionals", "log_level = " + r("true ? 1 : ", 129) + "1", "Nesting too deep", 1, 13 + 128*11 + 5, ""},
		{"127 template directives in a string", "log_level = \"" + r("%{if true}", 127) + "x" + r("%{endif}", 127) + "\"", "Nesting too deep", 1, 14 + 126*10, ""},
		{"1,025 parts in a string", "kv_prefix = \"" + r("$", 1025) + "\"", "String has too many parts", 1, 13, "more than 1024 parts"},
		{"1,025 lines in a heredoc", "kv_prefix = <<EOT\n" + r("x\n", 1025) + "EOT\n", "String has too many parts", 1, 13, ""},
		{"1,025 interpolations in a string", "kv_prefix = \"" + r("${1}", 1025) + "\"", "String has too many parts", 1, 13, ""},
		{"three nested for expressions over 100 items", "kv_prefix = [for a in " + list100 + " : [for b in " + list100 + " : [for c in " + list100 + " : c]]]", "Expression repeats too much", 1, 13, "more than 65536 steps"},
		{"splats over a long list in a for expression", "kv_prefix = [for a in " + list100 + " : [for b in " + list100 + " : " + list100 + "[*]]]", "Expression repeats too much", 1, 13, ""},
		{"for expressions adding up in one file", "log_level = [for a in " + list100 + " : [for b in " + list100 + " : b]]\n" + "kv_prefix = [for a in " + list100 + " : [for b in " + list100 + " : b]]\n" + "http { address = [for a in " + list100 + " : [for b in " + list100 + " : b]] }\n", "Expression repeats too much", 3, 18, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			_, err := Parse("slots.hcl", []byte(tc.src))
			diags := requireDiagnostics(t, err)
			require.Len(t, diags, 1, "%.500s", err)
			d := diags[0]
			assert.Equal(t, tc.summary, d.Summary, err.Error())
			assert.Equal(t, "slots.hcl", d.Subject.Filename)
			assert.Equal(t, tc.line, d.Subject.Start.Line, err.Error())
			assert.Equal(t, tc.col, d.Subject.Start.Column, err.Error())
			assert.Contains(t, d.Detail, tc.detail)
		})
	}
}

// TestWithinLimits checks declarations at the edges of the limits, and larger ones than
// declarations need: they pass.
func TestWithinLimits(t *testing.T) {
	r := strings.Repeat
	list := func(n int) string { return "[" + strings.TrimSuffix(r("\"x\",", n), ",") + "]" }
	cases := []struct {
		name, src, kvPrefix string
	}{
		{"128 levels", "kv_prefix = " + r("(", 127) + "\"slotd\"" + r(")", 127), "slotd"},
		{"a string, a directive and 125 operators", "kv_prefix = \"%{if " + r("true && ", 125) + "true}slotd%{endif}\"", "slotd"},
		{"1,024 parts", "kv_prefix = \"" + r("$", 1024) + "\"", r("$", 1024)},
		{"a heredoc of 1,000 lines", "kv_prefix = <<EOT\n" + r("x\n", 999) + "x\nEOT\n", strings.TrimSuffix(r("x\n", 1000), "\n") + "\n"},
		{"two nested for expressions over 100 items", "kv_prefix = \"%{for a in " + list(100) + "}%{for b in " + list(100) + "}${b}%{endfor}%{endfor}\"", r("x", 10000)},
		{"a for expression over 10,000 items", "kv_prefix = join(\"\", [for a in " + list(10000) + " : a])", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearTokenEnv(t)
			cfg, err := Parse("slots.hcl", []byte(tc.src))
			if tc.kvPrefix == "" {
				// No such function as join: HCL's own error, not a limit.
				diags := requireDiagnostics(t, err)
				assert.Equal(t, "Call to unknown function", diags[0].Summary, err.Error())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.kvPrefix, cfg.KVPrefix)
		})
	}
}

// TestLoadTooLarge checks that Load reads no more of a file than shows it is too large.
func TestLoadTooLarge(t *testing.T) {
	dir := writeDir(t, map[string]string{"slots.hcl": strings.Repeat("#\n", maxFileSize)})
	path := filepath.Join(dir, "slots.hcl")
	_, err := Load(path)
	diags := requireDiagnostics(t, err)
	require.Len(t, diags, 1)
	assert.Equal(t, "File too large", diags[0].Summary)
	assert.Equal(t, path, diags[0].Subject.Filename)
	assert.Equal(t, 1, diags[0].Subject.Start.Line)

	src, err := readDeclarations(path)
	require.NoError(t, err)
	assert.Len(t, src, maxFileSize+1)
	_, err = readDeclarations(filepath.Join(dir, "nope.hcl"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// TestRangeIndex checks that rangeIndex answers as hcl.Range.Overlaps over the same ranges.
func TestRangeIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func() hcl.Range {
		start := rng.IntN(50)
		return hcl.Range{
			Filename: []string{"a.hcl", "b.hcl"}[rng.IntN(2)],
			Start:    hcl.Pos{Byte: start},
			End:      hcl.Pos{Byte: start + rng.IntN(6)},
		}
	}
	for range 200 {
		var diags hcl.Diagnostics
		for range rng.IntN(6) {
			d := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "x"}
			if rng.IntN(5) > 0 {
				d.Subject = random().Ptr()
			}
			if rng.IntN(5) == 0 {
				d.Severity = hcl.DiagWarning
			}
			diags = append(diags, d)
		}
		idx := newRangeIndex(diags)
		for range 20 {
			r := random()
			want := false
			for _, d := range diags {
				if d.Severity == hcl.DiagError && d.Subject != nil && d.Subject.Overlaps(r) {
					want = true
				}
			}
			require.Equal(t, want, idx.overlaps(r), "%v in %v", r, diags)
		}
	}
}

// TestUnknownAutoSwapListsSomeSlots checks that the message names at most 20 of the other slots.
func TestUnknownAutoSwapListsSomeSlots(t *testing.T) {
	clearTokenEnv(t)
	var slots strings.Builder
	for i := range 25 {
		fmt.Fprintf(&slots, "  slot \"s%d\" {}\n", i)
	}
	dir := writeDir(t, map[string]string{"slots.hcl": decl{site: slots.String(), staging: `    auto_swap = "nope"`}.String()})
	_, err := Load(filepath.Join(dir, "slots.hcl"))
	diags := requireDiagnostics(t, err)
	require.Len(t, diags, 1, err.Error())
	assert.Contains(t, diags[0].Detail, `name one of: s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17, s18, s19 and 6 more.`)
}

// TestLineEndsChain checks that operators add up over the lines of a bracketed expression, but
// not over the items of an object, which a line ends.
func TestLineEndsChain(t *testing.T) {
	item := "    key: 1 + 1 > 1 ? \"y\" : \"z\""
	for _, end := range []string{"\n", " # comment\n", " // comment\n"} {
		src := "site \"web\" {\n  vars = {\n" + strings.Repeat(item+end, 200) + "  }\n}\n"
		_, err := Parse("slots.hcl", []byte(src))
		for _, d := range requireDiagnostics(t, err) {
			assert.NotEqual(t, "Nesting too deep", d.Summary, "%q: %v", end, d)
		}

		src = "kv_prefix = (1" + strings.Repeat(end+"  + 1", 200) + ")\n"
		_, err = Parse("slots.hcl", []byte(src))
		diags := requireDiagnostics(t, err)
		assert.Equal(t, "Nesting too deep", diags[0].Summary, "%q: %v", end, err)
		assert.Equal(t, 129, diags[0].Subject.Start.Line, "%q: %v", end, err)
	}
}
