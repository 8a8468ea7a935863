package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/hclwrite"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/zclconf/go-cty/cty"
)

// AppInfo is the JSON the test app answers on GET /.
type AppInfo struct {
	Lane    string            `json:"lane"`    // NOMAD_JOB_ID
	Alloc   string            `json:"alloc"`   // NOMAD_ALLOC_ID
	Version string            `json:"version"` // APP_VERSION
	Slot    string            `json:"slot"`    // SLOTD_SLOT
	Env     map[string]string `json:"env"`     // the SHOW_ENV variables and every SLOTD_* one
}

// buildTimeout bounds one build of the test app.
const buildTimeout = 3 * time.Minute

// sourceDir is the folder of this file: e2e/ in the module.
func sourceDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("e2e: cannot find its own source folder")
	}
	return filepath.Dir(file)
}

// TestAppJobspec is the absolute path of e2e/testapp/testapp.nomad.hcl.
func TestAppJobspec() string {
	return filepath.Join(sourceDir(), "testapp", "testapp.nomad.hcl")
}

// BuildTestApp builds e2e/testapp into dir/testapp and returns its absolute path.
func BuildTestApp(ctx context.Context, dir string) (string, error) {
	out, err := filepath.Abs(filepath.Join(dir, "testapp"))
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./e2e/testapp")
	cmd.Dir = filepath.Dir(sourceDir())
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the test app: %w\n%s", err, msg)
	}
	return out, nil
}

var testApp struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// TestAppBinary builds the test app once per process and returns its absolute path. Main
// removes it at the end.
func TestAppBinary(t testing.TB) string {
	t.Helper()
	testApp.once.Do(func() {
		testApp.dir, testApp.err = os.MkdirTemp("", "slotd-testapp-")
		if testApp.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		testApp.path, testApp.err = BuildTestApp(ctx, testApp.dir)
	})
	if testApp.err != nil {
		t.Fatalf("e2e: %v", testApp.err)
	}
	return testApp.path
}

// removeTestApp deletes the binary TestAppBinary built, if any.
func removeTestApp() {
	if testApp.dir != "" {
		_ = os.RemoveAll(testApp.dir)
	}
}

// HCLVars renders variable values as the content of an HCL variables file (what
// JobsParseRequest.Variables takes), quoting and escaping each value.
func HCLVars(vars map[string]string) string {
	f := hclwrite.NewEmptyFile()
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		f.Body().SetAttributeValue(k, cty.StringVal(vars[k]))
	}
	return string(f.Bytes())
}

// TestAppJob parses testapp.nomad.hcl through the stack's Nomad with binary set to
// TestAppBinary and the given variables, and names the job id.
func (s *Stack) TestAppJob(t testing.TB, id string, vars map[string]string) *nomadapi.Job {
	t.Helper()
	src, err := os.ReadFile(TestAppJobspec())
	if err != nil {
		t.Fatalf("e2e: read the test app jobspec: %v", err)
	}
	all := map[string]string{"binary": TestAppBinary(t)}
	maps.Copy(all, vars)
	job, err := s.Nomad.Jobs().ParseHCLOpts(&nomadapi.JobsParseRequest{
		JobHCL:       string(src),
		Variables:    HCLVars(all),
		Canonicalize: true,
	})
	if err != nil {
		t.Fatalf("e2e: parse %s with %s: %v", TestAppJobspec(), strings.TrimSpace(HCLVars(vars)), err)
	}
	job.ID, job.Name = &id, &id
	return job
}
