package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// installer runs scripts/install-stack.sh fabio with extra environment.
func installer(t *testing.T, env ...string) (string, error) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "scripts", "install-stack.sh")
	cmd := exec.Command("bash", script, "fabio")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// binaries lists the files the installer left in a stack dir.
func binaries(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	return files
}

// TestInstallerRefusedDownload: a module the proxy does not give fails with a clear message
// and leaves nothing in the cache.
func TestInstallerRefusedDownload(t *testing.T) {
	dir := t.TempDir()
	mod := t.TempDir()
	out, err := installer(t, "STACK_DIR="+filepath.Join(dir, "stack"), "GOMODCACHE="+mod, "GOPROXY=off", "GOFLAGS=-modcacherw")
	require.Error(t, err)
	assert.Contains(t, out, "the module proxy did not give github.com/fabiolb/fabio@v1.6.3")
	assert.Empty(t, binaries(t, dir))
}

// TestInstallerFailedBuild: a build that fails says so with the compiler's output and leaves
// no half-written binary (the build writes to a temporary name).
func TestInstallerFailedBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads fabio through the module proxy")
	}
	goBin, err := exec.LookPath("go")
	require.NoError(t, err)
	fake := t.TempDir()
	// A go that does everything but build, where it writes half a file and fails.
	wrapper := `#!/usr/bin/env bash
if [ "$1" = build ]; then
  while [ $# -gt 0 ]; do if [ "$1" = -o ]; then echo partial > "$2"; fi; shift; done
  echo "compile: something broke" >&2
  exit 1
fi
exec ` + goBin + ` "$@"
`
	require.NoError(t, os.WriteFile(filepath.Join(fake, "go"), []byte(wrapper), 0o755))
	dir := t.TempDir()
	out, err := installer(t, "STACK_DIR="+dir, "PATH="+fake+":"+os.Getenv("PATH"))
	require.Error(t, err)
	assert.Contains(t, out, "building fabio v1.6.3 failed")
	assert.Contains(t, out, "compile: something broke")
	for _, f := range binaries(t, dir) {
		assert.False(t, strings.HasSuffix(f, "/fabio"), "a failed build left %s", f)
	}
	assert.Empty(t, binaries(t, dir), "no half-written file stays in the cache")
}
