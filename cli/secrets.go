package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
)

const (
	// maxTokenFile bounds what -token-file reads: a token is short, and a path to something else
	// (a log, a device) must not make the CLI read without end.
	maxTokenFile = 64 << 10
	// maxValueFile bounds a setting's value read from a file or stdin: the agent reads a request
	// body of at most 1 MiB.
	maxValueFile = 1 << 20
)

// readTokenFile reads -token-file: the token, surrounding white space removed.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read -token-file: %w", err)
	}
	defer f.Close()
	data, err := readAtMost(f, maxTokenFile, "-token-file "+path)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("-token-file %s is empty; write the agent's token into it", path)
	}
	return token, nil
}

// settingValue is the value of `settings … set KEY=VALUE`: VALUE as written, the content of
// a file for @PATH, or stdin for "-". Read from a file or stdin, the value loses exactly one
// trailing "\n" (what echo and editors add), so a value that must end in a newline ends in two.
func (e *env) settingValue(key, written string) (string, error) {
	var (
		r    io.Reader
		what string
	)
	switch {
	case written == "-":
		r, what = e.stdin, "the value of "+key+" on stdin"
	case strings.HasPrefix(written, "@"):
		path := written[1:]
		if path == "" {
			return "", fmt.Errorf("%s=@ names no file; write %s=@PATH to read the value from PATH", key, key)
		}
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("read the value of %s: %w", key, err)
		}
		defer f.Close()
		r, what = f, "the value of "+key+" in "+path
	default:
		return written, nil
	}
	data, err := readAtMost(r, maxValueFile, what)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(data), "\n"), nil
}

// readAtMost reads r whole, refusing more than limit bytes; what names r in errors.
func readAtMost(r io.Reader, limit int64, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", what, limit)
	}
	return data, nil
}
