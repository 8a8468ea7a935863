package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The pinned versions scripts/install-stack.sh builds (DESIGN.md §8).
const (
	ConsulVersion = "v1.14.8"
	NomadVersion  = "v1.6.1"
	FabioVersion  = "v1.6.3"
	// PrometheusVersion is the module version of Prometheus 3.16.0, as the module proxy
	// names it; only tests that ask for a Prometheus need it built.
	PrometheusVersion = "v0.316.0"
)

var versions = map[string]string{
	"consul":     ConsulVersion,
	"nomad":      NomadVersion,
	"fabio":      FabioVersion,
	"prometheus": PrometheusVersion,
}

// ErrMissingBinary is wrapped by Binary's error when a stack binary is not built.
var ErrMissingBinary = errors.New("stack binary missing")

// StackDir is where `make stack` puts the binaries: $STACK_DIR, else the user cache folder
// ($XDG_CACHE_HOME or ~/.cache) + slotd/stack, as scripts/install-stack.sh decides.
func StackDir() string {
	if dir := os.Getenv("STACK_DIR"); dir != "" {
		return dir
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "slotd", "stack")
}

// Binary returns the path of consul, nomad, fabio or prometheus in StackDir(): <name>-<version>/<name>.
func Binary(name string) (string, error) {
	version, ok := versions[name]
	if !ok {
		return "", fmt.Errorf("no stack binary named %q (want consul, nomad, fabio or prometheus)", name)
	}
	path := filepath.Join(StackDir(), name+"-"+version, name)
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%w: %s %s is not built at %s; run `make stack` to build it", ErrMissingBinary, name, version, path)
	}
	return path, nil
}
