package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestZZProbe(t *testing.T) {
	dir := os.Getenv("PROBE_DIR")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		raw, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		lines := strings.SplitN(string(raw), "\n", 2)
		if len(lines) < 2 { continue }
		s := strings.TrimSpace(lines[1])
		s = strings.TrimPrefix(s, "[]byte(")
		s = strings.TrimSuffix(s, ")")
		src, err := strconv.Unquote(s)
		if err != nil { t.Logf("%s: %v", e.Name(), err); continue }
		start := time.Now()
		done := make(chan struct{})
		go func() { Parse(examplePath, []byte(src)); close(done) }()
		select {
		case <-done:
			if d := time.Since(start); d > 20*time.Millisecond { t.Logf("%s: %v len=%d", e.Name(), d, len(src)) }
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: hang, len=%d\n%q", e.Name(), len(src), src)
		}
	}
}
