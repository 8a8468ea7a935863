// Package deploy holds how slotd runs on Nomad: slotd.nomad.hcl and release.nomad.hcl (run as
// shipped by e2e/scenario_nomadjob_test.go) and the repository's Dockerfile, checked here.
package deploy

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dockerfile is the repository's Dockerfile as instructions: FROM, RUN, COPY… with their text.
type instruction struct{ op, args string }

func readDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		op, args, _ := strings.Cut(line, " ")
		out = append(out, instruction{strings.ToUpper(op), strings.TrimSpace(args)})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDockerfile: docker cannot run here, so this runs what it can of the Dockerfile. The build
// stage's Go is the go.mod's; its build step (run as written, from the repository root) makes a
// static binary, which the image needs on Alpine; the final stage copies that binary to where
// its ENTRYPOINT runs it, and the jobspecs' args fit that ENTRYPOINT.
func TestDockerfile(t *testing.T) {
	ins := readDockerfile(t)
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	if goVersion == nil {
		t.Fatal("no go directive in go.mod")
	}
	var build, entrypoint, copied string
	var froms []string
	for _, in := range ins {
		switch in.op {
		case "FROM":
			froms = append(froms, in.args)
		case "RUN":
			if strings.Contains(in.args, "go build") {
				build = in.args
			}
		case "COPY":
			if strings.HasPrefix(in.args, "--from=build ") {
				copied = strings.Fields(in.args)[2]
			}
		case "ENTRYPOINT":
			entrypoint = in.args
		}
	}
	if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:"+string(goVersion[1])+"-") {
		t.Fatalf("want two stages, the first on golang:%s (go.mod); got %q", goVersion[1], froms)
	}
	if entrypoint != `["`+copied+`"]` {
		t.Errorf("ENTRYPOINT %s does not run the copied binary %s", entrypoint, copied)
	}
	if build == "" {
		t.Fatal("no go build step")
	}
	if testing.Short() {
		t.Skip("the build step compiles slotd")
	}
	out := filepath.Join(t.TempDir(), "out")
	script := strings.ReplaceAll(build, "/out/", out+"/")
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = ".."
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build step: %v\n%s", err, msg)
	}
	bin, err := elf.Open(filepath.Join(out, "slotd"))
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the image's binary is linked dynamically; Alpine has no glibc")
		}
	}
	for _, spec := range []string{"slotd.nomad.hcl", "release.nomad.hcl"} {
		b, err := os.ReadFile(spec)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `image        = var.image`) {
			t.Errorf("%s does not run var.image with the docker driver", spec)
		}
	}
}
